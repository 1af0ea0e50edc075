"""The model server is down for 30 s while submissions keep coming: nothing is let through.

The outage is a real one: the model server's socket closes, open connections are cut, and
calls are refused until it listens on the same port again. What arrives meanwhile cannot be
judged, so it goes to review with the reason `model_unavailable`, never to allow; where the
service re-drives such reviews, it judges them again once the model is back. Submissions made
after the model is back are judged by it.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import DeploymentFactory
from tests.chaos.stack import Figures
from tests.fakes.fake_vlm import FakeVLMServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

BEFORE = 10
OUTAGE_S = 30.0
# Submissions keep arriving during the outage: a batch every couple of seconds.
BATCH = 4
BATCH_EVERY_S = 2.0
AFTER = 10


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_a_model_outage_of_30_s_lets_nothing_through_and_loses_nothing(
    deploy: DeploymentFactory, broker, model: FakeVLMServer, report
):
    started = time.monotonic()
    figures = Figures("model server down 30 s", broker.kind)
    deployment = deploy(workers=2)
    stack, ledger, ingest = deployment.stack, deployment.ledger, deployment.keys.ingest
    stack.wait_workers_ready()

    ids = stack.submit(BEFORE, ingest, label="model-before")
    ledger.wait_settled(at_least=1, timeout=60)

    unsettled_at_stop = ledger.unsettled()
    model.stop()
    down_at = time.monotonic()
    during: list[str] = []
    batch = 0
    while time.monotonic() - down_at < OUTAGE_S - BATCH_EVERY_S:
        during += stack.submit(BATCH, ingest, label=f"model-down-{batch}")
        batch += 1
        time.sleep(max(0.0, down_at + batch * BATCH_EVERY_S - time.monotonic()))
    time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
    model.start()
    back_at = time.monotonic()
    figures.in_flight = unsettled_at_stop + len(during)
    figures.notes["outage"] = f"{back_at - down_at:.1f} s"

    after = stack.submit(AFTER, ingest, label="model-after")
    ids += during + after
    figures.submitted = len(ids)
    ledger.wait_quiet(ids, timeout=90)
    figures.recovery_s = time.monotonic() - back_at
    problems = ledger.check(figures, ids)
    reasons = ledger.decision_reasons()
    figures.notes["sent to review by the outage"] = reasons.get("model_unavailable", 0)
    figures.notes["workers restarted in place"] = stack.worker_restarts()
    figures.total_s = time.monotonic() - started
    report(figures)
    assert not problems, problems
    assert reasons.get("model_unavailable", 0) > 0, "the outage was not felt"
    assert model.stats()["requests"] > 0
