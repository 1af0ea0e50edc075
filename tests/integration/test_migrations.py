"""The single source of schema truth: migrations match the models and run both ways."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from alembic import command
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from moderation.schema_migrations import alembic_config


@pytest.fixture
def empty_database(postgres_server_url: str):
    name = f"moderation_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, query = postgres_server_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    yield url.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_migrations_upgrade_downgrade_and_match_the_models(empty_database: str):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.check(config)  # raises if the models and the migrations disagree
    command.downgrade(config, "base")
    command.upgrade(config, "head")


# The last revision before policies belonged to tenants.
PREVIOUS_HEAD = "0003_webhooks"


def _execute(url: str, statement: str, **params):
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


def _tenant(url: str, name: str, minutes_ago: int) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    _execute(
        url,
        "INSERT INTO tenants (id, name, webhook_secret, created_at) "
        "VALUES (:id, :name, 'whsec_x', now() - make_interval(mins => :ago))",
        id=tenant_id,
        name=name,
        ago=minutes_ago,
    )
    return tenant_id


def _policy(url: str, slug: str, versions: int, active: int) -> dict[int, uuid.UUID]:
    policy_id = uuid.uuid4()
    _execute(
        url,
        "INSERT INTO policies (id, slug, title, active_version, activated_at) "
        "VALUES (:id, :slug, :slug, :active, now())",
        id=policy_id,
        slug=slug,
        active=active,
    )
    ids = {}
    for number in range(1, versions + 1):
        ids[number] = uuid.uuid4()
        _execute(
            url,
            "INSERT INTO policy_versions (id, policy_id, version, document, content_sha256) "
            "VALUES (:id, :policy, :number, CAST(:document AS jsonb), :sha)",
            id=ids[number],
            policy=policy_id,
            number=number,
            document=json.dumps({"slug": slug, "version": number}),
            sha=f"{slug}-{number}".ljust(64, "0"),
        )
    return ids


def _submission(url: str, tenant: uuid.UUID, version: uuid.UUID) -> uuid.UUID:
    submission_id = uuid.uuid4()
    _execute(
        url,
        "INSERT INTO submissions (id, tenant_id, external_id, payload_sha256, metadata, "
        "policy_version_id, status, attempts) VALUES (:id, :tenant, :external, :sha, '{}', "
        ":version, 'decided', 1)",
        id=submission_id,
        tenant=tenant,
        external=str(submission_id),
        sha="0" * 64,
        version=version,
    )
    _execute(
        url,
        "INSERT INTO verdicts (id, submission_id, policy_version_id, attempt, sequence, model, "
        "prompt_sha256, latency_ms) VALUES (:id, :submission, :version, 1, 0, 'm', :sha, 5)",
        id=uuid.uuid4(),
        submission=submission_id,
        version=version,
        sha="1" * 64,
    )
    _execute(
        url,
        "INSERT INTO review_tasks (id, tenant_id, submission_id, kind, status, priority, "
        "policy_version_id, categories, max_severity, due_at) VALUES (:id, :tenant, "
        ":submission, 'review', 'open', 0, :version, '[]', 0, now())",
        id=uuid.uuid4(),
        tenant=tenant,
        submission=submission_id,
        version=version,
    )
    return submission_id


_PINNED = """
    SELECT s.id, p.tenant_id, p.slug, v.version, v.content_sha256, v.status,
           vd.policy_version_id = s.policy_version_id
               AND rt.policy_version_id = s.policy_version_id AS history_matches
    FROM submissions s
    JOIN policy_versions v ON v.id = s.policy_version_id
    JOIN policies p ON p.id = v.policy_id
    JOIN verdicts vd ON vd.submission_id = s.id
    JOIN review_tasks rt ON rt.submission_id = s.id
