"""Callbacks end to end: HTTP in, a real worker, signed POSTs to a loopback receiver.

The service's retry schedule is shortened to 0.5 s, 1 s, 1.5 s (conftest), so the whole
schedule of a failing receiver plays out in a few seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import TenantKeys, image_b64, make_tenant, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.callback_receiver import CallbackReceiver, Endpoint
from tests.fakes.fake_vlm import FakeVLMServer

ROOT = Path(__file__).resolve().parents[2]


def submit_and_decide(
    client: httpx.Client,
    tenant: TenantKeys,
    fake_vlm: FakeVLMServer,
    reply: fake.Reply,
    *,
    callback_url: str | None = None,
) -> dict[str, Any]:
    case = marker()
    fake_vlm.script(case, [reply])
    body: dict[str, Any] = {
        "external_id": marker(),
        "text": f"caption {case}",
        "images": [{"data": image_b64()}],
    }
    if callback_url is not None:
        body["callback_url"] = callback_url
    accepted = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert accepted.status_code == 202, accepted.text
    return wait_for_outcome(client, accepted.json()["id"], tenant.headers())


def deliveries(client: httpx.Client, tenant: TenantKeys, submission_id: str) -> list[Any]:
    response = client.get(
        "/v1/webhooks/deliveries",
        params={"submission": submission_id},
        headers=tenant.headers("admin"),
    )
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


def wait_for_delivery(
    client: httpx.Client,
    tenant: TenantKeys,
    submission_id: str,
    status: str,
    attempts: int | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        items = deliveries(client, tenant, submission_id)
        if (
            items
            and items[0]["status"] == status
            and (attempts is None or len(items[0]["attempts"]) == attempts)
        ):
            return dict(items[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery of {submission_id} is {items}")
        time.sleep(0.1)


@pytest.fixture
def hooked(migrated: str, callback_receiver: CallbackReceiver) -> tuple[TenantKeys, Endpoint]:
    """A tenant whose callback URL is a fresh endpoint of the receiver that answers 204."""
    endpoint = callback_receiver.endpoint([])
    tenant = make_tenant(migrated, "hooked", callback_url=endpoint.url)
    endpoint.secrets.append(tenant.webhook_secret)
    return tenant, endpoint


def test_a_decision_reaches_the_receiver_signed(client, fake_vlm, hooked):
    tenant, endpoint = hooked
    result = submit_and_decide(
        client, tenant, fake_vlm, fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))
    )

    [received] = endpoint.wait_for(1)
    assert received.verified, received.headers
    event = received.event
    assert event["type"] == "moderation.decided"
    data = event["data"]
    assert data["submission_id"] == result["id"]
    assert data["external_id"] == result["external_id"]
    assert data["sequence"] == 1
    assert data["decision"]["action"] == "block"
    assert data["decision"]["source"] == "model"
    assert data["decision"]["categories"][0]["category"] == "violence"
    assert data["decision"]["decided_at"]
    assert data["policy"] == {"slug": "default", "version": 1}
    assert received.headers["webhook-id"].startswith("msg_")
    assert received.headers["content-type"] == "application/json"

    delivery = wait_for_delivery(client, tenant, result["id"], "delivered")
    assert delivery["webhook_id"] == received.headers["webhook-id"]
    [attempt] = delivery["attempts"]
    assert attempt["outcome"] == "succeeded" and attempt["status_code"] == 204
    assert attempt["latency_ms"] >= 0
    audit = client.get(f"/v1/submissions/{result['id']}/audit", headers=tenant.headers("reviewer"))
    assert "callback_delivered" in [event["event"] for event in audit.json()]


def test_an_uncertain_submission_announces_review_to_its_own_callback_url(
    client, fake_vlm, migrated, callback_receiver
):
    tenant = make_tenant(migrated, "own-url")
    endpoint = callback_receiver.endpoint([tenant.webhook_secret])

    result = submit_and_decide(
        client, tenant, fake_vlm, fake.verdict(fake.safe_verdict(0.4)), callback_url=endpoint.url
    )

    assert result["decision"]["action"] == "review"
    [received] = endpoint.wait_for(1)
    assert received.verified
    assert received.event["type"] == "moderation.review_required"
    assert received.event["data"]["decision"]["reason"] == "low_confidence"


def test_a_receiver_failing_three_times_gets_one_accepted_delivery(client, fake_vlm, hooked):
    tenant, endpoint = hooked
    endpoint.answers[:] = [500, 503, 429, 200]

    result = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))

    received = endpoint.wait_for(4)
    time.sleep(2.0)  # long enough for any (wrong) further attempt to show up
    assert len(endpoint.received) == 4
    assert all(item.verified for item in received)
    assert len({item.headers["webhook-id"] for item in received}) == 1
    assert len({item.body for item in received}) == 1
    delivery = wait_for_delivery(client, tenant, result["id"], "delivered", attempts=4)
    outcomes = [(a["outcome"], a["status_code"]) for a in delivery["attempts"]]
    assert outcomes == [("failed", 500), ("failed", 503), ("failed", 429), ("succeeded", 200)]
    assert delivery["next_attempt_at"] is None

    first = received[0].at
    gaps = [round(b.at - a.at, 2) for a, b in itertools.pairwise(received)]
    print(
        "\ncallback retry timeline (schedule 0.5 s, 1 s, 1.5 s; sweeper polls every 0.2 s): "
        f"attempts at {[round(item.at - first, 2) for item in received]} s, gaps {gaps} s"
    )
    # Each retry waits at least its delay, and not much more than one poll interval beyond it.
    for gap, delay in zip(gaps, [0.5, 1.0, 1.5], strict=True):
        assert delay - 0.05 <= gap <= delay + 1.5


def test_a_receiver_that_always_fails_uses_up_the_schedule(client, fake_vlm, hooked):
    tenant, endpoint = hooked
    endpoint.answers[:] = [502]

    result = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))

    delivery = wait_for_delivery(client, tenant, result["id"], "failed", attempts=4)
    assert delivery["last_error"] == "HTTP 502"
    time.sleep(1.0)
    assert len(endpoint.received) == 4  # the first attempt and three retries, no more


def test_a_redirect_is_a_failure_and_is_not_followed(client, fake_vlm, hooked, callback_receiver):
    tenant, endpoint = hooked
    elsewhere = callback_receiver.endpoint([tenant.webhook_secret])
    endpoint.answers[:] = [(302, {"Location": elsewhere.url}), 204]

    result = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))

    delivery = wait_for_delivery(client, tenant, result["id"], "delivered", attempts=2)
    first, second = delivery["attempts"]
    assert first["outcome"] == "failed" and first["status_code"] == 302
    assert "redirects are not followed" in first["error"]
    assert second["outcome"] == "succeeded"
    assert elsewhere.received == []


def test_gone_disables_the_endpoint_until_an_admin_redelivers(client, fake_vlm, hooked):
    tenant, endpoint = hooked
    endpoint.answers[:] = [410, 204]

    first = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))
    delivery = wait_for_delivery(client, tenant, first["id"], "disabled", attempts=1)
    assert delivery["attempts"][0]["outcome"] == "gone"
    assert delivery["endpoint_disabled_at"] is not None
    endpoints = client.get("/v1/webhooks/endpoints", headers=tenant.headers("admin")).json()
    assert [e["disabled_at"] is not None for e in endpoints] == [True]

    # A later decision is not sent to a receiver that said it is gone.
    second = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))
    skipped = wait_for_delivery(client, tenant, second["id"], "disabled", attempts=0)
    assert "410" in skipped["last_error"]
    assert len(endpoint.received) == 1

    redone = client.post(
        f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=tenant.headers("admin")
    )
    assert redone.status_code == 202, redone.text
    delivered = wait_for_delivery(client, tenant, first["id"], "delivered", attempts=2)
    assert delivered["endpoint_disabled_at"] is None
    received = endpoint.wait_for(2)
    assert received[0].headers["webhook-id"] == received[1].headers["webhook-id"]


def test_redelivery_sends_the_same_event_again(client, fake_vlm, hooked):
    tenant, endpoint = hooked
    result = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))
    delivery = wait_for_delivery(client, tenant, result["id"], "delivered", attempts=1)

    redone = client.post(
        f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=tenant.headers("admin")
    )

    assert redone.status_code == 202
    assert redone.json()["status"] == "pending"
    again = wait_for_delivery(client, tenant, result["id"], "delivered", attempts=2)
    assert again["webhook_id"] == delivery["webhook_id"]
    first, second = endpoint.wait_for(2)
    assert first.body == second.body and second.verified
    audit = client.get(f"/v1/submissions/{result['id']}/audit", headers=tenant.headers("reviewer"))
    events = [event["event"] for event in audit.json()]
    assert events.count("callback_delivered") == 2
    assert "callback_redelivery_requested" in events


def test_during_a_rotation_callbacks_carry_both_signatures(client, fake_vlm, hooked, service_env):
    tenant, endpoint = hooked
    old_secret = tenant.webhook_secret
    rotated = subprocess.run(
        [
            sys.executable,
            "-m",
            "moderation",
            "tenants",
            "rotate-secret",
            "--tenant",
            str(tenant.tenant_id),
            "--overlap-hours",
            "1",
            "--json",
        ],
        cwd=ROOT,
        env={**os.environ, **service_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rotated.returncode == 0, rotated.stderr
    output = json.loads(rotated.stdout)
    new_secret = output["secrets"]["webhook_secret"]
    assert new_secret.startswith("whsec_") and new_secret != old_secret
    assert output["previous_valid_until"]
    endpoint.secrets[:] = [new_secret, old_secret]

    submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))

    [received] = endpoint.wait_for(1)
    assert received.verified
    assert sorted(received.signatures) == [0, 1]  # one made with each secret


def test_a_rotation_without_overlap_drops_the_old_secret_at_once(
    client, fake_vlm, hooked, migrated
):
    from datetime import timedelta

    from moderation.database import get_sessionmaker, session_scope
    from moderation.tenants.service import rotate_secret

    tenant, endpoint = hooked
    with session_scope(get_sessionmaker(migrated)) as session:
        rotated = rotate_secret(session, tenant.tenant_id, inbound=False, overlap=timedelta())
    endpoint.secrets[:] = [rotated.secret, tenant.webhook_secret]

    submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))

    [received] = endpoint.wait_for(1)
    assert received.signatures == [0]


def test_only_the_tenants_admins_read_and_redeliver(client, fake_vlm, hooked, migrated):
    tenant, _endpoint = hooked
    result = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))
    delivery = wait_for_delivery(client, tenant, result["id"], "delivered")
    other = make_tenant(migrated, "other")

    for role in ("ingest", "reviewer"):
        listed = client.get("/v1/webhooks/deliveries", headers=tenant.headers(role))
        assert listed.status_code == 403
        assert listed.headers["content-type"] == "application/problem+json"
        redo = client.post(
            f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=tenant.headers(role)
        )
        assert redo.status_code == 403
    assert client.get("/v1/webhooks/deliveries").status_code == 401
    foreign = client.post(
        f"/v1/webhooks/deliveries/{delivery['id']}/redeliver", headers=other.headers("admin")
    )
    assert foreign.status_code == 404
    assert deliveries(client, other, result["id"]) == []


def test_the_delivery_log_pages_with_a_cursor(client, fake_vlm, hooked):
    tenant, _endpoint = hooked
    ids = [
        submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))["id"]
        for _ in range(3)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get(
            "/v1/webhooks/deliveries", params=params, headers=tenant.headers("admin")
        ).json()
        seen.extend(item["submission_id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    bad = client.get(
        "/v1/webhooks/deliveries", params={"cursor": "nope"}, headers=tenant.headers("admin")
    )
    assert bad.status_code == 422


def test_metrics_count_deliveries_by_outcome(client, fake_vlm, hooked):
    tenant, _endpoint = hooked
    result = submit_and_decide(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))
    wait_for_delivery(client, tenant, result["id"], "delivered")

    text = client.get("/metrics").text

    assert 'moderation_webhook_deliveries{status="delivered"}' in text
    assert 'moderation_webhook_attempts{outcome="succeeded"}' in text
    assert "moderation_webhook_endpoints_disabled" in text
