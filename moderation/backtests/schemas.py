from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from moderation.backtests.models import BacktestStatus
from moderation.decisions.models import Action
from moderation.reports.metrics import Rate

# The most past submissions one backtest judges: enough for a month of a busy tenant's reviewed
# items, few enough that a worker's share of the model finishes it in hours, not days.
MAX_SAMPLE = 10_000

_EXAMPLE_ID = "3b6f1c2e-8d4a-4f0e-9c1b-2a7d5e6f8a90"
_EXAMPLE_SUBMISSION = "7d0c6f4e-0000-4000-8000-000000000000"

_SAMPLE_EXAMPLE: dict[str, Any] = {
    "since": "2026-10-25T00:00:00Z",
    "until": "2026-11-24T00:00:00Z",
    "limit": 500,
    "only_reviewed": True,
}


class BacktestSample(BaseModel):
    """Which past submissions to judge again: the policy's, in a time window, newest first."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SAMPLE_EXAMPLE]})

    since: AwareDatetime | None = Field(
        default=None, description="submitted at or after; default: 30 days before `until`"
    )
    until: AwareDatetime | None = Field(default=None, description="submitted before; default: now")
    limit: Annotated[int, Field(ge=1, le=MAX_SAMPLE)] = Field(
        default=500, description="at most this many submissions, the newest of the window"
    )
    only_reviewed: bool = Field(
        default=False,
        description="only submissions a reviewer has decided (the ones with a label to score)",
    )

    @field_validator("until")
    @classmethod
    def _window_is_forward(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        since = info.data.get("since")
        if until is not None and since is not None and until <= since:
            raise ValueError("must be later than since")
        return until


class BacktestCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"policy": "default", "draft_version": 3, "sample": _SAMPLE_EXAMPLE}]
        },
    )

    policy: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="the slug of one of your policies"
    )
    draft_version: int = Field(
        ge=1, le=999_999_999, description="the version to try: a draft, or any other version"
    )
    sample: BacktestSample = Field(default_factory=BacktestSample)


class SampleRead(BaseModel):
    since: datetime
    until: datetime
    limit: int
    only_reviewed: bool


class Progress(BaseModel):
    """Where the job stands; `done` counts every item that will not be judged again."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 500,
                    "done": 500,
                    "judged": 496,
                    "failed": 1,
                    "skipped": 3,
                    "pending": 0,
                    "percent": 100.0,
                }
            ]
        }
    )

    total: int
    done: int = Field(description="judged + failed + skipped")
    judged: int = Field(description="the draft gave an outcome")
    failed: int = Field(description="the model could not be reached through every try")
    skipped: int = Field(description="nothing to judge: the stored normalized images are gone")
    pending: int
    percent: float


class Transition(BaseModel):
    """How many items had outcome `live` under the live decision and `draft` under the draft."""

    live: Action
    draft: Action
    count: int


class FlipItem(BaseModel):
    submission_id: uuid.UUID
    link: str = Field(description="the submission, with its live verdicts and decisions")
    live_action: Action
    draft_action: Action
    draft_reason: str | None = Field(description="why the draft sent it to review, if it did")
    draft_categories: list[dict[str, Any]]
    reviewer_action: Action | None = Field(description="the final reviewer decision, if any")


class Flip(BaseModel):
    """One kind of change (e.g. allow -> block): how many items, and the first of them."""

    live: Action
    draft: Action
    count: int
    items: list[FlipItem] = Field(description="the newest items of this kind, up to a limit")


class VersionScore(BaseModel):
    """One side of the comparison, scored against the reviewers' final decisions.

    An item counts as enforced when its action is `restrict` or `block`; `review` takes no
    action without a person, so it counts as not enforced.
    """

    version: int | None = Field(
        description="the policy version; null for the live side when "
        "the items were decided under several versions"
    )
    actions: dict[str, int] = Field(description="items per action")
    review_rate: Rate = Field(description="share of the items sent to review")
    precision: Rate = Field(
        description="of the reviewed items it enforced, the share reviewers enforced too"
    )
    recall: Rate = Field(
        description="of the reviewed items reviewers enforced, the share it enforced"
    )
    f1: float | None


class TokenUse(BaseModel):
    model_calls: int
    reused_verdicts: int = Field(description="items answered by an identical earlier prompt")
    input_tokens: int
    output_tokens: int
    total_tokens: int
    live_input_tokens: int = Field(description="what the live judgements of the same items cost")
    live_output_tokens: int


