"""What was decided about a submission, by whom, and why it went to a person.

These enums sit low in the house: media, vlm, pipeline and review all speak of actions and
review reasons, and none of them should have to import submissions to do it.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum


class Action(StrEnum):
    allow = "allow"
    restrict = "restrict"
    block = "block"
    review = "review"


class DecisionSource(StrEnum):
    model = "model"
    reviewer = "reviewer"
    # A reviewer's decision on an appeal: always a different person from the one before.
    appeal = "appeal"
    hash_match = "hash_match"
    cache = "cache"
    # The pipeline could not judge (fetch, decode, worker lost): no model verdict stands behind it.
    system = "system"


class ReviewReason(StrEnum):
    """Why a submission went to a human instead of being decided automatically."""

    fetch_failed = "fetch_failed"
    decode_failed = "decode_failed"
    model_unavailable = "model_unavailable"
    provider_refused = "provider_refused"
    invalid_model_output = "invalid_model_output"
    below_threshold = "below_threshold"
    low_confidence = "low_confidence"
    processing_failed = "processing_failed"
    internal_error = "internal_error"
    # The tenant's daily model-token budget was spent before this submission's model call.
    budget_exceeded = "budget_exceeded"


class Decision(UUIDKey, CreatedAt, Base):
    """Append-only: the newest row of a submission is its current decision."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_submission_created", "submission_id", "created_at"),)

    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    action: Mapped[Action] = mapped_column(str_enum(Action))
    source: Mapped[DecisionSource] = mapped_column(str_enum(DecisionSource))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[Any]] = mapped_column(default=list)
    actor: Mapped[str | None] = mapped_column(String(256))


class ShadowOutcome(UUIDKey, CreatedAt, Base):
    """What a shadow version would have decided about a live submission; it decided nothing.

    Its model calls are verdict rows with role `shadow`, under the same policy version.
    """

    __tablename__ = "shadow_outcomes"
    __table_args__ = (UniqueConstraint("submission_id", "policy_version_id"),)

    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    policy_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("policy_versions.id"), index=True
    )
    action: Mapped[Action] = mapped_column(str_enum(Action))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[Any]] = mapped_column(default=list)
    model_calls: Mapped[int] = mapped_column(Integer)
