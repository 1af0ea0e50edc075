"""Policies belong to tenants: drafts, activation, shadows, pins and field errors over HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from tests.factories import TenantKeys, make_tenant, marker

PROBLEM = "application/problem+json"


def rubric(client: httpx.Client, tenant: TenantKeys, **changes: Any) -> dict[str, Any]:
    """The tenant's default v1 as a draft body, with `changes` applied."""
    v1 = client.get("/v1/policies/default/versions/1", headers=tenant.headers()).json()
    body = {k: v for k, v in v1["document"].items() if k not in ("slug", "version")}
    return {**body, **changes}


def post_version(client: httpx.Client, tenant: TenantKeys, slug: str, body: dict[str, Any]):
    return client.post(f"/v1/policies/{slug}/versions", json=body, headers=tenant.headers("admin"))


def submit(client: httpx.Client, tenant: TenantKeys, policy: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"external_id": marker(), "text": "hello"}
    if policy is not None:
        body["policy"] = policy
    return client.post("/v1/submissions", json=body, headers=tenant.headers())


def pinned_version(client: httpx.Client, tenant: TenantKeys, response: httpx.Response) -> int:
    assert response.status_code == 202, response.text
    read = client.get(f"/v1/submissions/{response.json()['id']}", headers=tenant.headers())
    return int(read.json()["policy"]["version"])


def test_a_new_tenant_owns_an_active_copy_of_the_template(client, migrated):
    tenant = make_tenant(migrated, "fresh")
    [policy] = client.get("/v1/policies", headers=tenant.headers("reviewer")).json()
    assert policy["slug"] == "default"
    assert policy["active_version"] == 1 and policy["shadow_version"] is None
    detail = client.get("/v1/policies/default", headers=tenant.headers()).json()
    assert [(v["version"], v["status"]) for v in detail["versions"]] == [(1, "active")]


def test_another_tenants_policy_is_404_for_reads_and_changes(client, migrated):
    owner, stranger = make_tenant(migrated, "owner"), make_tenant(migrated, "stranger")
    slug = f"house-{marker()}"
    assert post_version(client, owner, slug, rubric(client, owner)).status_code == 201

    admin = stranger.headers("admin")
    for method, path in [
        ("GET", f"/v1/policies/{slug}"),
        ("GET", f"/v1/policies/{slug}/versions/1"),
        ("POST", f"/v1/policies/{slug}/versions/1/activate"),
        ("POST", f"/v1/policies/{slug}/versions/1/shadow"),
        ("DELETE", f"/v1/policies/{slug}/versions/1/shadow"),
    ]:
        response = client.request(method, path, headers=admin)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == PROBLEM
    assert slug not in [p["slug"] for p in client.get("/v1/policies", headers=admin).json()]
    # The stranger cannot submit under it either, pinned or not.
    for reference in (slug, f"{slug}@1"):
        refused = submit(client, stranger, reference)
        assert refused.status_code == 422 and refused.json()["errors"][0]["loc"] == [
            "body",
            "policy",
        ]

    # Writing a version under the same slug makes the stranger a policy of its own.
    own = post_version(client, stranger, slug, rubric(client, stranger, title="Stranger's"))
    assert own.status_code == 201 and own.json()["version"] == 1
    ours = client.get(f"/v1/policies/{slug}", headers=owner.headers()).json()
    assert ours["title"] != "Stranger's" and len(ours["versions"]) == 1


def test_activating_a_version_moves_only_its_own_tenant(client, migrated):
    first, second = make_tenant(migrated, "first"), make_tenant(migrated, "second")
    draft = post_version(client, first, "default", rubric(client, first, min_confidence=0.9))
    assert draft.status_code == 201, draft.text
    assert draft.json()["version"] == 2 and draft.json()["status"] == "draft"
    # A draft judges nothing yet.
    assert pinned_version(client, first, submit(client, first)) == 1

    activated = client.post(
        "/v1/policies/default/versions/2/activate", headers=first.headers("admin")
    )
    assert activated.status_code == 200, activated.text
    assert activated.json()["active_version"] == 2
    assert [(v["version"], v["status"]) for v in activated.json()["versions"]] == [
        (1, "retired"),
        (2, "active"),
    ]
    assert pinned_version(client, first, submit(client, first)) == 2

    theirs = client.get("/v1/policies/default", headers=second.headers()).json()
    assert theirs["active_version"] == 1 and len(theirs["versions"]) == 1
    assert pinned_version(client, second, submit(client, second)) == 1