class Comparison(BaseModel):
    """The draft against the stored live decisions and against reviewers, over judged items."""

    compared: int = Field(description="items the draft judged")
    changed: int = Field(description="items whose action differs from the live one")
    reviewed: int = Field(description="compared items with a final reviewer decision")
    transitions: list[Transition] = Field(description="every (live, draft) pair that occurred")
    flips: list[Flip]
    live: VersionScore
    draft: VersionScore
    tokens: TokenUse


_COMPARISON_EXAMPLE: dict[str, Any] = {
    "compared": 496,
    "changed": 12,
    "reviewed": 180,
    "transitions": [
        {"live": "allow", "draft": "allow", "count": 400},
        {"live": "allow", "draft": "block", "count": 9},
        {"live": "block", "draft": "allow", "count": 3},
        {"live": "block", "draft": "block", "count": 84},
    ],
    "flips": [
        {
            "live": "allow",
            "draft": "block",
            "count": 9,
            "items": [
                {
                    "submission_id": _EXAMPLE_SUBMISSION,
                    "link": f"/v1/submissions/{_EXAMPLE_SUBMISSION}",
                    "live_action": "allow",
                    "draft_action": "block",
                    "draft_reason": None,
                    "draft_categories": [
                        {"category": "violence", "severity": 3, "confidence": 0.93}
                    ],
                    "reviewer_action": "block",
                }
            ],
        }
    ],
    "live": {
        "version": 2,
        "actions": {"allow": 403, "block": 87, "review": 6},
        "review_rate": {
            "value": 0.012,
            "numerator": 6,
            "denominator": 496,
            "low": 0.006,
            "high": 0.026,
        },
        "precision": {
            "value": 0.9,
            "numerator": 54,
            "denominator": 60,
            "low": 0.798,
            "high": 0.953,
        },
        "recall": {"value": 0.818, "numerator": 54, "denominator": 66, "low": 0.707, "high": 0.893},
        "f1": 0.857,
    },
    "draft": {
        "version": 3,
        "actions": {"allow": 400, "block": 93, "review": 3},
        "review_rate": {
            "value": 0.006,
            "numerator": 3,
            "denominator": 496,
            "low": 0.002,
            "high": 0.018,
        },
        "precision": {
            "value": 0.921,
            "numerator": 58,
            "denominator": 63,
            "low": 0.827,
            "high": 0.966,
        },
        "recall": {"value": 0.879, "numerator": 58, "denominator": 66, "low": 0.779, "high": 0.937},
        "f1": 0.899,
    },
    "tokens": {
        "model_calls": 497,
        "reused_verdicts": 0,
        "input_tokens": 612_000,
        "output_tokens": 41_000,
        "total_tokens": 653_000,
        "live_input_tokens": 598_000,
        "live_output_tokens": 40_500,
    },
}

_BACKTEST_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_ID,
    "status": "done",
    "policy": "default",
    "draft_version": 3,
    "active_version": 2,
    "sample": _SAMPLE_EXAMPLE,
    "requested_by": "dana (key:5f0c2d4e-9b1a-4c7e-8d3f-1a2b3c4d5e6f)",
    "progress": {
        "total": 500,
        "done": 500,
        "judged": 496,
        "failed": 1,
        "skipped": 3,
        "pending": 0,
        "percent": 100.0,
    },
    "created_at": "2026-11-24T10:00:00Z",
    "started_at": "2026-11-24T10:00:01Z",
    "finished_at": "2026-11-24T10:04:12Z",
    "last_error": None,
    "link": f"/v1/backtests/{_EXAMPLE_ID}",
}


class BacktestSummary(BaseModel):
    """A backtest and its progress, without the comparison (as listed)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_BACKTEST_EXAMPLE]})

    id: uuid.UUID
    status: BacktestStatus
    policy: str
    draft_version: int
    active_version: int | None = Field(description="the policy's active version at the start")
    sample: SampleRead
    requested_by: str
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None = Field(description="why the job itself failed, if it did")
    link: str


class BacktestRead(BacktestSummary):
    """A backtest: its progress, and once done, what the draft would have changed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_BACKTEST_EXAMPLE, "comparison": _COMPARISON_EXAMPLE}]}
    )

    comparison: Comparison | None = Field(description="set once the status is `done`")
