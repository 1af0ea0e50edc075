"""All SQL for review tasks, and the batch reads that show a task with everything around it."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select
from sqlalchemy.orm import Session, defer

from moderation.decisions.models import Decision
from moderation.policies.models import Policy, PolicyVersion
from moderation.review.models import ReviewTask, TaskKind, TaskStatus
from moderation.submissions.models import Submission, SubmissionImage, Verdict
from moderation.submissions.repository import awaiting_redrive


@dataclass(frozen=True)
class QueueFilter:
    """Which waiting tasks a reader asks for; every field narrows the queue."""

    include_escalations: bool
    kind: TaskKind | None = None
    policy: str | None = None
    category: str | None = None
    reason: str | None = None
    source: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    sla_breached: bool | None = None
    # Tasks of submissions an outage sent here, which re-drive will judge again by itself.
    include_redrive: bool = False


@dataclass(frozen=True)
class QueuePosition:
    priority: int
    created_at: datetime
    task_id: uuid.UUID


def database_now(session: Session) -> datetime:
    """The transaction's clock, the same one leases and due times are compared with in SQL."""
    now: datetime = session.execute(select(func.now())).scalar_one()
    return now


def add_task(session: Session, task: ReviewTask, *, due_in: timedelta | None = None) -> ReviewTask:
    """Store a new task; `due_in` starts its SLA clock on the database's time, like created_at."""
    if due_in is not None:
        task.due_at = func.now() + due_in
    session.add(task)
    session.flush()
    return task


def _waiting() -> ColumnElement[bool]:
    """Open, or claimed by someone whose lease has run out: either way, back in the queue."""
    return or_(
        ReviewTask.status == TaskStatus.open,
        and_(ReviewTask.status == TaskStatus.claimed, ReviewTask.lease_expires_at <= func.now()),
    )


def _not_awaiting_redrive() -> ColumnElement[bool]:
    """The task's submission is not waiting to be judged again automatically: a reviewer
    would only duplicate the re-drive, and one outage would flood the queue."""
    return ~exists().where(Submission.id == ReviewTask.submission_id, awaiting_redrive())


def lock_active_tasks(session: Session, submission_id: uuid.UUID) -> list[ReviewTask]:
    return list(
        session.scalars(
            select(ReviewTask)
            .where(
                ReviewTask.submission_id == submission_id,
                ReviewTask.status.in_([TaskStatus.open, TaskStatus.claimed]),
            )
            .with_for_update()
        )
    )


def lock_task(
    session: Session, tenant_id: uuid.UUID, task_id: uuid.UUID
) -> tuple[ReviewTask, bool] | None:
    """The task under a row lock, and whether its lease is live: checked again at every write,
    because a lease can run out between the reviewer's claim and their decision."""
    row = session.execute(
        select(ReviewTask, func.coalesce(ReviewTask.lease_expires_at > func.now(), false()))
        .where(ReviewTask.id == task_id, ReviewTask.tenant_id == tenant_id)
        .with_for_update(of=ReviewTask)
    ).one_or_none()
    if row is None:
        return None
    return row[0], bool(row[1])


def get_task(session: Session, tenant_id: uuid.UUID, task_id: uuid.UUID) -> ReviewTask | None:
    return session.scalars(
        select(ReviewTask).where(ReviewTask.id == task_id, ReviewTask.tenant_id == tenant_id)
    ).one_or_none()


def get_by_id(session: Session, task_id: uuid.UUID) -> ReviewTask | None:
    return session.get(ReviewTask, task_id)


def claimable(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    include_escalations: bool,
    kind: TaskKind | None,
    reviewer_key_id: uuid.UUID,
    reviewer_name: str | None,
    include_redrive: bool = False,
) -> tuple[list[ReviewTask], datetime]:
    """Lock the most urgent waiting tasks nobody else is locking right now, with the clock the
    new leases start from.

    SKIP LOCKED lets concurrent claimers each take different rows instead of queueing behind
    one another; a row another claimer just took no longer matches when re-checked, so two
    reviewers never get the same task. Appeals the caller decided before are left for others.
    """
    query = (
        select(ReviewTask, func.now())
        .where(ReviewTask.tenant_id == tenant_id, _waiting())
        .where(
            or_(
                ReviewTask.excluded_key_id.is_(None),
                ReviewTask.excluded_key_id != reviewer_key_id,
            )
        )
        .order_by(ReviewTask.priority.desc(), ReviewTask.created_at, ReviewTask.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=ReviewTask)
    )
    if reviewer_name is not None:
        query = query.where(
            or_(ReviewTask.excluded_name.is_(None), ReviewTask.excluded_name != reviewer_name)
        )
    if not include_escalations:
        query = query.where(ReviewTask.kind != TaskKind.escalation)
    if kind is not None:
        query = query.where(ReviewTask.kind == kind)
    if not include_redrive:
        query = query.where(_not_awaiting_redrive())
    rows = session.execute(query).all()
    if not rows:
        return [], database_now(session)
    return [row[0] for row in rows], rows[0][1]


