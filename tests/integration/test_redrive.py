"""Outages do not flood reviewers: what an outage sent to review is judged again by itself,
hidden from review queues meanwhile; an open circuit breaker fails fast and says so."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select

from moderation.audit.service import events_of
from moderation.config import Settings
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import Action, DecisionSource
from moderation.decisions.rules import Outcome
from moderation.decisions.service import record_decision
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.submissions import repository
from moderation.submissions.models import Submission, SubmissionStatus
from tests.factories import TenantKeys, insert_without_sending, marker
from tests.fakes import fake_vlm as fake
from tests.fakes.image_server import ImageServer

VIOLENT = fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))


def wait_until(
    client: httpx.Client,
    submission_id: uuid.UUID,
    tenant: TenantKeys,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 40.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(
            f"/v1/submissions/{submission_id}", headers=tenant.headers()
        ).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def awaiting_redrive(database_url: str, submission_id: uuid.UUID) -> bool:
    with session_scope(get_sessionmaker(database_url)) as session:
        hidden = session.scalars(
            select(Submission.id).where(
                Submission.id == submission_id, repository.awaiting_redrive()
            )
        ).all()
    return bool(hidden)


def judge_in_process(submission_id: uuid.UUID, **settings: Any) -> None:
    """Run the pipeline here with settings of the test's own (the running worker keeps its)."""
    runtime = PipelineRuntime.from_settings(Settings(**settings))
    try:
        moderate_submission(submission_id, runtime)
    finally:
        runtime.heartbeat.stop()


def event_names(database_url: str, submission_id: uuid.UUID) -> list[str]:
    with session_scope(get_sessionmaker(database_url)) as session:
        return [event.event for event in events_of(session, submission_id)]


def test_an_outage_review_is_hidden_then_judged_again_and_decided(
    client, tenant, fake_vlm, migrated
):
    case = marker()
    fake_vlm.script(case, [fake.error(503), VIOLENT])
    submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
    judge_in_process(
        submission_id,
        vlm_max_retries=0,
        redrive_base_delay_s=3,
        redrive_max_delay_s=3,
        redrive_window_s=120,
    )

    waiting = client.get(f"/v1/submissions/{submission_id}", headers=tenant.headers()).json()
    assert waiting["status"] == "in_review"
    assert waiting["decision"]["reason"] == "model_unavailable"
    assert waiting["redrive"]["next_at"] is not None and waiting["redrive"]["redrives"] == 0
    assert awaiting_redrive(migrated, submission_id)
    reviewer = tenant.headers("reviewer")
    hidden = client.get("/v1/review/queue", headers=reviewer).json()
    assert hidden["items"] == [] and hidden["total"] == 0
    asked = client.get("/v1/review/queue", params={"include_redrive": "true"}, headers=reviewer)
    [task] = asked.json()["items"]
    assert task["submission"]["id"] == str(submission_id)

    # The running worker's relay re-drives it when due; the model is back by then.
    result = wait_until(client, submission_id, tenant, lambda body: body["status"] == "decided")
    assert result["decision"]["action"] == "block"
    assert [d["reason"] for d in result["decisions"]] == ["model_unavailable", None]
    assert result["redrive"] is None
    assert not awaiting_redrive(migrated, submission_id)
    after = client.get("/v1/review/queue", params={"include_redrive": "true"}, headers=reviewer)
    assert after.json()["items"] == []
    names = event_names(migrated, submission_id)
    assert "review_cancelled" in names  # the decision made the waiting task moot
    assert names.index("review_required") < names.index("redrive_scheduled")
    assert names.index("redrive_scheduled") < names.index("redriven") < names.index("decided")
    assert names.count("processing_started") == 2


def test_when_the_window_closes_the_submission_stays_in_review(client, tenant, fake_vlm, migrated):
    case = marker()
    fake_vlm.script(case, [fake.error(503)])
    submission_id = insert_without_sending(migrated, tenant, f"caption {case}")
    judge_in_process(
        submission_id,
        vlm_max_retries=0,
        redrive_base_delay_s=1,
        redrive_max_delay_s=1,
        redrive_window_s=3,
    )
    assert awaiting_redrive(migrated, submission_id)

    # Re-driven once and failing again, its next turn (the worker's backoff: minutes) falls
    # after the window: reviewers get it.
    result = wait_until(
        client,
        submission_id,
        tenant,
        lambda body: body["status"] == "in_review" and len(body["decisions"]) == 2,
    )
    assert result["redrive"] is None
    assert [d["reason"] for d in result["decisions"]] == ["model_unavailable"] * 2
    assert not awaiting_redrive(migrated, submission_id)
    names = event_names(migrated, submission_id)
    assert names.count("redriven") == 1 and names[-1] == "redrive_ended"


