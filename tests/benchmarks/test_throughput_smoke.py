"""The throughput harness runs end to end on a small load, so it cannot rot unnoticed.

It checks behaviour, not speed: every submission is decided, the visual tokens the model double
received equal the ones predicted before each call, and repeated uploads cost no model call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Read at import: the suite's autouse fixture hides MODERATION_ variables from each test.
BROKER_URL = os.environ.get("MODERATION_TEST_BROKER_URL", "")
DATABASE_URL = os.environ.get("MODERATION_TEST_DATABASE_URL", "")


@pytest.mark.skipif(
    not BROKER_URL.startswith("redis://") or not DATABASE_URL,
    reason="the harness needs Redis and PostgreSQL: MODERATION_TEST_BROKER_URL, _DATABASE_URL",
)
def test_throughput_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    server = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.throughput",
            "--smoke",
            "--count",
            "50",
            "--latency-ms",
            "100",
            "--broker-url",
            BROKER_URL,
            "--fallback-database-url",
            f"{server}/postgres",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(completed.stdout[-4000:])
    assert completed.returncode == 0, completed.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert figures["ingest"]["statuses"] == {"202": figures["ingest"]["requests"]}
    for mix, result in figures["pipeline"].items():
        assert result["items"] == 50, mix
        assert result["compared"] == 50 and result["predicted_equals_sent"] == 50, mix
        assert result["sources"] == {"model": 50}, mix
    assert figures["cache"]["model_calls_for_repeats"] == 0
    assert figures["cache"]["sources"].get("cache") == figures["cache"]["repeats"]
    assert figures["naive"]["items"] > 0