def _filtered(tenant_id: uuid.UUID, filters: QueueFilter) -> Any:
    query = select(ReviewTask).where(ReviewTask.tenant_id == tenant_id, _waiting())
    if not filters.include_escalations:
        query = query.where(ReviewTask.kind != TaskKind.escalation)
    if filters.kind is not None:
        query = query.where(ReviewTask.kind == filters.kind)
    if not filters.include_redrive:
        query = query.where(_not_awaiting_redrive())
    if filters.policy is not None:
        query = (
            query.join(PolicyVersion, PolicyVersion.id == ReviewTask.policy_version_id)
            .join(Policy, Policy.id == PolicyVersion.policy_id)
            .where(Policy.slug == filters.policy)
        )
    if filters.category is not None:
        # JSONB containment: some entry of the list names this category.
        query = query.where(ReviewTask.categories.contains([{"category": filters.category}]))
    if filters.reason is not None:
        query = query.where(ReviewTask.reason == filters.reason)
    if filters.source is not None:
        query = query.where(ReviewTask.source == filters.source)
    if filters.older_than is not None:
        query = query.where(ReviewTask.created_at <= func.now() - filters.older_than)
    if filters.newer_than is not None:
        query = query.where(ReviewTask.created_at >= func.now() - filters.newer_than)
    if filters.sla_breached is True:
        query = query.where(ReviewTask.due_at < func.now())
    elif filters.sla_breached is False:
        query = query.where(ReviewTask.due_at >= func.now())
    return query


def queue_page(
    session: Session,
    tenant_id: uuid.UUID,
    filters: QueueFilter,
    *,
    limit: int,
    after: QueuePosition | None,
) -> list[ReviewTask]:
    query = _filtered(tenant_id, filters)
    if after is not None:
        query = query.where(
            or_(
                ReviewTask.priority < after.priority,
                and_(
                    ReviewTask.priority == after.priority,
                    or_(
                        ReviewTask.created_at > after.created_at,
                        and_(
                            ReviewTask.created_at == after.created_at,
                            ReviewTask.id > after.task_id,
                        ),
                    ),
                ),
            )
        )
    query = query.order_by(ReviewTask.priority.desc(), ReviewTask.created_at, ReviewTask.id)
    return list(session.scalars(query.limit(limit)))


def queue_counts(session: Session, tenant_id: uuid.UUID, filters: QueueFilter) -> tuple[int, int]:
    """How many tasks match, and how many of them are past due."""
    matching = _filtered(tenant_id, filters).subquery()
    row = session.execute(
        select(
            func.count(),
            func.count().filter(matching.c.due_at < func.now()),
        ).select_from(matching)
    ).one()
    return int(row[0]), int(row[1])


def lock_submission(
    session: Session, tenant_id: uuid.UUID, submission_id: uuid.UUID
) -> Submission | None:
    """Appeals of one submission take turns, so two at once cannot both open."""
    return session.scalars(
        select(Submission)
        .where(Submission.id == submission_id, Submission.tenant_id == tenant_id)
        .with_for_update()
    ).one_or_none()


def get_submission(session: Session, submission_id: uuid.UUID) -> Submission | None:
    return session.get(Submission, submission_id)


def latest_decision(session: Session, submission_id: uuid.UUID) -> Decision | None:
    return session.scalars(
        select(Decision)
        .where(Decision.submission_id == submission_id)
        .order_by(Decision.created_at.desc(), Decision.id.desc())
        .limit(1)
    ).one_or_none()


