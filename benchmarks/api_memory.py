"""Peak resident memory of the API under the worst inputs it allows, and one it must refuse.

Starts `moderation api` as a process of its own on a scratch database, then sends, one at a
time, and reads the process's peak RSS (VmHWM, reset before each input) after each:

  bomb       60 MB of JSON: twenty million empty image objects (refused: 413)
  bomb-cap   the same shape, just under the JSON byte cap (refused unparsed: 413)
  json-cap   a JSON body with one inline image at IMAGE_MAX_BYTES (accepted: 202)
  multipart  every image at IMAGE_MAX_BYTES as multipart files (accepted: 202)

    python -m benchmarks.api_memory \
        --database-server postgresql://postgres@127.0.0.1:5432/postgres \
        --broker-url redis://127.0.0.1:6379/15

Target: every peak below 300 MB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TARGET_MB = 300


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_mb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def with_database(server: str, name: str) -> str:
    return server.rsplit("/", 1)[0] + "/" + name


def prepare(database_url: str) -> str:
    """Schema, a tenant (with its copies of the shipped policies) and an ingest key."""
    from moderation.database import get_sessionmaker, session_scope
    from moderation.schema_migrations import upgrade_schema
    from moderation.tenants.models import Role
    from moderation.tenants.service import create_api_key, create_tenant

    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade_schema(url)
    with session_scope(get_sessionmaker(url)) as session:
        tenant = create_tenant(session, "memory-benchmark")
        return create_api_key(session, tenant.id, Role.ingest).secret


def inputs(image_max_bytes: int, image_max_count: int, json_cap: int) -> list[dict[str, Any]]:
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(image_max_bytes - 8)
    under_cap = (json_cap - 64) // 3
    return [
        {
            "name": "bomb",
            "content": b'{"external_id":"bomb","images":['
            + b",".join([b"{}"] * 20_000_000)
            + b"]}",
            "headers": {"Content-Type": "application/json"},
        },
        {
            "name": "bomb-cap",
            "content": b'{"external_id":"bomb","images":[' + b",".join([b"{}"] * under_cap) + b"]}",
            "headers": {"Content-Type": "application/json"},
        },
        {
            "name": "json-cap",
            "content": json.dumps(
                {
                    "external_id": str(uuid.uuid4()),
                    "images": [{"data": base64.b64encode(image).decode()}],
                }
            ).encode(),
            "headers": {"Content-Type": "application/json"},
        },
        {
            "name": "multipart",
            "data": {"external_id": str(uuid.uuid4())},
            "files": [("images", (f"{i}.png", image, "image/png")) for i in range(image_max_count)],
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-server", required=True, help="postgresql://… of any database")
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--out", default=str(RESULTS / "api_memory.json"))
    args = parser.parse_args(argv)

    from moderation.config import Settings

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    name = f"moderation_memory_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = with_database(args.database_server, name)
    api: subprocess.Popen[bytes] | None = None
    rows: list[dict[str, Any]] = []
    try:
        key = prepare(database_url)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
        env.update(
            {
                "MODERATION_DATABASE_URL": database_url,
                "MODERATION_BROKER_URL": args.broker_url,
                "MODERATION_QUEUE_NAME": f"memory-{uuid.uuid4().hex[:8]}",
                "MODERATION_LOG_LEVEL": "WARNING",
            }
        )
        api = subprocess.Popen(
            [sys.executable, "-m", "moderation", "api", "--port", str(port)], cwd=ROOT, env=env
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        idle = memory_mb(api.pid, "VmRSS")
        headers = {"Authorization": f"Bearer {key}"}
        cases = inputs(
            settings.image_max_bytes, settings.image_max_count, settings.json_body_max_bytes
        )
        with httpx.Client(base_url=base, timeout=600) as client:
            for case in cases:
                reset_peak(api.pid)
                before = memory_mb(api.pid, "VmRSS")
                started = time.monotonic()
                response = client.post(
                    "/v1/submissions",
                    content=case.get("content"),
                    data=case.get("data"),
                    files=case.get("files"),
                    headers={**headers, **case.get("headers", {})},
                )
                rows.append(
                    {
                        "input": case["name"],
                        "status": response.status_code,
                        "seconds": round(time.monotonic() - started, 2),
                        "rss_before_mb": before,
                        "peak_mb": memory_mb(api.pid, "VmHWM"),
                    }
                )
        print(f"API idle RSS: {idle} MB; target peak < {TARGET_MB} MB")
        print(f"{'input':<10} {'status':>6} {'seconds':>8} {'before MB':>10} {'peak MB':>8}")
        for row in rows:
            print(
                f"{row['input']:<10} {row['status']:>6} {row['seconds']:>8} "
                f"{row['rss_before_mb']:>10} {row['peak_mb']:>8}"
            )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"idle_mb": idle, "inputs": rows}, indent=2))
    finally:
        if api is not None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(timeout=20)
            except subprocess.TimeoutExpired:
                api.kill()
        with psycopg.connect(args.database_server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return 0 if all(row["peak_mb"] < TARGET_MB for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
