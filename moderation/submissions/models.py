from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum
from moderation.decisions.models import Action


class SubmissionStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    decided = "decided"
    in_review = "in_review"


class VerdictRole(StrEnum):
    """Whose verdict it is: the active version's, which decides, or a shadow version's."""

    live = "live"
    shadow = "shadow"


class Submission(UUIDKey, CreatedAt, Base):
    __tablename__ = "submissions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        Index("ix_submissions_tenant_created", "tenant_id", "created_at", "id"),
        # The relay's sweep: work that is queued or whose lease ran out.
        Index("ix_submissions_status_queued_at", "status", "queued_at"),
        # The re-drive sweep; only the few rows awaiting one are indexed.
        Index(
            "ix_submissions_redrive_at",
            "redrive_at",
            postgresql_where=text("redrive_at IS NOT NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    external_id: Mapped[str] = mapped_column(String(256))
    payload_sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    policy_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policy_versions.id"))

    status: Mapped[SubmissionStatus] = mapped_column(str_enum(SubmissionStatus))
    # The current action, copied from the latest decision so lists can filter on it.
    action: Mapped[Action | None] = mapped_column(str_enum(Action))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lease_token: Mapped[uuid.UUID | None]
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Re-drive: set while a submission that went to review for a passing outage (model down,
    # image host down) waits to be judged again by itself. Reviewers' queues hide it meanwhile
    # (see `repository.awaiting_redrive`). `redrive_until` closes the window; `redrives` counts
    # the automatic re-judgements, so each one's backoff doubles and attempts that ended in a
    # decision are not held against `max_attempts`.
    redrive_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    redrive_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    redrives: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class SubmissionImage(UUIDKey, CreatedAt, Base):
    __tablename__ = "submission_images"
    __table_args__ = (
        UniqueConstraint("submission_id", "position"),
        # The retention sweep looks only at rows that still hold an original.
        Index(
            "ix_submission_images_unpurged_source",
            "submission_id",
            postgresql_where=text("source_data IS NOT NULL"),
        ),
    )

    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    source_url: Mapped[str | None] = mapped_column(String(4096))
    # Bytes sent inline (base64 or multipart): kept so the work survives a worker crash.
    source_data: Mapped[bytes | None] = mapped_column(LargeBinary)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    # Filled by the worker after normalization.
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    mime: Mapped[str | None] = mapped_column(String(64))
    source_mime: Mapped[str | None] = mapped_column(String(64))
    tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Frames (or pages) in the uploaded file; the sampled ones are SubmissionImageFrame rows.
    frame_count: Mapped[int | None] = mapped_column(Integer)
    # When the retention rules deleted the original upload, and the normalized bytes.
    source_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    data_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SubmissionImageFrame(UUIDKey, CreatedAt, Base):
    """One frame of an animated or multi-page upload as the model saw it.

    Frame 0 is also the image row's own `data`; stills have no frame rows.
    """

    __tablename__ = "submission_image_frames"
    __table_args__ = (UniqueConstraint("submission_id", "position", "frame"),)

    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    frame: Mapped[int] = mapped_column(Integer)
    # When the frame appears in a timed animation; None for pages.
    time_ms: Mapped[int | None] = mapped_column(Integer)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mime: Mapped[str] = mapped_column(String(64))
    tokens: Mapped[int] = mapped_column(Integer)


class Verdict(UUIDKey, CreatedAt, Base):
    """One model call and what came back, kept whole so any decision can be explained."""

    __tablename__ = "verdicts"
    # The verdict cache looks verdicts up by the exact prompt they answered.
    __table_args__ = (Index("ix_verdicts_prompt_model", "prompt_sha256", "model"),)

    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    policy_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policy_versions.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(256))
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    raw_output: Mapped[str | None] = mapped_column(Text)
    parsed: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    # The rating token's probability, where the model server returns log-probabilities.
    rating_probability: Mapped[float | None] = mapped_column(Float)
    # Set when this verdict was not asked for but reused from an identical earlier prompt.
    reused_from_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("verdicts.id"))
    # [position, frame] of each image of the prompt, so the verdict's image index names a file
    # and a frame.
    image_refs: Mapped[list[Any] | None]
    # Shadow verdicts are kept for comparison only; they never stand behind a decision.
    role: Mapped[VerdictRole] = mapped_column(
        str_enum(VerdictRole, length=16),
        default=VerdictRole.live,
        server_default=VerdictRole.live.value,
    )
