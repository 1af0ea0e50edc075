"""`moderation up` on the embedded default: embedded PostgreSQL, embedded broker, real worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, stop_process
from tests.factories import image_b64, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake

ROOT = Path(__file__).resolve().parents[2]


def embedded_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODERATION_")}
    env.update({"MODERATION_DATA_DIR": str(data_dir), "MODERATION_API_PORT": str(port), **extra})
    return env


def wait_for_health(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def run_up(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderation", "up"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_runs_the_whole_service_from_nothing_but_python(fake_vlm, tmp_path):
    port = free_port()
    env = embedded_env(
        tmp_path / "data",
        port,
        MODERATION_VLM_BASE_URL=fake_vlm.base_url,
        MODERATION_VLM_TIMEOUT_S="5",
    )
    log = tmp_path / "up.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moderation", "up"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, process, log)

        output = log.read_text()
        assert f"moderation is up at {base}" in output
        assert "embedded PostgreSQL" in output and "curl -s -X POST" in output
        credentials = json.loads((tmp_path / "data" / "local-credentials.json").read_text())
        headers = {"Authorization": f"Bearer {credentials['ingest_key']}"}

        case = marker()
        fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("violence", 4, 0.99))])
        with httpx.Client(base_url=base, timeout=30) as client:
            accepted = client.post(
                "/v1/submissions",
                json={"external_id": case, "text": case, "images": [{"data": image_b64()}]},
                headers=headers,
            )
            assert accepted.status_code == 202, accepted.text
            result = wait_for_outcome(client, accepted.json()["id"], headers, timeout=60)
        assert result["decision"]["action"] == "block", log.read_text()

        # A second `up` on the same data directory says so, before any banner or key.
        second = run_up(env, tmp_path)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "already running" in second.stderr and str(process.pid) in second.stderr
        assert "moderation is up" not in second.stdout + second.stderr
        assert credentials["ingest_key"] not in second.stdout + second.stderr
        # One on another data directory but the same port says that, before starting anything.
        third = run_up({**env, "MODERATION_DATA_DIR": str(tmp_path / "other")}, tmp_path)
        assert third.returncode == 1, third.stdout + third.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in third.stderr
        assert "moderation is up" not in third.stdout
        assert not (tmp_path / "other" / "postgres").exists()
        # The first one did not notice.
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        stop_process(process, signal.SIGINT, timeout=60)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead, only not yet reaped by its parent.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def test_stopping_a_standalone_api_stops_the_embedded_postgres_it_started(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "api.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moderation", "api"],
            cwd=tmp_path,
            env=embedded_env(data, port),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, log)
        # The database starts with the app; ask something that needs it.
        assert httpx.get(f"http://127.0.0.1:{port}/v1/policies", timeout=30).status_code == 401
        postgres = postmaster_pid(data)
        assert process_alive(postgres)
    finally:
        stop_process(process, signal.SIGTERM, timeout=60)
    deadline = time.monotonic() + 30
    while process_alive(postgres):
        assert time.monotonic() < deadline, f"embedded PostgreSQL {postgres} still running"
        time.sleep(0.2)
