"""All SQL for scheduled jobs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from moderation.jobs.models import Job, JobStatus


def insert_job(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None,
    key: str | None,
) -> uuid.UUID:
    """Add a job; with a key that already has a live job, only bring its run time forward.

    A failed job under the same key is given a fresh start: someone asked for the work again.
    """
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "kind": kind,
        "key": key,
        "payload": payload,
        "status": JobStatus.pending,
        "attempts": 0,
        "run_at": run_at if run_at is not None else func.now(),
    }
    statement = insert(Job).values(**values)
    if key is not None:
        failed = Job.status == JobStatus.failed
        statement = statement.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "run_at": func.least(Job.run_at, statement.excluded.run_at),
                "payload": statement.excluded.payload,
                "status": case((failed, JobStatus.pending.value), else_=Job.status),
                "attempts": case((failed, 0), else_=Job.attempts),
                "updated_at": func.now(),
            },
        )
    return session.execute(statement.returning(Job.id)).scalar_one()


def claim_due(session: Session, kind: str, *, limit: int, lease: timedelta) -> list[Job]:
    """Lease up to `limit` due jobs of one kind; concurrent sweepers skip each other's rows."""
    now = func.now()
    due = (
        select(Job.id)
        .where(
            Job.kind == kind,
            or_(
                and_(Job.status == JobStatus.pending, Job.run_at <= now),
                and_(Job.status == JobStatus.running, Job.locked_until < now),
            ),
        )
        .order_by(Job.run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(Job)
        .where(Job.id.in_(due.scalar_subquery()))
        .values(
            status=JobStatus.running,
            locked_until=now + lease,
            lock_token=func.gen_random_uuid(),
            updated_at=now,
        )
        .returning(Job)
        .execution_options(synchronize_session=False)
    )
    return list(session.scalars(statement))


def delete_claimed(session: Session, job_id: uuid.UUID, lock_token: uuid.UUID) -> bool:
    result = session.execute(delete(Job).where(Job.id == job_id, Job.lock_token == lock_token))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def reschedule_claimed(
    session: Session,
    job_id: uuid.UUID,
    lock_token: uuid.UUID,
    *,
    run_at: datetime | None = None,
    delay: timedelta | None = None,
    attempts: int,
    status: JobStatus = JobStatus.pending,
    last_error: str | None = None,
) -> bool:
    when: Any = run_at if run_at is not None else func.now() + (delay or timedelta())
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lock_token == lock_token)
        .values(
            status=status,
            run_at=when,
            attempts=attempts,
            locked_until=None,
            lock_token=None,
            last_error=last_error,
            updated_at=func.now(),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def get(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def find_by_key(session: Session, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.key == key)).one_or_none()


def count_by_kind_and_status(session: Session) -> list[tuple[str, JobStatus, int]]:
    rows = session.execute(
        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
    )
    return [(kind, status, int(count)) for kind, status, count in rows]
