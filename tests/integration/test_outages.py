"""Outages answer clearly: the database away is a quick 503 with Retry-After, the broker away
still accepts submissions, and /readyz names what is down without saying where it is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn

from moderation.config import Settings
from moderation.database import get_sessionmaker, session_scope
from moderation.schema_migrations import upgrade_schema
from moderation.submissions.models import Submission, SubmissionStatus
from tests.conftest import ROOT, free_port, stop_process
from tests.factories import image_b64, make_tenant, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.private_postgres import PrivatePostgres

PROBLEM = "application/problem+json"
# connect_timeout (2 s) + pool timeout (2 s) + slack: what "within the request timeout" means.
OUTAGE_ANSWER_WITHIN_S = 6.0


def serve_in_thread(settings: Settings) -> Iterator[str]:
    from moderation.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def private_database_url(private_postgres: PrivatePostgres) -> str:
    with psycopg.connect(private_postgres.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE moderation")
    url = private_postgres.url.rsplit("/", 1)[0] + "/moderation"
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade_schema(url)
    return url


@pytest.fixture(scope="module")
def api_on_private_database(
    private_database_url: str, service_env: dict[str, str]
) -> Iterator[str]:
    settings = Settings(
        database_url=private_database_url,
        database_connect_timeout_s=2,
        database_pool_timeout_s=2,
    )
    yield from serve_in_thread(settings)


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) > 0
    assert elapsed < OUTAGE_ANSWER_WITHIN_S, f"took {elapsed:.1f}s"
    body = response.json()
    assert body["status"] == 503
    assert "database" in body["detail"]


def assert_no_internals(text: str, *ports: int) -> None:
    for leak in ("127.0.0.1", "localhost", "Error", "Exception", "psycopg", "redis://", "errno"):
        assert leak not in text, f"{leak!r} in {text}"
    for port in ports:
        assert str(port) not in text, f"port {port} in {text}"


def test_database_outage_is_a_quick_503_with_retry_after_then_recovers(
    api_on_private_database, private_database_url, private_postgres
):
    keys = make_tenant(private_database_url)
    submission = {"external_id": marker(), "text": "hello", "images": [{"data": image_b64()}]}
    requests = {
        "ingest": ("POST", "/v1/submissions", keys.headers(), submission),
        "read": ("GET", "/v1/submissions", keys.headers(), None),
        "bad key": ("GET", "/v1/submissions", {"Authorization": "Bearer mk_nope"}, None),
        "policies": ("GET", "/v1/policies", keys.headers("admin"), None),
        "metrics": ("GET", "/metrics", {}, None),
    }
    with httpx.Client(base_url=api_on_private_database, timeout=30) as http:
        accepted = http.post("/v1/submissions", json=submission, headers=keys.headers())
        assert accepted.status_code == 202, accepted.text

        private_postgres.stop()
        try:
            for name, (method, path, headers, body) in requests.items():
                started = time.monotonic()
                response = http.request(method, path, headers=headers, json=body)
                elapsed = time.monotonic() - started
                print(f"database down, {name}: {response.status_code} in {elapsed:.2f}s")
                assert_unavailable(response, elapsed)
                assert_no_internals(response.text, private_postgres.port)

            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert "database" in ready.json()["failing"]
            assert_no_internals(ready.text, private_postgres.port)
        finally:
            private_postgres.start()

        # Back: the pool's pre-ping replaces the dead connections, nothing else to do.
        deadline = time.monotonic() + 15
        while True:
            response = http.get(f"/v1/submissions/{accepted.json()['id']}", headers=keys.headers())
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert response.status_code == 200, response.text
        again = http.post("/v1/submissions", json=submission, headers=keys.headers())
        assert again.status_code == 200  # the same submission, found again
        database_check = http.get("/readyz").json()["checks"][0]
        assert database_check["name"] == "database" and database_check["ok"] is True


def test_text_ingest_on_its_own_connections_is_a_503_in_an_outage_and_recovers(
    api_on_private_database, private_database_url, private_postgres
):
    """A text submission from a tenant known not to sign is stored on the event loop's own
    connections, without a session: an outage there is the same quick 503, and connections
    left over from before a restart do not cost the first request after it."""
    keys = make_tenant(private_database_url)

    def submit(http: httpx.Client, body: dict[str, object]) -> httpx.Response:
        return http.post("/v1/submissions", json=body, headers=keys.headers())

    with httpx.Client(base_url=api_on_private_database, timeout=30) as http:
        # The first learns that the tenant does not sign; the rest take the short path.
        for _ in range(3):
            assert submit(http, {"external_id": marker(), "text": "hello"}).status_code == 202

        private_postgres.stop()
        try:
            started = time.monotonic()
            response = submit(http, {"external_id": marker(), "text": "during"})
            assert_unavailable(response, time.monotonic() - started)
            assert_no_internals(response.text, private_postgres.port)
        finally:
            private_postgres.start()

        body: dict[str, object] = {"external_id": marker(), "text": "back"}
        deadline = time.monotonic() + 15
        while (response := submit(http, body)).status_code != 202:
            assert time.monotonic() < deadline, response.text
            time.sleep(0.5)
        assert submit(http, {"external_id": marker(), "text": "kept"}).status_code == 202

        # A restart with nobody asking: every kept connection is dead, and yet the next
        # submission is accepted at once.
        private_postgres.stop()
        private_postgres.start()
        assert submit(http, {"external_id": marker(), "text": "after"}).status_code == 202

        again = submit(http, body)
        assert again.status_code == 200
        assert again.json()["id"] == response.json()["id"]
        assert again.headers["location"] == response.headers["location"]
        changed = submit(http, {**body, "text": "something else"})
        assert changed.status_code == 409
        assert changed.headers["content-type"] == PROBLEM


class SilentServer:
    """Accepts TCP connections and never answers: a broker that hangs rather than refuses."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        for connection in self.held:
            connection.close()
        self.sock.close()


