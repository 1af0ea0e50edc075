"""Per-key rate limits over HTTP: 429 problem+json with Retry-After, one budget per key."""

from __future__ import annotations

from fastapi.testclient import TestClient

from moderation.config import Settings
from moderation.main import create_app
from tests.factories import make_tenant, marker


def test_a_key_over_its_admin_limit_gets_429_with_retry_after(migrated):
    settings = Settings(rate_limit_admin="2/minute")
    busy, calm = make_tenant(migrated, "busy"), make_tenant(migrated, "calm")
    activate = "/v1/policies/no-such-policy/versions/1/activate"
    with TestClient(create_app(settings)) as api:
        answers = [api.post(activate, headers=busy.headers("admin")) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [404, 404, 429]
        refused = answers[-1]
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        problem = refused.json()
        assert problem["status"] == 429 and "admin rate limit" in problem["detail"]

        # Other route classes of the same key, and other keys, keep their own budgets.
        assert api.get("/v1/policies", headers=busy.headers("admin")).status_code == 200
        assert api.post(activate, headers=calm.headers("admin")).status_code == 404


def test_a_key_is_counted_even_where_its_role_is_refused(migrated):
    settings = Settings(rate_limit_admin="1/minute")
    tenant = make_tenant(migrated, "prober")
    activate = "/v1/policies/default/versions/1/activate"
    with TestClient(create_app(settings)) as api:
        first = api.post(activate, headers=tenant.headers("ingest"))
        second = api.post(activate, headers=tenant.headers("ingest"))
    assert (first.status_code, second.status_code) == (403, 429)


def test_unauthenticated_requests_are_refused_before_any_counting(migrated):
    with TestClient(create_app(Settings(rate_limit_admin="1/minute"))) as api:
        for _ in range(3):
            answer = api.post("/v1/policies/default/versions/1/activate")
            assert answer.status_code == 401


def test_the_openapi_document_names_the_429(migrated):
    with TestClient(create_app(Settings())) as api:
        spec = api.get("/openapi.json").json()
    post = spec["paths"]["/v1/submissions"]["post"]["responses"]["429"]
    assert "application/problem+json" in post["content"]
    assert "429" in spec["paths"]["/v1/policies"]["get"]["responses"]
    assert "429" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_an_admins_reads_are_not_held_to_the_admin_write_limit(migrated):
    settings = Settings(rate_limit_admin="1/minute")
    tenant = make_tenant(migrated, "dashboard")
    with TestClient(create_app(settings)) as api:
        reads = [
            api.get("/v1/webhooks/deliveries", headers=tenant.headers("admin")) for _ in range(5)
        ]
        activate = "/v1/policies/no-such-policy/versions/1/activate"
        writes = [api.post(activate, headers=tenant.headers("admin")) for _ in range(2)]
    assert {read.status_code for read in reads} == {200}
    assert [write.status_code for write in writes] == [404, 429]


def test_a_request_the_fast_lane_hands_to_the_route_is_counted_once(migrated):
    """The common ingest request is counted where it is answered; a redelivery that the fast
    lane counted and handed to the route (which answers 200) is not counted a second time."""
    settings = Settings(rate_limit_ingest="3/minute")
    tenant = make_tenant(migrated, "redeliverer")
    body = {"external_id": marker(), "text": "sent twice"}

    def other() -> dict[str, str]:
        return {"external_id": marker(), "text": "another"}

    with TestClient(create_app(settings)) as api:
        statuses = [
            # The key's first request: the route looks the key and the tenant up.
            api.post("/v1/submissions", json=other(), headers=tenant.headers()),
            api.post("/v1/submissions", json=body, headers=tenant.headers()),
            api.post("/v1/submissions", json=body, headers=tenant.headers()),
            api.post("/v1/submissions", json=other(), headers=tenant.headers()),
        ]
    assert [answer.status_code for answer in statuses] == [202, 202, 200, 429]
