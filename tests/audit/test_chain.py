"""The audit trail is a hash chain the database builds and `audit verify` re-checks.

Tampering is done the only way it can be: as a superuser who disables the append-only trigger
for the length of one transaction, edits history, and turns the trigger back on.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from moderation.audit.chain import StoredEvent, event_sha256
from moderation.audit.service import events_of, record_event, verify_audit_chains
from moderation.database import get_sessionmaker, session_scope
from moderation.policies.service import active_version
from moderation.schema_migrations import alembic_config
from moderation.submissions.models import Submission, SubmissionStatus
from tests.factories import make_tenant, marker

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ("received", "queued", "processing_started", "model_verdict", "decided")


def new_submission(session: Session, tenant_id: uuid.UUID) -> uuid.UUID:
    submission = Submission(
        tenant_id=tenant_id,
        external_id=marker(),
        payload_sha256="0" * 64,
        text="a caption",
        metadata_={},
        policy_version_id=active_version(session, tenant_id, "default").id,
        status=SubmissionStatus.queued,
        attempts=0,
    )
    session.add(submission)
    session.flush()
    return submission.id


def submission_with_history(database_url: str, tenant_id: uuid.UUID) -> uuid.UUID:
    with session_scope(get_sessionmaker(database_url)) as session:
        submission_id = new_submission(session, tenant_id)
        for position, name in enumerate(EVENTS):
            record_event(
                session,
                tenant_id,
                submission_id,
                name,
                "tester",
                {"step": position, "note": "é ünïcode\nand a newline"},
            )
    return submission_id


@pytest.fixture
def tenant_id(migrated: str) -> uuid.UUID:
    return make_tenant(migrated, "audited").tenant_id


def tamper(database_url: str, *statements: str) -> None:
    """Edit history behind the trigger's back, in one transaction nobody else sees half of."""
    with session_scope(get_sessionmaker(database_url)) as session:
        session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        for statement in statements:
            session.execute(text(statement))
        session.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))


def verify(database_url: str, tenant_id: uuid.UUID):
    with session_scope(get_sessionmaker(database_url)) as session:
        return verify_audit_chains(session, tenant_id)


def event_id(database_url: str, submission_id: uuid.UUID, seq: int) -> int:
    with session_scope(get_sessionmaker(database_url)) as session:
        return int(
            session.execute(
                text("SELECT id FROM audit_events WHERE submission_id = :s AND seq = :q"),
                {"s": submission_id, "q": seq},
            ).scalar_one()
        )


def test_the_database_numbers_links_and_hashes_every_event(migrated, tenant_id):
    submission_id = submission_with_history(migrated, tenant_id)
    with session_scope(get_sessionmaker(migrated)) as session:
        events = events_of(session, submission_id)
        assert [e.event for e in events] == list(EVENTS)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert events[0].prev_sha256 is None
        for before, after in itertools.pairwise(events):
            assert after.prev_sha256 == before.sha256
            assert after.created_at >= before.created_at
        stored = session.execute(
            text(
                "SELECT id, tenant_id, submission_id, seq, event, actor, data::text, created_at,"
                " prev_sha256, sha256 FROM audit_events WHERE submission_id = :s ORDER BY seq"
            ),
            {"s": submission_id},
        ).all()
    # Python rebuilds exactly the bytes the database hashed.
    for row in stored:
        event = StoredEvent(*row)
        assert event_sha256(event, event.prev_sha256) == event.sha256
    report = verify(migrated, tenant_id)
    assert report.intact, [str(b) for b in report.breaks]
    assert report.chains == 1 and report.events == len(EVENTS)


def test_events_without_a_submission_chain_per_tenant(migrated, tenant_id):
    other = make_tenant(migrated, "elsewhere").tenant_id
    with session_scope(get_sessionmaker(migrated)) as session:
        for name in ("key_created", "secret_rotated"):
            record_event(session, tenant_id, None, name, "admin:alice", {})
        record_event(session, other, None, "key_created", "admin:bob", {})
    with session_scope(get_sessionmaker(migrated)) as session:
        rows = session.execute(
            text(
                "SELECT tenant_id, seq, prev_sha256 IS NULL FROM audit_events"
                " WHERE submission_id IS NULL AND tenant_id IN (:a, :b) ORDER BY tenant_id, seq"
            ),
            {"a": tenant_id, "b": other},
        ).all()
    assert sorted((t == tenant_id, s, first) for t, s, first in rows) == [
        (False, 1, True),
        (True, 1, True),
        (True, 2, False),
    ]
    assert verify(migrated, tenant_id).intact


