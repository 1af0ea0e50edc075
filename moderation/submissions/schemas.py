from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moderation.core.fields import StorableJsonObject, Text, WebUrl, WebUrlText
from moderation.decisions.models import Action, DecisionSource, ReviewReason
from moderation.submissions import examples
from moderation.submissions.models import SubmissionStatus, VerdictRole

METADATA_MAX_BYTES = 16 * 1024
TEXT_MAX_LENGTH = 20_000


class ImageInput(BaseModel):
    """An image by URL (fetched by the worker) or inline as base64 (optionally a data: URL)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"url": "https://media.example.com/u/8f14e45f.jpg"},
                {"data": examples.INLINE_IMAGE},
            ]
        },
    )

    url: WebUrl | None = Field(default=None, max_length=4096)
    data: str | None = Field(default=None, description="base64, or a data:image/...;base64, URL")

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageInput:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of url or data")
        return self


class SubmissionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [examples.SUBMISSION_CREATE]}
    )

    external_id: Text = Field(min_length=1, max_length=256)
    text: Text | None = Field(default=None, max_length=TEXT_MAX_LENGTH)
    images: list[ImageInput] = Field(default_factory=list, max_length=32)
    metadata: StorableJsonObject = Field(default_factory=dict)
    policy: Text | None = Field(
        default=None,
        max_length=80,
        description=(
            "policy slug, judged by its active version (default 'default'); or `slug@N` to pin "
            "version N of the tenant's policy, e.g. to replay an item under an older rubric"
        ),
        examples=["default", "default@3"],
    )
    # Kept as written: URL parsers "repair" forms like `http:///x` into another host, and the
    # checks at ingest must see what the client sent.
    callback_url: WebUrlText | None = Field(
        default=None,
        max_length=2048,
        description="where to POST the signed decision events; the tenant's URL when absent",
        json_schema_extra={"format": "uri"},
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Metadata is stored with every submission and echoed in callbacks: keep it a label.
        if len(json.dumps(value, default=str)) > METADATA_MAX_BYTES:
            raise ValueError(f"metadata must serialize to at most {METADATA_MAX_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> SubmissionCreate:
        if not self.images and not (self.text and self.text.strip()):
            raise ValueError("a submission needs at least one image or non-empty text")
        return self


class SubmissionAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.SUBMISSION_ACCEPTED]})

    id: uuid.UUID
    external_id: str
    status: SubmissionStatus


class CategoryRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.CATEGORY]})

    category: str
    severity: int
    confidence: float | None = None
    position: int | None = Field(
        default=None, description="the uploaded image that shows it, as the model named it"
    )
    frame: int | None = Field(
        default=None,
        description="the frame of that image (0 for stills): for an animation or a "
        "multi-page file, the one to look at in /images/{position}/frames/{frame}",
    )


class DecisionRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.DECISION]})

    action: Action
    source: DecisionSource
    reason: ReviewReason | None = Field(description="why the item went to review, if it did")
    detail: str | None
    categories: list[CategoryRead]
    actor: str | None
    decided_at: datetime


class ViolationRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.VIOLATION]})

    category: str
    severity: int
    confidence: float
    source: Literal["image", "text", "both"]
    image: int | None = Field(
        default=None, description="the index of the image in the prompt, as the model wrote it"
    )
    position: int | None = Field(default=None, description="the uploaded image it is one of")
    frame: int | None = Field(default=None, description="its frame in that image (0 for stills)")
    rationale: str


class VerdictRead(BaseModel):
    """One model call: the verdict when it parsed, and its full provenance either way."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.VERDICT]})

    rating: Literal["safe", "unsafe"] | None
    confidence: float | None
    violations: list[ViolationRead]
    rationale: str | None
    rating_probability: float | None = Field(
        default=None, description="probability of the rating token, from the server's logprobs"
    )
    model: str
    policy: str
    policy_version: int
    prompt_sha256: str
    attempt: int
    sequence: int
    latency_ms: int
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None
    error: str | None
    raw_output: str | None
    reused_from: uuid.UUID | None = Field(
        default=None, description="set when an identical earlier prompt's verdict was reused"
    )
    role: VerdictRole = Field(
        default=VerdictRole.live, description="shadow verdicts are compared, never decide"
    )
    created_at: datetime


class ShadowOutcomeRead(BaseModel):
    """What a shadow version would have decided; the submission's decision did not use it."""

    policy: str
    policy_version: int
    action: Action
    reason: ReviewReason | None
    detail: str | None
    categories: list[CategoryRead]
    model_calls: int
    verdicts: list[VerdictRead]
    created_at: datetime


class FrameRead(BaseModel):
    """A frame of an animated or multi-page image that the model was shown."""

    frame: int
    time_ms: int | None = Field(description="when it appears; null for pages")
    sha256: str
    width: int
    height: int
    tokens: int


class ImageRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.IMAGE]})

    position: int
    source_url: str | None
    sha256: str | None
    width: int | None
    height: int | None
    mime: str | None
    source_mime: str | None
    tokens: int | None
    error: str | None
    frame_count: int | None = Field(
        default=None, description="frames or pages in the uploaded file (1 for stills)"
    )
    frames: list[FrameRead] = Field(
        default_factory=list,
        description="the frames the model was shown, for animations and multi-page files",
    )
    original_purged_at: datetime | None = Field(
        default=None, description="when the uploaded original was deleted (privacy retention)"
    )
    normalized_purged_at: datetime | None = Field(
        default=None, description="when the normalized image was deleted (retention)"
    )


class PolicyRef(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.POLICY_REF]})

    slug: str
    version: int


class RedriveRead(BaseModel):
    """An outage (model or image host down) sent the submission to review; it will be judged
    again automatically, and reviewers do not see it meanwhile."""

    next_at: datetime | None = Field(
        description="when it is judged again; null while that is under way"
    )
    until: datetime = Field(description="the end of the re-drive window; then it stays in review")
    redrives: int = Field(description="automatic re-judgements so far")


class SubmissionRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.SUBMISSION]})

    id: uuid.UUID
    external_id: str
    status: SubmissionStatus
    text: str | None
    metadata: dict[str, Any]
    callback_url: str | None
    policy: PolicyRef
    decision: DecisionRead | None
    decisions: list[DecisionRead]
    verdicts: list[VerdictRead]
    shadow: list[ShadowOutcomeRead] = Field(
        default_factory=list, description="judgements by shadow policy versions, for comparison"
    )
    images: list[ImageRead]
    attempts: int
    redrive: RedriveRead | None = None
    created_at: datetime
    updated_at: datetime


class SubmissionSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [examples.SUBMISSION_SUMMARY]})

    id: uuid.UUID
    external_id: str
    status: SubmissionStatus
    action: Action | None
    created_at: datetime
    updated_at: datetime


class AuditEventRead(BaseModel):
    """One link of the submission's tamper-evident chain of events."""

    model_config = ConfigDict(json_schema_extra={"examples": [examples.AUDIT_EVENT]})

    id: int
    seq: int = Field(description="position in the submission's chain, from 1")
    event: str
    actor: str
    data: dict[str, Any]
    created_at: datetime
    prev_sha256: str | None = Field(
        description="sha256 of the event before this one in the chain; null for the first"
    )
    sha256: str = Field(
        description="sha256 over this event's canonical form, which includes prev_sha256"
    )
