"""All SQL of backtests: choosing the sample, the runner's batches and writes, the comparison."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, literal, or_, select, true, update
from sqlalchemy.orm import Session, defer

from moderation.backtests.models import Backtest, BacktestItem, BacktestItemStatus, BacktestStatus
from moderation.decisions.models import Action, Decision, DecisionSource
from moderation.policies.models import PolicyVersion
from moderation.submissions.models import (
    Submission,
    SubmissionImage,
    SubmissionImageFrame,
    Verdict,
    VerdictRole,
)

# The label of an item: the latest decision a person made, when it is a final one.
_HUMAN_SOURCES = (DecisionSource.reviewer, DecisionSource.appeal)


@dataclass(frozen=True)
class PendingItem:
    id: uuid.UUID
    submission_id: uuid.UUID


@dataclass(frozen=True)
class OutcomeCount:
    live: Action
    draft: Action
    reviewer: Action | None
    items: int


@dataclass(frozen=True)
class FlipRow:
    submission_id: uuid.UUID
    live: Action
    draft: Action
    draft_reason: str | None
    draft_categories: list[Any]
    reviewer: Action | None


@dataclass(frozen=True)
class TokenTotals:
    model_calls: int
    reused: int
    input_tokens: int
    output_tokens: int


# Backtests -------------------------------------------------------------------------------------


def add(session: Session, backtest: Backtest) -> None:
    session.add(backtest)
    session.flush()


def get(session: Session, backtest_id: uuid.UUID, *, for_update: bool = False) -> Backtest | None:
    query = select(Backtest).where(Backtest.id == backtest_id)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def get_for_tenant(
    session: Session, tenant_id: uuid.UUID, backtest_id: uuid.UUID
) -> Backtest | None:
    return session.scalars(
        select(Backtest).where(Backtest.id == backtest_id, Backtest.tenant_id == tenant_id)
    ).one_or_none()


def list_for_tenant(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Backtest]:
    query = select(Backtest).where(Backtest.tenant_id == tenant_id)
    if after is not None:
        created_at, row_id = after
        query = query.where(
            or_(
                Backtest.created_at < created_at,
                and_(Backtest.created_at == created_at, Backtest.id < row_id),
            )
        )
    query = query.order_by(Backtest.created_at.desc(), Backtest.id.desc()).limit(limit)
    return list(session.scalars(query))


# The sample ------------------------------------------------------------------------------------


def _latest_decision(*, human: bool) -> Any:
    """The newest decision of the outer query's submission, by a person or by the pipeline."""
    source = (
        Decision.source.in_(_HUMAN_SOURCES) if human else Decision.source.not_in(_HUMAN_SOURCES)
    )
    query = select(Decision.action, Decision.reason).where(
        Decision.submission_id == Submission.id, source
    )
    if human:
        # A person's `review` (an escalation) is no label; their allow, restrict or block is.
        query = query.where(Decision.action != Action.review)
    return query.order_by(Decision.created_at.desc(), Decision.id.desc()).limit(1)


def insert_sample(
    session: Session,
    backtest: Backtest,
) -> int:
    """Copy the chosen submissions into the backtest as pending items; how many there are.

    The policy's submissions (any version) in the window, newest first, that the pipeline
    decided (their automatic decision is the baseline), reviewed ones only when asked.
    """
    live = _latest_decision(human=False).lateral("live")
    chosen = (
        select(
            func.gen_random_uuid(),
            literal(backtest.id),
            Submission.id,
            Submission.created_at,
            live.c.action,
            live.c.reason,
            Submission.policy_version_id,
            literal(BacktestItemStatus.pending.value),
            literal(0),
            literal(0),
            literal(0),
            literal(0),
        )
        .select_from(Submission)
        .join(PolicyVersion, PolicyVersion.id == Submission.policy_version_id)
        .join(live, true())
        .where(
            Submission.tenant_id == backtest.tenant_id,
            PolicyVersion.policy_id == backtest.policy_id,
            Submission.created_at >= backtest.sample_since,
            Submission.created_at < backtest.sample_until,
        )
    )
    if backtest.only_reviewed:
        chosen = chosen.where(_latest_decision(human=True).exists())
    chosen = chosen.order_by(Submission.created_at.desc(), Submission.id.desc()).limit(
        backtest.sample_limit
    )
    columns = [
        "id",
        "backtest_id",
        "submission_id",
        "submitted_at",
        "live_action",
        "live_reason",
        "live_version_id",
        "status",
        "attempts",
        "model_calls",
        "input_tokens",
        "output_tokens",
    ]
    session.execute(insert(BacktestItem).from_select(columns, chosen))
    # psycopg reports no row count for INSERT ... SELECT.
    return int(
        session.scalar(select(func.count()).where(BacktestItem.backtest_id == backtest.id)) or 0
    )


