"""Review tasks: the unit of work a reviewer claims, decides, releases or escalates.

A task is opened whenever a decision sends a submission to `review`, and when an uploader
appeals a final decision. A task is never deleted: once decided, escalated or cancelled it stays
as the record of who looked at what, under which policy version, and how long it took.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum


class TaskKind(StrEnum):
    review = "review"
    # The uploader disputes a final decision; someone other than its decider must answer.
    appeal = "appeal"
    # A reviewer handed the task to the admins; only an admin decides it.
    escalation = "escalation"


class TaskStatus(StrEnum):
    open = "open"
    claimed = "claimed"
    decided = "decided"
    # Handed on to an escalation task, which carries the work from here.
    escalated = "escalated"
    # A newer decision about the submission made this task moot.
    cancelled = "cancelled"


# Statuses in which a task is still waiting for a decision (a claimed task whose lease ran out is
# back in the queue without a write: its status says claimed, its lease says otherwise).
ACTIVE_STATUSES = (TaskStatus.open, TaskStatus.claimed)
_ACTIVE_SQL = "status IN ('open', 'claimed')"

# The category that jumps the queue within a kind: harm to children cannot wait behind anything.
URGENT_CATEGORY = "child_safety"
_KIND_RANK = {TaskKind.appeal: 3, TaskKind.escalation: 2, TaskKind.review: 1}


def task_priority(kind: TaskKind, categories: Iterable[Mapping[str, Any]]) -> int:
    """One number that orders the queue: appeals, then escalations, then child safety, then
    severity; ties go to the oldest task. Stored, so one index serves both queue and claim."""
    categories = list(categories)
    urgent = any(category.get("category") == URGENT_CATEGORY for category in categories)
    return _KIND_RANK[kind] * 100 + (10 if urgent else 0) + max_severity(categories)


def max_severity(categories: Iterable[Mapping[str, Any]]) -> int:
    return max((int(category.get("severity") or 0) for category in categories), default=0)


class ReviewTask(UUIDKey, CreatedAt, Base):
    __tablename__ = "review_tasks"
    __table_args__ = (
        # The queue and the claim: a tenant's waiting tasks, most urgent then oldest first.
        Index(
            "ix_review_tasks_queue",
            "tenant_id",
            text("priority DESC"),
            "created_at",
            "id",
            postgresql_where=text(_ACTIVE_SQL),
        ),
        # At most one task waits per submission: one open appeal at a time, and a newer
        # decision never leaves a second review task behind.
        Index(
            "uq_review_tasks_active_submission",
            "submission_id",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
        ),
        Index("ix_review_tasks_submission", "submission_id", "created_at"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    kind: Mapped[TaskKind] = mapped_column(str_enum(TaskKind, 16))
    status: Mapped[TaskStatus] = mapped_column(str_enum(TaskStatus, 16))
    priority: Mapped[int] = mapped_column(Integer)
    # Why the item needs a person (a review reason); empty for appeals, whose reason is `notes`.
    reason: Mapped[str | None] = mapped_column(String(64))
    # What produced the decision that put the item here: model, cache, system, reviewer...
    source: Mapped[str | None] = mapped_column(String(32))
    # The policy version the item was judged under: the one the reviewer is shown and decides by.
    policy_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policy_versions.id"))
    categories: Mapped[list[Any]] = mapped_column(default=list)
    max_severity: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The appeal's reason, or the escalating reviewer's notes.
    notes: Mapped[str | None] = mapped_column(Text)

    # The decision that opened the task (a `review` decision, or the decision under appeal).
    decision_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("decisions.id"))
    # An escalation points at the task it came from.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("review_tasks.id"))
    # Appeals: the reviewer who made the decision under appeal may not decide the appeal.
    excluded_key_id: Mapped[uuid.UUID | None]
    excluded_name: Mapped[str | None] = mapped_column(String(100))

    claimed_by_key_id: Mapped[uuid.UUID | None]
    claimed_by_name: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # The outcome: the reviewer's decision, when it was made and how long the reviewer held it.
    result_decision_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("decisions.id"))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision_ms: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
