from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, Index, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    # Gave up after its kind's max_attempts; kept for an operator to read.
    failed = "failed"


class Job(UUIDKey, CreatedAt, Base):
    """One piece of scheduled work. Finished jobs are deleted; their rooms keep the history."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("key"),
        # The sweeper's claim: due pending work, and running work whose lease ran out.
        Index("ix_jobs_status_run_at", "status", "run_at"),
    )

    kind: Mapped[str] = mapped_column(String(64))
    # At most one live job per key (NULL keys never collide).
    key: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus))
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Consecutive runs that raised; reset whenever a run finishes or reschedules itself.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Which claim holds the job: a run whose lease ran out cannot finish someone else's claim.
    lock_token: Mapped[uuid.UUID | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
