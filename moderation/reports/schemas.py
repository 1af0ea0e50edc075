"""The agreement report as the API returns it; CSV and HTML are renderings of this one object."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from moderation.reports.metrics import BinaryMetrics, Rate


class ReportScope(BaseModel):
    tenant_id: UUID
    policy: str | None
    version: int | None
    since: datetime
    until: datetime
    target_precision: float


class DecisionMatrix(BaseModel):
    """Automatic action (rows) against the final reviewer action (columns)."""

    model_actions: list[str]
    reviewer_actions: list[str]
    counts: list[list[int]]


class CalibrationBin(BaseModel):
    low: float
    high: float
    items: int
    mean_score: float = Field(description="mean stated score of the items in the bin")
    observed: Rate = Field(description="share a reviewer confirmed")


class Calibration(BaseModel):
    scale: str = Field(
        description="confidence: the rating confidence the model wrote; rating_probability: the "
        "rating token's probability from the server's log-probabilities; category: the "
        "confidence of the category's strongest violation"
    )
    bins: list[CalibrationBin]
    expected_calibration_error: float | None


class CategoryReport(BaseModel):
    category: str
    name: str | None = Field(description="None for a category this policy version lacks")
    flagging: BinaryMetrics = Field(
        description="verdict named the category vs reviewer named it, over reviewed items"
    )
    enforcement_precision: Rate = Field(
        description="of reviewed items restricted or blocked for this category under the "
        "current thresholds, the share a reviewer also restricted or blocked for it"
    )
    calibration: Calibration


class ReasonCount(BaseModel):
    reason: str
    items: int


class Cost(BaseModel):
    items_with_model_calls: int
    median_latency_ms: float | None
    median_tokens: float | None = Field(description="input plus output tokens per item")
    total_tokens: int


class ThresholdPoint(BaseModel):
    min_confidence: float
    automatic: Rate = Field(description="share decided without a person")
    error: Rate = Field(description="automatic decisions a reviewer changed")
    precision: Rate = Field(description="restrictions and blocks a reviewer upheld")


class CategoryThresholdPoint(BaseModel):
    category: str
    block_at: int
    restrict_at: int | None
    current: bool
    automatic: Rate
    error: Rate
    precision: Rate = Field(description="this category's restrictions and blocks upheld")


class ThresholdSweep(BaseModel):
    replayable_items: int = Field(description="items with a stored verdict the rules can replay")
    current_min_confidence: float
    current: ThresholdPoint
    min_confidence: list[ThresholdPoint]
    categories: list[CategoryThresholdPoint]


class MinConfidenceSuggestion(BaseModel):
    target_precision: float
    reached: bool
    min_confidence: float | None = Field(
        description="the lowest swept threshold whose precision reaches the target"
    )
    point: ThresholdPoint | None
    interval_clears_target: bool = Field(
        description="whether even the lower end of the 95% interval reaches the target"
    )
    more_to_review: float | None = Field(
        description="share of items that would move from automatic decisions to review "
        "(negative: out of review)"
    )


class CategorySuggestion(BaseModel):
    category: str
    current_precision: Rate
    reached: bool
    block_at: int | None
    restrict_at: int | None
    precision: Rate | None
    more_to_review: float | None


class ShadowSide(BaseModel):
    """One version's decisions over the reviewed items both versions judged."""

    automatic: Rate = Field(description="decided without a person")
    agreement: Rate = Field(description="automatic decisions a reviewer decided the same way")
    precision: Rate = Field(description="restrictions and blocks a reviewer upheld")


class ShadowComparison(BaseModel):
    """A shadow version against the live one, on the live submissions both judged."""

    policy: str
    version: int
    items: int
    same_action: Rate = Field(description="items the shadow would have decided as live did")
    actions: list[str]
    flips: list[list[int]] = Field(
        description="live automatic action (rows) against the shadow's (columns), same labels"
    )
    more_to_review: float | None = Field(
        description="share of items the shadow would send to review beyond live's"
    )
    reviewed: int
    live: ShadowSide
    shadow: ShadowSide
    model_calls: int
    tokens: int


class VersionReport(BaseModel):
    policy: str
    version: int
    title: str
    submissions: int
    pending: int = Field(description="submissions with no automatic decision yet")
    reviewed: int = Field(description="submissions with a final reviewer decision")
    automatic_rate: Rate = Field(description="of decided submissions, decided without a person")
    review_rate: Rate = Field(description="of decided submissions, sent to review")
    decisions: DecisionMatrix
    agreement: Rate = Field(
        description="automatic decisions a reviewer decided the same way, of those reviewed"
    )
    kappa: float | None = Field(description="Cohen's kappa of the same pairs")
    overturn_rate: Rate = Field(
        description="reviewed automatic decisions a person reversed: allowed content restricted "
        "or blocked, or restricted or blocked content allowed"
    )
    flagging: BinaryMetrics = Field(
        description="verdict rated unsafe vs reviewer restricted or blocked, over reviewed items"
    )
    categories: list[CategoryReport]
    calibration: list[Calibration]
    cost: Cost
    review_reasons: list[ReasonCount] = Field(
        description="why automatic decisions went to review: uncertainty or a failure"
    )
    thresholds: ThresholdSweep
    suggestion: MinConfidenceSuggestion
    category_suggestions: list[CategorySuggestion]
    shadows: list[ShadowComparison] = Field(
        default_factory=list, description="shadow versions judged alongside this one"
    )
    summary: list[str] = Field(description="what to change, in plain words")


class AgreementReport(BaseModel):
    scope: ReportScope
    generated_at: datetime
    versions: list[VersionReport]
