"""A tenant's daily model-token budget: counted as verdicts land, checked before a model call,
told to the tenant in the decision and in /metrics."""

from __future__ import annotations

import json
import uuid

from moderation.database import get_sessionmaker, session_scope
from moderation.tenants.service import record_token_usage, set_daily_token_budget, token_budget
from tests.factories import TenantKeys, image_b64, make_tenant, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.integration.test_cli import run


def set_budget(database_url: str, tenant: TenantKeys, budget: int | None) -> None:
    with session_scope(get_sessionmaker(database_url)) as session:
        set_daily_token_budget(session, tenant.tenant_id, budget)


def used_today(database_url: str, tenant_id: uuid.UUID) -> int:
    with session_scope(get_sessionmaker(database_url)) as session:
        return token_budget(session, tenant_id).used_today


def submit(client, tenant: TenantKeys, text: str) -> str:
    response = client.post(
        "/v1/submissions",
        json={"external_id": marker(), "text": text, "images": [{"data": image_b64()}]},
        headers=tenant.headers(),
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_tokens_are_counted_and_a_spent_budget_sends_items_to_review(client, fake_vlm, migrated):
    tenant = make_tenant(migrated, "frugal")
    set_budget(migrated, tenant, 1_000_000)
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    judged = wait_for_outcome(client, submit(client, tenant, f"caption {case}"), tenant.headers())
    assert judged["decision"]["action"] == "allow"
    [verdict] = judged["verdicts"]
    spent = verdict["input_tokens"] + verdict["output_tokens"]
    assert used_today(migrated, tenant.tenant_id) == spent

    set_budget(migrated, tenant, spent)  # exactly spent: nothing left
    over = marker()
    fake_vlm.script(over, [fake.verdict(fake.safe_verdict())])
    result = wait_for_outcome(client, submit(client, tenant, f"caption {over}"), tenant.headers())
    assert result["status"] == "in_review"
    assert result["decision"]["reason"] == "budget_exceeded"
    assert result["decision"]["source"] == "system"
    assert f"budget of {spent}" in result["decision"]["detail"]
    assert result["verdicts"] == [] and result["redrive"] is None
    assert fake_vlm.requests_for(over) == []

    metrics = client.get("/metrics").text
    label = f'tenant="{tenant.tenant_id}"'
    assert f"moderation_tenant_tokens_today{{{label}}} {float(spent)}" in metrics
    assert f"moderation_tenant_daily_token_budget{{{label}}} {float(spent)}" in metrics
    assert f"moderation_tenant_budget_exhausted{{{label}}} 1.0" in metrics


def test_without_a_budget_spending_is_unlimited(client, fake_vlm, migrated):
    tenant = make_tenant(migrated, "lavish")
    with session_scope(get_sessionmaker(migrated)) as session:
        record_token_usage(session, tenant.tenant_id, 10**9)
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    result = wait_for_outcome(client, submit(client, tenant, f"caption {case}"), tenant.headers())
    assert result["decision"]["action"] == "allow"


def test_concurrent_usage_is_never_lost(migrated):
    tenant = make_tenant(migrated, "busy")
    from concurrent.futures import ThreadPoolExecutor

    def spend(_: int) -> None:
        with session_scope(get_sessionmaker(migrated)) as session:
            record_token_usage(session, tenant.tenant_id, 7)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(spend, range(40)))
    assert used_today(migrated, tenant.tenant_id) == 280


def test_budgets_are_set_from_the_command_line(service_env, migrated):
    created = run(
        "tenants", "create", "capped", "--daily-token-budget", "5000", "--json", env=service_env
    )
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)
    assert tenant["daily_token_budget"] == 5000

    changed = run(
        "tenants",
        "budget",
        "--tenant",
        tenant["id"],
        "--daily-tokens",
        "10",
        "--json",
        env=service_env,
    )
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout) == {
        "id": tenant["id"],
        "daily_token_budget": 10,
        "tokens_today": 0,
    }
    lifted = run("tenants", "budget", "--tenant", tenant["id"], "--unlimited", env=service_env)
    assert lifted.returncode == 0 and "unlimited" in lifted.stdout
    with session_scope(get_sessionmaker(migrated)) as session:
        assert token_budget(session, uuid.UUID(tenant["id"])).budget is None
