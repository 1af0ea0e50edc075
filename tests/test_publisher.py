"""The publisher sends every task it is given, as the workers expect them, on each broker the
service supports: Redis (batched), RabbitMQ and the embedded SQL transport (one by one)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from kombu import Connection

from moderation.config import Settings
from moderation.queue import (
    BATCH_MAX,
    MODERATE_SUBMISSION,
    MODERATE_SUBMISSIONS,
    _Publisher,
    celery_config,
)

RABBITMQ_URL = os.environ.get("MODERATION_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable(url: str) -> bool:
    host_port = url.split("@")[-1].split("/")[0]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port or 5672)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["redis", "rabbitmq", "sql"])
def broker(request: pytest.FixtureRequest, database_url: str, broker_url: str) -> Iterator[str]:
    if request.param == "redis":
        url = broker_url
        if not url.startswith("redis://"):
            pytest.skip("no Redis given (MODERATION_TEST_BROKER_URL)")
    elif request.param == "rabbitmq":
        url = RABBITMQ_URL
        if not _reachable(url):
            pytest.skip("no RabbitMQ on this machine")
    else:
        url = "sqla+" + database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    yield url


def test_every_submitted_task_arrives_once_as_sent(broker: str) -> None:
    queue = f"publisher-test-{uuid.uuid4().hex[:8]}"
    app = Celery("publisher-test")
    app.config_from_object(celery_config(Settings(broker_url=broker, queue_name=queue)))
    publisher = _Publisher(app)
    ids = [str(uuid.uuid4()) for _ in range(120)]
    for submission_id in ids:
        publisher.submit(MODERATE_SUBMISSION, (submission_id,))
    assert publisher.wait_until_sent(timeout=60)

    received: list[str] = []
    with Connection(broker) as connection:
        simple = connection.SimpleQueue(queue)
        try:
            # One more than was sent, to see that nothing arrived twice.
            while len(received) <= len(ids):
                try:
                    message = simple.get(timeout=2 if len(received) < len(ids) else 0.5)
                except simple.Empty:
                    break
                task = message.headers["task"]
                args, kwargs, _ = message.payload
                assert kwargs == {}
                if task == MODERATE_SUBMISSIONS:
                    [batch] = args
                    assert 1 < len(batch) <= BATCH_MAX
                    received.extend(batch)
                else:
                    assert task == MODERATE_SUBMISSION
                    received.extend(args)
                message.ack()
        finally:
            simple.close()
            simple.queue.bind(connection.default_channel).delete()
    assert sorted(received) == sorted(ids)
