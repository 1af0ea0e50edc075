"""Throughput of the real stack against a model double: ingest, pipeline, latency, tokens.

One command starts everything on this machine: a PostgreSQL of its own (with
pg_stat_statements, to count database round trips) or the one you name, Redis, the API, N
worker processes with their relay, a model double with a fixed latency and a concurrency cap
(benchmarks/model_double.py), and a loopback image server (benchmarks/image_server.py). An async
load generator then runs these phases and the harness prints one table and writes JSON:

  bare       a FastAPI endpoint that only answers 202, under the same server: the ceiling
  ingest     POST /v1/submissions, text only, unique ids, no worker running
  pipeline   N submissions with images fetched by URL, per image mix, all workers running;
             rate against the model's bound C/L, worker CPU and database round trips per item
  half-load  submissions paced at half the bound: end-to-end latency minus model time
  cache      the same uploads again under new ids: no second model call
  naive      what a user would deploy without this service's design: Celery prefork, one
             model call per process, as many processes as cores

    python -m benchmarks.throughput                       # the full run (a few minutes)
    python -m benchmarks.throughput --count 50 --smoke    # what CI runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
QWEN25_DEFAULT_MAX_TOKENS = 12845056 // (28 * 28)  # Qwen2.5-VL's default max_pixels, in tokens


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if not self.alive():
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return Proc(name, process, log)


def wait_http(url: str, proc: Proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{proc.name}: {url} did not answer in {timeout}s\n{proc.tail()}")


def _tree(pid: int) -> list[int]:
    """The process and its live descendants (prefork pools run their work in children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [c for p in frontier for c in children.get(p, [])]
        found += frontier
    return found


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return total


def peak_rss_mb(pid: int) -> float:
    """The largest high-water mark in the process tree (VmHWM), in MiB."""
    peak = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return round(peak / 1024, 1)


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def redis_pid(broker_url: str) -> int | None:
    """The Redis server's pid, when it runs on this machine."""
    import redis

    if "127.0.0.1" not in broker_url and "localhost" not in broker_url:
        return None
    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.info("server")["process_id"])
    except Exception:
        return None
    finally:
        client.close()


class CpuMeter:
    """CPU seconds spent by each named process tree, and by the machine, between two reads.

    Says where a pipeline's cores went: the service's own processes, the database and broker
    it needs, and the benchmark's doubles (model, images) and load generator, which a real
    deployment would not run on the same machine.
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.started = {name: self._read(pids) for name, pids in groups.items()}
        self.machine_started = machine_busy_s()
        self.own_started = time.process_time()

    @staticmethod
    def _read(pids: list[int]) -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    def per_item_ms(self, items: int) -> dict[str, Any]:
        spent = {
            name: (self._read(pids) - self.started[name]) * 1000 / items
            for name, pids in self.groups.items()
        }
        spent["load generator"] = (time.process_time() - self.own_started) * 1000 / items
        busy, total = machine_busy_s()
        busy -= self.machine_started[0]
        total -= self.machine_started[1]
        return {
            "cpu_ms_per_item": {name: round(ms, 2) for name, ms in spent.items()},
            "machine_cpu_ms_per_item": round(busy * 1000 / items, 2),
            "machine_busy_share": round(busy / total, 3) if total else None,
        }


# --- profiles --------------------------------------------------------------------------------


def start_profiler(pid: int, out: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy sampling a worker's on-CPU stacks (all threads), without pausing it."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = subprocess.Popen(
        [py_spy, "record", "--gil", "--format", "raw", "--rate", "100",
         "--output", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return process, out


def stop_profilers(profilers: list[tuple[subprocess.Popen[bytes], Path]]) -> dict[str, Any]:
    """Where the sampled CPU went: the share of samples in each frame (inclusive), top first."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for process, out in profilers:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        if not out.exists():
            continue
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            named = [re.sub(r" \(.*?:\d+\)$", "", f) for f in stack.split(";")]
            for frame in set(named):
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
            # The innermost frame of this project's or a library's code: where the time is spent.
            leaf = named[-1] if named else "?"
            own[leaf] = own.get(leaf, 0) + int(count)
    top = sorted(inclusive.items(), key=lambda kv: -kv[1])[:60]
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:30]
    return {
        "samples": total,
        "inclusive_share": {frame: round(n / total, 3) for frame, n in top} if total else {},
        "self_share": {frame: round(n / total, 3) for frame, n in top_own} if total else {},
    }


