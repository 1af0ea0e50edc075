"""A whole deployment in processes of its own, and the ledger that checks it after a fault.

`Stack` runs the API (`moderation api`) and worker processes (`moderation worker`) against a
database, a broker and a model server the test controls, submits over HTTP like an upload
service would (retrying what was not accepted, under the same external id), and can kill -9 a
worker. `Ledger` reads what happened straight from Postgres and the callback receiver and
turns it into the figures every chaos test prints and asserts: items in flight at the fault,
items lost, duplicate decisions, duplicate accepted callbacks, and the time to recover.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import ROOT, free_port
from tests.fakes.callback_receiver import Endpoint

SETTLED = ("decided", "in_review")
AUTOMATIC_SOURCES = ("model", "system", "cache", "hash_match")


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown handler runs, nothing is acknowledged or handed back."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Stack:
    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.env = env
        self.workdir = workdir
        self.name = name
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.api_url = ""

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "moderation", *argv],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return Proc(name, process, log)

    def start_api(self) -> None:
        port = free_port()
        self.api = self._spawn("api", ["api", "--host", "127.0.0.1", "--port", str(port)])
        self.api_url = f"http://127.0.0.1:{port}"

    def wait_api_ready(self) -> None:
        assert self.api is not None
        deadline = time.monotonic() + 60
        while True:
            if not self.api.alive():
                raise RuntimeError(f"the API exited:\n{self.api.tail()}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer:\n{self.api.tail()}")
            time.sleep(0.1)

    def start_worker(self, concurrency: int) -> Proc:
        worker = self._spawn(
            f"worker-{len(self.workers)}", ["worker", "--concurrency", str(concurrency)]
        )
        self.workers.append(worker)
        return worker

    def wait_workers_ready(self, timeout: float = 60) -> None:
        """Celery logs `ready.` once it consumes; before that a kill tests nothing."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            while " ready." not in worker.tail(200_000):
                if not worker.alive():
                    raise RuntimeError(f"{worker.name} exited:\n{worker.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker.name} is not ready:\n{worker.tail()}")
                time.sleep(0.1)

    def close(self) -> None:
        """Stop everything at once; whatever does not stop within seconds is killed."""
        procs = [*self.workers, *([self.api] if self.api else [])]
        for proc in procs:
            if proc.alive():
                proc.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()

    def worker_restarts(self) -> int:
        """How often a worker started itself again after Celery gave up on an error."""
        restarted = "stopped on an unrecoverable error; starting it again"
        return sum(worker.tail(10_000_000).count(restarted) for worker in self.workers)

    def logs(self) -> str:
        procs = [*([self.api] if self.api else []), *self.workers]
        return "\n".join(f"--- {proc.name}\n{proc.tail()}" for proc in procs)

    def submit(
        self,
        count: int,
        ingest_key: str,
        *,
        label: str,
        parallel: int = 8,
        give_up_after_s: float = 60,
    ) -> list[str]:
        """POST `count` text submissions; each is retried (same external id) until accepted.

        An upload service that gets no 2xx sends again; the external id makes that safe, so a
        submission the API could not take during an outage is still one submission.
        """
        headers = {"Authorization": f"Bearer {ingest_key}"}
        run = uuid.uuid4().hex[:8]

        def post(client: httpx.Client, number: int) -> str:
            body = {
                "external_id": f"{label}-{run}-{number}",
                # Unique words, so every item is a model call of its own (no verdict reuse).
                "text": f"chaos {label} item {number} of run {run}",
            }
            deadline = time.monotonic() + give_up_after_s
            while True:
                try:
                    response = client.post("/v1/submissions", json=body, headers=headers)
                    if response.status_code in (200, 202):
                        return str(response.json()["id"])
                    failure = f"{response.status_code} {response.text[:200]}"
                except httpx.TransportError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                if time.monotonic() > deadline:
                    raise AssertionError(f"{body['external_id']} never accepted: {failure}")
                time.sleep(0.2)

        with (
            httpx.Client(base_url=self.api_url, timeout=15) as client,
            ThreadPoolExecutor(parallel) as pool,
        ):
            return list(pool.map(lambda number: post(client, number), range(count)))


