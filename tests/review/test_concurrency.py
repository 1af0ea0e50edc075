"""Races, run for real: many claimers at once, and decisions that collide."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

from sqlalchemy import func, select

from moderation.core.errors import Conflict
from moderation.decisions.models import Decision, DecisionSource
from moderation.review import service
from moderation.review.schemas import ClaimRequest, ReviewDecisionCreate
from tests.factories import expire_lease, make_principal, make_review_task

CLAIMERS = 20
TASKS = 100


def test_twenty_claimers_take_a_hundred_tasks_exactly_once(tx, tenant_id, settings):
    with tx() as session:
        reviewers = [
            make_principal(session, tenant_id, "reviewer", f"reviewer-{n}") for n in range(CLAIMERS)
        ]
        created = {make_review_task(session, tenant_id).id for _ in range(TASKS)}
    claimed: list[list[uuid.UUID]] = [[] for _ in range(CLAIMERS)]
    errors: list[BaseException] = []
    start = threading.Barrier(CLAIMERS)

    def claimer(n: int) -> None:
        try:
            start.wait()
            while True:
                # Each claimer has its own session, as each request would.
                with tx() as session:
                    result = service.claim_tasks(
                        session, reviewers[n], ClaimRequest(limit=3), settings
                    )
                if not result.items:
                    return
                claimed[n] += [item.id for item in result.items]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(CLAIMERS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - began

    assert not errors, errors
    counts = Counter(task_id for ids in claimed for task_id in ids)
    double_claims = sum(count - 1 for count in counts.values() if count > 1)
    print(
        f"\nservice: {CLAIMERS} claimers, {TASKS} tasks: {TASKS / elapsed:.0f} claims/s, "
        f"{double_claims} double claims, {sum(1 for ids in claimed if ids)} claimers got work"
    )
    assert double_claims == 0
    assert set(counts) == created


def _race(*actions) -> list[object]:
    """Run the actions at the same instant; each result is a value or the exception raised."""
    results: list[object] = [None] * len(actions)
    start = threading.Barrier(len(actions))

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = actions[n]()
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _reviewer_decisions(tx, submission_id: uuid.UUID) -> int:
    with tx() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Decision)
                .where(
                    Decision.submission_id == submission_id,
                    Decision.source == DecisionSource.reviewer,
                )
            )
        )


def test_two_reviewers_deciding_the_same_task_at_once_make_one_decision(tx, tenant_id, settings):
    with tx() as session:
        alice = make_principal(session, tenant_id, "reviewer", "alice")
        bob = make_principal(session, tenant_id, "reviewer", "bob")
        task = make_review_task(session, tenant_id)
    block = ReviewDecisionCreate.model_validate(
        {"action": "block", "categories": [{"category": "hate", "severity": 3}]}
    )
    allow = ReviewDecisionCreate(action="allow")
    # Alice's lease lapses, Bob takes the task over; both press "decide" at the same moment.
    with tx() as session:
        service.claim_tasks(session, alice, ClaimRequest(), settings)
        expire_lease(session, task.id)
    with tx() as session:
        service.claim_tasks(session, bob, ClaimRequest(), settings)

    def decide(principal, body):
        def action():
            with tx() as session:
                return service.decide_task(session, principal, task.id, body)

        return action

    results = _race(decide(alice, block), decide(bob, allow))
    assert isinstance(results[0], Conflict)
    assert not isinstance(results[1], Exception)
    assert _reviewer_decisions(tx, task.submission_id) == 1

    # The same reviewer sending the decision twice at once (a double click): one lands.
    with tx() as session:
        again = make_review_task(session, tenant_id)
        service.claim_tasks(session, alice, ClaimRequest(), settings)
    twice = []
    for _ in range(2):

        def action():
            with tx() as session:
                return service.decide_task(session, alice, again.id, block)

        twice.append(action)
    results = _race(*twice)
    assert sum(isinstance(result, Conflict) for result in results) == 1
    assert _reviewer_decisions(tx, again.submission_id) == 1
