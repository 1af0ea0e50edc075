"""The one-statement store of a first judgement writes exactly what `record_decision` writes.

Each case judges two identical submissions of one tenant, one stored by the single statement
and one forced through the ORM path, then compares every row both wrote (ids, timestamps and
latencies aside): submission, images, verdicts, decision, audit trail, review task, callback
events and the tenant's token counter. The audit chain must still verify.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from moderation.audit.service import events_of, verify_audit_chains
from moderation.config import Settings
from moderation.database import get_sessionmaker, session_scope
from moderation.pipeline import moderate, store
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.review.models import ReviewTask
from moderation.submissions import repository
from moderation.tenants.service import token_budget
from moderation.webhooks.models import WebhookDelivery
from tests.factories import insert_without_sending, make_tenant, marker
from tests.fakes import fake_vlm as fake

pytestmark = pytest.mark.usefixtures("service_env")

CASES = {
    "allow": [fake.verdict(fake.safe_verdict(0.97))],
    "block": [fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))],
    "review": [fake.verdict(fake.unsafe_verdict("violence", 2, 0.55))],
    "corrected": [fake.raw("no json here"), fake.verdict(fake.safe_verdict(0.97))],
}


def _snapshot(database_url: str, submission_id: uuid.UUID) -> dict[str, Any]:
    with session_scope(get_sessionmaker(database_url)) as session:
        submission = repository.get(session, submission_id)
        assert submission is not None
        images = repository.images_of(session, submission_id)
        verdicts = repository.verdicts_of(session, submission_id)
        [decision] = repository.decisions_of(session, submission_id)
        tasks = session.scalars(
            select(ReviewTask).where(ReviewTask.submission_id == submission_id)
        ).all()
        deliveries = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.submission_id == submission_id)
        ).all()
        events = events_of(session, submission_id)
        return {
            "submission": (
                submission.status,
                submission.action,
                submission.lease_token,
                submission.lease_expires_at,
                submission.redrive_at,
                submission.attempts,
            ),
            "images": [
                (
                    image.position,
                    image.sha256,
                    image.width,
                    image.height,
                    image.mime,
                    image.source_mime,
                    image.tokens,
                    image.frame_count,
                    image.error,
                    image.data is not None,
                    image.source_data is None,
                    image.source_purged_at is not None,
                )
                for image in images
            ],
            "verdicts": [
                (
                    v.attempt,
                    v.sequence,
                    v.model,
                    v.raw_output,
                    v.parsed,
                    v.error,
                    v.finish_reason,
                    v.input_tokens,
                    v.output_tokens,
                    v.reused_from_id is not None,
                    v.image_refs,
                    v.role,
                )
                for v in sorted(verdicts, key=lambda v: v.sequence)
            ],
            "decision": (
                decision.action,
                decision.source,
                decision.reason,
                decision.detail,
                decision.categories,
                decision.actor,
            ),
            "tasks": [
                (
                    task.kind,
                    task.status,
                    task.priority,
                    task.reason,
                    task.source,
                    task.categories,
                    task.max_severity,
                    task.decision_id == decision.id,
                    task.due_at - task.created_at,
                )
                for task in tasks
            ],
            "deliveries": [(d.event_type, d.sequence) for d in deliveries],
            "events": [
                (
                    e.event,
                    e.actor.split(":")[0],
                    {k: v for k, v in e.data.items() if k != "latency_ms"},
                )
                for e in events
                # Delivery attempts are recorded by whichever worker sends the callback, later.
                if not e.event.startswith("callback_")
            ],
        }


def _judge(
    database_url: str, runtime: PipelineRuntime, fake_vlm: Any, tenant: Any, replies: list[Any]
) -> uuid.UUID:
    case = marker()
    fake_vlm.script(case, replies)
    submission_id = insert_without_sending(database_url, tenant, f"caption {case}")
    moderate_submission(submission_id, runtime)
    return submission_id


@pytest.mark.parametrize("callback", [False, True], ids=["no-callback", "callback"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_statement_writes_what_the_orm_path_writes(
    migrated, fake_vlm, monkeypatch, case, callback
):
    tenant = make_tenant(
        migrated, callback_url="https://receiver.example.com/hooks" if callback else None
    )
    runtime = PipelineRuntime.from_settings(Settings(verdict_cache=False))
    stored_by: list[str] = []
    covers = store.covers

    def spy(judged: Any, decided_before: bool) -> bool:
        stored_by.append("statement" if covers(judged, decided_before) else "orm")
        return covers(judged, decided_before)

    try:
        monkeypatch.setattr(store, "covers", spy)
        fast = _judge(migrated, runtime, fake_vlm, tenant, CASES[case])
        monkeypatch.setattr(store, "covers", lambda *_: False)
        slow = _judge(migrated, runtime, fake_vlm, tenant, CASES[case])
    finally:
        runtime.heartbeat.stop()
    assert stored_by == ["statement"]

    one_statement, orm = _snapshot(migrated, fast), _snapshot(migrated, slow)
    # The image bytes are equal (same upload), the verdicts' prompts differ by the caption only.
    assert one_statement == orm
    if case == "review":
        [task] = one_statement["tasks"]
        assert task[1] == "open" and task[8] == timedelta(minutes=task[8].total_seconds() / 60)
    if callback:
        assert len(one_statement["deliveries"]) == 1
    with session_scope(get_sessionmaker(migrated)) as session:
        assert verify_audit_chains(session, tenant.tenant_id).intact
        # Both judgements were counted against the tenant's budget.
        assert token_budget(session, tenant.tenant_id).used_today > 0


def test_a_lost_lease_writes_nothing(migrated, fake_vlm):
    tenant = make_tenant(migrated)
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
    runtime = PipelineRuntime.from_settings(Settings())
    try:
        work = moderate._claim(submission_id, runtime)
        assert work is not None
        judged = moderate.judge_content(
            work.images, work.text, work.policy, runtime, deadline=moderate._deadline(runtime)
        )
        assert store.covers(judged, work.decided_before)
        stolen = moderate.WorkItem(**{**work.__dict__, "lease_token": uuid.uuid4()})
        assert moderate._store(stolen, judged, runtime) is False
    finally:
        runtime.heartbeat.stop()
    with session_scope(get_sessionmaker(migrated)) as session:
        assert repository.decisions_of(session, submission_id) == []
        assert repository.verdicts_of(session, submission_id) == []
        submission = repository.get(session, submission_id)
        assert submission is not None and submission.status == "processing"
        assert [e.event for e in events_of(session, submission_id)] == ["processing_started"]