def test_an_image_host_down_is_redriven_but_a_missing_image_is_not(
    tenant, migrated, image_server: ImageServer, service_env
):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down_port = probe.getsockname()[1]
    down = insert_without_sending(
        migrated, tenant, "host down", image_url=f"http://127.0.0.1:{down_port}/cat.jpg"
    )
    missing = insert_without_sending(
        migrated, tenant, "gone", image_url=image_server.url(f"/{marker()}.jpg")
    )
    allow = [f"127.0.0.1:{down_port}", f"127.0.0.1:{image_server.port}"]
    for submission_id in (down, missing):
        judge_in_process(submission_id, fetch_allow_hosts=allow, redrive_base_delay_s=600)

    with session_scope(get_sessionmaker(migrated)) as session:
        rows = {sid: repository.get(session, sid) for sid in (down, missing)}
        reasons = {sid: repository.decisions_of(session, sid)[-1].reason for sid in (down, missing)}
    assert reasons == {down: "fetch_failed", missing: "fetch_failed"}
    assert rows[down] is not None and rows[down].redrive_at is not None
    assert rows[missing] is not None and rows[missing].redrive_until is None
    assert "redrive_scheduled" not in event_names(migrated, missing)


def test_a_reviewer_decision_ends_the_redrive(migrated, tenant):
    submission_id = insert_without_sending(
        migrated,
        tenant,
        "waiting",
        status=SubmissionStatus.in_review,
        redrive_at=utcnow(),
        redrive_until=utcnow(),
    )
    with session_scope(get_sessionmaker(migrated)) as session:
        submission = repository.get(session, submission_id)
        assert submission is not None
        record_decision(
            session,
            submission,
            Outcome(Action.allow),
            source=DecisionSource.reviewer,
            actor="key:reviewer",
        )
    assert not awaiting_redrive(migrated, submission_id)


def test_an_open_circuit_fails_fast_to_redrive_and_the_api_says_so(
    client, tenant, fake_vlm, migrated
):
    down, waiting = marker(), marker()
    fake_vlm.script(down, [fake.error(503), fake.verdict(fake.safe_verdict())])
    fake_vlm.script(waiting, [fake.verdict(fake.safe_verdict())])
    first = insert_without_sending(migrated, tenant, f"caption {down}")
    second = insert_without_sending(migrated, tenant, f"caption {waiting}")
    runtime = PipelineRuntime.from_settings(
        Settings(
            vlm_max_retries=0,
            vlm_breaker_failures=1,
            vlm_breaker_cooldown_s=300,
            redrive_base_delay_s=2,
            redrive_max_delay_s=2,
        )
    )
    try:
        moderate_submission(first, runtime)
        moderate_submission(second, runtime)
        runtime.heartbeat.beat()  # what the heartbeat thread does at once on a change

        assert fake_vlm.requests_for(waiting) == []
        with session_scope(get_sessionmaker(migrated)) as session:
            [decision] = repository.decisions_of(session, second)
        assert decision.reason == "model_unavailable" and "circuit open" in (decision.detail or "")
        assert awaiting_redrive(migrated, second)

        ready = client.get("/readyz")
        assert ready.status_code == 503
        model = next(check for check in ready.json()["checks"] if check["name"] == "model")
        assert model["circuit"]["state"] == "open" and model["circuit"]["open_workers"] >= 1
        metrics = client.get("/metrics").text
        assert "moderation_model_circuit_open 1.0" in metrics
        assert 'moderation_model_circuit_workers{state="open"}' in metrics
        assert "moderation_submissions_awaiting_redrive" in metrics
    finally:
        runtime.heartbeat.stop()

    # A clean stop takes the worker's report with it; the running worker's breaker is closed.
    model = next(c for c in client.get("/readyz").json()["checks"] if c["name"] == "model")
    assert model["circuit"]["state"] == "closed"
    # Both are re-driven by the running worker, whose model calls go through.
    for submission_id in (first, second):
        wait_until(client, submission_id, tenant, lambda body: body["status"] == "decided")
