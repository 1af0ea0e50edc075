"""How long a kill -9'd worker's submissions wait before another worker judges them.

Creates a database of its own on the given PostgreSQL server, migrates it, starts the fake
Qwen-VL server (slow enough that calls are in flight) and two real workers with the default
lease and relay settings, sends N submissions, SIGKILLs one worker while it judges, and waits
until every submission is decided. Prints, for the killed worker's submissions, how long after
the kill they were claimed again and decided, and checks that nothing was lost or decided twice.

    python -m benchmarks.kill_recovery --postgres postgresql://postgres@127.0.0.1:5432/postgres \
        --broker redis://127.0.0.1:6379/15 --count 40
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from moderation.config import get_settings
from moderation.database import get_sessionmaker, session_scope
from moderation.queue import MODERATE_SUBMISSION, celery_app
from moderation.schema_migrations import upgrade_schema
from moderation.vlm.repository import live_circuits
from tests.factories import insert_without_sending, make_tenant
from tests.fakes.fake_vlm import FakeVLMServer

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, help="a PostgreSQL server URL (any database)")
    parser.add_argument("--broker", required=True, help="redis://… or amqp://…")
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra MODERATION_ settings for both workers (default: the product's defaults)",
    )
    args = parser.parse_args()

    database = f"moderation_recovery_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    parts = urllib.parse.urlsplit(args.postgres)
    database_url = urllib.parse.urlunsplit(parts._replace(path="/" + database))
    try:
        return run(args, database_url)
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


def run(args: argparse.Namespace, database_url: str) -> int:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
        "MODERATION_DATABASE_URL": database_url,
        "MODERATION_BROKER_URL": args.broker,
        "MODERATION_QUEUE_NAME": f"recovery-{uuid.uuid4().hex[:8]}",
        "MODERATION_LOG_LEVEL": "WARNING",
    }
    for setting in args.setting:
        name, _, value = setting.partition("=")
        env[f"MODERATION_{name.upper().removeprefix('MODERATION_')}"] = value
    # Settings (and the Celery app's configuration) are read lazily, from here on.
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade_schema(url)
    sessions = get_sessionmaker(url)
    tenant = make_tenant(url, "recovery")  # with its own copy of the shipped policies

    with (
        FakeVLMServer(latency_s=args.latency_ms / 1000) as fake,
        tempfile.TemporaryDirectory() as d,
    ):
        env["MODERATION_VLM_BASE_URL"] = fake.base_url
        workers = [start_worker(env, Path(d) / f"w{n}.log", args.concurrency) for n in (0, 1)]
        doomed, survivor = workers
        try:
            wait_for_worker(sessions, doomed)
            wait_for_worker(sessions, survivor)
            ids = [insert_without_sending(url, tenant, f"item {n}") for n in range(args.count)]
            for submission_id in ids:
                celery_app.send_task(MODERATE_SUBMISSION, args=[str(submission_id)])
            doomed_actor = f"worker:{socket.gethostname()}:{doomed.pid}"
            held = wait_until_judging(sessions, doomed_actor, args.concurrency)
            doomed.send_signal(signal.SIGKILL)
            killed_at = time.time()
            doomed.wait()
            decided = wait_all_decided(sessions, ids, timeout=settings.lease_s * 4 + 120)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=30)

    reclaimed, finished = recovery_times(sessions, held, killed_at)
    with session_scope(sessions) as session:
        rows = session.execute(
            text(
                "SELECT s.id, s.status, count(d.id) FROM submissions s "
                "LEFT JOIN decisions d ON d.submission_id = s.id GROUP BY s.id"
            )
        ).all()
    counts = {row[0]: row[2] for row in rows}
    statuses = {row[0]: row[1] for row in rows}
    lost = [sid for sid in ids if statuses.get(sid) not in ("decided", "in_review")]
    twice = [sid for sid, count in counts.items() if count != 1]
    report = {
        "settings": {
            "lease_s": settings.lease_s,
            "heartbeat_s": settings.lease_renew_interval_s,
            "relay_interval_s": settings.relay_interval_s,
            "relay_grace_s": settings.relay_grace_s,
        },
        "submissions": len(ids),
        "in_flight_on_killed_worker": len(held),
        "lost": len(lost),
        "decided_more_than_once": len(twice),
        "back_in_flight_s": summary(reclaimed),
        "decided_s": summary(finished),
        "all_decided_after_s": round(decided - killed_at, 1),
    }
    print(json.dumps(report, indent=2))
    return 0 if not lost and not twice and len(reclaimed) == len(held) else 1


def start_worker(env: dict[str, str], log: Path, concurrency: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "moderation", "worker", "--concurrency", str(concurrency)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def wait_for_worker(sessions: sessionmaker[Session], process: subprocess.Popen[bytes]) -> None:
    name = f"worker:{socket.gethostname()}:{process.pid}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("a worker exited at start")
        with session_scope(sessions) as session:
            if any(row.worker == name for row in live_circuits(session, timedelta(minutes=1))):
                return
        time.sleep(0.2)
    raise SystemExit("a worker did not start")


def wait_until_judging(sessions: sessionmaker[Session], actor: str, count: int) -> list[uuid.UUID]:
    """Submissions the worker claimed and holds right now (processing, lease from its claim)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope(sessions) as session:
            rows = session.execute(
                text(
                    "SELECT DISTINCT s.id FROM submissions s JOIN audit_events e "
                    "ON e.submission_id = s.id AND e.event = 'processing_started' "
                    "WHERE s.status = 'processing' AND e.actor = :actor"
                ),
                {"actor": actor},
            ).all()
        if len(rows) >= count:
            return [row[0] for row in rows]
        time.sleep(0.05)
    raise SystemExit("the worker to kill never had its slots full")


def wait_all_decided(
    sessions: sessionmaker[Session], ids: list[uuid.UUID], timeout: float
) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(sessions) as session:
            open_count = session.execute(
                text(
                    "SELECT count(*) FROM submissions WHERE id = ANY(:ids) "
                    "AND status NOT IN ('decided', 'in_review')"
                ),
                {"ids": ids},
            ).scalar_one()
        if open_count == 0:
            return time.time()
        time.sleep(0.2)
    raise SystemExit(f"submissions still undecided after {timeout:.0f} s")


def recovery_times(
    sessions: sessionmaker[Session], held: list[uuid.UUID], killed_at: float
) -> tuple[list[float], list[float]]:
    reclaimed: list[float] = []
    finished: list[float] = []
    with session_scope(sessions) as session:
        for submission_id in held:
            events = session.execute(
                text(
                    "SELECT event, actor, extract(epoch FROM created_at) FROM audit_events "
                    "WHERE submission_id = :id ORDER BY id"
                ),
                {"id": submission_id},
            ).all()
            again = [float(at) for event, _, at in events if event == "processing_started"]
            again = [at for at in again if at > killed_at]
            done = [float(at) for event, _, at in events if event in ("decided", "review_required")]
            if again:
                reclaimed.append(again[0] - killed_at)
            if done:
                finished.append(done[-1] - killed_at)
    return reclaimed, finished


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": round(min(values), 1),
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
