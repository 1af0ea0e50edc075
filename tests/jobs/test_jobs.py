"""The jobs table: claimed once under concurrency, rescheduled, retried, given up on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import OperationalError

from moderation.config import Settings
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, session_scope
from moderation.jobs import repository
from moderation.jobs.models import Job, JobStatus
from moderation.jobs.service import (
    DONE,
    JobContext,
    JobKind,
    JobOutcome,
    RetryAt,
    claim_due_jobs,
    enqueue_job,
    run_claimed_job,
    through_database_outage,
)
from moderation.jobs.sweeper import PeriodicSweep, Sweeper


def noop(payload: Mapping[str, Any], context: JobContext) -> JobOutcome:
    return DONE


@pytest.fixture
def kind_name() -> str:
    """A kind of this test's own, so other tests' jobs are never claimed here."""
    return f"test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def context(migrated: str) -> JobContext:
    return JobContext(settings=Settings(), sessions=get_sessionmaker(migrated))


def enqueue(context: JobContext, kind: str, count: int = 1, **kwargs: Any) -> list[uuid.UUID]:
    with session_scope(context.sessions) as session:
        return [enqueue_job(session, kind, {"n": n}, **kwargs) for n in range(count)]


def job(context: JobContext, job_id: uuid.UUID) -> Job | None:
    with session_scope(context.sessions) as session:
        return repository.get(session, job_id)


def test_concurrent_claimers_take_every_job_exactly_once(context, kind_name):
    enqueue(context, kind_name, 60)
    kind = JobKind(kind_name, noop)
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def claimer() -> None:
        start.wait()
        while True:
            batch = claim_due_jobs(context.sessions, kind, 4)
            if not batch:
                return
            with lock:
                claimed.extend(item.id for item in batch)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(claimed) == 60 and len(set(claimed)) == 60


def test_a_job_is_not_claimed_before_it_is_due(context, kind_name):
    [later] = enqueue(context, kind_name, run_at=utcnow() + timedelta(hours=1))
    assert claim_due_jobs(context.sessions, JobKind(kind_name, noop), 10) == []
    assert job(context, later) is not None


def test_a_finished_job_is_deleted(context, kind_name):
    [job_id] = enqueue(context, kind_name)
    kind = JobKind(kind_name, noop)
    [claimed] = claim_due_jobs(context.sessions, kind, 1)
    assert run_claimed_job(claimed, kind, context) is DONE
    assert job(context, job_id) is None


def test_a_handler_can_ask_to_be_woken_later(context, kind_name):
    when = utcnow() + timedelta(minutes=5)
    kind = JobKind(kind_name, lambda payload, ctx: RetryAt(when))
    [job_id] = enqueue(context, kind_name)
    [claimed] = claim_due_jobs(context.sessions, kind, 1)
    run_claimed_job(claimed, kind, context)
    row = job(context, job_id)
    assert row is not None and row.status is JobStatus.pending
    assert abs((row.run_at - when).total_seconds()) < 0.01
    assert row.lock_token is None


def test_a_failing_handler_backs_off_then_gives_up(context, kind_name):
    def explode(payload: Mapping[str, Any], ctx: JobContext) -> JobOutcome:
        raise RuntimeError("receiver on fire")

    kind = JobKind(kind_name, explode, max_attempts=2)
    [job_id] = enqueue(context, kind_name)
    [claimed] = claim_due_jobs(context.sessions, kind, 1)
    assert run_claimed_job(claimed, kind, context) is None
    row = job(context, job_id)
    assert row is not None and row.status is JobStatus.pending and row.attempts == 1
    assert row.run_at > utcnow() + timedelta(seconds=5)
    assert row.last_error == "RuntimeError: receiver on fire"

    with session_scope(context.sessions) as session:
        session.get(Job, job_id).run_at = utcnow()  # type: ignore[union-attr]
    [claimed] = claim_due_jobs(context.sessions, kind, 1)
    run_claimed_job(claimed, kind, context)
    row = job(context, job_id)
    assert row is not None and row.status is JobStatus.failed and row.attempts == 2
    assert claim_due_jobs(context.sessions, kind, 1) == []


def test_a_job_that_met_a_database_outage_runs_again_at_once_without_spending_an_attempt(
    context, kind_name
):
    def database_away(payload: Mapping[str, Any], ctx: JobContext) -> JobOutcome:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    kind = JobKind(kind_name, database_away, max_attempts=1)
    [job_id] = enqueue(context, kind_name)
    [claimed] = claim_due_jobs(context.sessions, kind, 1)
    assert run_claimed_job(claimed, kind, context) is None
    row = job(context, job_id)
    assert row is not None and row.status is JobStatus.pending and row.attempts == 0
    assert row.run_at <= utcnow() and row.lock_token is None


def test_recording_waits_out_a_short_database_outage_within_the_lease():
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return "recorded"

    assert through_database_outage(flaky, until=time.monotonic() + 10, what="test") == "recorded"
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(OperationalError):
        through_database_outage(flaky, until=time.monotonic() + 0.1, what="test")
    assert len(calls) == 1  # no time left in the lease for a second try


def test_a_lease_that_runs_out_lets_another_worker_take_the_job(context, kind_name):
    kind = JobKind(kind_name, noop, lease_s=0.2)
    [job_id] = enqueue(context, kind_name)
    [first] = claim_due_jobs(context.sessions, kind, 1)
    assert claim_due_jobs(context.sessions, kind, 1) == []
    threading.Event().wait(0.4)
    [second] = claim_due_jobs(context.sessions, kind, 1)
    assert second.id == job_id and second.lock_token != first.lock_token
    # The first run, finishing late, cannot close the second run's claim.
    run_claimed_job(first, kind, context)
    assert job(context, job_id) is not None
    run_claimed_job(second, kind, context)
    assert job(context, job_id) is None


def test_a_lease_can_follow_the_settings_that_bound_a_run(context, kind_name):
    kind = JobKind(kind_name, noop, lease_s=300, lease_from_settings=lambda s: 0.2)
    [job_id] = enqueue(context, kind_name)
    [first] = claim_due_jobs(context.sessions, kind, 1, context.settings)
    threading.Event().wait(0.4)
    [second] = claim_due_jobs(context.sessions, kind, 1, context.settings)
    assert second.id == first.id == job_id


def test_a_key_keeps_one_live_job_and_brings_it_forward(context, kind_name):
    key = f"{kind_name}:thing"
    [first] = enqueue(context, kind_name, key=key, run_at=utcnow() + timedelta(hours=2))
    [second] = enqueue(context, kind_name, key=key, run_at=utcnow())
    assert first == second
    row = job(context, first)
    assert row is not None and row.run_at <= utcnow()
    [third] = enqueue(context, kind_name, key=key, run_at=utcnow() + timedelta(hours=5))
    row = job(context, third)
    assert third == first and row is not None and row.run_at <= utcnow()


def test_the_sweeper_runs_due_jobs_and_periodic_sweeps(context, kind_name):
    ran: list[int] = []
    swept: list[int] = []

    def record(payload: Mapping[str, Any], ctx: JobContext) -> JobOutcome:
        ran.append(int(payload["n"]))
        return DONE

    enqueue(context, kind_name, 5)
    sweeper = Sweeper(
        context,
        kinds=[JobKind(kind_name, record)],
        sweeps=[PeriodicSweep("count", lambda: swept.append(1) or 0, interval_s=3600)],
        concurrency=2,
    )
    try:
        for _ in range(20):
            sweeper.tick()
            sweeper.drain(5)
            if len(ran) == 5:
                break
    finally:
        sweeper.close()
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert swept == [1]  # once at the first tick, then not again within its interval


def test_only_registered_kinds_are_claimed(context, kind_name):
    enqueue(context, kind_name)
    assert claim_due_jobs(context.sessions, JobKind(f"{kind_name}-other", noop), 10) == []
    with session_scope(context.sessions) as session:
        session.execute(delete(Job).where(Job.kind == kind_name))
