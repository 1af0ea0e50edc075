"""Short leases kept alive by a heartbeat: a slow model call keeps its claim, while a killed
worker's claim runs out within one lease and its work is judged again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from moderation.audit.service import events_of
from moderation.config import Settings
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, session_scope
from moderation.pipeline.heartbeat import WorkerHeartbeat
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.queue import MODERATE_SUBMISSION, celery_app
from moderation.submissions import repository
from moderation.submissions.models import SubmissionStatus
from moderation.vlm import repository as model_repository
from moderation.vlm.client import VLMClient
from tests.conftest import ROOT
from tests.factories import insert_without_sending, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "moderation", "worker", "--concurrency", "2"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_until_worker_reports(
    database_url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    """A worker's heartbeat publishes its circuit state as soon as the worker is ready."""
    name = f"worker:{socket.gethostname()}:{process.pid}"
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        with session_scope(get_sessionmaker(database_url)) as session:
            live = model_repository.live_circuits(session, timedelta(minutes=1))
            if any(row.worker == name for row in live):
                return
        assert time.monotonic() < deadline, f"the worker never reported:\n{log.read_text()}"
        time.sleep(0.2)


def test_the_heartbeat_keeps_a_slow_model_call_past_its_lease(
    tenant, fake_vlm, migrated, worker, service_env
):
    """The call takes over three leases; the running worker's relay (sweeping every second)
    would take the submission away the moment its lease ran out. It never does."""
    case = marker()
    fake_vlm.script(case, [fake.delay(5.0, fake.verdict(fake.unsafe_verdict("violence", 3, 0.95)))])
    settings = Settings(lease_s=1.5, vlm_timeout_s=10, task_soft_time_limit_s=30)
    runtime = PipelineRuntime.from_settings(settings)
    submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
    started = time.monotonic()
    try:
        moderate_submission(submission_id, runtime)
    finally:
        runtime.heartbeat.stop()
    took = time.monotonic() - started
    print(f"\nmodel call of {took:.1f} s under a {settings.lease_s} s lease")
    assert took > 3 * settings.lease_s

    with session_scope(get_sessionmaker(migrated)) as session:
        submission = repository.get(session, submission_id)
        assert submission is not None
        assert submission.status is SubmissionStatus.decided and submission.attempts == 1
        [decision] = repository.decisions_of(session, submission_id)
        assert decision.action == "block"
        events = [event.event for event in events_of(session, submission_id)]
    assert "requeued" not in events and events.count("processing_started") == 1
    assert len(fake_vlm.requests_for(case)) == 1


def test_a_lease_is_not_renewed_past_the_task_time_limit(migrated, tenant, service_env):
    """A hung task must not hold its submission for ever: renewal stops at the hard limit."""
    settings = Settings(lease_s=30)
    sessions = get_sessionmaker(migrated)
    heartbeat = WorkerHeartbeat(settings, sessions, VLMClient(settings), f"test:{uuid.uuid4()}")
    token = uuid.uuid4()
    expires = utcnow() + timedelta(seconds=2)
    submission_id = insert_without_sending(
        migrated,
        tenant,
        "hung",
        status=SubmissionStatus.processing,
        attempts=1,
        lease_token=token,
        lease_expires_at=expires,
    )
    try:
        with heartbeat.hold(submission_id, token, renew_for_s=1.0):
            time.sleep(0.3)  # the thread's own first beat, at start, is over
            heartbeat.beat()
            with session_scope(sessions) as session:
                renewed = repository.get(session, submission_id)
                assert renewed is not None and renewed.lease_expires_at is not None
                first = renewed.lease_expires_at
            assert first > expires + timedelta(seconds=20)
            time.sleep(1.0)
            heartbeat.beat()
            assert heartbeat.held() == 0
            with session_scope(sessions) as session:
                again = repository.get(session, submission_id)
                assert again is not None and again.lease_expires_at == first
    finally:
        heartbeat.stop()


def test_a_worker_killed_mid_judgement_is_replaced_within_a_lease(
    client, tenant, fake_vlm, migrated, service_env, tmp_path
):
    """SIGKILL a real worker while its model call is in flight: its lease runs out within one
    lease (the heartbeat died with it), the relay re-sends the submission, another worker
    decides it. Exactly one decision, nothing lost."""
    case = marker()
    fake_vlm.script(case, [fake.delay(30), fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))])
    lease_s = 3.0
    relay_interval_s = float(service_env["MODERATION_RELAY_INTERVAL_S"])
    queue = f"doomed-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **service_env,
        "MODERATION_QUEUE_NAME": queue,
        "MODERATION_LEASE_S": str(lease_s),
        "MODERATION_VLM_TIMEOUT_S": "25",
        "MODERATION_TASK_SOFT_TIME_LIMIT_S": "60",
    }
    log = tmp_path / "doomed.log"
    doomed = start_worker(env, log)
    try:
        wait_until_worker_reports(migrated, doomed, log)
        submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
        celery_app.send_task(MODERATE_SUBMISSION, args=[str(submission_id)], queue=queue)
        deadline = time.monotonic() + 30
        while not fake_vlm.requests_for(case):
            assert doomed.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the doomed worker never called the model"
            time.sleep(0.05)
        # Let a heartbeat or two go by: the lease now outlives the claim's first lease.
        time.sleep(lease_s)
        doomed.send_signal(signal.SIGKILL)
        killed_at = utcnow()
        doomed.wait(timeout=10)
    finally:
        if doomed.poll() is None:
            doomed.kill()

    result = wait_for_outcome(client, str(submission_id), tenant.headers(), timeout=60)
    assert result["decision"]["action"] == "block"
    assert result["attempts"] == 2
    with session_scope(get_sessionmaker(migrated)) as session:
        events = events_of(session, submission_id)
        assert len(repository.decisions_of(session, submission_id)) == 1
    names = [event.event for event in events]
    assert names.count("processing_started") == 2 and "requeued" in names
    reclaimed_at = [e.created_at for e in events if e.event == "processing_started"][1]
    decided_at = next(e.created_at for e in events if e.event == "decided")
    back_in_flight = (reclaimed_at - killed_at).total_seconds()
    print(
        f"\nkill -9 mid-judgement, lease {lease_s} s, relay every {relay_interval_s} s: "
        f"back in flight after {back_in_flight:.1f} s, "
        f"decided after {(decided_at - killed_at).total_seconds():.1f} s"
    )
    assert back_in_flight <= lease_s + relay_interval_s + 3.0