# The runner ------------------------------------------------------------------------------------


def pending_items(
    session: Session, backtest_id: uuid.UUID, *, exclude: Collection[uuid.UUID], limit: int
) -> list[PendingItem]:
    query = select(BacktestItem.id, BacktestItem.submission_id).where(
        BacktestItem.backtest_id == backtest_id,
        BacktestItem.status == BacktestItemStatus.pending,
    )
    if exclude:
        query = query.where(BacktestItem.id.not_in(list(exclude)))
    query = query.order_by(BacktestItem.submitted_at.desc(), BacktestItem.id).limit(limit)
    return [
        PendingItem(id=row.id, submission_id=row.submission_id) for row in session.execute(query)
    ]


def submission_content(
    session: Session, submission_id: uuid.UUID
) -> tuple[str | None, list[SubmissionImage], list[SubmissionImageFrame]]:
    """The caption, the stored normalized images and the later frames of animated ones (never
    the original upload)."""
    text = session.scalars(select(Submission.text).where(Submission.id == submission_id)).one()
    images = session.scalars(
        select(SubmissionImage)
        .where(SubmissionImage.submission_id == submission_id)
        .order_by(SubmissionImage.position)
        .options(defer(SubmissionImage.source_data))
    )
    frames = session.scalars(
        select(SubmissionImageFrame)
        .where(SubmissionImageFrame.submission_id == submission_id)
        .order_by(SubmissionImageFrame.position, SubmissionImageFrame.frame)
    )
    return text, list(images), list(frames)


