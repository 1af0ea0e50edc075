"""Peak resident memory of the API and of a worker under the worst inputs the limits allow.

Starts the real API (`moderation api`) and one real worker (`moderation worker`, default
concurrency unless --concurrency) on the Postgres and Redis you name (a fresh database and a
queue of its own are made for the run), with the test suite's fake model answering after a
delay, so every worker thread is busy at once. Then:

  api     the largest request bodies the API accepts, several at once: JSON with the most
          images, each at the byte limit, base64-encoded, and the same as multipart uploads
  worker  as many submissions as the worker has threads, all at once, each carrying the images
          that cost most to decode: an RGBA PNG at the decoded-size limit, a WebP, an animated
          GIF and a multi-page TIFF as large as the decode budget lets them be, and incompressible
          PNG and JPEG files at the byte limit

Each process's peak is its kernel high-water mark (VmHWM); a sampler also records its resident
size every 50 ms, for the JSON. Prints one table, writes benchmarks/results/peak_memory.json.

    python -m benchmarks.peak_memory                  # machine defaults, a few minutes
    python -m benchmarks.peak_memory --smoke          # small inputs: checks the harness runs
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image

from benchmarks.throughput import Proc, free_port, new_database, start, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MB = 1024 * 1024
TARGETS_MB = {"api": 300, "worker": 1024}


def status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class Sampler:
    """Resident size of some processes every `interval` seconds, tagged with the phase."""

    procs: dict[str, Proc]
    interval: float = 0.05
    phase: str = "idle"
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(self.interval):
            sample: dict[str, Any] = {"t": round(time.monotonic() - began, 2), "phase": self.phase}
            for name, proc in self.procs.items():
                if proc.alive():
                    sample[name] = round(status_kb(proc.process.pid, "VmRSS") / 1024, 1)
            self.samples.append(sample)

    def peak_in(self, name: str, phase: str) -> float:
        return max((s.get(name, 0.0) for s in self.samples if s["phase"] == phase), default=0.0)


# --- the worst inputs --------------------------------------------------------------------------


def _gradient(size: tuple[int, int], mode: str, turn: int = 0) -> Image.Image:
    grey = Image.linear_gradient("L").resize(size)
    other = grey.transpose(Image.Transpose.ROTATE_90).resize(size)
    bands = [grey, other, grey.rotate(turn), other]
    return Image.merge(mode, bands[: len(mode)])


def _noise(size: tuple[int, int]) -> Image.Image:
    return Image.frombytes("RGB", size, random.Random(size[0]).randbytes(size[0] * size[1] * 3))


def _encode(image_format: str, frames: list[Image.Image], **options: Any) -> bytes:
    buffer = io.BytesIO()
    if len(frames) > 1:
        options |= {"save_all": True, "append_images": frames[1:]}
    frames[0].save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _fit_bytes(max_bytes: int, make: Callable[[int], bytes], side: int) -> bytes:
    """The largest square `make(side)` whose encoding stays under `max_bytes`."""
    data = make(side)
    while len(data) > max_bytes:
        side = int(side * math.sqrt(max_bytes / len(data)) * 0.97)
        data = make(side)
    return data


def worst_images(settings: Any, smoke: bool) -> dict[str, bytes]:
    """Each kind as large as the limits let it be (a tenth of the size with --smoke)."""
    from moderation.media.decode import _working_bytes, decoded_bytes

    budget = settings.image_decode_budget_bytes
    scale = 0.1 if smoke else 1.0

    def side_for(mode_bytes: int, buffers: int, limit: int) -> int:
        side = int(math.sqrt(min(limit, settings.image_max_decoded_bytes) / mode_bytes))
        side = min(side, int(math.sqrt(settings.image_max_pixels)))
        while (
            _working_bytes(decoded_bytes("RGBA", (side, side)) * buffers, (side, side), (896, 896))
            > budget
        ):
            side -= 16
        return max(64, int(side * scale))

    png_side = side_for(4, 1, settings.image_max_decoded_bytes)
    webp_side = side_for(4, 4, budget)
    gif_side = side_for(4, 3, budget)
    frames = 10
    # A scan decodes each frame once, and the chosen ones again.
    gif_side = min(gif_side, int(math.sqrt(settings.image_frame_scan_max_pixels / (2 * frames))))
    tiff_side = side_for(4, 1, budget)
    raw_limit = int(settings.image_max_bytes * (0.01 if smoke else 0.98))
    return {
        "png-rgba-at-decoded-cap": _encode(
            "PNG", [_gradient((png_side, png_side), "RGBA")], compress_level=1
        ),
        "webp-at-budget": _encode("WEBP", [_gradient((webp_side, webp_side), "RGB")], quality=40),
        "gif-animated": _encode(
            "GIF",
            [_gradient((gif_side, gif_side), "RGB", turn=n * 30) for n in range(frames)],
            duration=100,
        ),
        "tiff-3-pages": _encode(
            "TIFF",
            [_gradient((tiff_side, tiff_side), "RGBA", turn=n * 90) for n in range(3)],
            compression="tiff_deflate",
        ),
        "png-noise-at-byte-cap": _fit_bytes(
            raw_limit, lambda side: _encode("PNG", [_noise((side, side))], compress_level=1), 2800
        ),
        "jpeg-noise-at-byte-cap": _fit_bytes(
            raw_limit, lambda side: _encode("JPEG", [_noise((side, side))], quality=100), 3000
        ),
    }


# --- the run -----------------------------------------------------------------------------------


def make_tenant(database_url: str) -> dict[str, str]:
    from moderation.database import get_sessionmaker, session_scope
    from moderation.tenants.models import Role
    from moderation.tenants.service import create_api_key, create_tenant

    with session_scope(get_sessionmaker(database_url)) as session:
        tenant = create_tenant(session, f"peak-memory-{uuid.uuid4().hex[:6]}")
        key = create_api_key(session, tenant.id, Role.ingest).secret
    return {"Authorization": f"Bearer {key}"}


def post_json(base: str, headers: dict[str, str], body: dict[str, Any]) -> int:
    # The body is built here, once per request, so the client holds one at a time per thread.
    response = httpx.post(f"{base}/v1/submissions", json=body, headers=headers, timeout=600)
    return response.status_code


def post_multipart(base: str, headers: dict[str, str], external_id: str, files: list[bytes]) -> int:
    response = httpx.post(
        f"{base}/v1/submissions",
        headers=headers,
        data={"external_id": external_id, "text": f"multipart {external_id}"},
        files=[
            ("images", (f"{n}.bin", data, "application/octet-stream"))
            for n, data in enumerate(files)
        ],
        timeout=600,
    )
    return response.status_code


def wait_settled(database_url: str, expected: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            rows = conn.execute("SELECT status, count(*) FROM submissions GROUP BY status")
            counts = {str(status): int(count) for status, count in rows.fetchall()}
            settled = counts.get("decided", 0) + counts.get("in_review", 0)
            if settled >= expected or time.monotonic() > deadline:
                return counts
            time.sleep(0.5)


def review_reasons(database_url: str) -> dict[str, Any]:
    """How many decisions of each action or review reason, with one detail each."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(reason, action), count(*), min(detail) FROM decisions GROUP BY 1"
        ).fetchall()
    return {str(reason): {"count": int(count), "detail": detail} for reason, count, detail in rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from moderation.config import Settings
    from tests.fakes.fake_vlm import FakeVLMServer

    workdir = Path(tempfile.mkdtemp(prefix="moderation-peak-memory-"))
    plain_url = new_database(args.database_url)
    database_url = plain_url.replace("postgresql://", "postgresql+psycopg://", 1)
    fake = FakeVLMServer(latency_s=args.model_latency_s).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
        "MODERATION_DATABASE_URL": database_url,
        "MODERATION_BROKER_URL": args.broker_url,
        "MODERATION_QUEUE_NAME": f"peak-memory-{uuid.uuid4().hex[:8]}",
        "MODERATION_VLM_BASE_URL": fake.base_url,
        "MODERATION_DATA_DIR": str(workdir / "data"),
        "MODERATION_LOG_LEVEL": "WARNING",
        # On a small machine the worst inputs take minutes to decode one after another; a long
        # time limit lets every one be decoded instead of ending in review for lack of time.
        "MODERATION_TASK_SOFT_TIME_LIMIT_S": str(args.task_time_limit_s),
    }
    overrides = {
        key.removeprefix("MODERATION_").lower(): value
        for key, value in env.items()
        if key.startswith("MODERATION_")
    }
    settings = Settings.model_validate(overrides)
    concurrency = args.concurrency or settings.vlm_max_concurrency
    print(
        f"making the worst inputs (decode budget {settings.image_decode_budget_bytes // MB} MiB,"
        f" decoded cap {settings.image_max_decoded_bytes // MB} MiB) ...",
        flush=True,
    )
    images = worst_images(settings, args.smoke)
    procs: dict[str, Proc] = {}
    figures: dict[str, Any] = {
        "config": {
            "worker_concurrency": concurrency,
            "image_max_bytes": settings.image_max_bytes,
            "image_max_count": settings.image_max_count,
            "image_max_decoded_bytes": settings.image_max_decoded_bytes,
            "image_decode_budget_bytes": settings.image_decode_budget_bytes,
            "model_latency_s": args.model_latency_s,
            "smoke": args.smoke,
            "inputs": {name: len(data) for name, data in images.items()},
        }
    }
    sampler: Sampler | None = None
    try:
        subprocess.run(
            [sys.executable, "-m", "moderation", "migrate"],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        headers = make_tenant(database_url)
        api_port = free_port()
        procs["api"] = start(
            "api",
            [sys.executable, "-m", "moderation", "api", "--port", str(api_port)],
            env,
            workdir,
        )
        procs["worker"] = start(
            "worker",
            [sys.executable, "-m", "moderation", "worker", "--concurrency", str(concurrency)],
            env,
            workdir,
        )
        base = f"http://127.0.0.1:{api_port}"
        wait_http(f"{base}/healthz", procs["api"])
        time.sleep(3)  # the worker connects to the broker and starts its threads
        baseline = {
            name: round(status_kb(p.process.pid, "VmRSS") / 1024, 1) for name, p in procs.items()
        }
        sampler = Sampler(procs).start()

        # API: the largest bodies it accepts, a few at once.
        sampler.phase = "api"
        biggest = max(images.values(), key=len)
        per_body = [biggest] * settings.image_max_count
        began = time.monotonic()
        with ThreadPoolExecutor(args.api_parallel) as pool:
            json_statuses = list(
                pool.map(
                    lambda n: post_json(
                        base,
                        headers,
                        {
                            "external_id": f"api-json-{n}",
                            "text": f"largest json body {n}",
                            "images": [
                                {"data": base64.b64encode(data).decode()} for data in per_body
                            ],
                        },
                    ),
                    range(args.api_parallel),
                )
            )
            multipart_statuses = list(
                pool.map(
                    lambda n: post_multipart(base, headers, f"api-multipart-{n}", per_body),
                    range(args.api_parallel),
                )
            )
        api_hwm = round(status_kb(procs["api"].process.pid, "VmHWM") / 1024, 1)
        figures["api_phase"] = {
            "seconds": round(time.monotonic() - began, 1),
            "json_body_mb": round(len(per_body) * len(biggest) * 4 / 3 / MB, 1),
            "json_statuses": json_statuses,
            "multipart_statuses": multipart_statuses,
        }
        print(f"api phase: {figures['api_phase']}", flush=True)
        wait_settled(plain_url, 2 * args.api_parallel, args.timeout)

        # Worker: every thread busy with the costliest decodes at once.
        sampler.phase = "worker"
        kinds = list(images)
        began = time.monotonic()
        bodies = [
            {
                "external_id": f"worker-{n}",
                "text": f"worst images {n}",
                "images": [
                    {"data": base64.b64encode(images[kinds[(n + k) % len(kinds)]]).decode()}
                    for k in range(args.images_per_submission)
                ],
            }
            for n in range(concurrency)
        ]
        with ThreadPoolExecutor(8) as pool:
            worker_statuses = list(pool.map(lambda body: post_json(base, headers, body), bodies))
        del bodies
        counts = wait_settled(plain_url, 2 * args.api_parallel + concurrency, args.timeout)
        figures["worker_phase"] = {
            "seconds": round(time.monotonic() - began, 1),
            "submissions": concurrency,
            "images_per_submission": args.images_per_submission,
            "statuses": worker_statuses,
            "outcome": counts,
            "decisions": review_reasons(plain_url),
        }
        print(f"worker phase: {figures['worker_phase']}", flush=True)
        sampler.stop()
        peaks = {
            "api": api_hwm,
            "worker": round(status_kb(procs["worker"].process.pid, "VmHWM") / 1024, 1),
        }
        figures["processes"] = {
            name: {
                "baseline_mb": baseline[name],
                "peak_mb": peaks[name],
                "target_mb": TARGETS_MB[name],
                "within_target": peaks[name] < TARGETS_MB[name],
                "sampled_peak_api_phase_mb": sampler.peak_in(name, "api"),
                "sampled_peak_worker_phase_mb": sampler.peak_in(name, "worker"),
            }
            for name in procs
        }
        figures["samples"] = sampler.samples[:: max(1, len(sampler.samples) // 2000)]
    finally:
        if sampler is not None:
            sampler.stop()
        for proc in reversed(list(procs.values())):
            if not proc.alive():
                print(f"{proc.name} had exited:\n{proc.tail()}", file=sys.stderr)
            proc.stop()
        fake.stop()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            name = plain_url.rsplit("/", 1)[1]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return figures


def print_table(figures: dict[str, Any]) -> None:
    config = figures["config"]
    print()
    print(
        f"worker concurrency {config['worker_concurrency']}, decode budget "
        f"{config['image_decode_budget_bytes'] // MB} MiB, decoded cap "
        f"{config['image_max_decoded_bytes'] // MB} MiB, images up to "
        f"{config['image_max_bytes'] // MB} MiB x {config['image_max_count']}"
    )
    print(f"{'process':<8} {'baseline MiB':>13} {'peak MiB':>9} {'target MiB':>11}  within")
    for name, row in figures["processes"].items():
        print(
            f"{name:<8} {row['baseline_mb']:>13} {row['peak_mb']:>9} {row['target_mb']:>11}  "
            f"{'yes' if row['within_target'] else 'NO'}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server this may create and drop a database on",
    )
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--concurrency", type=int, default=0, help="worker threads (default: the service's default)"
    )
    parser.add_argument("--images-per-submission", type=int, default=3)
    parser.add_argument("--api-parallel", type=int, default=3)
    parser.add_argument("--model-latency-s", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--task-time-limit-s", type=float, default=1200)
    parser.add_argument("--smoke", action="store_true", help="small inputs, to check the harness")
    parser.add_argument("--out", type=Path, default=RESULTS / "peak_memory.json")
    args = parser.parse_args()
    # A stopped run still stops the API and worker it started and drops its database.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    figures = run(args)
    print_table(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"\nwrote {args.out}")
    within = all(row["within_target"] for row in figures["processes"].values())
    return 0 if within or args.smoke else 1


if __name__ == "__main__":
    raise SystemExit(main())
