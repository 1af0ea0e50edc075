"""The HTTP contract: auth, validation as problem+json, idempotency, lists, policies, health."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.factories import TenantKeys, image_b64, make_tenant, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import CATEGORY_IDS

PROBLEM = "application/problem+json"


def test_missing_and_bad_keys_are_401(client: httpx.Client):
    body = {"external_id": "x", "text": "hello"}
    for headers in ({}, {"Authorization": "Bearer mk_not-a-key"}, {"Authorization": "Basic abc"}):
        response = client.post("/v1/submissions", json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == 401


def test_wrong_role_is_403(client, tenant: TenantKeys):
    response = client.post(
        "/v1/submissions",
        json={"external_id": "x", "text": "hi"},
        headers=tenant.headers("reviewer"),
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM


def test_admin_can_do_everything(client, tenant: TenantKeys):
    response = client.post(
        "/v1/submissions",
        json={"external_id": marker(), "text": "hi"},
        headers=tenant.headers("admin"),
    )
    assert response.status_code == 202


def test_another_tenants_submission_is_404(client, tenant: TenantKeys, migrated):
    accepted = client.post(
        "/v1/submissions", json={"external_id": marker(), "text": "hi"}, headers=tenant.headers()
    ).json()
    other = make_tenant(migrated, "other")
    response = client.get(f"/v1/submissions/{accepted['id']}", headers=other.headers())
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert (
        client.get(
            f"/v1/submissions/{accepted['id']}", headers=tenant.headers("reviewer")
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"external_id": "x"}, "body"),
        ({"external_id": "x", "text": "   "}, "body"),
        ({"text": "no id"}, "external_id"),
        ({"external_id": "x", "images": [{}]}, "images"),
        ({"external_id": "x", "images": [{"url": "ftp://example.com/a.png"}]}, "images"),
        (
            {"external_id": "x", "images": [{"url": "https://a.example/x.png", "data": "AA=="}]},
            "images",
        ),
        ({"external_id": "x", "text": "hi", "unexpected": 1}, "unexpected"),
        ({"external_id": "", "text": "hi"}, "external_id"),
    ],
)
def test_invalid_bodies_are_422_problems(client, tenant: TenantKeys, body, where):
    response = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == PROBLEM
    assert {"type", "title", "status", "detail", "errors"} <= problem.keys()
    assert any(where in map(str, error["loc"]) for error in problem["errors"]), problem


def test_bad_base64_is_422(client, tenant: TenantKeys):
    response = client.post(
        "/v1/submissions",
        json={"external_id": "x", "images": [{"data": "not base64 at all!"}]},
        headers=tenant.headers(),
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "images", 0]


def test_malformed_json_is_422(client, tenant: TenantKeys):
    response = client.post(
        "/v1/submissions",
        content=b"{not json",
        headers={**tenant.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


def test_unsupported_content_type_is_415(client, tenant: TenantKeys):
    response = client.post(
        "/v1/submissions",
        content=b"hello",
        headers={**tenant.headers(), "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


def test_unknown_policy_is_422(client, tenant: TenantKeys):
    response = client.post(
        "/v1/submissions",
        json={"external_id": "x", "text": "hi", "policy": "nonexistent"},
        headers=tenant.headers(),
    )
    assert response.status_code == 422


def test_resubmission_is_idempotent_and_changed_payload_conflicts(client, tenant, fake_vlm):
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    body = {"external_id": case, "text": f"caption {case}", "images": [{"data": image_b64()}]}
    first = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert first.status_code == 202
    second = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]

    wait_for_outcome(client, first.json()["id"], tenant.headers())
    third = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert third.status_code == 200 and third.json()["status"] == "decided"
    time.sleep(1.5)
    assert len(fake_vlm.requests_for(case)) == 1, "a resubmission must not start a new job"

    changed = client.post(
        "/v1/submissions", json={**body, "text": "something else"}, headers=tenant.headers()
    )
    assert changed.status_code == 409
    assert changed.headers["content-type"] == PROBLEM


def test_same_external_id_in_two_tenants_is_two_submissions(client, tenant, migrated):
    other = make_tenant(migrated, "other")
    body = {"external_id": "shared-id", "text": "hello"}
    a = client.post("/v1/submissions", json=body, headers=tenant.headers())
    b = client.post("/v1/submissions", json=body, headers=other.headers())
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_list_filters_and_cursor_pagination(client, tenant, fake_vlm):
    ids = []
    for _ in range(5):
        response = client.post(
            "/v1/submissions",
            json={"external_id": marker(), "text": "hello"},
            headers=tenant.headers(),
        )
        ids.append(response.json()["id"])
    for submission_id in ids:
        wait_for_outcome(client, submission_id, tenant.headers())

    seen = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/submissions", params=params, headers=tenant.headers()).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    allowed = client.get(
        "/v1/submissions", params={"action": "allow", "status": "decided"}, headers=tenant.headers()
    ).json()
    assert len(allowed["items"]) == 5
    one = client.get("/v1/submissions", params={"external_id": ""}, headers=tenant.headers()).json()
    assert one["items"] == []
    bad = client.get("/v1/submissions", params={"cursor": "garbage"}, headers=tenant.headers())
    assert bad.status_code == 422
    bad_status = client.get("/v1/submissions", params={"status": "nope"}, headers=tenant.headers())
    assert bad_status.status_code == 422


def test_health_readiness_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert {check["name"] for check in ready.json()["checks"]} == {"database", "broker", "model"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "moderation_submissions" in metrics.text


def test_openapi_documents_both_request_forms(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/submissions"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= content.keys()


def test_unknown_route_is_a_problem(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


def test_policies_are_versioned_and_activated_by_admins(client, tenant: TenantKeys):
    listing = client.get("/v1/policies", headers=tenant.headers("reviewer")).json()
    assert "default" in [p["slug"] for p in listing]
    v1 = client.get("/v1/policies/default/versions/1", headers=tenant.headers()).json()
    categories = [c["id"] for c in v1["document"]["categories"]]
    assert categories == list(CATEGORY_IDS)
    slug = f"p-{marker()}"
    draft = {k: v for k, v in v1["document"].items() if k not in ("slug", "version")}
    forbidden = client.post(f"/v1/policies/{slug}/versions", json=draft, headers=tenant.headers())
    assert forbidden.status_code == 403
    created = client.post(
        f"/v1/policies/{slug}/versions", json=draft, headers=tenant.headers("admin")
    )
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["status"] == "draft"
    assert created.json()["active"] is False
    second = client.post(
        f"/v1/policies/{slug}/versions",
        json={**draft, "min_confidence": 0.9},
        headers=tenant.headers("admin"),
    ).json()
    assert second["version"] == 2 and second["active"] is False
    activated = client.post(
        f"/v1/policies/{slug}/versions/2/activate", headers=tenant.headers("admin")
    )
    assert activated.json()["active_version"] == 2
    bad = client.post(
        f"/v1/policies/{slug}/versions",
        json={**draft, "min_confidence": 3},
        headers=tenant.headers("admin"),
    )
    assert bad.status_code == 422


def test_submission_under_a_named_policy_version_keeps_it(client, tenant, fake_vlm):
    response = client.post(
        "/v1/submissions",
        json={"external_id": marker(), "text": "hello", "policy": "default"},
        headers=tenant.headers(),
    )
    result = wait_for_outcome(client, response.json()["id"], tenant.headers())
    assert result["policy"] == {"slug": "default", "version": 1}


def test_oversized_inline_image_is_413(client, tenant):
    big = base64.b64encode(b"\0" * (21 * 1024 * 1024)).decode()
    response = client.post(
        "/v1/submissions",
        json={"external_id": "big", "images": [{"data": big}]},
        headers=tenant.headers(),
    )
    assert response.status_code == 413


def test_oversized_metadata_is_422(client, tenant):
    response = client.post(
        "/v1/submissions",
        json={"external_id": "meta", "text": "hi", "metadata": {"blob": "x" * 20_000}},
        headers=tenant.headers(),
    )
    assert response.status_code == 422
    assert "metadata" in response.json()["errors"][0]["loc"]


def test_multipart_images_must_be_files(client, tenant):
    response = client.post(
        "/v1/submissions",
        headers=tenant.headers(),
        data={"external_id": "mp", "text": "hi", "images": "not-a-file"},
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "images", 0]


def test_multipart_without_content_is_422(client, tenant):
    response = client.post(
        "/v1/submissions", headers=tenant.headers(), data={"external_id": "mp-empty"}
    )
    assert response.status_code == 422
