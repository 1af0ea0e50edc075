"""Throughput of the whole service: N submissions through `moderation up` against a fake model.

Starts the fake Qwen-VL server (fixed latency, a fixed mix of safe / block / review answers) and
`moderation up` in a fresh data directory (the embedded default unless MODERATION_DATABASE_URL /
MODERATION_BROKER_URL are set), posts N submissions with an image and a caption from several
client threads, waits until every one is decided, then prints a table and writes JSON.

    python -m benchmarks.submit_load --count 200 --latency-ms 200
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {timeout}s")


def sample_image(seed: int) -> str:
    buffer = io.BytesIO()
    color = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    Image.new("RGB", (800, 600), color).save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=200, help="fake model latency per call")
    parser.add_argument("--mix", default="safe=0.7,block=0.2,review=0.1")
    parser.add_argument("--clients", type=int, default=8, help="concurrent posting threads")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "submit_load.json"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="moderation-bench-"))
    vlm_port, api_port = free_port(), free_port()
    fake_log, up_log = workdir / "fake.log", workdir / "up.log"
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.fake_vlm",
            "--port",
            str(vlm_port),
            "--latency-ms",
            str(args.latency_ms),
            "--mix",
            args.mix,
        ],
        cwd=ROOT,
        stdout=fake_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    env = {
        **os.environ,
        "MODERATION_DATA_DIR": str(workdir / "data"),
        "MODERATION_VLM_BASE_URL": f"http://127.0.0.1:{vlm_port}/v1",
        "MODERATION_API_PORT": str(api_port),
        "MODERATION_LOG_LEVEL": "WARNING",
    }
    started_up = time.monotonic()
    up = subprocess.Popen(
        [sys.executable, "-m", "moderation", "up"],
        cwd=workdir,
        env=env,
        stdout=up_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_http(f"http://127.0.0.1:{vlm_port}/v1/models", 30, fake, fake_log)
        wait_http(f"{base}/healthz", 180, up, up_log)
        startup_s = time.monotonic() - started_up
        credentials = json.loads((workdir / "data" / "local-credentials.json").read_text())
        headers = {"Authorization": f"Bearer {credentials['ingest_key']}"}
        images = [sample_image(i) for i in range(16)]

        # One pooled client for all threads: a client per request would spend the harness's CPU
        # on connection and TLS-context setup and measure that instead of the service.
        http = httpx.Client(
            base_url=base, timeout=30, limits=httpx.Limits(max_connections=args.clients)
        )

        def post(i: int) -> str:
            body = {
                "external_id": f"bench-{i}",
                "text": f"benchmark upload number {i}",
                "images": [{"data": images[i % len(images)]}],
            }
            response = http.post("/v1/submissions", json=body, headers=headers)
            response.raise_for_status()
            return str(response.json()["id"])

        def unfinished() -> int:
            count = 0
            for status in ("queued", "processing"):
                page = http.get(
                    "/v1/submissions", params={"status": status, "limit": 200}, headers=headers
                ).json()
                count += len(page["items"])
            return count

        t0 = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            ids = list(pool.map(post, range(args.count)))
        post_s = time.monotonic() - t0

        # Cheap polling while work is in flight; the details are read once, at the end.
        deadline = time.monotonic() + 600
        while unfinished() and time.monotonic() < deadline:
            time.sleep(0.2)
        total_s = time.monotonic() - t0
        results, pending = {}, set()
        for submission_id in ids:
            body = http.get(f"/v1/submissions/{submission_id}", headers=headers).json()
            if body["status"] in ("decided", "in_review"):
                results[submission_id] = body
            else:
                pending.add(submission_id)
        http.close()
        total_s = time.monotonic() - t0

        actions = Counter(r["decision"]["action"] for r in results.values())
        reasons = Counter(
            r["decision"]["reason"] for r in results.values() if r["decision"]["reason"]
        )
        latencies = [
            (
                datetime.fromisoformat(r["decision"]["decided_at"])
                - datetime.fromisoformat(r["created_at"])
            ).total_seconds()
            for r in results.values()
        ]
        summary = {
            "count": args.count,
            "decided": len(results),
            "lost": len(pending),
            "actions": dict(actions),
            "review_reasons": dict(reasons),
            "model_latency_ms": args.latency_ms,
            "clients": args.clients,
            "startup_s": round(startup_s, 2),
            "post_s": round(post_s, 2),
            "total_s": round(total_s, 2),
            "throughput_per_s": round(len(results) / total_s, 2),
            "latency_s": {
                "p50": round(statistics.median(latencies), 3) if latencies else None,
                "p95": round(percentile(latencies, 0.95), 3) if latencies else None,
                "max": round(max(latencies), 3) if latencies else None,
            },
            "database": "external" if os.environ.get("MODERATION_DATABASE_URL") else "embedded",
            "broker": "external" if os.environ.get("MODERATION_BROKER_URL") else "embedded",
        }
    finally:
        up.send_signal(signal.SIGINT)
        fake.send_signal(signal.SIGTERM)
        for process in (up, fake):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

    rows = [
        ("submissions", summary["count"]),
        ("decided", summary["decided"]),
        ("lost", summary["lost"]),
        *((f"action {k}", v) for k, v in sorted(actions.items())),
        *((f"reason {k}", v) for k, v in sorted(reasons.items())),
        ("database / broker", f"{summary['database']} / {summary['broker']}"),
        ("startup (s)", summary["startup_s"]),
        ("posting (s)", summary["post_s"]),
        ("all decided (s)", summary["total_s"]),
        ("throughput (/s)", summary["throughput_per_s"]),
        (
            "latency p50 / p95 / max (s)",
            " / ".join(str(summary["latency_s"][k]) for k in ("p50", "p95", "max")),
        ),
    ]
    width = max(len(str(name)) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out}")
    return 0 if summary["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
