"""Fixtures of the chaos suite: a PostgreSQL of its own, a broker per test (a private Redis or a
queue of its own on the machine's RabbitMQ), a model server per test, and a stack of real
processes between them. Every test prints its figures, and the run ends with all of them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from moderation.database import get_engine, sqlalchemy_url
from tests.chaos.services import (
    DEFAULT_AMQP_URL,
    PrivatePostgres,
    PrivateRedis,
    amqp_unreachable_reason,
    create_database,
    delete_amqp_queue,
    postgres_binaries,
)
from tests.chaos.stack import Figures, Ledger, Stack
from tests.factories import TenantKeys, make_tenant
from tests.fakes.callback_receiver import CallbackReceiver, Endpoint
from tests.fakes.fake_vlm import FakeVLMServer

REPORTED: list[Figures] = []

# What the stack runs with: the production code paths, with every clock shortened so that
# recovery takes seconds. Settings this version does not know are ignored.
FAST_RECOVERY_ENV = {
    "MODERATION_VLM_MODEL": "Qwen/Qwen2.5-VL-7B-Instruct",
    "MODERATION_VLM_TIMEOUT_S": "2",
    "MODERATION_VLM_MAX_RETRIES": "1",
    # The soft limit bounds a task; without a heartbeat the lease is derived from it.
    "MODERATION_TASK_SOFT_TIME_LIMIT_S": "6",
    # With a heartbeat the lease is its own setting, renewed every third of it.
    "MODERATION_LEASE_S": "3",
    "MODERATION_RELAY_INTERVAL_S": "1",
    "MODERATION_RELAY_GRACE_S": "5",
    "MODERATION_REDRIVE_BASE_DELAY_S": "1",
    "MODERATION_REDRIVE_MAX_DELAY_S": "3",
    "MODERATION_VLM_BREAKER_COOLDOWN_S": "2",
    "MODERATION_RATE_LIMIT_ENABLED": "false",
    "MODERATION_DATABASE_CONNECT_TIMEOUT_S": "2",
    "MODERATION_JOB_POLL_INTERVAL_S": "0.2",
    # Callbacks retried within seconds, long enough to outlast every outage here.
    "MODERATION_WEBHOOK_RETRY_SCHEDULE_S": "0.5,1,1,2,2,3,3,5,5,5,5,5",
    "MODERATION_WEBHOOK_RETRY_JITTER": "0",
    "MODERATION_WEBHOOK_TIMEOUT_S": "3",
    "MODERATION_WEBHOOK_CONNECT_TIMEOUT_S": "2",
    # An attempt cut short by a kill is sent again after timeout + grace; the grace outlasts
    # the 10 s database stop, so no answer a receiver gave goes unrecorded.
    "MODERATION_WEBHOOK_ATTEMPT_GRACE_S": "12",
    "MODERATION_LOG_LEVEL": "INFO",
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTED:
        terminalreporter.section("chaos figures")
        for figures in REPORTED:
            terminalreporter.write_line(figures.line())


@pytest.fixture
def report() -> Callable[[Figures], None]:
    def emit(figures: Figures) -> None:
        print(figures.line(), flush=True)
        REPORTED.append(figures)

    return emit


# --- PostgreSQL: a server of the suite's own, which the database-outage test stops -----------


@pytest.fixture(scope="session")
def chaos_postgres() -> Iterator[PrivatePostgres]:
    if postgres_binaries() is None:
        pytest.skip("no PostgreSQL server binaries here to start a private server")
    server = PrivatePostgres()
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def chaos_template(chaos_postgres: PrivatePostgres) -> str:
    """A database at head, copied for each test: migrating once keeps every test's setup short."""
    from moderation.schema_migrations import upgrade_schema

    name = "chaos_template"
    upgrade_schema(sqlalchemy_url(create_database(chaos_postgres.url, name)))
    return name


@pytest.fixture
def chaos_database(chaos_postgres: PrivatePostgres, chaos_template: str) -> Iterator[str]:
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    url = sqlalchemy_url(create_database(chaos_postgres.url, name, template=chaos_template))
    yield url
    get_engine(url).dispose()
    try:
        with psycopg.connect(chaos_postgres.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    except psycopg.OperationalError:
        pass  # the server is being removed anyway


# --- brokers -----------------------------------------------------------------------------------


@dataclass
class Broker:
    kind: str
    url: str
    queue: str
    redis: PrivateRedis | None = None


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """`redis`: a redis-server of this test's own. `amqp`: the machine's RabbitMQ (never
    restarted by a test) with a queue of this test's own, deleted afterwards."""
    kind: str = request.param
    queue = f"moderation-chaos-{uuid.uuid4().hex[:8]}"
    if kind == "redis":
        if shutil.which("redis-server") is None:
            pytest.skip("no redis-server here to start a private Redis")
        redis = PrivateRedis(tmp_path)
        redis.start()
        yield Broker(kind, redis.url, queue, redis)
        redis.stop()
        return
    url = os.environ.get("MODERATION_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    reason = amqp_unreachable_reason(url)
    if reason is not None:
        print(f"skipping the RabbitMQ run: {reason}")
        pytest.skip(reason)
    yield Broker(kind, url, queue)
    delete_amqp_queue(url, queue)


# --- the model and the receiver ------------------------------------------------------------------


@pytest.fixture
def model() -> Iterator[FakeVLMServer]:
    """A model server of this test's own, with a realistic mix of verdicts and a short latency,
    so items are mid-call when a fault hits; tests may stop and start it."""
    server = FakeVLMServer(latency_s=0.2, mix={"safe": 0.7, "block": 0.2, "review": 0.1})
    server.start()
    yield server
    server.stop()


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class Deployment:
    stack: Stack
    keys: TenantKeys
    ledger: Ledger
    endpoint: Endpoint
    env: dict[str, str] = field(default_factory=dict)


DeploymentFactory = Callable[..., Deployment]


@pytest.fixture
def deploy(
    broker: Broker,
    chaos_database: str,
    model: FakeVLMServer,
    callback_receiver: CallbackReceiver,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[DeploymentFactory]:
    """Start the API (and, unless told otherwise, workers) for this test's tenant."""
    started: list[Stack] = []

    def build(
        *, workers: int = 2, concurrency: int = 8, settings: dict[str, str] | None = None
    ) -> Deployment:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
            **FAST_RECOVERY_ENV,
            **(settings or {}),
            "MODERATION_DATABASE_URL": chaos_database,
            "MODERATION_BROKER_URL": broker.url,
            "MODERATION_QUEUE_NAME": broker.queue,
            "MODERATION_DATA_DIR": str(tmp_path / "data"),
            "MODERATION_VLM_BASE_URL": model.base_url,
            "MODERATION_CALLBACK_ALLOW_HOSTS": f"127.0.0.1:{callback_receiver.port}",
        }
        endpoint = callback_receiver.endpoint([])
        keys = make_tenant(chaos_database, "chaos", callback_url=endpoint.url)
        endpoint.secrets.append(keys.webhook_secret)
        get_engine(chaos_database).dispose()
        stack = Stack(env, tmp_path, request.node.name)
        started.append(stack)
        for _ in range(workers):
            stack.start_worker(concurrency)
        stack.start_api()
        stack.wait_api_ready()
        return Deployment(stack, keys, Ledger(chaos_database, keys.tenant_id, endpoint), endpoint)

    yield build
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
    for stack in started:
        stack.close()
        if failed or os.environ.get("MODERATION_TEST_SHOW_WORKER_LOG"):
            print(stack.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Remember each phase's report on the test, so teardown can show logs of a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
