"""A policy rubric document, as written in `policies/*.yaml` and stored per version."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from moderation.core.fields import Text
from moderation.policies import examples
from moderation.policies.models import PolicyVersionStatus

CategoryId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
PolicySlug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
Severity = Annotated[int, Field(ge=1, le=4)]

# How long an item may wait for a reviewer before it counts as late: a day, the usual promise of
# a trust & safety team to its users. Appeals and escalations keep the same clock.
DEFAULT_REVIEW_SLA_MINUTES = 24 * 60
ReviewSlaMinutes = Annotated[
    int,
    Field(
        ge=1,
        le=30 * 24 * 60,
        description="Minutes an item may wait in the review queue before its SLA is breached.",
    ),
]

DEFAULT_SEVERITY_SCALE: dict[int, str] = {
    1: "mild: borderline or low-harm content that some audiences may not want to see",
    2: "moderate: clearly within the category but limited in harm, reach or intent",
    3: "severe: content this platform does not host",
    4: "extreme: content that may also be illegal or puts someone in immediate danger",
}


class CategoryExample(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [examples.CATEGORY_EXAMPLE]}
    )

    content: Text = Field(min_length=1, description="What the upload shows or says.")
    severity: Severity | None = Field(
        default=None, description="The severity a reviewer would give; null means allowed."
    )


class PolicyCategory(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [examples.CATEGORY]}
    )

    id: CategoryId
    name: Text = Field(min_length=1)
    definition: Text = Field(min_length=1)
    allowed: list[Text] = Field(
        default_factory=list, description="Exceptions: what is not a violation."
    )
    examples: list[CategoryExample] = Field(default_factory=list)
    block_at: Severity = 3
    restrict_at: Severity | None = None

    @model_validator(mode="after")
    def _restrict_below_block(self) -> Self:
        if self.restrict_at is not None and self.restrict_at >= self.block_at:
            raise ValueError(f"category {self.id}: restrict_at must be below block_at")
        return self


class PolicyDocument(BaseModel):
    """One immutable version of a policy rubric."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [examples.DOCUMENT]}
    )

    slug: PolicySlug
    version: int = Field(ge=1)
    title: Text = Field(min_length=1)
    instructions: Text = Field(min_length=1)
    min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    review_sla_minutes: ReviewSlaMinutes = DEFAULT_REVIEW_SLA_MINUTES
    severity_scale: dict[Severity, Text] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY_SCALE)
    )
    categories: list[PolicyCategory] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_categories(self) -> Self:
        ids = [category.id for category in self.categories]
        if len(ids) != len(set(ids)):
            raise ValueError("category ids must be unique")
        return self

    @property
    def category_ids(self) -> frozenset[str]:
        return frozenset(category.id for category in self.categories)

    def category(self, category_id: str) -> PolicyCategory:
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)


class PolicyVersionSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.VERSION_SUMMARY]})

    version: int
    status: PolicyVersionStatus
    active: bool = Field(description="true for the version new submissions are judged by")
    content_sha256: str
    created_at: datetime
    status_changed_at: datetime
    activated_at: datetime | None = Field(description="when it first went live, if it has")


class PolicyVersionRead(PolicyVersionSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.VERSION]})

    id: UUID
    slug: str
    document: PolicyDocument


class PolicyRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.POLICY]})

    slug: str
    title: str
    active_version: int | None = Field(description="judges and decides new submissions")
    shadow_version: int | None = Field(
        description="judges new submissions too, for comparison, without deciding"
    )
    activated_at: datetime | None = Field(description="when the active version took over")
    created_at: datetime


class PolicyWithVersions(PolicyRead):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.POLICY_WITH_VERSIONS]})

    versions: list[PolicyVersionSummary]


class PolicyDraft(BaseModel):
    """A new version's rubric; slug and version number come from the URL and the server.

    It is stored as a draft: nothing is judged by it until an admin activates or shadows it.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [examples.DRAFT]})

    title: Text = Field(min_length=1)
    instructions: Text = Field(min_length=1)
    min_confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    review_sla_minutes: ReviewSlaMinutes = DEFAULT_REVIEW_SLA_MINUTES
    severity_scale: dict[Severity, Text] = Field(
        default_factory=lambda: dict(DEFAULT_SEVERITY_SCALE)
    )
    categories: list[PolicyCategory] = Field(min_length=1)