def test_history_cannot_be_changed_without_disabling_the_trigger(migrated, tenant_id):
    submission_id = submission_with_history(migrated, tenant_id)
    for statement in (
        "UPDATE audit_events SET data = '{}' WHERE submission_id = :s",
        "DELETE FROM audit_events WHERE submission_id = :s",
    ):
        with (
            pytest.raises(DBAPIError, match="append-only"),
            session_scope(get_sessionmaker(migrated)) as session,
        ):
            session.execute(text(statement), {"s": submission_id})


def test_an_edited_event_is_named(migrated, tenant_id):
    intact = submission_with_history(migrated, tenant_id)
    edited = submission_with_history(migrated, tenant_id)
    tamper(
        migrated,
        "UPDATE audit_events SET data = jsonb_set(data, '{step}', '99') "
        f"WHERE submission_id = '{edited}' AND seq = 3",
    )
    report = verify(migrated, tenant_id)
    assert not report.intact
    assert report.chains == 2
    [only] = report.breaks
    assert only.chain.submission_id == edited and intact != edited
    assert (only.kind, only.seq, only.event_id) == (
        "content_changed",
        3,
        event_id(migrated, edited, 3),
    )
    assert only.expected != only.found


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(migrated, tenant_id):
    submission_id = submission_with_history(migrated, tenant_id)
    tamper(
        migrated,
        "UPDATE audit_events SET actor = 'someone-else' "
        f"WHERE submission_id = '{submission_id}' AND seq = 2",
        "UPDATE audit_events SET sha256 = audit_event_sha256(id, tenant_id, submission_id, seq,"
        " event, actor, data, created_at, prev_sha256)"
        f" WHERE submission_id = '{submission_id}' AND seq = 2",
    )
    [only] = verify(migrated, tenant_id).breaks
    assert (only.kind, only.seq) == ("link_broken", 3)


def test_a_deleted_event_is_named(migrated, tenant_id):
    submission_id = submission_with_history(migrated, tenant_id)
    tamper(
        migrated, f"DELETE FROM audit_events WHERE submission_id = '{submission_id}' AND seq = 2"
    )
    breaks = verify(migrated, tenant_id).breaks
    assert {(b.kind, b.seq) for b in breaks} == {("missing_events", 3), ("link_broken", 3)}
    missing = next(b for b in breaks if b.kind == "missing_events")
    assert "seq 2" in missing.detail


def test_reordered_events_are_named(migrated, tenant_id):
    submission_id = submission_with_history(migrated, tenant_id)
    where = f"submission_id = '{submission_id}'"
    tamper(
        migrated,
        f"UPDATE audit_events SET seq = -1 WHERE {where} AND seq = 2",
        f"UPDATE audit_events SET seq = 2 WHERE {where} AND seq = 4",
        f"UPDATE audit_events SET seq = 4 WHERE {where} AND seq = -1",
    )
    breaks = verify(migrated, tenant_id).breaks
    assert {b.seq for b in breaks} >= {2, 4}
    assert {b.kind for b in breaks} >= {"content_changed", "link_broken"}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderation", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_audit_verify_command_exits_1_and_names_every_break(service_env, migrated, tenant_id):
    submission_id = submission_with_history(migrated, tenant_id)
    intact = run_cli("audit", "verify", "--tenant", str(tenant_id), "--json", env=service_env)
    assert intact.returncode == 0, intact.stderr
    assert json.loads(intact.stdout) | {"breaks": []} == {
        "ok": True,
        "chains": 1,
        "events": len(EVENTS),
        "broken_chains": 0,
        "breaks": [],
    }
    tamper(
        migrated,
        f"UPDATE audit_events SET event = 'allowed' WHERE submission_id = '{submission_id}'"
        " AND seq = 5",
        f"DELETE FROM audit_events WHERE submission_id = '{submission_id}' AND seq = 2",
    )
    broken = run_cli("audit", "verify", "--tenant", str(tenant_id), env=service_env)
    assert broken.returncode == 1
    assert len(broken.stderr.strip().splitlines()) == 1
    assert "3 breaks in 1 of 1 chains" in broken.stderr
    lines = broken.stdout.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"submission {submission_id} seq ") for line in lines)
    assert any("seq 5" in line and "no longer matches its hash" in line for line in lines)
    as_json = run_cli("audit", "verify", "--tenant", str(tenant_id), "--json", env=service_env)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert {(b["kind"], b["seq"]) for b in report["breaks"]} == {
        ("missing_events", 3),
        ("link_broken", 3),
        ("content_changed", 5),
    }
    assert all(b["submission_id"] == str(submission_id) for b in report["breaks"])
    usage = run_cli("audit", "verify", "--tenant", "not-a-uuid", env=service_env)
    assert usage.returncode == 1 and "--tenant" in usage.stderr


