"""The ingest fast lane answers the common request itself and hands every other one, body
included, to the route, which answers it exactly as it would without the lane."""

from __future__ import annotations

from typing import Any

import pytest

from moderation.submissions.fast_lane import IngestFastLane
from tests.factories import TenantKeys, make_tenant, marker, wait_for_outcome


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the lane answered each request it looked at, in order."""
    seen: list[bool] = []
    original = IngestFastLane._answer

    async def spy(self: IngestFastLane, *args: Any) -> bool:
        result = await original(self, *args)
        seen.append(result)
        return result

    monkeypatch.setattr(IngestFastLane, "_answer", spy)
    return seen


def post(client, tenant: TenantKeys, body: dict[str, Any], role: str = "ingest"):
    return client.post("/v1/submissions", json=body, headers=tenant.headers(role))


def test_the_lane_answers_the_common_request_as_the_route_does(client, migrated, answered):
    tenant = make_tenant(migrated)
    image = {"url": "https://media.example.com/a.jpg"}
    # The first request of a key goes to the route, which looks the key and tenant up.
    first = post(client, tenant, {"external_id": marker(), "text": "hello"})
    assert first.status_code == 202 and answered == []
    second_id = marker()
    second = post(client, tenant, {"external_id": second_id, "text": "hi", "images": [image]})
    assert answered == [True]
    assert second.status_code == 202
    accepted = second.json()
    assert accepted["external_id"] == second_id and accepted["status"] == "queued"
    assert second.headers["location"] == f"/v1/submissions/{accepted['id']}"
    assert second.headers["x-content-type-options"] == "nosniff"
    assert set(accepted) == set(first.json())
    stored = client.get(second.headers["location"], headers=tenant.headers()).json()
    assert stored["external_id"] == second_id
    assert [i["source_url"] for i in stored["images"]] == [image["url"]]


def test_whatever_the_lane_does_not_store_the_route_answers(client, migrated, answered):
    tenant = make_tenant(migrated)
    body = {"external_id": marker(), "text": "same"}
    assert post(client, tenant, {"external_id": marker(), "text": "warm up"}).status_code == 202

    created = post(client, tenant, body)
    assert created.status_code == 202
    again = post(client, tenant, body)  # a redelivery: the same id, 200
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    conflict = post(client, tenant, {**body, "text": "changed"})
    assert conflict.status_code == 409
    assert conflict.headers["content-type"].startswith("application/problem+json")
    invalid = post(client, tenant, {"text": "no external id"})
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["loc"] == ["body", "external_id"]
    reviewer = post(client, tenant, {"external_id": marker()}, role="reviewer")
    assert reviewer.status_code in (401, 403)  # the route authenticates the reviewer key itself
    assert answered[:4] == [True, False, False, False]


def test_a_submission_the_lane_accepted_is_judged(client, migrated, fake_vlm, answered):
    tenant = make_tenant(migrated)
    post(client, tenant, {"external_id": marker(), "text": "warm up"})
    accepted = post(client, tenant, {"external_id": marker(), "text": f"caption {marker()}"})
    assert answered == [True]
    outcome = wait_for_outcome(client, accepted.json()["id"], tenant.headers())
    assert outcome["status"] in ("decided", "in_review")
