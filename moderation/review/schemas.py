"""What reviewers send and see: claims, decisions, escalations, appeals, and the task itself."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moderation.core.fields import Text
from moderation.core.pagination import Page
from moderation.decisions.models import Action
from moderation.policies.schemas import CategoryId, Severity
from moderation.review.models import TaskKind, TaskStatus
from moderation.submissions.models import SubmissionStatus
from moderation.submissions.schemas import CategoryRead, DecisionRead, PolicyRef, ViolationRead

_TASK_ID = "5b0f8e7c-3d1a-4c39-9a51-0d2b6f8e1a11"
_SUBMISSION_ID = "7d0c6f4e-2a7b-4c1e-8f00-1b9e2c3d4e5f"


class CategoryJudgement(BaseModel):
    """A category the reviewer finds violated, at the severity the reviewer gives it."""

    model_config = ConfigDict(extra="forbid")

    category: CategoryId
    severity: Severity


class ReviewDecisionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "action": "block",
                    "categories": [{"category": "violence", "severity": 3}],
                    "notes": "Graphic injury shown for shock value; no news context.",
                }
            ]
        },
    )

    action: Literal["allow", "restrict", "block"]
    categories: list[CategoryJudgement] = Field(
        default_factory=list,
        max_length=32,
        description="Categories of the task's policy version; required to restrict or block.",
    )
    notes: Text | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _categories_explain_the_action(self) -> Self:
        ids = [judgement.category for judgement in self.categories]
        if len(ids) != len(set(ids)):
            raise ValueError("name each category once")
        if self.action != "allow" and not self.categories:
            raise ValueError(f"to {self.action}, name at least one violated category")
        return self

    @property
    def outcome_action(self) -> Action:
        return Action(self.action)


class ClaimRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"limit": 5, "lease_seconds": 900}]}
    )

    limit: int = Field(default=1, ge=1, le=50, description="How many tasks to take at most.")
    lease_seconds: int | None = Field(
        default=None,
        ge=1,
        description="How long the tasks are held before returning to the queue; the server's "
        "default when absent, and at most its maximum.",
    )
    kind: TaskKind | None = Field(default=None, description="Take only tasks of this kind.")
    include_redrive: bool = Field(
        default=False,
        description="Also take tasks of submissions an outage sent to review, which are judged "
        "again automatically while their re-drive window lasts.",
    )


class RenewRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"lease_seconds": 600}]}
    )

    lease_seconds: int | None = Field(default=None, ge=1)


class EscalateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"notes": "Possible real threat against a named school; needs an admin."}]
        },
    )

    notes: Text = Field(min_length=1, max_length=2000)


class AppealCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "This is a photo of my own painting, not a real person."}]
        },
    )

    reason: Text = Field(min_length=1, max_length=2000, description="The uploader's words.")


class ReviewImage(BaseModel):
    position: int
    href: str = Field(description="The normalized image, as the model saw it.")
    width: int | None
    height: int | None
    mime: str | None
    sha256: str | None
    error: str | None = Field(description="Why the image could not be fetched or decoded.")


class ReviewSubmission(BaseModel):
    id: uuid.UUID
    external_id: str
    status: SubmissionStatus
    action: Action | None
    text: str | None
    metadata: dict[str, Any]
    images: list[ReviewImage]
    created_at: datetime


class ReviewPolicyCategory(BaseModel):
    id: str
    name: str
    definition: str
    allowed: list[str]
    block_at: int
    restrict_at: int | None


class ReviewPolicy(BaseModel):
    """The policy version the item was judged under, which the reviewer decides by."""

    slug: str
    version: int
    title: str
    min_confidence: float
    review_sla_minutes: int
    severity_scale: dict[int, str]
    categories: list[ReviewPolicyCategory]


class ModelVerdictView(BaseModel):
    model: str
    rating: Literal["safe", "unsafe"] | None
    confidence: float | None
    rationale: str | None
    violations: list[ViolationRead] = Field(
        description="Per category: severity, confidence, rationale and the evidence image."
    )
    rating_probability: float | None
    error: str | None
    reused: bool = Field(description="An identical earlier prompt's verdict, reused.")
    created_at: datetime


class AppealView(BaseModel):
    id: uuid.UUID
    status: TaskStatus
    reason: str | None
    created_at: datetime
    decided_at: datetime | None


class ReviewTaskRead(BaseModel):
    """A task with everything a reviewer needs to decide it, in one response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _TASK_ID,
                    "kind": "review",
                    "status": "claimed",
                    "priority": 101,
                    "reason": "below_threshold",
                    "source": "model",
                    "categories": [{"category": "harassment", "severity": 1, "confidence": 0.55}],
                    "notes": None,
                    "escalated_from": None,
                    "due_at": "2026-11-25T10:00:00Z",
                    "sla_breached": False,
                    "created_at": "2026-11-24T10:00:00Z",
                    "claimed_by": "alice",
                    "claimed_at": "2026-11-24T10:05:00Z",
                    "lease_expires_at": "2026-11-24T10:20:00Z",
                    "submission": {
                        "id": _SUBMISSION_ID,
                        "external_id": "upload-8f14e45f",
                        "status": "in_review",
                        "action": "review",
                        "text": "you know what you did",
                        "metadata": {"user_id": "u-123"},
                        "images": [
                            {
                                "position": 0,
                                "href": f"/v1/submissions/{_SUBMISSION_ID}/images/0",
                                "width": 672,
                                "height": 504,
                                "mime": "image/jpeg",
                                "sha256": "9f86d081884c7d659a2feaa0c55ad015"
                                "a3bf4f1b2b0b822cd15d6c15b0f00a08",
                                "error": None,
                            }
                        ],
                        "created_at": "2026-11-24T09:59:58Z",
                    },
                    "policy": {
                        "slug": "default",
                        "version": 1,
                        "title": "Default content policy for images and captions",
                        "min_confidence": 0.8,
                        "review_sla_minutes": 1440,
                        "severity_scale": {"1": "Mild", "2": "Moderate"},
                        "categories": [
                            {
                                "id": "harassment",
                                "name": "Harassment and bullying",
                                "definition": "Content that targets a person to insult or shame.",
                                "allowed": ["Criticism of public figures' public conduct."],
                                "block_at": 3,
                                "restrict_at": None,
                            }
                        ],
                    },
                    "verdicts": [
                        {
                            "model": "Qwen/Qwen2.5-VL-7B-Instruct",
                            "rating": "unsafe",
                            "confidence": 0.55,
                            "rationale": "The caption may target the person shown.",
                            "violations": [
                                {
                                    "category": "harassment",
                                    "severity": 1,
                                    "confidence": 0.55,
                                    "source": "both",
                                    "image": 0,
                                    "rationale": "Caption aimed at the person in the photo.",
                                }
                            ],
                            "rating_probability": 0.61,
                            "error": None,
                            "reused": False,
                            "created_at": "2026-11-24T10:00:00Z",
                        }
                    ],
                    "decisions": [],
                    "appeals": [],
                }
            ]
        }
    )

    id: uuid.UUID
    kind: TaskKind
    status: TaskStatus = Field(description="A claim whose lease ran out shows as open again.")
    priority: int = Field(description="Higher first: appeals, escalations, child safety, severity.")
    reason: str | None = Field(description="Why the item went to review; empty for appeals.")
    source: str | None = Field(description="What made the decision that put the item here.")
    categories: list[CategoryRead]
    notes: str | None = Field(description="The appeal's reason, or the escalating notes.")
    escalated_from: uuid.UUID | None
    due_at: datetime
    sla_breached: bool
    created_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    submission: ReviewSubmission
    policy: ReviewPolicy
    verdicts: list[ModelVerdictView] = Field(
        description="The model's verdicts under this task's policy version."
    )
    decisions: list[DecisionRead] = Field(description="Every decision so far, oldest first.")
    appeals: list[AppealView] = Field(description="Every appeal of this submission.")


