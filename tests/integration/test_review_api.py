"""The review shift over HTTP: queue, claims, decisions, escalations and appeals, with the real
API, the real worker process and Postgres; roles and tenants checked on every route."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from moderation.database import get_sessionmaker, session_scope
from tests.factories import (
    TenantKeys,
    image_b64,
    make_api_key,
    make_review_task,
    make_tenant,
    marker,
    wait_for_outcome,
)
from tests.fakes import fake_vlm as fake
from tests.integration.test_cli import run

PROBLEM = "application/problem+json"
BLOCK = {"action": "block", "categories": [{"category": "harassment", "severity": 3}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(api_url: str) -> Iterator[httpx.Client]:
    """The API without a worker: for tests whose tasks are made directly in the database."""
    with httpx.Client(base_url=api_url, timeout=30) as http:
        yield http


@pytest.fixture
def shift(migrated: str) -> dict[str, Any]:
    """A tenant with two named reviewers, an admin and an ingest key."""
    keys = make_tenant(migrated, "review-co")
    return {
        "keys": keys,
        "alice": bearer(make_api_key(migrated, keys.tenant_id, "reviewer", "alice")),
        "bob": bearer(make_api_key(migrated, keys.tenant_id, "reviewer", "bob")),
        "admin": bearer(make_api_key(migrated, keys.tenant_id, "admin", "ada")),
        "ingest": keys.headers("ingest"),
    }


def seed_tasks(database_url: str, tenant_id: uuid.UUID, count: int = 1, **kwargs) -> list[str]:
    with session_scope(get_sessionmaker(database_url)) as session:
        return [str(make_review_task(session, tenant_id, **kwargs).id) for _ in range(count)]


def claim(http: httpx.Client, headers: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    response = http.post("/v1/review/claim", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def decide(http: httpx.Client, headers: dict[str, str], task_id: str, body=None) -> httpx.Response:
    return http.post(f"/v1/review/tasks/{task_id}/decision", json=body or BLOCK, headers=headers)


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == status


def submit_uncertain(client: httpx.Client, keys: TenantKeys, fake_vlm) -> str:
    """An upload the fake model is unsure about: harassment, below the confidence threshold."""
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("harassment", 1, 0.55))])
    accepted = client.post(
        "/v1/submissions",
        json={"external_id": case, "text": f"caption {case}", "images": [{"data": image_b64()}]},
        headers=keys.headers(),
    )
    assert accepted.status_code == 202, accepted.text
    submission_id = str(accepted.json()["id"])
    outcome = wait_for_outcome(client, submission_id, keys.headers())
    assert outcome["status"] == "in_review"
    return submission_id


def reviewed_by(client: httpx.Client, headers, submission_id: str) -> dict[str, Any]:
    """Claim the task of this submission and decide it as `headers`' reviewer."""
    [task] = claim(client, headers)
    assert task["submission"]["id"] == submission_id
    response = decide(client, headers, task["id"])
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_uncertain_upload_is_queued_claimed_and_decided(client, shift, fake_vlm):
    submission_id = submit_uncertain(client, shift["keys"], fake_vlm)

    queue = client.get("/v1/review/queue", headers=shift["alice"]).json()
    assert queue["total"] == 1 and queue["sla_breached"] == 0 and queue["next_cursor"] is None
    [task] = queue["items"]
    assert task["status"] == "open" and task["reason"] == "below_threshold"
    assert task["source"] == "model" and task["sla_breached"] is False
    assert task["submission"]["text"].startswith("caption ")
    [verdict] = task["verdicts"]
    assert verdict["violations"][0]["category"] == "harassment"
    assert verdict["violations"][0]["image"] == 0 and verdict["violations"][0]["rationale"]
    assert any(c["id"] == "harassment" and c["definition"] for c in task["policy"]["categories"])
    [image] = task["submission"]["images"]
    picture = client.get(image["href"], headers=shift["alice"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"

    [claimed] = claim(client, shift["alice"], limit=5)
    assert claimed["id"] == task["id"] and claimed["claimed_by"] == "alice"
    assert claim(client, shift["bob"]) == []
    response = decide(
        client,
        shift["alice"],
        task["id"],
        {**BLOCK, "notes": "targets a private person"},
    )
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["task"]["status"] == "decided"
    assert outcome["policy"] == {"slug": "default", "version": 1}
    assert outcome["claim_to_decision_ms"] >= 0

    submission = client.get(f"/v1/submissions/{submission_id}", headers=shift["ingest"]).json()
    assert submission["status"] == "decided"
    assert submission["decision"]["action"] == "block"
    assert submission["decision"]["source"] == "reviewer"
    assert submission["decision"]["actor"].startswith("alice (key:")
    assert [d["source"] for d in submission["decisions"]] == ["model", "reviewer"]
    audit = client.get(f"/v1/submissions/{submission_id}/audit", headers=shift["bob"]).json()
    events = {event["event"]: event for event in audit}
    assert events["claimed"]["actor"].startswith("alice")
    assert events["reviewed"]["data"]["reviewer"] == "alice"
    assert events["reviewed"]["data"]["policy_version"] == 1
    assert client.get("/v1/review/queue", headers=shift["alice"]).json()["total"] == 0


def test_appeal_round_trip(client, shift, fake_vlm):
    submission_id = submit_uncertain(client, shift["keys"], fake_vlm)
    reviewed_by(client, shift["alice"], submission_id)

    refused = client.post(
        f"/v1/submissions/{submission_id}/appeals", json={"reason": "x"}, headers=shift["alice"]
    )
    assert_problem(refused, 403)  # reviewers do not appeal; uploaders do
    appeal = client.post(
        f"/v1/submissions/{submission_id}/appeals",
        json={"reason": "It is a quote from a film."},
        headers=shift["ingest"],
    )
    assert appeal.status_code == 201, appeal.text
    appeal_id = appeal.json()["id"]
    again = client.post(
        f"/v1/submissions/{submission_id}/appeals", json={"reason": "x"}, headers=shift["ingest"]
    )
    assert_problem(again, 409)

    assert claim(client, shift["alice"]) == []  # the decider is passed over...
    assert_problem(decide(client, shift["alice"], appeal_id), 403)  # ...and refused
    [task] = claim(client, shift["bob"])
    assert task["id"] == appeal_id and task["kind"] == "appeal"
    assert task["notes"] == "It is a quote from a film."
    assert [a["id"] for a in task["appeals"]] == [appeal_id]
    assert [d["source"] for d in task["decisions"]] == ["model", "reviewer"]
    assert_problem(decide(client, shift["alice"], appeal_id), 403)
    response = decide(client, shift["bob"], appeal_id, {"action": "allow"})
    assert response.status_code == 200, response.text
    assert response.json()["decision"]["source"] == "appeal"

    submission = client.get(f"/v1/submissions/{submission_id}", headers=shift["ingest"]).json()
    assert submission["decision"]["action"] == "allow"
    assert submission["decision"]["source"] == "appeal"
    assert [d["source"] for d in submission["decisions"]] == ["model", "reviewer", "appeal"]
    audit = client.get(f"/v1/submissions/{submission_id}/audit", headers=shift["bob"]).json()
    assert "appealed" in [event["event"] for event in audit]


def test_escalation_only_admins_decide(api, shift, migrated):
    [task_id] = seed_tasks(
        migrated, shift["keys"].tenant_id, categories=[{"category": "violence", "severity": 2}]
    )
    claim(api, shift["alice"])
    missing_notes = api.post(
        f"/v1/review/tasks/{task_id}/escalate", json={}, headers=shift["alice"]
    )
    assert_problem(missing_notes, 422)
    escalated = api.post(
        f"/v1/review/tasks/{task_id}/escalate",
        json={"notes": "Looks like a real threat."},
        headers=shift["alice"],
    )
    assert escalated.status_code == 201, escalated.text
    escalation_id = escalated.json()["id"]
    assert escalated.json()["kind"] == "escalation"

    assert api.get("/v1/review/queue", headers=shift["alice"]).json()["items"] == []
    assert_problem(api.get(f"/v1/review/tasks/{escalation_id}", headers=shift["alice"]), 403)
    assert_problem(decide(api, shift["alice"], escalation_id), 403)
    assert_problem(decide(api, shift["alice"], task_id), 409)  # handed on, closed
    admin_queue = api.get("/v1/review/queue?kind=escalation", headers=shift["admin"]).json()
    [waiting] = admin_queue["items"]
    assert waiting["id"] == escalation_id and waiting["notes"] == "Looks like a real threat."
    [claimed] = claim(api, shift["admin"], kind="escalation")
    assert claimed["id"] == escalation_id
    response = decide(api, shift["admin"], escalation_id)
    assert response.status_code == 200, response.text
    assert response.json()["decision"]["actor"].startswith("ada")


def test_decision_needs_a_live_lease_and_an_expired_one_returns_the_task(api, shift, migrated):
    [task_id] = seed_tasks(migrated, shift["keys"].tenant_id)
    assert_problem(decide(api, shift["alice"], task_id), 409)
    [task] = claim(api, shift["alice"], lease_seconds=1)
    assert task["id"] == task_id
    renewed = api.post(f"/v1/review/tasks/{task_id}/renew", headers=shift["alice"])
    assert renewed.status_code == 200 and renewed.json()["status"] == "claimed"
    short = api.post(
        f"/v1/review/tasks/{task_id}/renew", json={"lease_seconds": 1}, headers=shift["alice"]
    )
    assert short.status_code == 200
    time.sleep(1.2)
    assert_problem(decide(api, shift["alice"], task_id), 409)
    [retaken] = claim(api, shift["bob"])
    assert retaken["id"] == task_id and retaken["claimed_by"] == "bob"
    assert_problem(decide(api, shift["alice"], task_id), 409)
    released = api.post(f"/v1/review/tasks/{task_id}/release", headers=shift["bob"])
    assert released.status_code == 200 and released.json()["status"] == "open"
    assert_problem(api.post(f"/v1/review/tasks/{task_id}/release", headers=shift["bob"]), 409)
    submission_id = retaken["submission"]["id"]
    audit = api.get(f"/v1/submissions/{submission_id}/audit", headers=shift["bob"]).json()
    names = [event["event"] for event in audit]
    assert names[-4:] == ["claimed", "expired", "claimed", "released"]


def test_two_reviewers_deciding_at_once_make_exactly_one_decision(api_url, api, shift, migrated):
    [task_id] = seed_tasks(migrated, shift["keys"].tenant_id)
    claim(api, shift["alice"], lease_seconds=1)
    time.sleep(1.1)
    claim(api, shift["bob"])
    results: dict[str, int] = {}
    start = threading.Barrier(2)

    def attempt(who: str) -> None:
        with httpx.Client(base_url=api_url, timeout=30) as own:
            start.wait()
            results[who] = decide(own, shift[who], task_id).status_code

    threads = [threading.Thread(target=attempt, args=(who,)) for who in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"alice": 409, "bob": 200}
    task = api.get(f"/v1/review/tasks/{task_id}", headers=shift["admin"]).json()
    assert [d["source"] for d in task["decisions"]] == ["model", "reviewer"]


def test_twenty_http_claimers_take_a_hundred_tasks_exactly_once(api_url, shift, migrated):
    claimers, total = 20, 100
    created = set(seed_tasks(migrated, shift["keys"].tenant_id, total))
    keys = [
        bearer(make_api_key(migrated, shift["keys"].tenant_id, "reviewer", f"r{n}"))
        for n in range(claimers)
    ]
    claimed: list[list[str]] = [[] for _ in range(claimers)]
    failures: list[str] = []
    start = threading.Barrier(claimers)

    def claimer(n: int) -> None:
        with httpx.Client(base_url=api_url, timeout=60) as own:
            start.wait()
            while True:
                response = own.post("/v1/review/claim", json={"limit": 3}, headers=keys[n])
                if response.status_code != 200:
                    failures.append(response.text)
                    return
                items = response.json()["items"]
                if not items:
                    return
                claimed[n] += [item["id"] for item in items]

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    elapsed = time.perf_counter() - began
    assert not failures, failures[:3]
    counts = Counter(task_id for ids in claimed for task_id in ids)
    double_claims = sum(count - 1 for count in counts.values() if count > 1)
    print(
        f"\nHTTP: {claimers} claimers, {total} tasks: {total / elapsed:.0f} claims/s, "
        f"{double_claims} double claims, {sum(1 for ids in claimed if ids)} claimers got work"
    )
    assert double_claims == 0
    assert set(counts) == created


def test_roles_and_tenants_on_every_review_route(api, shift, migrated):
    [task_id] = seed_tasks(migrated, shift["keys"].tenant_id)
    submission_id = api.get(f"/v1/review/tasks/{task_id}", headers=shift["alice"]).json()[
        "submission"
    ]["id"]
    routes = [
        ("GET", "/v1/review/queue", None),
        ("POST", "/v1/review/claim", {"limit": 1}),
        ("GET", f"/v1/review/tasks/{task_id}", None),
        ("POST", f"/v1/review/tasks/{task_id}/renew", {}),
        ("POST", f"/v1/review/tasks/{task_id}/release", None),
        ("POST", f"/v1/review/tasks/{task_id}/escalate", {"notes": "n"}),
        ("POST", f"/v1/review/tasks/{task_id}/decision", BLOCK),
    ]
    for method, path, body in routes:
        assert_problem(api.request(method, path, json=body), 401)
        assert_problem(api.request(method, path, json=body, headers=shift["ingest"]), 403)

    appeal_path = f"/v1/submissions/{submission_id}/appeals"
    assert_problem(api.post(appeal_path, json={"reason": "r"}), 401)
    assert_problem(api.post(appeal_path, json={"reason": "r"}, headers=shift["alice"]), 403)
    assert_problem(api.post(appeal_path, json={"reason": "r"}, headers=shift["ingest"]), 409)
    reviewer_ingest = api.post(
        "/v1/submissions", json={"external_id": marker(), "text": "hi"}, headers=shift["alice"]
    )
    assert_problem(reviewer_ingest, 403)

    other = make_tenant(migrated, "elsewhere")
    for role in ("reviewer", "admin"):
        for method, path, body in routes[2:]:
            assert_problem(api.request(method, path, json=body, headers=other.headers(role)), 404)
        assert api.get("/v1/review/queue", headers=other.headers(role)).json()["items"] == []
        assert claim(api, other.headers(role)) == []
    assert_problem(api.post(appeal_path, json={"reason": "r"}, headers=other.headers()), 404)
    unknown = f"/v1/review/tasks/{uuid.uuid4()}/decision"
    assert_problem(api.post(unknown, json=BLOCK, headers=shift["alice"]), 404)


def test_bad_review_requests_are_422_problems(api, shift, migrated):
    [task_id] = seed_tasks(migrated, shift["keys"].tenant_id)
    for body in ({"limit": 0}, {"limit": 51}, {"lease_seconds": 0}, {"limit": 1, "x": 1}):
        assert_problem(api.post("/v1/review/claim", json=body, headers=shift["alice"]), 422)
    too_long = api.post("/v1/review/claim", json={"lease_seconds": 10**6}, headers=shift["alice"])
    assert_problem(too_long, 422)
    claim(api, shift["alice"])
    unknown = decide(
        api,
        shift["alice"],
        task_id,
        {"action": "block", "categories": [{"category": "piracy", "severity": 3}]},
    )
    assert_problem(unknown, 422)
    assert unknown.json()["errors"][0]["loc"] == ["body", "categories", 0, "category"]
    for body in (
        {"action": "review"},
        {"action": "block"},
        {"action": "allow", "categories": [{"category": "hate", "severity": 5}]},
    ):
        assert_problem(decide(api, shift["alice"], task_id, body), 422)
    bad_cursor = api.get("/v1/review/queue?cursor=not-a-cursor", headers=shift["alice"])
    assert_problem(bad_cursor, 422)
    assert_problem(api.get("/v1/review/queue?older_than=soon", headers=shift["alice"]), 422)
    by_age = api.get("/v1/review/queue?older_than=PT1H", headers=shift["alice"])
    assert by_age.status_code == 200 and by_age.json()["total"] == 0


def test_metrics_show_the_review_queue(api, shift, migrated):
    seed_tasks(
        migrated, shift["keys"].tenant_id, categories=[{"category": "child_safety", "severity": 1}]
    )
    text = api.get("/metrics").text
    assert 'moderation_review_queue_depth{kind="review",priority="111"}' in text
    assert "moderation_review_oldest_task_age_seconds" in text
    assert "moderation_review_sla_breached_tasks" in text
    assert 'moderation_decisions_total{action="review",source="model"}' in text


def test_keys_carry_the_reviewers_name(service_env, api, shift, migrated):
    created = run(
        "keys",
        "create",
        "--tenant",
        str(shift["keys"].tenant_id),
        "--role",
        "reviewer",
        "--name",
        "carol",
        "--json",
        env=service_env,
    )
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    assert issued["name"] == "carol"
    [task_id] = seed_tasks(migrated, shift["keys"].tenant_id)
    [task] = claim(api, bearer(issued["key"]))
    assert task["id"] == task_id and task["claimed_by"] == "carol"
