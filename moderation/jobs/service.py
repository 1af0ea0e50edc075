"""Enqueue jobs, and run one claimed job to its recorded end. How to add a kind: see __init__."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings
from moderation.database import session_scope
from moderation.jobs import repository
from moderation.jobs.models import Job, JobStatus

logger = logging.getLogger(__name__)

# A job that keeps raising waits 10 s, 20 s, 40 s ... at most an hour between runs.
_BACKOFF_BASE_S = 10.0
_BACKOFF_MAX_S = 3600.0

# What a transaction raises when the database cannot be reached or dropped the connection.
_DATABASE_AWAY: tuple[type[Exception], ...] = (sa_exc.OperationalError, sa_exc.InterfaceError)
_AWAY_FIRST_WAIT_S = 0.25
_AWAY_MAX_WAIT_S = 2.0

T = TypeVar("T")


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
    # For a kind whose runs are bounded by settings: the lease derived from them instead.
    lease_from_settings: Callable[[Settings], float] | None = None

    def lease(self, settings: Settings | None) -> float:
        if settings is not None and self.lease_from_settings is not None:
            return self.lease_from_settings(settings)
        return self.lease_s


@dataclass(frozen=True)
class ClaimedJob:
    id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    attempts: int
    lock_token: uuid.UUID
    # time.monotonic() at which the claim lapses and another worker may run the job.
    lease_ends: float = field(default_factory=time.monotonic)


def through_database_outage(work: Callable[[], T], *, until: float, what: str) -> T:
    """Run `work` (a whole transaction), again while the database is unreachable, until the
    monotonic time `until`; then the last error is raised.

    For results that are worth waiting for: a job whose end was not recorded runs again when
    its lease lapses, and for a callback that already reached its receiver, that is a second
    POST of the same event. A database that blinks for a few seconds costs a short wait instead.
    `work` must be safe to run again after a commit whose answer was lost.
    """
    wait = _AWAY_FIRST_WAIT_S
    while True:
        try:
            return work()
        except _DATABASE_AWAY as exc:
            if time.monotonic() + wait > until:
                raise
            logger.warning(
                "%s: the database is unreachable (%s); trying again in %.1f s",
                what,
                type(exc).__name__,
                wait,
            )
            time.sleep(wait)
            wait = min(wait * 2, _AWAY_MAX_WAIT_S)


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


def claim_due_jobs(
    sessions: sessionmaker[Session],
    kind: JobKind,
    limit: int,
    settings: Settings | None = None,
) -> list[ClaimedJob]:
    if limit <= 0:
        return []
    lease_s = kind.lease(settings)
    claimed_at = time.monotonic()
    with session_scope(sessions) as session:
        jobs = repository.claim_due(
            session, kind.name, limit=limit, lease=timedelta(seconds=lease_s)
        )
        return [_claimed(job, claimed_at + lease_s) for job in jobs]


def _claimed(job: Job, lease_ends: float) -> ClaimedJob:
    assert job.lock_token is not None
    return ClaimedJob(
        id=job.id,
        kind=job.kind,
        payload=dict(job.payload),
        attempts=job.attempts,
        lock_token=job.lock_token,
        lease_ends=lease_ends,
    )


def run_claimed_job(job: ClaimedJob, kind: JobKind, context: JobContext) -> JobOutcome | None:
    """Run the handler and record how it ended; None when it raised.

    The record is kept through a short database outage (until the claim lapses): otherwise the
    job would sit claimed, and idle, for the rest of its lease.
    """
    try:
        outcome = kind.handler(job.payload, context)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        if isinstance(exc, _DATABASE_AWAY):
            # Not the job's fault: once the database takes the record it is back, so the job
            # runs again at once, without spending one of its attempts.
            logger.warning("job %s (%s) failed: the database is unreachable", job.id, job.kind)
            _record_failure(job, kind, context, error, database_away=True)
        else:
            logger.exception("job %s (%s) failed", job.id, job.kind)
            _record_failure(job, kind, context, error)
        return None

    def record() -> bool:
        with session_scope(context.sessions) as session:
            if isinstance(outcome, RetryAt):
                return repository.reschedule_claimed(
                    session, job.id, job.lock_token, run_at=outcome.when, attempts=0
                )
            return repository.delete_claimed(session, job.id, job.lock_token)

    kept = through_database_outage(record, until=job.lease_ends, what=f"job {job.id}")
    if not kept:
        logger.warning("job %s outlived its lease; another run owns it now", job.id)
    return outcome


def _record_failure(
    job: ClaimedJob,
    kind: JobKind,
    context: JobContext,
    error: str,
    *,
    database_away: bool = False,
) -> None:
    if database_away:
        attempts, delay = job.attempts, timedelta()
    else:
        attempts = job.attempts + 1
        delay = timedelta(seconds=min(_BACKOFF_BASE_S * 2 ** (attempts - 1), _BACKOFF_MAX_S))
    gave_up = attempts >= kind.max_attempts

    def record() -> None:
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

    through_database_outage(record, until=job.lease_ends, what=f"job {job.id}")
    if gave_up:
        logger.error("job %s (%s) gave up after %d attempts: %s", job.id, job.kind, attempts, error)
