"""kill -9 of a worker with 200 submissions in flight: the other worker finishes them all.

The killed worker acknowledges nothing and hands nothing back. Its leases run out and the relay
of the surviving worker re-sends those submissions; messages it had taken are either handed out
again by the broker (RabbitMQ at once, Redis after its visibility timeout) or re-sent by the
relay, and a second delivery of a message finds the row decided or leased and does nothing.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import DeploymentFactory
from tests.chaos.stack import Figures

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

# About 200 still in flight when the kill comes, after the first decisions and callbacks.
ITEMS = 220
DECIDED_BEFORE_KILL = 20


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_kill_9_of_a_worker_loses_nothing_and_decides_nothing_twice(
    deploy: DeploymentFactory, broker, report
):
    started = time.monotonic()
    figures = Figures("kill -9 of a worker", broker.kind)
    deployment = deploy(workers=0)
    stack, ledger = deployment.stack, deployment.ledger

    # Everything is submitted before the workers start, so nearly all are in flight at the
    # kill, which comes once callbacks are flowing too.
    ids = stack.submit(ITEMS, deployment.keys.ingest, label="kill")
    figures.submitted = len(ids)
    figures.notes["submitted in"] = f"{time.monotonic() - started:.1f} s"
    victim = stack.start_worker(8)
    stack.start_worker(8)
    stack.wait_workers_ready()
    ledger.wait_for("processing", at_least=8, timeout=60)
    ledger.wait_settled(at_least=DECIDED_BEFORE_KILL, timeout=60)

    figures.in_flight = ledger.unsettled()
    victim.kill()
    killed_at = time.monotonic()

    figures.recovery_s = ledger.wait_quiet(ids, timeout=100)
    assert time.monotonic() - killed_at >= figures.recovery_s
    problems = ledger.check(figures, ids, cut_at=killed_at)
    figures.notes["workers restarted in place"] = stack.worker_restarts()
    figures.total_s = time.monotonic() - started
    report(figures)
    assert figures.in_flight >= ITEMS // 2, "the kill came too late to test much"
    assert not problems, problems
    # At most the jobs the killed worker was running at once (MODERATION_JOB_CONCURRENCY).
    assert figures.notes["callbacks re-sent after the kill cut their record off"] <= 4