# --- PostgreSQL --------------------------------------------------------------------------------


class PrivatePostgres:
    """A throwaway server with pg_stat_statements preloaded, run as the postgres user."""

    def __init__(self, workdir: Path) -> None:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if not candidates or shutil.which("runuser") is None:
            raise RuntimeError("no PostgreSQL binaries to start a private server")
        self.bin = candidates[-1].parent
        self.dir = workdir / "pg"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres",
                          "--auth=trust", "-E", "UTF8")  # fmt: skip
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
        )
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-o", options, "-w",
                          "-l", str(self.dir / "server.log"), "start")  # fmt: skip
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        """The postmaster's pid: with its children, every backend of the benchmark."""
        return int((self.dir / "postmaster.pid").read_text().splitlines()[0])

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def stop(self) -> None:
        try:
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "stop")
        except subprocess.CalledProcessError:
            log = self.dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            print(f"(the private PostgreSQL did not stop cleanly; its log ends:)\n{tail}")


def new_database(server_url: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


# The harness's own queries start with this comment, so round-trip counts leave them out.
OBSERVER = "/* harness */ "


class Statements:
    """Database round trips, from pg_stat_statements when the server has it loaded.

    Every top-level statement the service sends is one round trip with psycopg (BEGIN and
    COMMIT included); statements run inside the server (triggers, foreign-key checks) are not
    round trips and are left out, and so is the harness's own polling.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute(OBSERVER + "SELECT pg_stat_statements_reset()")
            self.available = True
        except psycopg.Error:
            self.available = False

    def reset(self) -> None:
        if self.available:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(OBSERVER + "SELECT pg_stat_statements_reset()")

    def calls(self) -> tuple[int, list[tuple[int, float, str]]] | None:
        """The total, and the statements by calls (most first) with the server's time in each
        (ms, all calls), for the JSON."""
        if not self.available:
            return None
        with psycopg.connect(self.url, autocommit=True) as conn:
            rows = conn.execute(
                OBSERVER + "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s "
                "JOIN pg_database d ON d.oid = s.dbid "
                "WHERE d.datname = current_database() AND s.toplevel AND s.query NOT LIKE %s "
                "ORDER BY s.calls DESC",
                (OBSERVER.strip() + "%",),
            ).fetchall()
        return sum(int(r[0]) for r in rows), [
            (int(r[0]), float(r[1]), " ".join(r[2].split())[:160]) for r in rows
        ]


def per_item(
    counted: tuple[int, list[tuple[int, float, str]]] | None, items: int
) -> dict[str, Any]:
    if counted is None:
        return {"round_trips": None, "statements": []}
    total, statements = counted
    return {
        "round_trips": round(total / items, 2),
        "statements": [
            {
                "per_item": round(calls / items, 2),
                "server_ms_per_item": round(spent / items, 3),
                "query": query,
            }
            for calls, spent, query in statements[:25]
        ],
    }


# --- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # The load generator's own CPU: if it nears elapsed_s, the generator and not the server
    # set the rate, and the figure says nothing about the server.
    client_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, Any]:
        ms = [v * 1000 for v in self.latencies_s]
        return {
            "requests": len(ms),
            "per_s": round(self.rate, 1),
            "p50_ms": round(percentile(ms, 0.5) or 0, 1),
            "p95_ms": round(percentile(ms, 0.95) or 0, 1),
            "p99_ms": round(percentile(ms, 0.99) or 0, 1),
            "client_cpu_ms_per_request": round(self.client_cpu_s * 1000 / max(1, len(ms)), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


async def blast(
    base: str,
    bodies: list[dict[str, Any]],
    headers: dict[str, str],
    connections: int,
    *,
    rate: float | None = None,
) -> Load:
    """POST every body, with `connections` in flight, or paced at `rate` per second.

    aiohttp rather than httpx: httpx's async pool costs about 3 ms of CPU per request here,
    enough to cap the bare endpoint near the generator's own limit; aiohttp costs about 0.2 ms.
    Bodies are encoded before the clock starts.
    """
    load = Load()
    encoded = [json.dumps(body).encode() for body in bodies]
    request_headers = {**headers, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as client:

        async def post(body: bytes) -> None:
            began = time.perf_counter()
            async with client.post(
                "/v1/submissions", data=body, headers=request_headers
            ) as response:
                await response.read()
            load.latencies_s.append(time.perf_counter() - began)
            load.statuses[response.status] = load.statuses.get(response.status, 0) + 1

        started = time.perf_counter()
        cpu_started = time.process_time()
        if rate is None:
            queue = iter(encoded)

            async def lane() -> None:
                for body in queue:
                    await post(body)

            await asyncio.gather(*(lane() for _ in range(connections)))
        else:
            tasks = []
            for i, body in enumerate(encoded):
                delay = started + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(body)))
            await asyncio.gather(*tasks)
        load.elapsed_s = time.perf_counter() - started
        load.client_cpu_s = time.process_time() - cpu_started
    return load


BARE_APP = """
from fastapi import FastAPI, Request, status

app = FastAPI()


@app.post("/v1/submissions", status_code=status.HTTP_202_ACCEPTED)
async def accept(request: Request) -> dict[str, str]:
    await request.body()
    return {"status": "queued"}
"""


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    database_url: str
    model_log: Path
    procs: list[Proc] = field(default_factory=list)

    def cli(self, *argv: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "moderation", *argv, "--json"],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def tenant(self, name: str) -> tuple[str, dict[str, str]]:
        tenant = self.cli("tenants", "create", name)
        key = self.cli("keys", "create", "--tenant", str(tenant["id"]), "--role", "ingest")
        return str(tenant["id"]), {"Authorization": f"Bearer {key['key']}"}

    def launch(self, name: str, argv: list[str], extra: dict[str, str] | None = None) -> Proc:
        proc = start(name, argv, {**self.env, **(extra or {})}, self.workdir)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def drop_queued_messages(broker_url: str, queue: str, settle_s: float = 2.0) -> int:
    """Empty the queue (and its priority lanes) once publishes sent after the 202s have landed."""
    import redis

    client = redis.Redis.from_url(broker_url)
    time.sleep(settle_s)
    keys = [queue, *client.scan_iter(match=f"{queue}\x06*")]
    dropped = sum(int(client.llen(key)) for key in keys)
    client.delete(*keys)
    client.close()
    return dropped


def wait_decided(url: str, tenant_id: str, count: int, timeout: float) -> float:
    """Poll Postgres until `count` submissions of the tenant have an outcome; returns when."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                OBSERVER + "SELECT count(*) FROM submissions WHERE tenant_id = %s "
                "AND status IN ('decided', 'in_review')",
                (tenant_id,),
            ).fetchone()
            if row and row[0] >= count:
                return time.monotonic()
            time.sleep(0.05)
    raise SystemExit(f"only part of {count} submissions decided in {timeout}s")


