"""Signed submissions: a tenant with an inbound secret must sign, and a repeat is answered once."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from moderation.database import get_sessionmaker, session_scope
from moderation.tenants.service import rotate_secret
from moderation.webhooks.signing import sign
from tests.factories import TenantKeys, image_b64, image_bytes, make_tenant, marker
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer


@pytest.fixture
def signer(migrated: str) -> TenantKeys:
    return make_tenant(migrated, "signer", inbound_signing=True)


def signature_headers(
    secret: str, body: bytes, *, webhook_id: str | None = None, age_s: float = 0
) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{marker()}"
    moment = datetime.now(UTC) - timedelta(seconds=age_s)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": sign([secret], webhook_id, moment, body.decode()),
    }


def json_body(case: str | None = None, **extra: Any) -> bytes:
    payload = {"external_id": marker(), "text": f"caption {case or marker()}", **extra}
    return json.dumps(payload).encode()


def post_signed(
    client: httpx.Client, tenant: TenantKeys, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return client.post(
        "/v1/submissions",
        content=body,
        headers={**tenant.headers(), "Content-Type": "application/json", **headers},
    )


def test_a_correctly_signed_submission_is_accepted(client, signer):
    assert signer.inbound_secret is not None
    body = json_body()
    response = post_signed(client, signer, body, signature_headers(signer.inbound_secret, body))
    assert response.status_code == 202, response.text


def test_a_signed_multipart_submission_is_verified_on_its_raw_bytes(client, signer):
    assert signer.inbound_secret is not None
    request = client.build_request(
        "POST",
        "/v1/submissions",
        files=[("external_id", (None, marker())), ("text", (None, "multipart, signed"))],
        headers=signer.headers(),
    )
    body = request.read()
    request.headers.update(signature_headers(signer.inbound_secret, body))
    response = client.send(request)
    assert response.status_code == 202, response.text


def test_a_signed_body_with_binary_parts_is_refused_with_a_way_out(client, signer):
    """Standard Webhooks payloads are text (the reference library decodes them as UTF-8), so a
    signing tenant sends images as URLs or base64 in JSON."""
    assert signer.inbound_secret is not None
    request = client.build_request(
        "POST",
        "/v1/submissions",
        data={"external_id": marker()},
        files=[("images", ("a.png", image_bytes(), "image/png"))],
        headers=signer.headers(),
    )
    request.headers.update(signature_headers(signer.inbound_secret, b"{}"))
    response = client.send(request)
    assert_problem(response, 400)
    assert "UTF-8" in response.json()["detail"]


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


def test_unsigned_is_refused(client, signer):
    response = client.post(
        "/v1/submissions", json={"external_id": marker(), "text": "hi"}, headers=signer.headers()
    )
    assert_problem(response, 401)
    assert "webhook-signature" in response.json()["detail"]


def test_a_bad_signature_is_refused(client, signer, migrated):
    body = json_body()
    stranger = make_tenant(migrated, "stranger", inbound_signing=True)
    assert stranger.inbound_secret is not None
    response = post_signed(client, signer, body, signature_headers(stranger.inbound_secret, body))
    assert_problem(response, 401)


def test_a_signature_over_another_body_is_refused(client, signer):
    assert signer.inbound_secret is not None
    body = json_body()
    headers = signature_headers(signer.inbound_secret, json_body())
    assert_problem(post_signed(client, signer, body, headers), 401)


@pytest.mark.parametrize("age_s", [6 * 60, -6 * 60, 86400])
def test_a_stale_or_future_timestamp_is_refused(client, signer, age_s):
    assert signer.inbound_secret is not None
    body = json_body()
    headers = signature_headers(signer.inbound_secret, body, age_s=age_s)
    response = post_signed(client, signer, body, headers)
    assert_problem(response, 401)
    assert "5 minutes" in response.json()["detail"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", b"yesterday"),
        ("webhook-timestamp", b"1e10"),
        ("webhook-timestamp", b"9" * 4000),
        ("webhook-signature", b"v1"),
        ("webhook-signature", b"v1,a,b"),
        ("webhook-signature", b"v1,abc"),
        ("webhook-signature", b"v1,%%%%"),
        ("webhook-signature", b"v1," + b"A" * 6000),
        ("webhook-signature", "v1,\u00e9\u00e9".encode()),
        ("webhook-id", "msg_\u00fc".encode()),
        ("webhook-id", b"x" * 3000),
        ("webhook-id", b""),
    ],
)
def test_malformed_headers_get_400_or_401_never_500(client, signer, header, value):
    assert signer.inbound_secret is not None
    body = json_body()
    good = signature_headers(signer.inbound_secret, body)
    headers = [
        (name.encode(), (value if name == header else good[name].encode()))
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    ]
    response = client.post(
        "/v1/submissions",
        content=body,
        headers=[
            (b"authorization", f"Bearer {signer.ingest}".encode()),
            (b"content-type", b"application/json"),
            *headers,
        ],
    )
    assert response.status_code in (400, 401), response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_a_signed_body_that_is_not_utf8_gets_400(client, signer):
    assert signer.inbound_secret is not None
    good = signature_headers(signer.inbound_secret, b"{}")
    response = client.post(
        "/v1/submissions",
        content=b"\xff\xfe{}",
        headers={**signer.headers(), "Content-Type": "application/json", **good},
    )
    assert_problem(response, 400)


def test_a_replayed_webhook_id_gets_the_first_answer_and_no_second_job(
    client, signer, fake_vlm: FakeVLMServer, migrated
):
    assert signer.inbound_secret is not None
    case = marker()
    fake_vlm.script(case, [fake.delay(0.5, fake.verdict(fake.safe_verdict()))])
    body = json_body(case, images=[{"data": image_b64()}])
    headers = signature_headers(signer.inbound_secret, body, webhook_id=f"msg_{case}")

    first = post_signed(client, signer, body, headers)
    replay = post_signed(client, signer, body, headers)
    # The same id with another body (a sender's bug) still gets the first answer.
    other = json_body(case)
    again = post_signed(
        client,
        signer,
        other,
        signature_headers(signer.inbound_secret, other, webhook_id=f"msg_{case}"),
    )

    assert first.status_code == 202
    for repeat in (replay, again):
        assert repeat.status_code == first.status_code
        assert repeat.json() == first.json()
        assert repeat.headers["location"] == first.headers["location"]
    submission_id = first.json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/submissions/{submission_id}", headers=signer.headers()).json()[
        "status"
    ] not in ("decided", "in_review"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(0.5)
    assert len(fake_vlm.requests_for(case)) == 1
    audit = client.get(f"/v1/submissions/{submission_id}/audit", headers=signer.headers("reviewer"))
    assert [event["event"] for event in audit.json()].count("received") == 1


def test_a_rejected_request_does_not_use_up_its_webhook_id(client, signer):
    assert signer.inbound_secret is not None
    invalid = json.dumps({"external_id": "", "text": "x"}).encode()
    headers = signature_headers(signer.inbound_secret, invalid, webhook_id="msg_retry-me")
    assert_problem(post_signed(client, signer, invalid, headers), 422)
    valid = json_body()
    headers = signature_headers(signer.inbound_secret, valid, webhook_id="msg_retry-me")
    assert post_signed(client, signer, valid, headers).status_code == 202


def test_inbound_rotation_accepts_both_secrets_during_the_overlap(client, signer, migrated):
    old = signer.inbound_secret
    assert old is not None
    with session_scope(get_sessionmaker(migrated)) as session:
        new = rotate_secret(
            session, signer.tenant_id, inbound=True, overlap=timedelta(hours=1)
        ).secret

    for secret in (new, old):
        body = json_body()
        response = post_signed(client, signer, body, signature_headers(secret, body))
        assert response.status_code == 202, response.text

    with session_scope(get_sessionmaker(migrated)) as session:
        newest = rotate_secret(session, signer.tenant_id, inbound=True, overlap=timedelta()).secret
    body = json_body()
    assert_problem(post_signed(client, signer, body, signature_headers(new, body)), 401)
    body = json_body()
    assert post_signed(client, signer, body, signature_headers(newest, body)).status_code == 202


def test_a_tenant_without_an_inbound_secret_needs_no_signature(client, tenant):
    response = client.post(
        "/v1/submissions", json={"external_id": marker(), "text": "hi"}, headers=tenant.headers()
    )
    assert response.status_code == 202