def test_concurrent_appends_to_one_submission_keep_one_chain(migrated, tenant_id):
    """Writers that overlap in time still line up: each waits for the chain's head."""
    with session_scope(get_sessionmaker(migrated)) as session:
        submission_id = new_submission(session, tenant_id)
    writers, events_each = 8, 3
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def append(writer: int) -> None:
        try:
            with session_scope(get_sessionmaker(migrated)) as session:
                start.wait(timeout=10)
                for n in range(events_each):
                    record_event(
                        session, tenant_id, submission_id, "claimed", f"w{writer}", {"n": n}
                    )
                    session.flush()
                # Hold the transaction open so the others pile up behind it.
                session.execute(text("SELECT pg_sleep(0.05)"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    with session_scope(get_sessionmaker(migrated)) as session:
        events = events_of(session, submission_id)
    assert [e.seq for e in events] == list(range(1, writers * events_each + 1))
    # Each writer's events are contiguous: a transaction holds the chain until it commits.
    actors = [e.actor for e in events]
    assert [actors[i] for i in range(0, len(actors), events_each)] == sorted(
        set(actors), key=actors.index
    )
    assert verify(migrated, tenant_id).intact


@pytest.fixture
def database_at_0002(postgres_server_url: str) -> Iterator[str]:
    name = f"moderation_backfill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, query = postgres_server_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    yield url.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_the_migration_chains_existing_history(database_at_0002):
    config = alembic_config(database_at_0002)
    command.upgrade(config, "0002")
    tenant, submission, version = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    libpq = database_at_0002.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq) as conn:
        conn.execute(
            "INSERT INTO tenants (id, name, webhook_secret) VALUES (%s, 'old', 'whsec_x')",
            (tenant,),
        )
        policy = conn.execute(
            "INSERT INTO policies (id, slug, title) VALUES (gen_random_uuid(), 'p', 'P')"
            " RETURNING id"
        ).fetchone()
        conn.execute(
            "INSERT INTO policy_versions (id, policy_id, version, document, content_sha256)"
            " VALUES (%s, %s, 1, '{}', 'x')",
            (version, policy[0]),
        )
        conn.execute(
            "INSERT INTO submissions (id, tenant_id, external_id, payload_sha256, metadata,"
            " policy_version_id, status, attempts) VALUES (%s, %s, 'e', 'x', '{}', %s,"
            " 'decided', 1)",
            (submission, tenant, version),
        )
        for name in ("received", "queued", "decided"):
            conn.execute(
                "INSERT INTO audit_events (tenant_id, submission_id, event, actor, data)"
                " VALUES (%s, %s, %s, 'system', '{\"a\": [1, 2.50, \"x\"]}')",
                (tenant, submission, name),
            )
        conn.execute(
            "INSERT INTO audit_events (tenant_id, submission_id, event, actor, data)"
            " VALUES (%s, NULL, 'key_created', 'cli', '{}')",
            (tenant,),
        )
    command.upgrade(config, "head")
    with session_scope(get_sessionmaker(database_at_0002)) as session:
        events = events_of(session, submission)
        assert [(e.event, e.seq) for e in events] == [
            ("received", 1),
            ("queued", 2),
            ("decided", 3),
        ]
        report = verify_audit_chains(session, tenant)
        assert report.intact and (report.chains, report.events) == (2, 4)
        # New events continue the backfilled chain.
        record_event(session, tenant, submission, "reviewed", "alice", {})
    with session_scope(get_sessionmaker(database_at_0002)) as session:
        assert events_of(session, submission)[-1].seq == 4
        assert verify_audit_chains(session, tenant).intact
    command.downgrade(config, "0002")
