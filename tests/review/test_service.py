"""Review tasks at the service level: opened with every review decision, ordered, claimed under
leases, decided once, escalated to admins, appealed to someone else."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select

from moderation.audit.service import events_of
from moderation.config import Settings
from moderation.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from moderation.decisions.models import Action, Decision, DecisionSource, ReviewReason
from moderation.decisions.rules import Outcome
from moderation.decisions.service import record_decision
from moderation.review import service
from moderation.review.metrics import ReviewCollector
from moderation.review.models import ReviewTask, TaskKind, TaskStatus
from moderation.review.schemas import (
    AppealCreate,
    ClaimRequest,
    EscalateRequest,
    RenewRequest,
    ReviewDecisionCreate,
)
from moderation.submissions.models import Submission, SubmissionStatus
from moderation.tenants.service import Principal
from tests.factories import (
    age_task,
    expire_lease,
    hold_task,
    make_decided_submission,
    make_principal,
    make_review_task,
    make_submission,
    make_tenant_row,
    waiting_task,
)

BLOCK_VIOLENCE = ReviewDecisionCreate.model_validate(
    {"action": "block", "categories": [{"category": "violence", "severity": 3}], "notes": "gore"}
)
ALLOW = ReviewDecisionCreate(action="allow")


def claim(tx, principal: Principal, settings: Settings, **request) -> list[uuid.UUID]:
    with tx() as session:
        result = service.claim_tasks(session, principal, ClaimRequest(**request), settings)
    return [item.id for item in result.items]


def queue_ids(tx, principal: Principal, **filters) -> list[uuid.UUID]:
    with tx() as session:
        page = service.read_queue(
            session, principal, service.QueueQuery(**filters), limit=100, cursor=None
        )
    return [item.id for item in page.items]


def decide(tx, principal: Principal, task_id: uuid.UUID, body: ReviewDecisionCreate = ALLOW):
    with tx() as session:
        return service.decide_task(session, principal, task_id, body)


def event_names(tx, submission_id: uuid.UUID) -> list[str]:
    with tx() as session:
        return [event.event for event in events_of(session, submission_id)]


def test_a_review_decision_opens_a_task_with_priority_and_due_time(tx, tenant_id):
    with tx() as session:
        task = make_review_task(
            session, tenant_id, categories=[{"category": "harassment", "severity": 2}]
        )
        assert task.kind is TaskKind.review and task.status is TaskStatus.open
        assert task.reason == "below_threshold" and task.source == "model"
        assert task.priority == 102 and task.max_severity == 2
        # The shipped policy gives reviewers a day.
        assert task.due_at - task.created_at == timedelta(minutes=1440)


def test_a_newer_decision_cancels_the_waiting_task_and_a_new_review_replaces_it(tx, tenant_id):
    with tx() as session:
        first = make_review_task(session, tenant_id)
        submission = session.get(Submission, first.submission_id)
        record_decision(
            session,
            submission,
            Outcome(Action.review, ReviewReason.processing_failed),
            source=DecisionSource.system,
        )
        second = waiting_task(session, submission.id)
        assert second.id != first.id and second.source == "system"
        session.refresh(first)
        assert first.status is TaskStatus.cancelled
        record_decision(session, submission, Outcome(Action.allow), source=DecisionSource.model)
        session.refresh(second)
        assert second.status is TaskStatus.cancelled
    assert event_names(tx, submission.id).count("review_cancelled") == 2


def test_queue_order_appeals_then_escalations_then_child_safety_then_severity_then_oldest(
    tx, tenant_id, settings
):
    with tx() as session:
        reviewer = make_principal(session, tenant_id, "reviewer", "rita")
        admin = make_principal(session, tenant_id, "admin", "ada")
        old_mild = make_review_task(
            session, tenant_id, categories=[{"category": "hate", "severity": 1}]
        )
        new_mild = make_review_task(
            session, tenant_id, categories=[{"category": "hate", "severity": 1}]
        )
        severe = make_review_task(
            session, tenant_id, categories=[{"category": "violence", "severity": 4}]
        )
        child = make_review_task(
            session, tenant_id, categories=[{"category": "child_safety", "severity": 1}]
        )
        no_category = make_review_task(session, tenant_id, reason=ReviewReason.low_confidence)
        to_escalate = make_review_task(
            session, tenant_id, categories=[{"category": "scam_spam", "severity": 1}]
        )
        decided, _ = make_decided_submission(session, tenant_id)
        age_task(session, old_mild.id, created_ago=600, due_in=3600)
    [claimed] = claim(tx, reviewer, settings, kind=TaskKind.review, limit=1)
    assert claimed == child.id  # child safety outranks severity among reviews
    with tx() as session:
        service.release_task(session, reviewer, child.id)
    # Escalate the least urgent review: escalations outrank every review.
    with tx() as session:
        hold_task(session, to_escalate.id, reviewer)
    with tx() as session:
        escalation = service.escalate_task(
            session, reviewer, to_escalate.id, EscalateRequest(notes="needs an admin")
        )
    with tx() as session:
        appeal = service.appeal_submission(
            session,
            make_principal(session, tenant_id, "ingest"),
            decided.id,
            AppealCreate(reason="it is a film still"),
        )

    reviews = [child.id, severe.id, old_mild.id, new_mild.id, no_category.id]
    assert queue_ids(tx, admin) == [appeal.id, escalation.id, *reviews]
    assert queue_ids(tx, reviewer) == [appeal.id, *reviews]  # escalations are for admins

    with tx() as session:  # cursor pagination walks the same order, page by page
        seen, cursor = [], None
        while True:
            page = service.read_queue(session, admin, service.QueueQuery(), limit=2, cursor=cursor)
            seen += [item.id for item in page.items]
            assert page.total == 7
            cursor = page.next_cursor
            if cursor is None:
                break
    assert seen == [appeal.id, escalation.id, *reviews]


def test_queue_filters(tx, tenant_id):
    with tx() as session:
        reviewer = make_principal(session, tenant_id, "reviewer", "rita")
        hate = make_review_task(
            session, tenant_id, categories=[{"category": "hate", "severity": 2}]
        )
        failed = make_review_task(
            session,
            tenant_id,
            reason=ReviewReason.fetch_failed,
            source=DecisionSource.system,
        )
        late = make_review_task(
            session, tenant_id, categories=[{"category": "violence", "severity": 1}]
        )
        age_task(session, late.id, created_ago=7200, due_in=-60)

    assert queue_ids(tx, reviewer, category="hate") == [hate.id]
    assert queue_ids(tx, reviewer, reason="fetch_failed") == [failed.id]
    assert queue_ids(tx, reviewer, source="system") == [failed.id]
    assert set(queue_ids(tx, reviewer, source="model")) == {hate.id, late.id}
    assert queue_ids(tx, reviewer, older_than=timedelta(hours=1)) == [late.id]
    assert set(queue_ids(tx, reviewer, newer_than=timedelta(hours=1))) == {hate.id, failed.id}
    assert queue_ids(tx, reviewer, sla_breached=True) == [late.id]
    assert len(queue_ids(tx, reviewer, policy="default")) == 3
    assert queue_ids(tx, reviewer, policy="no-such-policy") == []
    with tx() as session:
        page = service.read_queue(session, reviewer, service.QueueQuery(), limit=1, cursor=None)
    assert page.total == 3 and page.sla_breached == 1 and page.next_cursor
    [item] = page.items
    assert item.sla_breached is (item.id == late.id)


def test_a_task_shows_everything_needed_to_decide(tx, tenant_id, settings):
    with tx() as session:
        reviewer = make_principal(session, tenant_id, "reviewer", "rita")
        task = make_review_task(
            session, tenant_id, categories=[{"category": "weapons_drugs", "severity": 2}]
        )
    [claimed] = claim(tx, reviewer, settings)
    with tx() as session:
        view = service.read_task(session, reviewer, claimed)
    assert view.id == task.id and view.status is TaskStatus.claimed
    assert view.claimed_by == "rita" and view.lease_expires_at is not None
    assert view.reason == "below_threshold"
    assert view.submission.text == "a caption"
    [image] = view.submission.images
    assert image.href == f"/v1/submissions/{task.submission_id}/images/0"
    [verdict] = view.verdicts
    [violation] = verdict.violations
    assert violation.category == "weapons_drugs" and violation.image == 0
    assert violation.rationale
    assert view.policy.slug == "default" and view.policy.version == 1
    assert {c.id for c in view.policy.categories} >= {"child_safety", "weapons_drugs"}
    assert all(c.definition for c in view.policy.categories)
    [decision] = view.decisions
    assert decision.action is Action.review and decision.reason == "below_threshold"
    assert view.appeals == []


def test_claims_never_overlap_and_an_expired_lease_returns_the_task(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        bob = make_principal(session, tenant_id, "reviewer", "bob")
        tasks = [make_review_task(session, tenant_id) for _ in range(3)]
    first = claim(tx, alice, settings, limit=2)
    second = claim(tx, bob, settings, limit=5)
    assert len(first) == 2 and len(second) == 1 and not set(first) & set(second)
    assert claim(tx, bob, settings) == []
    assert queue_ids(tx, bob) == []  # claimed tasks are not waiting

    with tx() as session:
        expire_lease(session, first[0])
    assert queue_ids(tx, bob) == [first[0]]  # back in the queue as soon as the lease lapsed
    with pytest.raises(Conflict):
        decide(tx, alice, first[0])  # the lapsed holder may not decide it any more
    assert claim(tx, bob, settings) == [first[0]]
    events = event_names(tx, next(t.submission_id for t in tasks if t.id == first[0]))
    assert events[-3:] == ["claimed", "expired", "claimed"]
    with pytest.raises(Conflict):
        decide(tx, alice, first[0])
    outcome = decide(tx, bob, first[0], BLOCK_VIOLENCE)
    assert outcome.decision.source is DecisionSource.reviewer


def test_a_decision_needs_the_callers_live_lease(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        bob = make_principal(session, tenant_id, "reviewer", "bob")
        task = make_review_task(session, tenant_id)
    with pytest.raises(Conflict, match="claim it first"):
        decide(tx, alice, task.id)  # open, nobody holds it
    claim(tx, alice, settings)
    with pytest.raises(Conflict):
        decide(tx, bob, task.id)  # someone else's lease
    with pytest.raises(Conflict), tx() as session:
        service.renew_lease(session, bob, task.id, RenewRequest(), settings)
    with pytest.raises(Conflict), tx() as session:
        service.release_task(session, bob, task.id)
    decide(tx, alice, task.id, BLOCK_VIOLENCE)
    with pytest.raises(Conflict, match="decided"):
        decide(tx, alice, task.id)  # once decided, never again


def test_renew_and_release(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        admin = make_principal(session, tenant_id, "admin", "ada")
        task = make_review_task(session, tenant_id)
    claim(tx, alice, settings, lease_seconds=30)
    with tx() as session:
        before = session.get(ReviewTask, task.id).lease_expires_at
        state = service.renew_lease(
            session, alice, task.id, RenewRequest(lease_seconds=600), settings
        )
    assert state.lease_expires_at > before
    with pytest.raises(ValidationFailed), tx() as session:
        service.renew_lease(session, alice, task.id, RenewRequest(lease_seconds=10**6), settings)
    with tx() as session:
        released = service.release_task(session, admin, task.id)  # the shift lead's override
    assert released.status is TaskStatus.open and released.claimed_by is None
    assert event_names(tx, task.submission_id)[-1] == "released"
    with pytest.raises(Conflict), tx() as session:
        service.renew_lease(session, alice, task.id, RenewRequest(), settings)


def test_a_reviewers_decision_supersedes_the_automatic_one_and_keeps_both(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        task = make_review_task(
            session, tenant_id, categories=[{"category": "violence", "severity": 2}]
        )
    claim(tx, alice, settings)
    outcome = decide(tx, alice, task.id, BLOCK_VIOLENCE)
    assert outcome.task.status is TaskStatus.decided
    assert outcome.policy.slug == "default" and outcome.policy.version == 1
    assert outcome.claim_to_decision_ms >= 0
    assert outcome.decision.actor.startswith("alice (key:")
    with tx() as session:
        submission = session.get(Submission, task.submission_id)
        assert submission.status is SubmissionStatus.decided
        assert submission.action is Action.block
        history = session.scalars(
            select(Decision)
            .where(Decision.submission_id == submission.id)
            .order_by(Decision.created_at)
        ).all()
        assert [(d.action, d.source) for d in history] == [
            (Action.review, DecisionSource.model),
            (Action.block, DecisionSource.reviewer),
        ]
        stored = session.get(ReviewTask, task.id)
        assert stored.result_decision_id == history[-1].id
        assert stored.decided_at is not None and stored.decision_ms is not None
        assert stored.claimed_by_name == "alice"
        [reviewed] = [e for e in events_of(session, submission.id) if e.event == "reviewed"]
        assert reviewed.actor.startswith("alice")
        assert reviewed.data["policy_version"] == 1
        assert reviewed.data["reviewer"] == "alice"
        assert "claim_to_decision_ms" in reviewed.data


def test_decision_categories_must_belong_to_the_policy_version(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        task = make_review_task(session, tenant_id)
    claim(tx, alice, settings)
    unknown = ReviewDecisionCreate.model_validate(
        {"action": "block", "categories": [{"category": "piracy", "severity": 3}]}
    )
    with pytest.raises(ValidationFailed) as caught:
        decide(tx, alice, task.id, unknown)
    assert caught.value.errors[0]["loc"] == ["body", "categories", 0, "category"]
    with pytest.raises(ValueError, match="at least one"):
        ReviewDecisionCreate.model_validate({"action": "restrict", "categories": []})
    with pytest.raises(ValueError, match="once"):
        ReviewDecisionCreate.model_validate(
            {
                "action": "block",
                "categories": [
                    {"category": "hate", "severity": 3},
                    {"category": "hate", "severity": 4},
                ],
            }
        )


def test_escalation_goes_to_the_admins_who_alone_decide_it(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        bob = make_principal(session, tenant_id, "reviewer", "bob")
        admin = make_principal(session, tenant_id, "admin", "ada")
        task = make_review_task(
            session, tenant_id, categories=[{"category": "violence", "severity": 2}]
        )
    claim(tx, alice, settings)
    with tx() as session:
        escalation = service.escalate_task(
            session, alice, task.id, EscalateRequest(notes="credible threat?")
        )
    assert escalation.kind is TaskKind.escalation and escalation.status is TaskStatus.open
    with pytest.raises(Conflict):  # the escalated task is closed
        decide(tx, alice, task.id)
    assert claim(tx, bob, settings) == []
    with pytest.raises(Forbidden):
        claim(tx, bob, settings, kind=TaskKind.escalation)
    with pytest.raises(Forbidden), tx() as session:
        service.read_task(session, bob, escalation.id)
    with pytest.raises(Forbidden):
        decide(tx, bob, escalation.id)
    assert claim(tx, admin, settings) == [escalation.id]
    with tx() as session:
        view = service.read_task(session, admin, escalation.id)
    assert view.notes == "credible threat?" and view.escalated_from == task.id
    outcome = decide(tx, admin, escalation.id, BLOCK_VIOLENCE)
    assert outcome.decision.source is DecisionSource.reviewer
    assert outcome.decision.actor.startswith("ada")
    assert "escalated" in event_names(tx, task.submission_id)


def test_appeals_rules(tx, tenant_id, settings):
    with tx() as session:
        uploader = make_principal(session, tenant_id, "ingest", None)
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        alice_again = make_principal(session, tenant_id, "reviewer", "alice")  # a second key
        bob = make_principal(session, tenant_id, "reviewer", "bob")
        task = make_review_task(session, tenant_id)
        in_review = task.submission_id
        undecided = make_submission(session, tenant_id, status=SubmissionStatus.queued)

    def appeal(submission_id: uuid.UUID, reason: str = "please look again"):
        with tx() as session:
            return service.appeal_submission(
                session, uploader, submission_id, AppealCreate(reason=reason)
            )

    with pytest.raises(Conflict):
        appeal(undecided.id)  # nothing decided yet
    with pytest.raises(Conflict):
        appeal(in_review)  # still waiting for its first reviewer
    with pytest.raises(NotFound):
        appeal(uuid.uuid4())

    claim(tx, alice, settings)
    decide(tx, alice, task.id, BLOCK_VIOLENCE)
    opened = appeal(in_review, "it is a film still")
    assert opened.status is TaskStatus.open
    with pytest.raises(Conflict, match="open appeal"):
        appeal(in_review)
    assert "appealed" in event_names(tx, in_review)

    # The decider is passed over when claiming, and refused outright when deciding.
    assert claim(tx, alice, settings) == []
    assert claim(tx, alice_again, settings) == []
    with tx() as session:
        hold_task(session, opened.id, alice)
    with pytest.raises(Forbidden):
        decide(tx, alice, opened.id)
    with pytest.raises(Forbidden):
        decide(tx, alice_again, opened.id)
    with tx() as session:
        expire_lease(session, opened.id)

    assert claim(tx, bob, settings) == [opened.id]
    with tx() as session:
        view = service.read_task(session, bob, opened.id)
    assert view.kind is TaskKind.appeal and view.notes == "it is a film still"
    assert [a.id for a in view.appeals] == [opened.id]
    assert [d.source for d in view.decisions] == [DecisionSource.model, DecisionSource.reviewer]
    outcome = decide(tx, bob, opened.id, ALLOW)
    assert outcome.decision.source is DecisionSource.appeal
    assert outcome.decision.action is Action.allow
    with tx() as session:
        assert session.get(Submission, in_review).action is Action.allow


def test_an_escalated_appeal_is_still_an_appeal(tx, tenant_id, settings):
    with tx() as session:
        uploader = make_principal(session, tenant_id, "ingest", None)
        bob = make_principal(session, tenant_id, "reviewer", "bob")
        admin = make_principal(session, tenant_id, "admin", "ada")
        submission, _ = make_decided_submission(session, tenant_id)
    with tx() as session:
        appeal = service.appeal_submission(
            session, uploader, submission.id, AppealCreate(reason="news photo")
        )
    claim(tx, bob, settings)
    with tx() as session:
        escalation = service.escalate_task(session, bob, appeal.id, EscalateRequest(notes="?"))
    assert claim(tx, admin, settings) == [escalation.id]
    outcome = decide(tx, admin, escalation.id, ALLOW)
    assert outcome.decision.source is DecisionSource.appeal


def test_another_tenants_tasks_are_not_found(tx, tenant_id, settings):
    with tx() as session:
        task = make_review_task(session, tenant_id)
        stranger = make_principal(session, make_tenant_row(session, "other"), "admin", "eve")
    assert queue_ids(tx, stranger) == [] and claim(tx, stranger, settings) == []
    for attempt in (
        lambda s: service.read_task(s, stranger, task.id),
        lambda s: service.decide_task(s, stranger, task.id, ALLOW),
        lambda s: service.release_task(s, stranger, task.id),
        lambda s: service.renew_lease(s, stranger, task.id, RenewRequest(), settings),
        lambda s: service.escalate_task(s, stranger, task.id, EscalateRequest(notes="x")),
        lambda s: service.appeal_submission(
            s, stranger, task.submission_id, AppealCreate(reason="x")
        ),
    ):
        with pytest.raises(NotFound), tx() as session:
            attempt(session)


def test_metrics_report_depth_age_breaches_and_decisions_by_source(
    tx, tenant_id, sessions, settings
):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        late = make_review_task(
            session, tenant_id, categories=[{"category": "child_safety", "severity": 2}]
        )
        age_task(session, late.id, created_ago=90_000, due_in=-3600)
        decided = make_review_task(session, tenant_id)
    claim(tx, alice, settings, limit=2)
    decide(tx, alice, decided.id, ALLOW)
    with tx() as session:
        expire_lease(session, late.id)

    registry = CollectorRegistry()
    registry.register(ReviewCollector(sessions))
    text = generate_latest(registry).decode()
    assert 'moderation_review_queue_depth{kind="review",priority="112"}' in text
    oldest = [
        line
        for line in text.splitlines()
        if line.startswith('moderation_review_oldest_task_age_seconds{kind="review"}')
    ]
    assert float(oldest[0].split()[-1]) >= 90_000
    assert 'moderation_review_sla_breached_tasks{kind="appeal"} 0.0' in text
    assert 'moderation_decisions_total{action="allow",source="reviewer"}' in text
