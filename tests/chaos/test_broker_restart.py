"""The broker restarts mid-run and forgets every message: nothing is lost all the same.

Postgres, not the broker, knows what work exists. Submissions accepted while the broker is away
are committed and answered 202; workers reconnect on their own; the relay re-sends whatever
the broker dropped, and a message delivered twice finds its row decided or leased.

Only a private Redis is restarted here, a redis-server this test starts without persistence
(the harshest case: a restart empties it). The machine's shared RabbitMQ is never restarted by
a test, so this test has no RabbitMQ variant; RabbitMQ's own durable queues survive a restart.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import DeploymentFactory
from tests.chaos.stack import Figures

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

ITEMS = 200
DURING_OUTAGE = 20
OUTAGE_S = 3.0


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_broker_restart_mid_run_loses_nothing_and_decides_nothing_twice(
    deploy: DeploymentFactory, broker, report
):
    started = time.monotonic()
    figures = Figures("broker restart", broker.kind)
    deployment = deploy(workers=2)
    stack, ledger, redis = deployment.stack, deployment.ledger, broker.redis
    assert redis is not None
    stack.wait_workers_ready()

    ids = stack.submit(ITEMS, deployment.keys.ingest, label="broker")
    ledger.wait_settled(at_least=20, timeout=60)

    figures.in_flight = ledger.unsettled()
    redis.stop()
    down_at = time.monotonic()
    # Ingest goes on while the broker is away: rows are committed, the relay sends them later.
    during = stack.submit(DURING_OUTAGE, deployment.keys.ingest, label="broker-down")
    accepted_in = time.monotonic() - down_at
    time.sleep(max(0.0, OUTAGE_S - accepted_in))
    figures.in_flight = max(figures.in_flight, ledger.unsettled())
    redis.start()
    back_at = time.monotonic()
    figures.notes["outage"] = f"{back_at - down_at:.1f} s"
    figures.notes["accepted while down"] = f"{len(during)} in {accepted_in:.1f} s"

    ids += during
    figures.submitted = len(ids)
    figures.recovery_s = ledger.wait_quiet(ids, timeout=90)
    problems = ledger.check(figures, ids)
    figures.notes["workers restarted in place"] = stack.worker_restarts()
    figures.total_s = time.monotonic() - started
    report(figures)
    dead = [worker for worker in stack.workers if not worker.alive()]
    assert not dead, "a worker gave up on the broker:\n" + "\n".join(w.tail(8000) for w in dead)
    assert not problems, problems