def model_seconds(model_log: Path) -> dict[str, float]:
    """Time the model double spent on each upload (its calls, arrival to answer), by external id.

    Taken from the double rather than from the service's own records, so whatever the service
    spends around a call (building it, waiting for a slot) counts as added latency.
    """
    spent: dict[str, float] = {}
    if not model_log.exists():
        return spent
    for line in model_log.read_text().splitlines():
        record = json.loads(line)
        match = re.search(r"upload (bench-\S+)", record["text"])
        if match:
            key = match.group(1)
            spent[key] = spent.get(key, 0.0) + record["answered"] - record["arrived"]
    return spent


def outcome_figures(url: str, tenant_id: str, model_log: Path) -> dict[str, Any]:
    """End-to-end and added latency, sources and review reasons, read from the stored rows."""
    spent = model_seconds(model_log)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            OBSERVER
            + """
            SELECT extract(epoch FROM d.created_at - s.created_at), s.external_id,
                   d.source, d.reason,
                   extract(epoch FROM s.created_at), extract(epoch FROM d.created_at)
            FROM submissions s
            JOIN LATERAL (SELECT * FROM decisions WHERE submission_id = s.id
                          ORDER BY created_at LIMIT 1) d ON true
            WHERE s.tenant_id = %s
            """,
            (tenant_id,),
        ).fetchall()
    e2e = [float(r[0]) for r in rows]
    added = [float(r[0]) - spent.get(r[1], 0.0) for r in rows]
    sources: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for row in rows:
        sources[row[2]] = sources.get(row[2], 0) + 1
        if row[3]:
            reasons[row[3]] = reasons.get(row[3], 0) + 1
    first_in = min((float(r[4]) for r in rows), default=0.0)
    last_out = max((float(r[5]) for r in rows), default=0.0)
    # The rate once the model's slots are full: decisions between the 10th and the 90th
    # percentile of decision times. A finite burst also pays for filling the slots at its start
    # and for one model latency at its end, which the whole-run rate includes.
    decided_at = sorted(float(r[5]) for r in rows)
    low, high = round(0.1 * (len(decided_at) - 1)), round(0.9 * (len(decided_at) - 1))
    steady = (
        round((high - low) / (decided_at[high] - decided_at[low]), 2)
        if len(decided_at) >= 10 and decided_at[high] > decided_at[low]
        else None
    )
    return {
        "items": len(rows),
        "rate_per_s": round(len(rows) / (last_out - first_in), 2) if rows else 0.0,
        "steady_rate_per_s": steady,
        "e2e_p50_ms": round((percentile(e2e, 0.5) or 0) * 1000),
        "e2e_p95_ms": round((percentile(e2e, 0.95) or 0) * 1000),
        "added_p50_ms": round((percentile(added, 0.5) or 0) * 1000),
        "added_p95_ms": round((percentile(added, 0.95) or 0) * 1000),
        "sources": sources,
        "review_reasons": reasons,
    }


