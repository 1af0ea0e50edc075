"""PostgreSQL stops for 10 s mid-run: afterwards every submission is decided once, every
callback delivered once.

The server stopped is the suite's own (`chaos_postgres`), never the machine's shared one. A
fast shutdown cuts every open session, as a crash or a failover would: work that had not
committed is rolled back, and its submission is still queued or leased, so the relay re-sends
it once the database is back; work that had committed stands, and a second run of it finds the
row decided.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import DeploymentFactory
from tests.chaos.services import PrivatePostgres
from tests.chaos.stack import Figures

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

ITEMS = 200
OUTAGE_S = 10.0


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_a_database_stop_mid_run_loses_nothing_and_decides_nothing_twice(
    deploy: DeploymentFactory, broker, chaos_postgres: PrivatePostgres, report
):
    started = time.monotonic()
    figures = Figures("PostgreSQL stopped 10 s", broker.kind)
    # A callback attempt whose answer could not be recorded while the database was away is
    # sent again after timeout + grace: the grace must outlast the outage and the reconnects
    # after it (on a loaded machine those take seconds), or a receiver sees the event twice.
    deployment = deploy(workers=2, settings={"MODERATION_WEBHOOK_ATTEMPT_GRACE_S": "40"})
    stack, ledger = deployment.stack, deployment.ledger
    stack.wait_workers_ready()

    ids = stack.submit(ITEMS, deployment.keys.ingest, label="database")
    figures.submitted = len(ids)
    ledger.wait_settled(at_least=20, timeout=60)

    figures.in_flight = ledger.unsettled()
    chaos_postgres.stop()
    down_at = time.monotonic()
    time.sleep(OUTAGE_S)
    chaos_postgres.start()
    back_at = time.monotonic()
    figures.notes["outage"] = f"{back_at - down_at:.1f} s"

    figures.recovery_s = ledger.wait_quiet(ids, timeout=100)
    problems = ledger.check(figures, ids)
    figures.notes["workers restarted in place"] = stack.worker_restarts()
    figures.total_s = time.monotonic() - started
    report(figures)
    dead = [worker for worker in stack.workers if not worker.alive()]
    assert not dead, "a worker died:\n" + "\n".join(worker.tail(8000) for worker in dead)
    assert not problems, problems
