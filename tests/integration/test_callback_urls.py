"""A callback URL that can never be called is refused at ingest, in both wire forms."""

from __future__ import annotations

import pytest

from tests.factories import marker

FORBIDDEN = [
    "ftp://hooks.example.com/m",
    "javascript:alert(1)",
    "http:///x",
    "http://127.0.0.1:9/hook",
    "http://[::1]:8080/hook",
    "http://10.0.0.5/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://0x7f.1/hook",
    "http://localhost:8080/hook",
    "http://user:secret@hooks.example.com/m",
    "http://hooks.example.com:70000/m",
]


@pytest.mark.parametrize("url", FORBIDDEN)
def test_json_ingest_refuses_a_callback_url_that_cannot_be_called(client, tenant, url):
    response = client.post(
        "/v1/submissions",
        json={"external_id": marker(), "text": "hello", "callback_url": url},
        headers=tenant.headers(),
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["body", "callback_url"]


@pytest.mark.parametrize("url", ["http:///x", "http://127.0.0.1:9/hook", "gopher://x/"])
def test_multipart_ingest_refuses_it_too(client, tenant, url):
    response = client.post(
        "/v1/submissions",
        files=[
            ("external_id", (None, marker())),
            ("text", (None, "hello")),
            ("callback_url", (None, url)),
        ],
        headers=tenant.headers(),
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "callback_url"]


def test_a_public_name_is_accepted_and_judged_only_when_called(client, tenant):
    response = client.post(
        "/v1/submissions",
        json={
            "external_id": marker(),
            "text": "hello",
            "callback_url": "https://hooks.example.com/moderation",
        },
        headers=tenant.headers(),
    )
    assert response.status_code == 202, response.text
