"""Postgres is the source of truth: lost messages and lost workers are recovered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text as sql_text
from sqlalchemy.exc import DBAPIError

from moderation.audit.service import events_of
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, session_scope
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.policies.service import active_version
from moderation.queue import MODERATE_SUBMISSION, celery_app
from moderation.submissions import repository
from moderation.submissions.models import Submission, SubmissionImage, SubmissionStatus
from tests.factories import TenantKeys, image_bytes, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake


def insert_without_sending(database_url: str, tenant: TenantKeys, text: str, **fields) -> uuid.UUID:
    """A submission whose task never reached the broker (crash between commit and send)."""
    with session_scope(get_sessionmaker(database_url)) as session:
        submission = Submission(
            tenant_id=tenant.tenant_id,
            external_id=marker(),
            payload_sha256="0" * 64,
            text=text,
            metadata_={},
            policy_version_id=active_version(session, tenant.tenant_id, "default").id,
            **{"status": SubmissionStatus.queued, "attempts": 0, **fields},
        )
        session.add(submission)
        session.flush()
        session.add(
            SubmissionImage(submission_id=submission.id, position=0, source_data=image_bytes())
        )
        return submission.id


def test_a_lost_message_is_resent_by_the_relay(client, tenant, fake_vlm, migrated):
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))])
    submission_id = insert_without_sending(
        migrated, tenant, f"caption {case}", queued_at=utcnow() - timedelta(minutes=5)
    )
    result = wait_for_outcome(client, str(submission_id), tenant.headers(), timeout=30)
    assert result["decision"]["action"] == "block"
    with session_scope(get_sessionmaker(migrated)) as session:
        events = [e.event for e in events_of(session, submission_id)]
    assert "requeued" in events


def test_a_lost_worker_is_replaced_after_its_lease(client, tenant, fake_vlm, migrated):
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    submission_id = insert_without_sending(
        migrated,
        tenant,
        f"caption {case}",
        status=SubmissionStatus.processing,
        attempts=1,
        lease_token=uuid.uuid4(),
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    result = wait_for_outcome(client, str(submission_id), tenant.headers(), timeout=30)
    assert result["decision"]["action"] == "allow"
    assert result["attempts"] == 2


def test_work_that_keeps_dying_ends_in_review(client, tenant, migrated):
    submission_id = insert_without_sending(
        migrated,
        tenant,
        "poison",
        status=SubmissionStatus.processing,
        attempts=3,
        lease_token=uuid.uuid4(),
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    result = wait_for_outcome(client, str(submission_id), tenant.headers(), timeout=30)
    assert result["decision"]["action"] == "review"
    assert result["decision"]["reason"] == "processing_failed"


def test_running_the_task_twice_is_harmless(tenant, fake_vlm, migrated, service_env):
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    # Fresh from the relay's point of view, so only this test's direct calls run it.
    submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
    runtime = PipelineRuntime.from_settings()
    moderate_submission(submission_id, runtime)
    moderate_submission(submission_id, runtime)
    with session_scope(get_sessionmaker(migrated)) as session:
        assert len(repository.verdicts_of(session, submission_id)) == 1
        assert len(repository.decisions_of(session, submission_id)) == 1
        submission = repository.get(session, submission_id)
        assert submission is not None and submission.status is SubmissionStatus.decided
    assert len(fake_vlm.requests_for(case)) == 1


def test_history_tables_are_append_only(migrated, tenant, fake_vlm, service_env):

    submission_id = insert_without_sending(migrated, tenant, "history")
    moderate_submission(submission_id, PipelineRuntime.from_settings())
    for statement in (
        "UPDATE decisions SET action = 'allow' WHERE submission_id = :id",
        "DELETE FROM audit_events WHERE submission_id = :id",
    ):
        with (
            pytest.raises(DBAPIError, match="append-only"),
            session_scope(get_sessionmaker(migrated)) as session,
        ):
            session.execute(sql_text(statement), {"id": submission_id})


def test_a_worker_killed_mid_model_call_loses_nothing(
    client, tenant, fake_vlm, migrated, service_env, tmp_path
):
    """SIGKILL a real worker while its model call is in flight; another worker finishes the job."""

    case = marker()
    fake_vlm.script(case, [fake.delay(30), fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))])
    queue = f"doomed-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **service_env,
        "MODERATION_QUEUE_NAME": queue,
        # A short lease: soft limit 5 s, so the lease ends 15 s after the claim.
        "MODERATION_TASK_SOFT_TIME_LIMIT_S": "5",
        "MODERATION_VLM_TIMEOUT_S": "4",
    }
    with (tmp_path / "doomed.log").open("wb") as log:
        doomed = subprocess.Popen(
            [sys.executable, "-m", "moderation", "worker", "--concurrency", "2"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # On a busy machine a worker takes longer to start than the relay's grace period; sent
        # earlier, the task would be re-sent to (and finished by) the session's worker instead.
        deadline = time.monotonic() + 60
        while b"ready." not in (tmp_path / "doomed.log").read_bytes():
            assert doomed.poll() is None, (tmp_path / "doomed.log").read_text()
            assert time.monotonic() < deadline, "the doomed worker never became ready"
            time.sleep(0.1)
        submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
        celery_app.send_task(MODERATE_SUBMISSION, args=[str(submission_id)], queue=queue)
        deadline = time.monotonic() + 60
        while not fake_vlm.requests_for(case):
            assert doomed.poll() is None, (tmp_path / "doomed.log").read_text()
            assert time.monotonic() < deadline, "the doomed worker never called the model"
            time.sleep(0.1)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    finally:
        if doomed.poll() is None:
            doomed.kill()

    result = wait_for_outcome(client, str(submission_id), tenant.headers(), timeout=60)
    assert result["decision"]["action"] == "block"
    assert result["attempts"] == 2
    with session_scope(get_sessionmaker(migrated)) as session:
        events = [e.event for e in events_of(session, submission_id)]
    assert events.count("processing_started") == 2 and "requeued" in events
