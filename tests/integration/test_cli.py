"""The `moderation` command, run as a real process against the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.factories import make_tenant

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


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_here(service_env, capsys):
    """The same command in this process: the same code and database, without the start-up."""

    def run_command(*args: str) -> Ran:
        from moderation.cli import main

        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run_command


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


def test_policies_load_is_idempotent_and_refuses_rewrites(run_here, tenant, tmp_path):
    source = (ROOT / "policies" / "default.yaml").read_text()
    policy = tmp_path / "strict.yaml"
    policy.write_text(source.replace("slug: default", "slug: strict-cli", 1))
    load = ("policies", "load", str(policy), "--tenant", str(tenant.tenant_id))
    first = run_here(*load, "--json")
    assert first.returncode == 0, first.stderr
    # The first version of a policy new to the tenant goes live: nothing to compare it with.
    assert json.loads(first.stdout)["created"] is True
    assert json.loads(first.stdout)["status"] == "active"
    again = run_here(*load, "--json")
    assert json.loads(again.stdout)["created"] is False
    policy.write_text(
        source.replace("slug: default", "slug: strict-cli", 1).replace(
            "min_confidence: 0.8", "min_confidence: 0.9"
        )
    )
    rewrite = run_here(*load)
    assert rewrite.returncode == 1 and "immutable" in rewrite.stderr

    policy.write_text(policy.read_text().replace("version: 1", "version: 2", 1))
    draft = json.loads(run_here(*load, "--json").stdout)
    assert (draft["version"], draft["status"]) == (2, "draft")
    activated = json.loads(run_here(*load, "--activate", "--json").stdout)
    assert (activated["created"], activated["status"]) == (False, "active")

    listing = run_here("policies", "list", "--tenant", str(tenant.tenant_id), "--json")
    rows = {p["slug"]: p for p in json.loads(listing.stdout)["policies"]}
    assert rows.keys() == {"default", "strict-cli"}
    assert rows["strict-cli"]["active_version"] == 2


def test_a_policy_is_loaded_into_one_tenant_only(run_here, migrated, tmp_path):
    one, other = make_tenant(migrated, "one"), make_tenant(migrated, "other")
    policy = tmp_path / "mine.yaml"
    source = (ROOT / "policies" / "default.yaml").read_text()
    policy.write_text(source.replace("slug: default", "slug: only-mine", 1))
    loaded = run_here("policies", "load", str(policy), "--tenant", str(one.tenant_id))
    assert loaded.returncode == 0, loaded.stderr

    def slugs(tenant) -> set[str]:
        listing = run_here("policies", "list", "--tenant", str(tenant.tenant_id), "--json")
        return {p["slug"] for p in json.loads(listing.stdout)["policies"]}

    assert slugs(one) == {"default", "only-mine"}
    assert slugs(other) == {"default"}
    missing = run_here("policies", "list", "--tenant", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_an_invalid_policy_file_names_every_bad_field(service_env, tenant, tmp_path):
    source = (ROOT / "policies" / "default.yaml").read_text()
    broken = (
        source.replace("slug: default", "slug: Not A Slug", 1)
        .replace("min_confidence: 0.8", "min_confidence: 1.5", 1)
        .replace("block_at: 1", "block_at: 7", 1)
    )
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    load = ("policies", "load", str(path), "--tenant", str(tenant.tenant_id))

    failed = run(*load, env=service_env)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[0] == "moderation: the policy document is not valid"
    fields = sorted(line.split(":")[0].strip() for line in lines[1:])
    child_safety = [c["id"] for c in yaml.safe_load(source)["categories"]].index("child_safety")
    assert fields == sorted(["slug", "min_confidence", f"categories.{child_safety}.block_at"])
    assert all(len(line.split(": ", 1)[1]) > 5 for line in lines[1:])

    as_json = run(*load, "--json", env=service_env)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["status"] == 422
    assert sorted(tuple(e["loc"]) for e in report["errors"]) == sorted(
        [("slug",), ("min_confidence",), ("categories", child_safety, "block_at")]
    )


def test_install_template_adds_shipped_rubrics_as_drafts_unless_activated(
    run_here, tenant, migrated, tmp_path
):
    install = ("policies", "install-template", "--tenant", str(tenant.tenant_id), "--json")
    again = json.loads(run_here(*install).stdout)
    assert [(p["slug"], p["version"], p["created"]) for p in again["policies"]] == [
        ("default", 1, False)
    ]
    # The tenant writes its own v2; the template then comes back as v3, not over it.
    source = (ROOT / "policies" / "default.yaml").read_text()
    own = tmp_path / "own.yaml"
    own.write_text(
        source.replace("version: 1", "version: 2", 1).replace("title: ", "title: Our ", 1)
    )
    run_here("policies", "load", str(own), "--tenant", str(tenant.tenant_id))
    client_view = run_here("policies", "list", "--tenant", str(tenant.tenant_id), "--json")
    assert json.loads(client_view.stdout)["policies"][0]["active_version"] == 1

    from moderation.database import get_sessionmaker, session_scope
    from moderation.policies.service import install_template, read_policy_file

    template = read_policy_file(ROOT / "policies" / "default.yaml")
    changed = template.model_copy(update={"version": 2, "min_confidence": 0.85})
    with session_scope(get_sessionmaker(migrated)) as session:
        stored = install_template(session, tenant.tenant_id, changed)
        assert (stored.version.version, stored.created) == (3, True)
        assert stored.version.status.value == "draft"
        assert install_template(session, tenant.tenant_id, changed).created is False

    activated = json.loads(run_here(*install, "--activate").stdout)
    assert [(p["version"], p["status"]) for p in activated["policies"]] == [(1, "active")]


def test_migrate_is_repeatable(service_env, migrated):
    again = run("migrate", "--json", env=service_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["migrated"] is True
    assert {"slug": "default", "version": 1} in json.loads(again.stdout)["templates"]