@pytest.fixture
def hung_broker() -> Iterator[SilentServer]:
    # A broker that refuses connections fails a send within its bounded retries; one that
    # accepts and never answers is the case that could hold a request for ever.
    silent = SilentServer()
    yield silent
    silent.close()


def test_broker_outage_at_ingest_still_accepts_and_the_relay_sends_later(
    client, tenant, fake_vlm, migrated, service_env, hung_broker, tmp_path: Path
):
    """The API's broker hangs; the worker's relay (on the live broker) finds the committed row
    and sends it, so the submission is decided all the same."""
    broker_url, broker_port = f"redis://127.0.0.1:{hung_broker.port}/0", hung_broker.port
    port = free_port()
    env = {**os.environ, **service_env, "MODERATION_BROKER_URL": broker_url}
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        api = subprocess.Popen(
            [sys.executable, "-m", "moderation", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert api.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        case = marker()
        fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("violence", 4, 0.99))])
        body = {"external_id": case, "text": case, "images": [{"data": image_b64()}]}
        timings = []
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(3):
                started = time.monotonic()
                response = http.post("/v1/submissions", json=body, headers=tenant.headers())
                timings.append(time.monotonic() - started)
                assert response.status_code in (200, 202), response.text
            ready = http.get("/readyz")
        print(f"broker hung: ingest took {max(timings):.2f}s at most")
        assert max(timings) < 2.0, timings
        assert ready.status_code == 503
        assert "broker" in ready.json()["failing"]
        assert_no_internals(ready.text, broker_port)

        submission_id = response.json()["id"]
        with session_scope(get_sessionmaker(migrated)) as session:
            row = session.get(Submission, submission_id)
            assert row is not None and row.status is SubmissionStatus.queued

        result = wait_for_outcome(client, submission_id, tenant.headers(), timeout=60)
        assert result["decision"]["action"] == "block"
    finally:
        stop_process(api, timeout=10)


def test_readiness_names_each_dependency_and_nothing_else(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert [check["name"] for check in body["checks"]] == ["database", "broker", "model"]
    assert_no_internals(response.text)
