"""Review tasks of submissions awaiting re-drive stay out of the queue, the claims and the
queue metrics unless a reviewer asks for them; they come back when re-drive gives up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from moderation.config import Settings
from moderation.decisions.models import DecisionSource, ReviewReason
from moderation.decisions.rules import failure
from moderation.decisions.service import record_decision
from moderation.pipeline.redrive import schedule_redrive
from moderation.review.metrics import ReviewCollector
from moderation.submissions.models import Submission
from tests.factories import make_principal, make_review_task, waiting_task
from tests.review.test_service import claim, queue_ids

REDRIVE = Settings(redrive_base_delay_s=600, redrive_max_delay_s=600)


def queue_depth(sessions) -> float:
    registry = CollectorRegistry()
    registry.register(ReviewCollector(sessions))
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("moderation_review_queue_depth{")
    )


def test_tasks_awaiting_redrive_are_hidden_unless_asked_for(tx, tenant_id, settings, sessions):
    with tx() as session:
        outage = make_review_task(
            session, tenant_id, reason=ReviewReason.model_unavailable, source=DecisionSource.system
        )
        ordinary = make_review_task(session, tenant_id)
        reviewer = make_principal(session, tenant_id)
    depth = queue_depth(sessions)
    with tx() as session:
        submission = session.get(Submission, outage.submission_id)
        assert submission is not None
        assert schedule_redrive(
            session, submission, ReviewReason.model_unavailable, REDRIVE, window_until=None
        )

    assert queue_depth(sessions) == depth - 1
    assert queue_ids(tx, reviewer) == [ordinary.id]
    assert set(queue_ids(tx, reviewer, include_redrive=True)) == {ordinary.id, outage.id}
    assert claim(tx, reviewer, settings, limit=50) == [ordinary.id]
    assert claim(tx, reviewer, settings, limit=50) == []
    assert claim(tx, reviewer, settings, limit=50, include_redrive=True) == [outage.id]


def test_when_redrive_gives_up_the_new_task_is_in_the_queue(tx, tenant_id):
    with tx() as session:
        outage = make_review_task(
            session, tenant_id, reason=ReviewReason.model_unavailable, source=DecisionSource.system
        )
        submission = session.get(Submission, outage.submission_id)
        assert submission is not None
        schedule_redrive(
            session, submission, ReviewReason.model_unavailable, REDRIVE, window_until=None
        )
        reviewer = make_principal(session, tenant_id)
    assert outage.id not in queue_ids(tx, reviewer)

    # The re-drive failed again after its window: a plain review decision, nothing scheduled.
    with tx() as session:
        submission = session.get(Submission, outage.submission_id)
        assert submission is not None
        record_decision(
            session,
            submission,
            failure(ReviewReason.model_unavailable),
            source=DecisionSource.system,
        )
        fresh = waiting_task(session, submission.id)
    assert fresh.id != outage.id
    assert fresh.id in queue_ids(tx, reviewer)
