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


def test_up_runs_the_whole_service_from_nothing_but_python(fake_vlm, tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODERATION_")}
    env.update(
        {
            "MODERATION_DATA_DIR": str(tmp_path / "data"),
            "MODERATION_VLM_BASE_URL": fake_vlm.base_url,
            "MODERATION_VLM_TIMEOUT_S": "5",
            "MODERATION_API_PORT": str(port),
        }
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
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)

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
    finally:
        stop_process(process, signal.SIGINT, timeout=60)
