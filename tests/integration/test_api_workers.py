"""`moderation api --workers N`: one API process per core, each a whole app of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, stop_process
from tests.factories import make_tenant, marker

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_api_serves_from_several_processes(migrated, service_env, tmp_path):
    tenant = make_tenant(migrated)
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moderation", "api", "--workers", "2", "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, **service_env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        # Both workers up: uvicorn starts them together, each answering on the shared socket.
        while len(_children(process.pid)) < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)

        case = marker()
        with httpx.Client(base_url=base, timeout=30, headers=tenant.headers()) as client:
            ids = []
            for n in range(12):
                accepted = client.post(
                    "/v1/submissions", json={"external_id": f"{case}-{n}", "text": "hello"}
                )
                assert accepted.status_code == 202, accepted.text
                ids.append(accepted.json()["id"])
            # Idempotent across processes: the same payload again is the same submission.
            again = client.post(
                "/v1/submissions", json={"external_id": f"{case}-0", "text": "hello"}
            )
            assert again.status_code == 200 and again.json()["id"] == ids[0]
            for submission_id in ids:
                assert client.get(f"/v1/submissions/{submission_id}").status_code == 200
    finally:
        stop_process(process, timeout=30)
