"""The `moderation` command, run as a real process against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderation", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tenant_and_key_creation_print_one_json_object(service_env, migrated, client):
    created = run(
        "tenants",
        "create",
        "cli-co",
        "--callback-url",
        "https://hooks.example/m",
        "--json",
        env=service_env,
    )
    assert created.returncode == 0, created.stderr
    tenant = json.loads(created.stdout)
    assert tenant["secrets"]["webhook_secret"].startswith("whsec_")

    issued = run(
        "keys", "create", "--tenant", tenant["id"], "--role", "ingest", "--json", env=service_env
    )
    assert issued.returncode == 0, issued.stderr
    key = json.loads(issued.stdout)["key"]
    response = client.post(
        "/v1/submissions",
        json={"external_id": "from-cli", "text": "hello"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202


def test_usage_errors_exit_2_and_failures_exit_1_with_one_line(service_env, migrated):
    usage = run("keys", "create", "--tenant", "x", "--role", "superuser", env=service_env)
    assert usage.returncode == 2
    failure = run("keys", "create", "--tenant", "not-a-uuid", "--role", "ingest", env=service_env)
    assert failure.returncode == 1
    assert len(failure.stderr.strip().splitlines()) == 1
    missing = run(
        "keys",
        "create",
        "--tenant",
        "00000000-0000-0000-0000-000000000000",
        "--role",
        "admin",
        env=service_env,
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_policies_load_is_idempotent_and_refuses_rewrites(service_env, migrated, tmp_path):
    source = (ROOT / "policies" / "default.yaml").read_text()
    policy = tmp_path / "strict.yaml"
    policy.write_text(source.replace("slug: default", "slug: strict-cli", 1))
    first = run("policies", "load", str(policy), "--json", env=service_env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["created"] is True
    again = run("policies", "load", str(policy), "--json", env=service_env)
    assert json.loads(again.stdout)["created"] is False
    policy.write_text(
        source.replace("slug: default", "slug: strict-cli", 1).replace(
            "min_confidence: 0.8", "min_confidence: 0.9"
        )
    )
    rewrite = run("policies", "load", str(policy), env=service_env)
    assert rewrite.returncode == 1 and "immutable" in rewrite.stderr
    listing = json.loads(run("policies", "list", "--json", env=service_env).stdout)
    assert {"default", "strict-cli"} <= {p["slug"] for p in listing["policies"]}


def test_migrate_is_repeatable(service_env, migrated):
    again = run("migrate", "--json", env=service_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["migrated"] is True