"""


def test_upgrade_gives_each_tenant_its_policies_and_keeps_every_pinned_version(
    empty_database: str,
):
    config = alembic_config(empty_database)
    command.upgrade(config, PREVIOUS_HEAD)
    oldest = _tenant(empty_database, "oldest", 30)
    other = _tenant(empty_database, "other", 20)
    idle = _tenant(empty_database, "idle", 10)
    default = _policy(empty_database, "default", versions=3, active=2)
    kids = _policy(empty_database, "kids", versions=1, active=1)
    pinned = {
        _submission(empty_database, oldest, default[1]): (oldest, "default", 1),
        _submission(empty_database, oldest, default[2]): (oldest, "default", 2),
        _submission(empty_database, other, default[1]): (other, "default", 1),
        _submission(empty_database, other, kids[1]): (other, "kids", 1),
    }

    command.upgrade(config, "head")

    rows = _execute(empty_database, _PINNED)
    assert len(rows) == len(pinned)
    for submission_id, tenant_id, slug, version, sha, _status, history_matches in rows:
        assert pinned[submission_id] == (tenant_id, slug, version)
        assert sha == f"{slug}-{version}".ljust(64, "0")
        assert history_matches  # its verdicts and review tasks name the same version
    # The oldest tenant took over the original rows; the others got copies.
    originals = _execute(
        empty_database,
        "SELECT policy_version_id FROM submissions WHERE tenant_id = :t",
        t=oldest,
    )
    assert {row[0] for row in originals} == {default[1], default[2]}
    statuses = _execute(
        empty_database,
        "SELECT p.tenant_id, p.slug, v.version, v.status FROM policy_versions v "
        "JOIN policies p ON p.id = v.policy_id",
    )
    by_tenant: dict[uuid.UUID, dict[tuple[str, int], str]] = {}
    for tenant_id, slug, version, status in statuses:
        by_tenant.setdefault(tenant_id, {})[(slug, version)] = status
    expected = {
        ("default", 1): "retired",  # some submission was judged by it: it was live once
        ("default", 2): "active",
        ("default", 3): "draft",
        ("kids", 1): "active",
    }
    assert by_tenant == {oldest: expected, other: expected, idle: expected}
    # Content stays immutable; the status moves.
    with pytest.raises(Exception, match="immutable"):
        _execute(
            empty_database,
            "UPDATE policy_versions SET document = '{}' WHERE id = :id",
            id=default[3],
        )
    _execute(
        empty_database, "UPDATE policy_versions SET status = 'shadow' WHERE id = :id", id=default[3]
    )

    command.downgrade(config, PREVIOUS_HEAD)

    rows = _execute(
        empty_database,
        """
        SELECT s.id, s.tenant_id, p.slug, v.version,
               vd.policy_version_id = s.policy_version_id
                   AND rt.policy_version_id = s.policy_version_id
        FROM submissions s JOIN policy_versions v ON v.id = s.policy_version_id
        JOIN policies p ON p.id = v.policy_id JOIN verdicts vd ON vd.submission_id = s.id
        JOIN review_tasks rt ON rt.submission_id = s.id
        """,
    )
    assert {row[0]: (row[1], row[2], row[3]) for row in rows} == pinned
    assert all(row[4] for row in rows)
    policies = _execute(empty_database, "SELECT slug, active_version FROM policies ORDER BY slug")
    assert policies == [("default", 2), ("kids", 1)]


def test_downgrade_keeps_a_tenant_policy_that_diverged(empty_database: str):
    config = alembic_config(empty_database)
    command.upgrade(config, PREVIOUS_HEAD)
    oldest = _tenant(empty_database, "oldest", 30)
    other = _tenant(empty_database, "other", 20)
    default = _policy(empty_database, "default", versions=1, active=1)
    _submission(empty_database, oldest, default[1])
    command.upgrade(config, "head")

    [(policy_id,)] = _execute(
        empty_database,
        "SELECT id FROM policies WHERE tenant_id = :t AND slug = 'default'",
        t=other,
    )
    version_id = uuid.uuid4()
    _execute(
        empty_database,
        "INSERT INTO policy_versions (id, policy_id, version, document, content_sha256) "
        "VALUES (:id, :policy, 2, '{}', :sha)",
        id=version_id,
        policy=policy_id,
        sha="2" * 64,
    )
    submission = _submission(empty_database, other, version_id)

    command.downgrade(config, PREVIOUS_HEAD)

    slugs = {row[0] for row in _execute(empty_database, "SELECT slug FROM policies")}
    assert slugs == {"default", f"default-{str(other)[:8]}"}
    [(slug, version)] = _execute(
        empty_database,
        "SELECT p.slug, v.version FROM submissions s "
        "JOIN policy_versions v ON v.id = s.policy_version_id "
        "JOIN policies p ON p.id = v.policy_id WHERE s.id = :id",
        id=submission,
    )
    assert (slug, version) == (f"default-{str(other)[:8]}", 2)
