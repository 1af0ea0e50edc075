from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum
from moderation.decisions.models import Action


class BacktestStatus(StrEnum):
    # Items chosen, waiting for a worker's sweeper to pick the job up.
    queued = "queued"
    running = "running"
    # Every item is judged, skipped or given up on; the comparison is ready.
    done = "done"
    # The job itself kept failing (not the model: items record their own failures).
    failed = "failed"


class BacktestItemStatus(StrEnum):
    pending = "pending"
    # The draft judged it (its outcome may be `review`, as it would have been live).
    judged = "judged"
    # Could not be judged: the model stayed unreachable through every try.
    failed = "failed"
    # Nothing to judge: the stored normalized images are gone (retention) or never existed.
    skipped = "skipped"


class Backtest(UUIDKey, CreatedAt, Base):
    """A draft policy version run over a tenant's past submissions, for comparison only."""

    __tablename__ = "backtests"
    __table_args__ = (Index("ix_backtests_tenant_created", "tenant_id", "created_at", "id"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    policy_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policies.id", ondelete="CASCADE"))
    draft_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policy_versions.id"))
    # The policy's active version when the backtest started, named in the comparison.
    active_version_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("policy_versions.id"))
    sample_since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sample_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sample_limit: Mapped[int] = mapped_column(Integer)
    only_reviewed: Mapped[bool]
    status: Mapped[BacktestStatus] = mapped_column(str_enum(BacktestStatus))
    total: Mapped[int] = mapped_column(Integer)
    requested_by: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Runs of the job that raised in a row; the backtest is `failed` past a limit.
    run_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class BacktestItem(UUIDKey, Base):
    """One past submission in a backtest: its live outcome then, and the draft's now.

    The live outcome is copied when the backtest starts (the model's automatic decision, not a
    reviewer's), so later decisions do not move the baseline under a running comparison.
    """

    __tablename__ = "backtest_items"
    __table_args__ = (
        UniqueConstraint("backtest_id", "submission_id"),
        # The runner's next batch and the progress counts.
        Index("ix_backtest_items_backtest_status", "backtest_id", "status"),
    )

    backtest_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("backtests.id", ondelete="CASCADE"))
    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    live_action: Mapped[Action] = mapped_column(str_enum(Action))
    live_reason: Mapped[str | None] = mapped_column(String(64))
    live_version_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("policy_versions.id"))
    status: Mapped[BacktestItemStatus] = mapped_column(str_enum(BacktestItemStatus))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    draft_action: Mapped[Action | None] = mapped_column(str_enum(Action))
    draft_reason: Mapped[str | None] = mapped_column(String(64))
    draft_categories: Mapped[list[Any] | None]
    detail: Mapped[str | None] = mapped_column(Text)
    # Every model call the draft made for this item (output, parse error, tokens, latency), or
    # the verdict reused for a byte-identical prompt; evidence, like the live verdict rows.
    calls: Mapped[list[Any] | None]
    reused_verdict_id: Mapped[uuid.UUID | None]
    model_calls: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    judged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
