"""Postgres is the source of truth: lost messages and lost workers are recovered."""

from __future__ import annotations

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
from moderation.submissions import repository
from moderation.submissions.models import SubmissionStatus
from tests.factories import insert_without_sending, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake


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