@dataclass
class Figures:
    """What a chaos test reports; `lost` and the duplicates must be 0."""

    scenario: str
    broker: str
    submitted: int = 0
    in_flight: int = 0
    lost: int = 0
    duplicate_decisions: int = 0
    duplicate_callbacks: int = 0
    recovery_s: float = 0.0
    total_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        notes = ", ".join(f"{key} {value}" for key, value in self.notes.items())
        return (
            f"{self.scenario} [{self.broker}]: submitted {self.submitted}, in flight at the "
            f"fault {self.in_flight}, lost {self.lost}, duplicate decisions "
            f"{self.duplicate_decisions}, duplicate accepted callbacks {self.duplicate_callbacks}"
            f", recovered in {self.recovery_s:.1f} s (test {self.total_s:.0f} s)"
            + (f"; {notes}" if notes else "")
        )


class Ledger:
    """Postgres and the receiver, read after (and during) a fault."""

    def __init__(self, database_url: str, tenant_id: uuid.UUID, endpoint: Endpoint) -> None:
        self.url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.tenant_id = tenant_id
        self.endpoint = endpoint

    def _rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return list(conn.execute(query, params).fetchall())  # type: ignore[arg-type]

    def statuses(self) -> Counter[str]:
        """Submissions of the tenant by status; empty while the database is away."""
        try:
            rows = self._rows(
                "SELECT status, count(*) FROM submissions WHERE tenant_id = %s GROUP BY status",
                self.tenant_id,
            )
        except psycopg.OperationalError:
            return Counter()
        return Counter({str(status): int(count) for status, count in rows})

    def unsettled(self) -> int:
        counts = self.statuses()
        return sum(count for status, count in counts.items() if status not in SETTLED)

    def _has_redrive(self) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_name = 'submissions' AND column_name = 'redrive_at'"
            )
        )

    def quiet(self, ids: list[str]) -> bool:
        """Every submission settled, no re-drive pending, no callback still to send."""
        try:
            settled = self._rows(
                "SELECT count(*) FROM submissions WHERE id = ANY(%s::uuid[]) AND status = ANY(%s)",
                ids,
                list(SETTLED),
            )[0][0]
            if settled != len(ids):
                return False
            if self._has_redrive() and self._rows(
                "SELECT 1 FROM submissions WHERE id = ANY(%s::uuid[]) AND redrive_at IS NOT NULL "
                "LIMIT 1",
                ids,
            ):
                return False
            return not self._rows(
                "SELECT 1 FROM webhook_deliveries WHERE tenant_id = %s AND status = 'pending' "
                "LIMIT 1",
                self.tenant_id,
            )
        except psycopg.OperationalError:
            return False

    def wait_quiet(self, ids: list[str], timeout: float) -> float:
        """Seconds until quiet; raises with the state it got stuck in."""
        started = time.monotonic()
        while not self.quiet(ids):
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"not settled after {timeout:.0f} s: {dict(self.statuses())}, "
                    f"deliveries {self.delivery_states()}"
                )
            time.sleep(0.25)
        return time.monotonic() - started

    def wait_for(self, status: str, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.statuses()[status] < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {at_least} {status}: {dict(self.statuses())}")
            time.sleep(0.1)

    def wait_settled(self, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(self.statuses()[status] for status in SETTLED) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {at_least} settled: {dict(self.statuses())}")
            time.sleep(0.1)

    def decision_reasons(self) -> dict[str, int]:
        """Automatic decisions by review reason ("-" for none): what an outage sent to review."""
        rows = self._rows(
            "SELECT coalesce(d.reason, '-'), count(*) FROM decisions d "
            "JOIN submissions s ON s.id = d.submission_id "
            "WHERE s.tenant_id = %s AND d.source = ANY(%s) GROUP BY 1",
            self.tenant_id,
            list(AUTOMATIC_SOURCES),
        )
        return {str(reason): int(count) for reason, count in rows}

    def delivery_states(self) -> dict[str, int]:
        try:
            rows = self._rows(
                "SELECT status, count(*) FROM webhook_deliveries WHERE tenant_id = %s "
                "GROUP BY status",
                self.tenant_id,
            )
        except psycopg.OperationalError:
            return {}
        return {str(status): int(count) for status, count in rows}

    def check(
        self, figures: Figures, ids: list[str], *, cut_at: float | None = None
    ) -> dict[str, list[str]]:
        """Fill in lost and duplicates; returns what is wrong, by kind, for the assertion.

        `cut_at` is when a worker was killed: a callback it had sent, whose answer it could not
        record, is sent again; the receiver seeing that one twice is expected, and counted apart.
        """
        problems: dict[str, list[str]] = {}
        rows = self._rows(
            """
            SELECT s.id::text, s.status, s.action,
              (SELECT count(*) FROM decisions d
                WHERE d.submission_id = s.id AND d.source = ANY(%s)),
              (SELECT count(*) FROM decisions d WHERE d.submission_id = s.id),
              (SELECT count(*) FROM audit_events a
                WHERE a.submission_id = s.id AND a.event = 'redriven'),
              (SELECT count(*) FROM decisions d
                WHERE d.submission_id = s.id AND d.action <> 'review' AND d.source = 'system')
            FROM submissions s WHERE s.tenant_id = %s
            """,
            list(AUTOMATIC_SOURCES),
            self.tenant_id,
        )
        by_id = {row[0]: row for row in rows}
        accepted = set(ids)
        lost = [i for i in accepted if i not in by_id or by_id[i][1] not in SETTLED]
        problems["lost"] = [f"{i}: {by_id[i][1] if i in by_id else 'missing'}" for i in lost]
        problems["unasked"] = [i for i in by_id if i not in accepted]
        duplicates = []
        for submission_id, _, _, automatic, _, redrives, _ in rows:
            # One automatic decision, plus one for each time an outage's review was re-driven.
            if automatic != 1 + redrives:
                duplicates.append(f"{submission_id}: {automatic} automatic, {redrives} re-drives")
        problems["duplicate decisions"] = duplicates
        problems["let through"] = [row[0] for row in rows if row[6]]

        deliveries = self._rows(
            """
            SELECT d.webhook_id, d.submission_id::text, d.status,
              (SELECT count(*) FROM webhook_attempts a
                WHERE a.delivery_id = d.id AND a.outcome = 'succeeded'),
              (SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id)
            FROM webhook_deliveries d WHERE d.tenant_id = %s
            """,
            self.tenant_id,
        )
        per_submission = Counter(row[1] for row in deliveries)
        problems["callbacks missing"] = [
            f"{row[0]}: {row[4]} decisions, {per_submission[row[0]]} events"
            for row in rows
            if per_submission[row[0]] != row[4]
        ]
        problems["callbacks undelivered"] = [
            f"{hook}: {status}" for hook, _, status, _, _ in deliveries if status != "delivered"
        ]
        receipts: dict[str, list[float]] = {}
        for received in self.endpoint.received:
            receipts.setdefault(str(received.headers.get("webhook-id")), []).append(received.at)
        known = {row[0] for row in deliveries}
        problems["callbacks not received"] = [hook for hook in known if hook not in receipts]
        problems["forged or unknown callbacks"] = [
            str(received.headers.get("webhook-id"))
            for received in self.endpoint.received
            if not received.verified or received.headers.get("webhook-id") not in known
        ]
        recorded_twice = [f"{hook}: {ok} succeeded" for hook, _, _, ok, _ in deliveries if ok > 1]
        recorded_attempts = {row[0]: row[4] for row in deliveries}
        accepted_twice, cut_off = [], []
        for hook, times in receipts.items():
            if len(times) < 2:
                continue
            # A kill between the receiver's answer and its record leaves an attempt the
            # database never heard of; the event is then sent again, by design (at least once).
            unrecorded = len(times) - recorded_attempts.get(hook, 0)
            if cut_at is not None and unrecorded == 1 and min(times) < cut_at:
                cut_off.append(hook)
            else:
                accepted_twice.append(f"{hook}: accepted {len(times)} times")
        problems["duplicate callbacks"] = recorded_twice + accepted_twice
        figures.lost = len(lost)
        figures.duplicate_decisions = len(duplicates)
        figures.duplicate_callbacks = len(recorded_twice) + len(accepted_twice)
        if cut_at is not None:
            figures.notes["callbacks re-sent after the kill cut their record off"] = len(cut_off)
        figures.notes.setdefault("decisions", dict(Counter(str(row[2]) for row in rows)))
        figures.notes.setdefault("callbacks", len(deliveries))
        return {kind: found for kind, found in problems.items() if found}