def token_figures(url: str, tenant_id: str, model_log: Path) -> dict[str, Any]:
    """Tokens per image by kind, and whether what the double saw matches what was predicted."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            OBSERVER
            + """
            SELECT s.external_id, i.tokens FROM submission_images i
            JOIN submissions s ON s.id = i.submission_id
            WHERE s.tenant_id = %s AND i.tokens IS NOT NULL
            """,
            (tenant_id,),
        ).fetchall()
    predicted: dict[str, int] = {}
    by_kind: dict[str, list[int]] = {}
    for external_id, tokens in rows:
        predicted[external_id] = predicted.get(external_id, 0) + int(tokens)
        kind = external_id.split("-")[2]
        by_kind.setdefault(kind, []).append(int(tokens))
    seen: dict[str, int] = {}
    for line in model_log.read_text().splitlines():
        record = json.loads(line)
        match = re.search(r"upload (bench-\S+)", record["text"])
        if match and match.group(1) in predicted:
            seen[match.group(1)] = sum(image["tokens"] for image in record["images"])
    compared = [key for key in seen if key in predicted]
    return {
        "tokens_per_image": {k: round(statistics.mean(v)) for k, v in sorted(by_kind.items())},
        "predicted_equals_sent": sum(seen[k] == predicted[k] for k in compared),
        "compared": len(compared),
    }


def prefix_figures(model_log: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in model_log.read_text().splitlines()]
    shared = [r["shared_prefix_bytes"] for r in records[1:]]
    total = [r["prompt_bytes"] for r in records[1:]]
    return {
        "model_calls": len(records),
        "shared_prefix_bytes_p50": percentile([float(s) for s in shared], 0.5),
        "prompt_bytes_p50": percentile([float(t) for t in total], 0.5),
        "shared_share": round(sum(shared) / sum(total), 3) if total else None,
    }


def submissions_for(phase: str, kinds: list[str], count: int, image_base: str) -> list[dict]:  # type: ignore[type-arg]
    bodies = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        external_id = f"bench-{phase}-{kind}-{i}"
        bodies.append(
            {
                "external_id": external_id,
                "text": f"upload {external_id} from the load test",
                "images": [{"url": f"{image_base}/img/{kind}/{i}"}],
            }
        )
    return bodies


async def warm_up(stack: Stack, api_base: str, image_base: str, name: str) -> None:
    """One submission through the workers before a timed phase: Celery has started, imports
    are done and connections are open, so the phase measures the steady state."""
    tenant_id, headers = stack.tenant(f"warm-up-{name}")
    await blast(api_base, submissions_for(f"warm{name}", ["vga"], 1, image_base), headers, 1)
    wait_decided(stack.database_url, tenant_id, 1, timeout=180)


async def bare_endpoint(
    stack: Stack, bodies: list[dict[str, Any]], connections: int
) -> dict[str, Any]:
    """A FastAPI endpoint that only answers 202, under the same server and generator."""
    bare_file = stack.workdir / "bare_app.py"
    bare_file.write_text(BARE_APP)
    bare_port = free_port()
    bare = stack.launch(
        "bare",
        [sys.executable, "-m", "uvicorn", "--app-dir", str(stack.workdir), "bare_app:app",
         "--port", str(bare_port), "--log-level", "warning", "--no-access-log"],
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{bare_port}/docs", bare)
    load = await blast(f"http://127.0.0.1:{bare_port}", bodies, {}, connections)
    bare.stop()
    return load.summary()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="moderation-throughput-"))
    workdir.chmod(0o755)  # the private PostgreSQL runs as the postgres user and must reach it
    private: PrivatePostgres | None = None
    if args.database_url:
        server_url = args.database_url
    else:
        try:
            private = PrivatePostgres(workdir)
            server_url = private.url
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"(no private PostgreSQL: {exc}; using {args.fallback_database_url})")
            server_url = args.fallback_database_url
    database_url = new_database(server_url)
    statements = Statements(database_url)
    model_port, image_port, api_port = free_port(), free_port(), free_port()
    model_log = workdir / "model.jsonl"
    env = {
        **os.environ,
        "MODERATION_DATABASE_URL": database_url,
        "MODERATION_BROKER_URL": args.broker_url,
        "MODERATION_QUEUE_NAME": f"throughput-{uuid.uuid4().hex[:8]}",
        "MODERATION_VLM_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
        "MODERATION_VLM_RESPONSE_FORMAT": "json_schema",
        "MODERATION_FETCH_ALLOW_HOSTS": f"127.0.0.1:{image_port}",
        "MODERATION_DATA_DIR": str(workdir / "data"),
        "MODERATION_LOG_LEVEL": "WARNING",
        # One key posts as fast as the API takes it: measure the pipeline, not the rate limits.
        "MODERATION_RATE_LIMIT_ENABLED": "false",
    }
    stack = Stack(workdir, env, database_url, model_log)
    figures: dict[str, Any] = {
        "config": {
            "count": args.count,
            "model_latency_ms": args.latency_ms,
            "model_concurrency": args.concurrency,
            "workers": args.workers,
            "connections": args.connections,
            "database": "private" if private else "shared",
            "round_trips_counted": statements.available,
        }
    }
    bound = args.concurrency / (args.latency_ms / 1000)
    phases = set(args.phases.split(","))
    try:
        subprocess.run(
            [sys.executable, "-m", "moderation", "migrate"], cwd=ROOT, env=env, check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        model = stack.launch(
            "model",
            [sys.executable, "-m", "benchmarks.model_double", "--port", str(model_port),
             "--latency-ms", str(args.latency_ms), "--max-concurrency", str(args.concurrency),
             "--log", str(model_log)],
        )  # fmt: skip
        images = stack.launch(
            "images",
            [sys.executable, "-m", "benchmarks.image_server", "--port", str(image_port),
             "--count", str(args.count)],
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{model_port}/v1/models", model)
        wait_http(f"http://127.0.0.1:{image_port}/ready", images, timeout=300)
        image_base = f"http://127.0.0.1:{image_port}"

        # Bare endpoint: the ceiling of this server and this load generator on this machine.
        ingest_bodies = [
            {"external_id": f"ingest-{i}-{uuid.uuid4().hex[:6]}", "text": f"caption number {i}"}
            for i in range(args.ingest_count)
        ]
        if "bare" in phases:
            figures["bare"] = await bare_endpoint(stack, ingest_bodies, args.connections)

        # Ingest alone: the API with no worker, so nothing else competes for the cores.
        api_argv = [sys.executable, "-m", "moderation", "api", "--port", str(api_port)]
        if args.api_workers > 1:
            api_argv += ["--workers", str(args.api_workers)]
        api = stack.launch("api", api_argv)
        api_base = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api_base}/healthz", api)
        ingest_tenant, ingest_headers = stack.tenant("ingest")
        if "ingest" in phases:
            # A short warm-up first: the first requests pay for imports and new connections.
            warm = [dict(b, external_id=b["external_id"] + "-warm") for b in ingest_bodies[:64]]
            await blast(api_base, warm, ingest_headers, args.connections)
            statements.reset()
            profilers = (
                [start_profiler(api.process.pid, workdir / "profile-api.txt")]
                if args.profile
                else []
            )
            api_cpu_before = cpu_seconds(api.process.pid)
            ingest_load = await blast(api_base, ingest_bodies, ingest_headers, args.connections)
            api_cpu = cpu_seconds(api.process.pid) - api_cpu_before
            if profilers:
                figures["api_profile"] = stop_profilers(profilers)
            counted = per_item(statements.calls(), len(ingest_bodies))
            figures["ingest"] = ingest_load.summary() | {
                "api_cpu_ms_per_request": round(api_cpu * 1000 / len(ingest_bodies), 2),
                "round_trips_per_request": counted["round_trips"],
                "statements": counted["statements"],
            }
        # Those rows are queued for a worker: their messages would make the pipeline phase's
        # workers claim thousands of rows that are not part of it, and the relay would re-send
        # them. They are marked decided out of band and their messages dropped.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                OBSERVER + "UPDATE submissions SET status = 'decided', action = 'allow' "
                "WHERE tenant_id = %s",
                (ingest_tenant,),
            )
        drop_queued_messages(args.broker_url, env["MODERATION_QUEUE_NAME"])

        # The pipeline, per image mix.
        per_worker = max(1, args.concurrency // args.workers)
        workers = [
            stack.launch(
                f"worker{n}",
                [sys.executable, "-m", "moderation", "worker", "--concurrency", str(per_worker)],
            )
            for n in range(args.workers)
        ]
        await warm_up(stack, api_base, image_base, "workers")
        mixes = {"vga": ["vga"], "realistic": ["phone", "screenshot", "portrait", "meme", "icon"]}
        figures["pipeline"] = {}
        for mix, kinds in mixes.items():
            if mix not in phases:
                continue
            tenant_id, headers = stack.tenant(f"pipeline-{mix}")
            bodies = submissions_for(mix, kinds, args.count, image_base)
            cpu_before = sum(cpu_seconds(w.process.pid) for w in workers)
            groups = {
                "workers": [w.process.pid for w in workers],
                "api": [api.process.pid],
                "model double": [model.process.pid],
                "image server": [images.process.pid],
            }
            if private is not None:
                groups["postgres"] = [private.pid]
            broker_pid = redis_pid(args.broker_url)
            if broker_pid is not None:
                groups["redis"] = [broker_pid]
            meter = CpuMeter(groups)
            statements.reset()
            profilers = [
                start_profiler(w.process.pid, workdir / f"profile-{mix}-{n}.txt")
                for n, w in enumerate(workers)
                if args.profile
            ]
            await blast(api_base, bodies, headers, args.connections)
            wait_decided(database_url, tenant_id, len(bodies), timeout=600)
            cpu = sum(cpu_seconds(w.process.pid) for w in workers) - cpu_before
            spent = meter.per_item_ms(len(bodies))
            if profilers:
                figures.setdefault("worker_profile", {})[mix] = stop_profilers(profilers)
            counted = per_item(statements.calls(), len(bodies))
            result = outcome_figures(database_url, tenant_id, model_log)
            result |= {
                "bound_per_s": round(bound, 1),
                "ratio": round(result["rate_per_s"] / bound, 3),
                "worker_cpu_ms_per_item": round(cpu * 1000 / len(bodies), 1),
                **spent,
                # Ingest of the same items included: the API shares the database.
                "round_trips_per_item": counted["round_trips"],
                "statements": counted["statements"],
            }
            result |= token_figures(database_url, tenant_id, model_log)
            figures["pipeline"][mix] = result

        if "half" in phases:
            # Half the bound's load: what the service adds to each item's latency.
            tenant_id, headers = stack.tenant("half-load")
            half = submissions_for("half", ["vga"], max(20, args.count // 2), image_base)
            await blast(api_base, half, headers, args.connections, rate=bound / 2)
            wait_decided(database_url, tenant_id, len(half), timeout=600)
            figures["half_load"] = outcome_figures(database_url, tenant_id, model_log)

        if "cache" in phases:
            # The verdict cache: identical uploads under new ids never reach the model.
            repeat_tenant, repeat_headers = stack.tenant("cache")
            first = submissions_for("cache", ["vga"], 20, image_base)
            await blast(api_base, first, repeat_headers, args.connections)
            wait_decided(database_url, repeat_tenant, len(first), timeout=120)
            calls_before = len(model_log.read_text().splitlines())
            again = [dict(b, external_id=b["external_id"] + "-again") for b in first]
            await blast(api_base, again, repeat_headers, args.connections)
            wait_decided(database_url, repeat_tenant, len(first) * 2, timeout=120)
            figures["cache"] = {
                "repeats": len(again),
                "model_calls_for_repeats": len(model_log.read_text().splitlines()) - calls_before,
                "sources": outcome_figures(database_url, repeat_tenant, model_log)["sources"],
            }
        figures["peak_rss_mb"] = {
            "api": peak_rss_mb(api.process.pid),
            "worker": max(peak_rss_mb(w.process.pid) for w in workers),
        }
        if model_log.exists():
            figures["prefix"] = prefix_figures(model_log)
        for worker in workers:
            worker.stop()

        if "naive" in phases:
            # The naive deployment: prefork, one call per process, as many processes as cores.
            cores = os.cpu_count() or 2
            naive = stack.launch(
                "naive",
                [sys.executable, "-m", "celery", "-A", "moderation.queue:celery_app", "worker",
                 "--pool=prefork", f"--concurrency={cores}", "--loglevel=WARNING",
                 f"--queues={env['MODERATION_QUEUE_NAME']}", "--without-gossip",
                 "--without-mingle"],
                {"MODERATION_VLM_MAX_CONCURRENCY": "1"},
            )  # fmt: skip
            await warm_up(stack, api_base, image_base, "naive")
            tenant_id, headers = stack.tenant("naive")
            naive_count = max(8, min(args.count // 5, 80))
            await blast(api_base, submissions_for("naive", ["vga"], naive_count, image_base),
                        headers, args.connections)  # fmt: skip
            wait_decided(database_url, tenant_id, naive_count, timeout=600)
            naive.stop()
            naive_figures = outcome_figures(database_url, tenant_id, model_log)
            figures["naive"] = {"processes": cores, **naive_figures}
            figures["speedup_vs_naive"] = {
                mix: round(result["rate_per_s"] / naive_figures["rate_per_s"], 1)
                for mix, result in figures["pipeline"].items()
            }
    finally:
        stack.stop_all()
        if private is not None:
            private.stop()
        if args.keep:
            print(f"logs, profiles and the private database are in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return figures


PHASES = ("bare", "ingest", "vga", "realistic", "half", "cache", "naive")


def table(figures: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        rows.append((name, str(value)))

    config = figures["config"]
    add("model double", f"{config['model_latency_ms']} ms, {config['model_concurrency']} in flight")
    for name in ("bare", "ingest"):
        if name not in figures:
            continue
        load = figures[name]
        add(f"{name} POST /s", load["per_s"])
        add(f"{name} p50/p95/p99 ms", f"{load['p50_ms']} / {load['p95_ms']} / {load['p99_ms']}")
        add(f"{name} load generator CPU ms/request", load["client_cpu_ms_per_request"])
    if "ingest" in figures:
        add("ingest API CPU ms/request", figures["ingest"]["api_cpu_ms_per_request"])
        add("ingest db round trips/request", figures["ingest"]["round_trips_per_request"])
    for mix, result in figures["pipeline"].items():
        add(f"pipeline[{mix}] /s", f"{result['rate_per_s']} of {result['bound_per_s']} "
                                  f"(ratio {result['ratio']})")  # fmt: skip
        if result.get("steady_rate_per_s"):
            steady = result["steady_rate_per_s"]
            add(f"pipeline[{mix}] steady /s (10th-90th pct)",
                f"{steady} (ratio {steady / result['bound_per_s']:.3f})")  # fmt: skip
        add(f"pipeline[{mix}] e2e p50/p95 ms", f"{result['e2e_p50_ms']} / {result['e2e_p95_ms']}")
        add(f"pipeline[{mix}] added p50/p95 ms",
            f"{result['added_p50_ms']} / {result['added_p95_ms']}")  # fmt: skip
        add(f"pipeline[{mix}] worker CPU ms/item", result["worker_cpu_ms_per_item"])
        if "cpu_ms_per_item" in result:
            add(f"pipeline[{mix}] CPU ms/item by process", result["cpu_ms_per_item"])
            busy = f"{result['machine_cpu_ms_per_item']}, {result['machine_busy_share']:.0%}"
            add(f"pipeline[{mix}] machine CPU ms/item, busy", busy)
        add(f"pipeline[{mix}] db round trips/item", result["round_trips_per_item"])
        add(f"pipeline[{mix}] tokens/image", result["tokens_per_image"])
        add(f"pipeline[{mix}] tokens predicted = sent",
            f"{result['predicted_equals_sent']} of {result['compared']}")  # fmt: skip
    if "half_load" in figures:
        half = figures["half_load"]
        add("half load e2e p50/p95 ms", f"{half['e2e_p50_ms']} / {half['e2e_p95_ms']}")
        add("half load added p50/p95 ms", f"{half['added_p50_ms']} / {half['added_p95_ms']}")
    if "cache" in figures:
        cache = figures["cache"]
        add("cache: model calls for repeats",
            f"{cache['model_calls_for_repeats']} of {cache['repeats']}")  # fmt: skip
    if "naive" in figures:
        add("naive (prefork) /s", figures["naive"]["rate_per_s"])
        add("speed-up vs naive", figures["speedup_vs_naive"])
    add("peak RSS MiB api / worker", f"{figures['peak_rss_mb']['api']} / "
                                     f"{figures['peak_rss_mb']['worker']}")  # fmt: skip
    if "prefix" in figures:
        prefix = figures["prefix"]
        shared = f"{prefix['shared_prefix_bytes_p50']} of {prefix['prompt_bytes_p50']} (p50)"
        add("prompt bytes shared with previous call", shared)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=600, help="submissions per image mix")
    parser.add_argument("--ingest-count", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=500)
    parser.add_argument("--concurrency", type=int, default=32, help="C: model calls in flight")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--database-url", help="a PostgreSQL server to use instead of a private one"
    )
    parser.add_argument(
        "--fallback-database-url", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--smoke", action="store_true", help="small and quick, for CI")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"which phases to run, comma-separated (default all: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs, profiles)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="sample the workers with py-spy during the pipeline"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    if args.ingest_count is None:
        args.ingest_count = 300 if args.smoke else 5000
    figures = asyncio.run(run(args))
    print(table(figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
