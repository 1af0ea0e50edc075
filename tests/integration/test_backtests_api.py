"""Backtests end to end: the API starts them, the real worker judges them against the fake
model, live moderation keeps its pace, and the command line shows the same result."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.factories import TenantKeys, image_b64, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer, Reply
from tests.integration.test_cli import Ran

DRAFT_WORDS = "Treat any visible weapon as a violation."
ALLOW = fake.verdict(fake.safe_verdict(0.97))
BLOCK = fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))
UNSURE = fake.verdict(fake.unsafe_verdict("violence", 2, 0.5))
PROBLEM = "application/problem+json"


def command(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """`moderation ARGS` in this process: the same code and database, without a start-up."""
    from moderation.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


def decided(
    client: httpx.Client, tenant: TenantKeys, fake_vlm: FakeVLMServer, live: Reply, draft: Reply
) -> str:
    """A submission decided over the API on `live`; a draft will be answered `draft`."""
    case = marker()
    fake_vlm.script(case, [live, draft])
    accepted = client.post(
        "/v1/submissions",
        json={"external_id": case, "text": f"caption {case}", "images": [{"data": image_b64()}]},
        headers=tenant.headers("ingest"),
    )
    assert accepted.status_code == 202, accepted.text
    submission_id: str = accepted.json()["id"]
    wait_for_outcome(client, submission_id, tenant.headers("ingest"))
    return submission_id


def draft_version(client: httpx.Client, tenant: TenantKeys) -> int:
    shipped = client.get("/v1/policies/default/versions/1", headers=tenant.headers("admin"))
    document = {k: v for k, v in shipped.json()["document"].items() if k not in ("slug", "version")}
    document["instructions"] += f"\n{DRAFT_WORDS}"
    created = client.post(
        "/v1/policies/default/versions", json=document, headers=tenant.headers("admin")
    )
    assert created.status_code == 201, created.text
    version: int = created.json()["version"]
    return version


def reviewer_blocks(client: httpx.Client, tenant: TenantKeys, submission_id: str) -> None:
    claimed = client.post(
        "/v1/review/claim", json={"limit": 50}, headers=tenant.headers("reviewer")
    )
    assert claimed.status_code == 200, claimed.text
    [task] = [t for t in claimed.json()["items"] if t["submission"]["id"] == submission_id]
    decision = client.post(
        f"/v1/review/tasks/{task['id']}/decision",
        json={"action": "block", "categories": [{"category": "violence", "severity": 3}]},
        headers=tenant.headers("reviewer"),
    )
    assert decision.status_code == 200, decision.text


def wait_until_done(
    client: httpx.Client, tenant: TenantKeys, backtest_id: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        read = client.get(f"/v1/backtests/{backtest_id}", headers=tenant.headers("admin"))
        assert read.status_code == 200, read.text
        body: dict[str, Any] = read.json()
        if body["status"] in ("done", "failed"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def live_view(client: httpx.Client, tenant: TenantKeys, submission_id: str) -> dict[str, Any]:
    body = client.get(f"/v1/submissions/{submission_id}", headers=tenant.headers("reviewer"))
    assert body.status_code == 200, body.text
    read = body.json()
    return {key: read[key] for key in ("status", "decision", "verdicts", "updated_at")}


def test_a_backtest_runs_in_the_worker_and_compares_the_draft_with_live_and_reviewers(
    client: httpx.Client, tenant: TenantKeys, fake_vlm: FakeVLMServer, capsys
):
    allow_to_block = decided(client, tenant, fake_vlm, ALLOW, BLOCK)
    block_to_allow = decided(client, tenant, fake_vlm, BLOCK, ALLOW)
    unchanged = decided(client, tenant, fake_vlm, ALLOW, ALLOW)
    review_to_block = decided(client, tenant, fake_vlm, UNSURE, BLOCK)
    reviewer_blocks(client, tenant, review_to_block)
    submissions = [allow_to_block, block_to_allow, unchanged, review_to_block]
    before = {s: live_view(client, tenant, s) for s in submissions}
    version = draft_version(client, tenant)

    started = client.post(
        "/v1/backtests",
        json={"policy": "default", "draft_version": version, "sample": {"limit": 50}},
        headers=tenant.headers("admin"),
    )

    assert started.status_code == 202, started.text
    backtest = started.json()
    assert backtest["progress"]["total"] == 4 and backtest["comparison"] is None
    assert backtest["draft_version"] == version and backtest["active_version"] == 1
    done = wait_until_done(client, tenant, backtest["id"])
    assert done["status"] == "done", done
    assert done["progress"] == {
        "total": 4,
        "done": 4,
        "judged": 4,
        "failed": 0,
        "skipped": 0,
        "pending": 0,
        "percent": 100.0,
    }
    comparison = done["comparison"]
    assert (comparison["compared"], comparison["changed"], comparison["reviewed"]) == (4, 3, 1)
    flips = {(f["live"], f["draft"]): f for f in comparison["flips"]}
    assert {kind: f["count"] for kind, f in flips.items()} == {
        ("allow", "block"): 1,
        ("block", "allow"): 1,
        ("review", "block"): 1,
    }
    link = flips[("allow", "block")]["items"][0]["link"]
    assert link == f"/v1/submissions/{allow_to_block}"
    assert client.get(link, headers=tenant.headers("admin")).status_code == 200
    # The reviewer blocked what live sent to review and the draft blocks.
    assert comparison["live"]["recall"]["value"] == 0.0
    assert comparison["draft"]["recall"]["value"] == 1.0
    assert comparison["draft"]["precision"]["value"] == 1.0
    assert comparison["tokens"]["model_calls"] == 4 and comparison["tokens"]["total_tokens"] > 0
    # Live state is untouched: the same decisions, verdicts and status, not even a timestamp.
    assert {s: live_view(client, tenant, s) for s in submissions} == before
    listed = client.get("/v1/backtests", headers=tenant.headers("admin")).json()
    assert [b["id"] for b in listed["items"]] == [backtest["id"]]

    # The command line reads the same backtest.
    shown = command(capsys, "backtest", "show", backtest["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["comparison"] == comparison
    text = command(capsys, "backtest", "show", backtest["id"])
    assert "3 of 4 would change" in text.stdout and "allow -> block" in text.stdout


def test_bad_requests_are_problems_naming_the_field(client: httpx.Client, tenant: TenantKeys):
    cases = [
        ({"policy": "default", "draft_version": 99}, ["body", "draft_version"]),
        ({"policy": "no-such", "draft_version": 1}, ["body", "policy"]),
        (
            {"policy": "default", "draft_version": 1, "sample": {"since": "2026-11-01T00:00:00"}},
            ["body", "sample", "since"],
        ),
        (
            {"policy": "default", "draft_version": 1, "sample": {"limit": 0}},
            ["body", "sample", "limit"],
        ),
        ({"policy": "default", "draft_version": 1}, ["body", "sample"]),
    ]
    for body, loc in cases:
        response = client.post("/v1/backtests", json=body, headers=tenant.headers("admin"))
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert [error["loc"] for error in response.json()["errors"]] == [loc], response.text


def test_live_submissions_are_decided_promptly_while_a_backtest_runs(
    client: httpx.Client, tenant: TenantKeys, fake_vlm: FakeVLMServer
):
    # Each draft judgement takes 0.5 s: with the worker's one backtest slot (a quarter of its
    # four), the backtest runs for about three seconds.
    for _ in range(6):
        decided(client, tenant, fake_vlm, ALLOW, fake.delay(0.5, BLOCK))
    version = draft_version(client, tenant)
    started = client.post(
        "/v1/backtests",
        json={"policy": "default", "draft_version": version},
        headers=tenant.headers("admin"),
    ).json()
    deadline = time.monotonic() + 20
    while (
        client.get(f"/v1/backtests/{started['id']}", headers=tenant.headers("admin")).json()[
            "status"
        ]
        != "running"
    ):
        assert time.monotonic() < deadline, "no worker picked the backtest up"
        time.sleep(0.05)

    began = time.monotonic()
    live = []
    for _ in range(4):
        case = marker()
        fake_vlm.script(case, [ALLOW])
        accepted = client.post(
            "/v1/submissions",
            json={"external_id": case, "text": f"live {case}", "images": [{"data": image_b64()}]},
            headers=tenant.headers("ingest"),
        )
        live.append(accepted.json()["id"])
    for submission_id in live:
        outcome = wait_for_outcome(client, submission_id, tenant.headers("ingest"))
        assert outcome["decision"]["action"] == "allow"
    took = time.monotonic() - began

    meanwhile = client.get(f"/v1/backtests/{started['id']}", headers=tenant.headers("admin"))
    assert meanwhile.json()["progress"]["pending"] > 0, "the backtest ended before live traffic"
    assert took < 2.5, took
    assert wait_until_done(client, tenant, started["id"])["progress"]["judged"] == 6


def test_the_command_runs_a_backtest_with_a_progress_bar_and_prints_the_comparison(
    client: httpx.Client, tenant: TenantKeys, fake_vlm: FakeVLMServer, capsys
):
    decided(client, tenant, fake_vlm, ALLOW, BLOCK)
    version = draft_version(client, tenant)
    args = ["backtest", "run", "--tenant", str(tenant.tenant_id), "--policy", "default"]

    ran = command(capsys, *args, "--draft-version", str(version), "--json")

    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["status"] == "done" and result["comparison"]["changed"] == 1
    assert result["requested_by"] == "cli"
    # The bar went to stderr, so stdout stays one JSON object.
    assert "1/1" in ran.stderr

    refused = command(capsys, *args, "--draft-version", "77")
    assert refused.returncode == 1
    assert "body.draft_version: policy default has no version 77" in refused.stderr
