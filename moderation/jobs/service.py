"""Enqueue jobs, and run one claimed job to its recorded end. How to add a kind: see __init__."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings
from moderation.database import session_scope
from moderation.jobs import repository
from moderation.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

# A job that keeps raising waits 10 s, 20 s, 40 s ... at most an hour between runs.
_BACKOFF_BASE_S = 10.0
_BACKOFF_MAX_S = 3600.0


@dataclass(frozen=True)
class JobContext:
    """What a handler may use: the settings and the worker's connection pool."""

    settings: Settings
    sessions: sessionmaker[Session]


@dataclass(frozen=True)
class RetryAt:
    """Wake this job again at `when`: the work has a schedule of its own."""

    when: datetime


class _Done:
    def __repr__(self) -> str:
        return "DONE"


DONE = _Done()

JobOutcome = _Done | RetryAt
JobHandler = Callable[[Mapping[str, Any], JobContext], JobOutcome]


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: JobHandler
    max_attempts: int = 5
    # How long one run may take before another worker may assume this one died.
    lease_s: float = 300.0


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempts: int
    lock_token: uuid.UUID


def enqueue_job(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    run_at: datetime | None = None,
    key: str | None = None,
) -> uuid.UUID:
    """Schedule `kind` in the caller's transaction: the job exists exactly when the change does."""
    return repository.insert_job(session, kind, payload, run_at=run_at, key=key)


def claim_due_jobs(sessions: sessionmaker[Session], kind: JobKind, limit: int) -> list[ClaimedJob]:
    if limit <= 0:
        return []
    with session_scope(sessions) as session:
        jobs = repository.claim_due(
            session, kind.name, limit=limit, lease=timedelta(seconds=kind.lease_s)
        )
        return [_claimed(job) for job in jobs]


def _claimed(job: Job) -> ClaimedJob:
    assert job.lock_token is not None
    return ClaimedJob(
        id=job.id,
        kind=job.kind,
        payload=dict(job.payload),
        attempts=job.attempts,
        lock_token=job.lock_token,
    )


def run_claimed_job(job: ClaimedJob, kind: JobKind, context: JobContext) -> JobOutcome | None:
    """Run the handler and record how it ended; None when it raised."""
    try:
        outcome = kind.handler(job.payload, context)
    except Exception as exc:
        logger.exception("job %s (%s) failed", job.id, job.kind)
        _record_failure(job, kind, context, f"{type(exc).__name__}: {exc}"[:2000])
        return None
    with session_scope(context.sessions) as session:
        if isinstance(outcome, RetryAt):
            kept = repository.reschedule_claimed(
                session, job.id, job.lock_token, run_at=outcome.when, attempts=0
            )
        else:
            kept = repository.delete_claimed(session, job.id, job.lock_token)
    if not kept:
        logger.warning("job %s outlived its lease; another run owns it now", job.id)
    return outcome


def _record_failure(job: ClaimedJob, kind: JobKind, context: JobContext, error: str) -> None:
    attempts = job.attempts + 1
    gave_up = attempts >= kind.max_attempts
    delay = timedelta(seconds=min(_BACKOFF_BASE_S * 2 ** (attempts - 1), _BACKOFF_MAX_S))
    with session_scope(context.sessions) as session:
        repository.reschedule_claimed(
            session,
            job.id,
            job.lock_token,
            delay=timedelta() if gave_up else delay,
            attempts=attempts,
            status=JobStatus.failed if gave_up else JobStatus.pending,
            last_error=error,
        )
    if gave_up:
        logger.error("job %s (%s) gave up after %d attempts: %s", job.id, job.kind, attempts, error)
