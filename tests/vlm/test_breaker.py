"""The model circuit breaker: its states on a fake clock, then in the real client against the
fake server over loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from moderation.config import Settings
from moderation.vlm import client as vlm_client
from moderation.vlm.breaker import CircuitBreaker, CircuitOpen, CircuitSnapshot, CircuitState
from moderation.vlm.client import VLMClient
from moderation.vlm.prompt import ModelImage
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer, policy_document

POLICY = policy_document()
CAT = ModelImage.from_bytes(b"\x89PNG\r\n\x1a\n a cat", "image/png")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(3, 10.0, probe_timeout_s=5.0, clock=clock)


def test_opens_after_consecutive_failures_and_fails_fast(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure("HTTP 503")
    assert breaker.snapshot().state is CircuitState.closed
    breaker.before_call()
    breaker.record_failure("HTTP 503")
    assert breaker.snapshot().state is CircuitState.open
    with pytest.raises(CircuitOpen, match="3 consecutive failures"):
        breaker.before_call()


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.record_failure("timeout")
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure("timeout")
    assert breaker.snapshot().state is CircuitState.closed
    assert breaker.snapshot().consecutive_failures == 2


def test_after_the_cooldown_one_probe_goes_and_its_success_closes(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now += 9.9
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 0.2
    breaker.before_call()  # the probe
    assert breaker.snapshot().state is CircuitState.half_open
    with pytest.raises(CircuitOpen, match="probe"):
        breaker.before_call()  # only one at a time
    breaker.record_success()
    assert breaker.snapshot().state is CircuitState.closed
    breaker.before_call()


def test_a_failed_probe_opens_it_for_another_cooldown(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now += 10.1
    breaker.before_call()
    breaker.record_failure("still refused")
    assert breaker.snapshot().state is CircuitState.open
    clock.now += 5
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 5.1
    breaker.before_call()


def test_a_probe_that_never_reports_back_does_not_block_for_ever(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now += 10.1
    breaker.before_call()
    clock.now += 5.1  # past the probe timeout, with no word from the probe
    breaker.before_call()


def test_listeners_hear_every_change(breaker: CircuitBreaker, clock: Clock) -> None:
    heard: list[CircuitSnapshot] = []
    breaker.add_listener(heard.append)
    for _ in range(3):
        breaker.record_failure("refused")
    clock.now += 10.1
    breaker.before_call()
    breaker.record_success()
    assert [snapshot.state for snapshot in heard] == [
        CircuitState.open,
        CircuitState.half_open,
        CircuitState.closed,
    ]
    assert heard[0].opened_at is not None and heard[0].last_error == "refused"


# The breaker inside the real client ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeVLMServer]:
    with FakeVLMServer() as running:
        yield running


@pytest.fixture
def client(server: FakeVLMServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[VLMClient]:
    server.reset()
    monkeypatch.setattr(vlm_client, "RETRY_BASE_DELAY_S", 0.01)
    settings = Settings(
        vlm_base_url=server.base_url,
        vlm_timeout_s=1.0,
        vlm_max_retries=2,
        vlm_breaker_failures=4,
        vlm_breaker_cooldown_s=0.5,
    )
    model = VLMClient(settings)
    yield model
    model.close()


def test_a_failing_server_stops_being_called(client: VLMClient, server: FakeVLMServer) -> None:
    server.default_reply = fake.error(503)
    first = client.judge(POLICY, [CAT], "first")
    assert first.failure_reason == "model_unavailable" and len(first.calls) == 3
    second = client.judge(POLICY, [CAT], "second")
    # The fourth failure opens the breaker; the fifth call is never made.
    assert len(second.calls) == 1
    assert client.circuit.snapshot().state is CircuitState.open
    third = client.judge(POLICY, [CAT], "third")
    assert third.failure_reason == "model_unavailable" and third.calls == []
    assert third.failure_detail is not None and "circuit open" in third.failure_detail
    assert server.stats()["requests"] == 4


def test_the_breaker_closes_when_the_server_is_back(
    client: VLMClient, server: FakeVLMServer
) -> None:
    server.default_reply = fake.error(502)
    client.judge(POLICY, [CAT], "down")
    client.judge(POLICY, [CAT], "down")
    assert client.circuit.snapshot().state is CircuitState.open
    server.default_reply = fake.verdict(fake.safe_verdict())
    time.sleep(0.6)
    back = client.judge(POLICY, [CAT], "back")
    assert back.verdict is not None and back.verdict.rating == "safe"
    assert client.circuit.snapshot().state is CircuitState.closed


def test_answers_about_the_request_do_not_trip_it(client: VLMClient, server: FakeVLMServer) -> None:
    server.default_reply = fake.error(400)
    for _ in range(6):
        assert client.judge(POLICY, [CAT], "bad request").failure_reason == "model_unavailable"
    assert client.circuit.snapshot().state is CircuitState.closed
    assert server.stats()["requests"] == 6