def finish_item(session: Session, item_id: uuid.UUID, values: dict[str, Any]) -> bool:
    """Record an item's end, once: False when it had already ended (a second run judged it)."""
    result = session.execute(
        update(BacktestItem)
        .where(BacktestItem.id == item_id, BacktestItem.status == BacktestItemStatus.pending)
        .values(**values, judged_at=func.now())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def count_failed_try(
    session: Session, item_id: uuid.UUID, error: str, *, max_attempts: int
) -> BacktestItemStatus | None:
    """One more try that could not reach the model; the item fails at `max_attempts`."""
    attempts = BacktestItem.attempts + 1
    return session.scalars(
        update(BacktestItem)
        .where(BacktestItem.id == item_id, BacktestItem.status == BacktestItemStatus.pending)
        .values(
            attempts=attempts,
            error=error,
            status=case(
                (attempts >= max_attempts, BacktestItemStatus.failed.value),
                else_=BacktestItemStatus.pending.value,
            ),
            judged_at=case((attempts >= max_attempts, func.now()), else_=None),
        )
        .returning(BacktestItem.status)
    ).one_or_none()


def set_status(
    session: Session, backtest_id: uuid.UUID, values: dict[str, Any], *, only_from: set[str]
) -> bool:
    result = session.execute(
        update(Backtest)
        .where(Backtest.id == backtest_id, Backtest.status.in_(only_from))
        .values(**values)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# Progress and comparison -----------------------------------------------------------------------


def status_counts(
    session: Session, backtest_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[BacktestItemStatus, int]]:
    counts: dict[uuid.UUID, dict[BacktestItemStatus, int]] = {i: {} for i in backtest_ids}
    if not backtest_ids:
        return counts
    rows = session.execute(
        select(BacktestItem.backtest_id, BacktestItem.status, func.count())
        .where(BacktestItem.backtest_id.in_(backtest_ids))
        .group_by(BacktestItem.backtest_id, BacktestItem.status)
    )
    for backtest_id, status, count in rows:
        counts[backtest_id][BacktestItemStatus(status)] = int(count)
    return counts


def _reviewer_action() -> Any:
    return (
        select(Decision.action)
        .where(
            Decision.submission_id == BacktestItem.submission_id,
            Decision.source.in_(_HUMAN_SOURCES),
            Decision.action != Action.review,
        )
        .order_by(Decision.created_at.desc(), Decision.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def _judged(backtest_id: uuid.UUID) -> Any:
    return and_(
        BacktestItem.backtest_id == backtest_id,
        BacktestItem.status == BacktestItemStatus.judged,
    )


def outcome_counts(session: Session, backtest_id: uuid.UUID) -> list[OutcomeCount]:
    """Judged items per (live action, draft action, reviewer's final action or none)."""
    reviewer = _reviewer_action().label("reviewer")
    inner = (
        select(BacktestItem.live_action, BacktestItem.draft_action, reviewer)
        .where(_judged(backtest_id))
        .subquery()
    )
    rows = session.execute(
        select(inner.c.live_action, inner.c.draft_action, inner.c.reviewer, func.count()).group_by(
            inner.c.live_action, inner.c.draft_action, inner.c.reviewer
        )
    )
    return [
        OutcomeCount(
            live=Action(live),
            draft=Action(draft),
            reviewer=Action(human) if human is not None else None,
            items=int(count),
        )
        for live, draft, human, count in rows
    ]


def flip_rows(session: Session, backtest_id: uuid.UUID, per_kind: int) -> list[FlipRow]:
    """The newest `per_kind` items of each kind of change (allow -> block, ...)."""
    rank = (
        func.row_number()
        .over(
            partition_by=(BacktestItem.live_action, BacktestItem.draft_action),
            order_by=(BacktestItem.submitted_at.desc(), BacktestItem.id),
        )
        .label("rank")
    )
    ranked = (
        select(
            BacktestItem.submission_id,
            BacktestItem.live_action,
            BacktestItem.draft_action,
            BacktestItem.draft_reason,
            BacktestItem.draft_categories,
            BacktestItem.submitted_at,
            _reviewer_action().label("reviewer"),
            rank,
        )
        .where(_judged(backtest_id), BacktestItem.live_action != BacktestItem.draft_action)
        .subquery()
    )
    rows = session.execute(
        select(ranked)
        .where(ranked.c.rank <= per_kind)
        .order_by(ranked.c.live_action, ranked.c.draft_action, ranked.c.rank)
    )
    return [
        FlipRow(
            submission_id=row.submission_id,
            live=Action(row.live_action),
            draft=Action(row.draft_action),
            draft_reason=row.draft_reason,
            draft_categories=list(row.draft_categories or []),
            reviewer=Action(row.reviewer) if row.reviewer is not None else None,
        )
        for row in rows
    ]


def token_totals(session: Session, backtest_id: uuid.UUID) -> TokenTotals:
    row = session.execute(
        select(
            func.coalesce(func.sum(BacktestItem.model_calls), 0),
            func.count(BacktestItem.reused_verdict_id),
            func.coalesce(func.sum(BacktestItem.input_tokens), 0),
            func.coalesce(func.sum(BacktestItem.output_tokens), 0),
        ).where(BacktestItem.backtest_id == backtest_id)
    ).one()
    return TokenTotals(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def live_token_totals(session: Session, backtest_id: uuid.UUID) -> tuple[int, int]:
    """What the live judgements of the judged items cost, from their verdict rows."""
    judged = select(BacktestItem.submission_id).where(_judged(backtest_id))
    row = session.execute(
        select(
            func.coalesce(func.sum(Verdict.input_tokens), 0),
            func.coalesce(func.sum(Verdict.output_tokens), 0),
        ).where(Verdict.submission_id.in_(judged), Verdict.role == VerdictRole.live)
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


def live_version_ids(session: Session, backtest_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(select(BacktestItem.live_version_id).where(_judged(backtest_id)).distinct())
    )


def mark_running(session: Session, backtest_id: uuid.UUID) -> None:
    session.execute(
        update(Backtest)
        .where(Backtest.id == backtest_id, Backtest.status == BacktestStatus.queued)
        .values(status=BacktestStatus.running, started_at=func.now())
    )