def task_that_made(session: Session, decision_id: uuid.UUID) -> ReviewTask | None:
    """The review task whose reviewer made this decision, if a reviewer made it."""
    return session.scalars(
        select(ReviewTask).where(ReviewTask.result_decision_id == decision_id)
    ).one_or_none()


# Batch reads for presenting a page of tasks: a handful of queries, however long the page.


def submissions_by_id(session: Session, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Submission]:
    rows = session.scalars(select(Submission).where(Submission.id.in_(ids)))
    return {row.id: row for row in rows}


def images_by_submission(
    session: Session, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[SubmissionImage]]:
    grouped: dict[uuid.UUID, list[SubmissionImage]] = defaultdict(list)
    rows = session.scalars(
        select(SubmissionImage)
        .where(SubmissionImage.submission_id.in_(ids))
        .order_by(SubmissionImage.submission_id, SubmissionImage.position)
        .options(defer(SubmissionImage.data), defer(SubmissionImage.source_data))
    )
    for row in rows:
        grouped[row.submission_id].append(row)
    return grouped


def verdicts_by_submission(
    session: Session, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Verdict]]:
    grouped: dict[uuid.UUID, list[Verdict]] = defaultdict(list)
    rows = session.scalars(
        select(Verdict)
        .where(Verdict.submission_id.in_(ids))
        .order_by(Verdict.submission_id, Verdict.created_at, Verdict.attempt, Verdict.sequence)
        .options(defer(Verdict.raw_output))
    )
    for row in rows:
        grouped[row.submission_id].append(row)
    return grouped


def decisions_by_submission(
    session: Session, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[Decision]]:
    grouped: dict[uuid.UUID, list[Decision]] = defaultdict(list)
    rows = session.scalars(
        select(Decision)
        .where(Decision.submission_id.in_(ids))
        .order_by(Decision.submission_id, Decision.created_at, Decision.id)
    )
    for row in rows:
        grouped[row.submission_id].append(row)
    return grouped


def tasks_by_submission(
    session: Session, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ReviewTask]]:
    grouped: dict[uuid.UUID, list[ReviewTask]] = defaultdict(list)
    rows = session.scalars(
        select(ReviewTask)
        .where(ReviewTask.submission_id.in_(ids))
        .order_by(ReviewTask.submission_id, ReviewTask.created_at, ReviewTask.id)
    )
    for row in rows:
        grouped[row.submission_id].append(row)
    return grouped


def policy_slugs(session: Session, version_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = session.execute(
        select(PolicyVersion.id, Policy.slug)
        .join(Policy, Policy.id == PolicyVersion.policy_id)
        .where(PolicyVersion.id.in_(version_ids))
    )
    return {version_id: slug for version_id, slug in rows}


# Metrics, read at scrape time across all tenants.


def waiting_by_kind_and_priority(session: Session) -> list[tuple[str, int, int]]:
    rows = session.execute(
        select(ReviewTask.kind, ReviewTask.priority, func.count())
        .where(_waiting(), _not_awaiting_redrive())
        .group_by(ReviewTask.kind, ReviewTask.priority)
    )
    return [(str(kind), int(priority), int(count)) for kind, priority, count in rows]


def waiting_age_and_breaches_by_kind(session: Session) -> list[tuple[str, float, int]]:
    """Per kind: the oldest waiting task's age in seconds, and how many are past due."""
    rows = session.execute(
        select(
            ReviewTask.kind,
            func.extract("epoch", func.now() - func.min(ReviewTask.created_at)),
            func.count().filter(ReviewTask.due_at < func.now()),
        )
        .where(_waiting(), _not_awaiting_redrive())
        .group_by(ReviewTask.kind)
    )
    return [(str(kind), float(age or 0.0), int(breached)) for kind, age, breached in rows]


def decided_late_by_kind(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(
        select(ReviewTask.kind, func.count())
        .where(ReviewTask.status == TaskStatus.decided, ReviewTask.decided_at > ReviewTask.due_at)
        .group_by(ReviewTask.kind)
    )
    return [(str(kind), int(count)) for kind, count in rows]


def decisions_by_source_and_action(session: Session) -> list[tuple[str, str, int]]:
    rows = session.execute(
        select(Decision.source, Decision.action, func.count()).group_by(
            Decision.source, Decision.action
        )
    )
    return [(str(source), str(action), int(count)) for source, action, count in rows]