def test_only_admins_write_and_unknown_versions_are_404(client, tenant: TenantKeys):
    body = rubric(client, tenant)
    assert post_version(client, tenant, "default", body).status_code == 201
    for role in ("ingest", "reviewer"):
        headers = tenant.headers(role)
        assert (
            client.post("/v1/policies/default/versions", json=body, headers=headers).status_code
            == 403
        )
        assert (
            client.post("/v1/policies/default/versions/2/activate", headers=headers).status_code
            == 403
        )
        assert (
            client.post("/v1/policies/default/versions/2/shadow", headers=headers).status_code
            == 403
        )
    missing = client.post(
        "/v1/policies/default/versions/99/activate", headers=tenant.headers("admin")
    )
    assert missing.status_code == 404


def test_a_submission_can_pin_any_version_of_its_tenants_policy(client, tenant: TenantKeys):
    post_version(client, tenant, "default", rubric(client, tenant, min_confidence=0.7))
    client.post("/v1/policies/default/versions/2/activate", headers=tenant.headers("admin"))

    assert pinned_version(client, tenant, submit(client, tenant, "default@1")) == 1
    assert pinned_version(client, tenant, submit(client, tenant, "default")) == 2
    assert pinned_version(client, tenant, submit(client, tenant)) == 2

    for reference, words in [
        ("default@9", "no version 9"),
        ("default@0", "not a policy slug"),
        ("default@x", "not a policy slug"),
        ("Default", "not a policy slug"),
        ("nothing@1", "no version 1"),
        ("nothing", "no active policy"),
    ]:
        refused = submit(client, tenant, reference)
        assert refused.status_code == 422, (reference, refused.text)
        assert refused.headers["content-type"] == PROBLEM
        [error] = refused.json()["errors"]
        assert error["loc"] == ["body", "policy"]
        assert words in error["msg"], (reference, error)


def test_shadow_marks_one_version_and_can_be_stopped_or_promoted(client, tenant: TenantKeys):
    admin = tenant.headers("admin")
    post_version(client, tenant, "default", rubric(client, tenant, min_confidence=0.7))
    post_version(client, tenant, "default", rubric(client, tenant, min_confidence=0.6))

    refused = client.post("/v1/policies/default/versions/1/shadow", headers=admin)
    assert refused.status_code == 409  # the active version cannot shadow itself

    shadowed = client.post("/v1/policies/default/versions/2/shadow", headers=admin).json()
    assert shadowed["shadow_version"] == 2 and shadowed["active_version"] == 1
    # A second shadow replaces the first, which goes back to being a draft.
    replaced = client.post("/v1/policies/default/versions/3/shadow", headers=admin).json()
    assert [(v["version"], v["status"]) for v in replaced["versions"]] == [
        (1, "active"),
        (2, "draft"),
        (3, "shadow"),
    ]
    stopped = client.delete("/v1/policies/default/versions/3/shadow", headers=admin)
    assert stopped.status_code == 200 and stopped.json()["shadow_version"] is None
    assert client.delete("/v1/policies/default/versions/3/shadow", headers=admin).status_code == 200

    client.post("/v1/policies/default/versions/3/shadow", headers=admin)
    promoted = client.post("/v1/policies/default/versions/3/activate", headers=admin).json()
    assert promoted["active_version"] == 3 and promoted["shadow_version"] is None
    # A retired version can shadow the one that replaced it, and returns to retired after.
    client.post("/v1/policies/default/versions/1/shadow", headers=admin)
    back = client.delete("/v1/policies/default/versions/1/shadow", headers=admin).json()
    assert back["versions"][0]["status"] == "retired"


def test_an_invalid_rubric_names_every_bad_field(client, tenant: TenantKeys):
    body = rubric(client, tenant, min_confidence=3, title="")
    body["categories"] = [
        {**body["categories"][0], "block_at": 9},
        {**body["categories"][1], "id": "Not An Id"},
    ]
    response = post_version(client, tenant, "default", body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    locs = {tuple(error["loc"]) for error in response.json()["errors"]}
    assert locs == {
        ("body", "title"),
        ("body", "min_confidence"),
        ("body", "categories", 0, "block_at"),
        ("body", "categories", 1, "id"),
    }
    assert all(error["msg"] for error in response.json()["errors"])
    # Nothing was stored.
    versions = client.get("/v1/policies/default", headers=tenant.headers()).json()["versions"]
    assert len(versions) == 1