class ReviewQueuePage(Page[ReviewTaskRead]):
    total: int = Field(
        description="Waiting tasks that match the filters, on every page.", examples=[42]
    )
    sla_breached: int = Field(description="How many of them are past their due time.", examples=[3])


class ClaimResult(BaseModel):
    items: list[ReviewTaskRead]


class TaskState(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _TASK_ID,
                    "kind": "review",
                    "status": "claimed",
                    "claimed_by": "alice",
                    "lease_expires_at": "2026-11-24T10:35:00Z",
                    "due_at": "2026-11-25T10:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    kind: TaskKind
    status: TaskStatus
    claimed_by: str | None
    lease_expires_at: datetime | None
    due_at: datetime


class ReviewOutcome(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": {
                        "id": _TASK_ID,
                        "kind": "review",
                        "status": "decided",
                        "claimed_by": "alice",
                        "lease_expires_at": None,
                        "due_at": "2026-11-25T10:00:00Z",
                    },
                    "decision": {
                        "action": "block",
                        "source": "reviewer",
                        "reason": None,
                        "detail": "Graphic injury shown for shock value; no news context.",
                        "categories": [{"category": "violence", "severity": 3}],
                        "actor": "alice (key:0f3c…)",
                        "decided_at": "2026-11-24T10:07:12Z",
                    },
                    "claim_to_decision_ms": 132000,
                    "policy": {"slug": "default", "version": 1},
                }
            ]
        }
    )

    task: TaskState
    decision: DecisionRead
    claim_to_decision_ms: int
    policy: PolicyRef = Field(description="The policy version the reviewer was shown.")


class AppealRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _TASK_ID,
                    "submission_id": _SUBMISSION_ID,
                    "status": "open",
                    "reason": "This is a photo of my own painting, not a real person.",
                    "due_at": "2026-11-25T10:00:00Z",
                    "created_at": "2026-11-24T10:00:00Z",
                }
            ]
        }
    )

    id: uuid.UUID
    submission_id: uuid.UUID
    status: TaskStatus
    reason: str
    due_at: datetime
    created_at: datetime
