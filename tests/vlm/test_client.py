"""The real openai client against the fake server over loopback: only the model is faked."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from moderation.config import Settings
from moderation.vlm import client as vlm_client
from moderation.vlm.client import Judgement, VLMClient
from moderation.vlm.prompt import ModelImage, build_messages, prompt_sha256, render_policy_prompt
from moderation.vlm.verdict import ModelVerdict, verdict_json_schema
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import CATEGORY_IDS, FakeVLMServer, policy_document

POLICY = policy_document()
CAT = ModelImage.from_bytes(b"\x89PNG\r\n\x1a\n a cat", "image/png")
VIOLENT = fake.unsafe_verdict("violence", 3, 0.95)
TRUNCATED = '{"rating": "unsafe", "confidence": 0.9, "violations": [{"category": "viol'


@pytest.fixture(scope="module")
def server() -> Iterator[FakeVLMServer]:
    with FakeVLMServer() as running:
        yield running


@pytest.fixture
def make_client(
    server: FakeVLMServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., VLMClient]]:
    server.reset()
    # Backoff without Retry-After is random; keep it short so the suite stays fast.
    monkeypatch.setattr(vlm_client, "RETRY_BASE_DELAY_S", 0.01)
    clients: list[VLMClient] = []

    def make(**overrides: Any) -> VLMClient:
        options: dict[str, Any] = {
            "vlm_base_url": server.base_url,
            "vlm_timeout_s": 1.0,
            "vlm_max_retries": 2,
            "vlm_max_output_tokens": 256,
        }
        options.update(overrides)
        client = VLMClient(Settings(**options))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def judge(client: VLMClient, marker: str, **kwargs: Any) -> Judgement:
    return client.judge(POLICY, [CAT], f"{marker}: my holiday photo", **kwargs)


# Verdicts --------------------------------------------------------------------------------------


def test_a_safe_verdict_is_returned_with_its_call(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    judgement = judge(make_client(), "plain-safe")

    assert judgement.failure_reason is None
    assert judgement.verdict == ModelVerdict.model_validate(fake.safe_verdict(0.97))
    [call] = judgement.calls
    messages = build_messages(render_policy_prompt(POLICY), [CAT], "plain-safe: my holiday photo")
    assert call.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert call.prompt_sha256 == prompt_sha256(messages, [CAT])
    assert call.parsed == judgement.verdict.model_dump(mode="json")
    assert call.raw_output is not None and '"rating": "safe"' in call.raw_output
    assert call.error is None
    assert call.finish_reason == "stop"
    assert call.input_tokens is not None and call.input_tokens > 256
    assert call.output_tokens is not None and call.output_tokens > 0
    assert 0 <= call.latency_ms < 1000


@pytest.mark.parametrize("wrap", ["plain", "fenced", "think", "think_close_only", "prose"])
def test_wrapped_verdicts_are_read(
    make_client: Callable[..., VLMClient], server: FakeVLMServer, wrap: fake.Wrap
) -> None:
    server.script(f"wrapped-{wrap}", [fake.verdict(VIOLENT, wrap=wrap)])

    judgement = judge(make_client(), f"wrapped-{wrap}")

    assert judgement.verdict == ModelVerdict.model_validate(VIOLENT)
    assert len(judgement.calls) == 1


def test_an_invalid_answer_is_corrected_by_asking_once_more(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    wrong = fake.unsafe_verdict("nudity", 2, 0.9)
    server.script("reask", [fake.verdict(wrong), fake.verdict(VIOLENT)])

    judgement = judge(make_client(), "reask")

    assert judgement.verdict == ModelVerdict.model_validate(VIOLENT)
    first, second = judgement.calls
    assert first.error is not None and "'nudity' is not one of" in first.error
    assert first.parsed is None
    assert second.error is None
    assert first.prompt_sha256 != second.prompt_sha256
    [_, retry] = server.requests_for("reask")
    assistant, correction = retry["messages"][-2:]
    assert assistant["role"] == "assistant" and '"nudity"' in assistant["content"]
    assert correction["role"] == "user" and "'nudity' is not one of" in correction["content"]


def test_two_invalid_answers_end_in_invalid_model_output(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("invalid-twice", [fake.raw("I think this picture is fine.")])

    judgement = judge(make_client(), "invalid-twice")

    assert judgement.verdict is None
    assert judgement.failure_reason == "invalid_model_output"
    assert len(judgement.calls) == 2
    assert len(server.requests_for("invalid-twice")) == 2
    assert all(call.raw_output == "I think this picture is fine." for call in judgement.calls)


def test_a_truncated_answer_is_asked_again_briefly(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("cut-off", [fake.raw(TRUNCATED, finish_reason="length"), fake.verdict(VIOLENT)])

    judgement = judge(make_client(), "cut-off")

    assert judgement.verdict == ModelVerdict.model_validate(VIOLENT)
    assert [call.finish_reason for call in judgement.calls] == ["length", "stop"]
    correction = server.requests_for("cut-off")[1]["messages"][-1]["content"]
    assert "cut off" in correction
    assert "few words" in correction


def test_a_content_filter_stop_is_a_provider_refusal(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("filtered", [fake.raw("", finish_reason="content_filter")])

    judgement = judge(make_client(), "filtered")

    assert judgement.failure_reason == "provider_refused"
    assert len(judgement.calls) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("<html>gateway</html>", "model_unavailable"),
        ({"id": "chatcmpl-1", "choices": []}, "model_unavailable"),
        ({"choices": [{"message": None, "finish_reason": "stop"}]}, "invalid_model_output"),
        (
            {"choices": [{"message": {"content": 5}}], "usage": {"prompt_tokens": "many"}},
            "invalid_model_output",
        ),
    ],
    ids=["not-json", "no-choices", "no-message", "wrong-types"],
)
def test_a_malformed_response_is_reported_not_raised(
    make_client: Callable[..., VLMClient], server: FakeVLMServer, body: Any, reason: str
) -> None:
    server.script("malformed", [fake.error(200, body)])

    judgement = judge(make_client(), "malformed")

    assert judgement.failure_reason == reason
    assert all(call.input_tokens is None for call in judgement.calls)


# Transient failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected_wait"),
    [
        ({"Retry-After": "1"}, 1.0),
        ({"retry-after-ms": "400"}, 0.4),
    ],
    ids=["seconds", "milliseconds"],
)
def test_a_429_waits_as_long_as_the_server_asks(
    make_client: Callable[..., VLMClient],
    server: FakeVLMServer,
    headers: dict[str, str],
    expected_wait: float,
) -> None:
    server.script("busy", [fake.error(429, headers=headers), fake.verdict(VIOLENT)])

    started = time.monotonic()
    judgement = judge(make_client(), "busy")
    waited = time.monotonic() - started

    assert judgement.verdict == ModelVerdict.model_validate(VIOLENT)
    assert expected_wait - 0.05 <= waited < expected_wait + 0.8
    assert judgement.calls[0].error is not None and "429" in judgement.calls[0].error


def test_a_retry_after_date_is_honoured(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    # HTTP dates have whole seconds: two seconds ahead means a wait of one to two.
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    server.script(
        "busy-until", [fake.error(429, headers={"Retry-After": when}), fake.verdict(VIOLENT)]
    )

    started = time.monotonic()
    judgement = judge(make_client(), "busy-until")

    assert judgement.failure_reason is None
    assert 0.9 <= time.monotonic() - started < 2.8


def test_server_errors_are_retried(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("flaky", [fake.error(500), fake.error(503), fake.verdict(VIOLENT)])

    judgement = judge(make_client(vlm_max_retries=2), "flaky")

    assert judgement.verdict == ModelVerdict.model_validate(VIOLENT)
    assert [call.error is None for call in judgement.calls] == [False, False, True]
    assert "HTTP 500" in (judgement.calls[0].error or "")


def test_a_server_that_stays_down_is_unavailable_after_every_retry(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("down", [fake.error(503)])

    judgement = judge(make_client(vlm_max_retries=3), "down")

    assert judgement.verdict is None
    assert judgement.failure_reason == "model_unavailable"
    assert len(judgement.calls) == 4
    assert len(server.requests_for("down")) == 4
    assert all("HTTP 503" in (call.error or "") for call in judgement.calls)


def test_a_slow_model_times_out_and_is_retried(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("slow", [fake.delay(1.5)])

    started = time.monotonic()
    judgement = judge(make_client(vlm_timeout_s=0.5, vlm_max_retries=1), "slow")

    assert judgement.failure_reason == "model_unavailable"
    assert len(judgement.calls) == 2
    assert all("timed out" in (call.error or "") for call in judgement.calls)
    assert all(400 <= call.latency_ms < 1400 for call in judgement.calls)
    assert time.monotonic() - started < 1.5


def test_a_timeout_followed_by_an_answer_succeeds(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("slow-once", [fake.delay(1.2, then=fake.verdict(VIOLENT)), fake.verdict(VIOLENT)])

    judgement = judge(make_client(vlm_timeout_s=0.5), "slow-once")

    assert judgement.verdict == ModelVerdict.model_validate(VIOLENT)
    assert len(judgement.calls) == 2


# Errors that are not retried -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        fake.DATA_INSPECTION_FAILED.body,
        {
            "code": "data_inspection_failed",
            "message": "Input data may contain inappropriate content.",
        },
        {
            "code": "DataInspectionFailed",
            "message": "Input data may contain inappropriate content.",
        },
    ],
    ids=["nested", "top-level", "native-spelling"],
)
def test_a_provider_refusal_is_not_retried(
    make_client: Callable[..., VLMClient], server: FakeVLMServer, body: dict[str, Any]
) -> None:
    server.script("refused", [fake.error(400, body)])

    judgement = judge(make_client(), "refused")

    assert judgement.failure_reason == "provider_refused"
    assert len(judgement.calls) == 1
    assert len(server.requests_for("refused")) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_client_errors_are_unavailable_without_retry(
    make_client: Callable[..., VLMClient], server: FakeVLMServer, status: int
) -> None:
    server.script(f"rejected-{status}", [fake.error(status)])

    judgement = judge(make_client(), f"rejected-{status}")

    assert judgement.failure_reason == "model_unavailable"
    [call] = judgement.calls
    assert call.error is not None and f"HTTP {status}" in call.error


# The request -----------------------------------------------------------------------------------


def test_json_schema_output_is_requested_when_configured(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    judge(make_client(vlm_response_format="json_schema", vlm_max_output_tokens=300), "schema")

    [request] = server.requests_for("schema")
    assert request["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "moderation_verdict",
            "schema": verdict_json_schema(CATEGORY_IDS),
            "strict": True,
        },
    }
    assert request["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert request["temperature"] == 0
    assert request["max_tokens"] == 300


def test_json_object_output_is_requested_when_configured(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    judgement = judge(make_client(vlm_response_format="json_object"), "object")

    assert judgement.failure_reason is None  # the fake enforces DashScope's "json" rule
    [request] = server.requests_for("object")
    assert request["response_format"] == {"type": "json_object"}


def test_no_response_format_is_sent_when_turned_off(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    judge(make_client(vlm_response_format="none"), "no-format")

    [request] = server.requests_for("no-format")
    assert "response_format" not in request


def test_text_only_and_image_only_uploads_are_judged(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    client = make_client()
    server.script("only-text", [fake.verdict(fake.unsafe_verdict("scam_spam", 2, 0.9, image=None))])

    text_only = client.judge(POLICY, [], "only-text: buy followers")
    image_only = client.judge(POLICY, [CAT], None)

    assert text_only.verdict is not None and text_only.verdict.violations[0].image is None
    assert image_only.verdict is not None and image_only.verdict.rating == "safe"


# Deadlines -------------------------------------------------------------------------------------


def test_no_call_runs_past_the_deadline(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("deadline", [fake.delay(5)])
    client = make_client(vlm_timeout_s=3.0, vlm_max_retries=3)

    started = time.monotonic()
    judgement = judge(client, "deadline", deadline=started + 0.8)

    assert judgement.failure_reason == "model_unavailable"
    assert time.monotonic() - started < 1.3
    assert len(judgement.calls) == 1


def test_no_retry_sleeps_past_the_deadline(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("deadline-wait", [fake.error(429, headers={"Retry-After": "5"})])

    started = time.monotonic()
    judgement = judge(make_client(), "deadline-wait", deadline=started + 2)

    assert judgement.failure_reason == "model_unavailable"
    assert len(judgement.calls) == 1
    assert time.monotonic() - started < 0.5


def test_a_passed_deadline_makes_no_call(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    judgement = judge(make_client(), "late", deadline=time.monotonic() - 1)

    assert judgement.failure_reason == "model_unavailable"
    assert judgement.calls == []
    assert server.requests_for("late") == []


# Sharing and readiness -------------------------------------------------------------------------


def test_one_client_serves_many_threads(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    client = make_client()
    severities = {f"thread-{index:02d}": 1 + index % 4 for index in range(16)}
    for marker, severity in severities.items():
        server.script(marker, [fake.verdict(fake.unsafe_verdict("hate", severity, 0.9))])
    results: dict[str, Judgement] = {}

    def work(marker: str) -> None:
        results[marker] = judge(client, marker)

    threads = [threading.Thread(target=work, args=(marker,)) for marker in severities]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    for marker, severity in severities.items():
        verdict = results[marker].verdict
        assert verdict is not None and verdict.violations[0].severity == severity


def test_ping_reports_whether_the_model_server_answers(
    make_client: Callable[..., VLMClient],
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]

    assert make_client().ping()
    assert not make_client(vlm_base_url=f"http://127.0.0.1:{closed_port}/v1").ping(timeout=0.5)


# Log-probabilities ----------------------------------------------------------------------------


def test_rating_probability_is_read_from_logprobs_when_asked(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    import math

    server.script("logprobs-on", [fake.verdict(VIOLENT, rating_logprob=-0.3)])
    judgement = judge(make_client(vlm_logprobs=True), "logprobs-on")

    [call] = judgement.calls
    assert call.rating_probability == pytest.approx(math.exp(-0.3))
    [request] = server.requests_for("logprobs-on")
    assert request["logprobs"] is True and request["top_logprobs"] == 5


def test_no_logprobs_are_requested_by_default(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    judgement = judge(make_client(), "logprobs-off")

    assert judgement.calls[0].rating_probability is None
    [request] = server.requests_for("logprobs-off")
    assert "logprobs" not in request and "top_logprobs" not in request


# Calls in flight -------------------------------------------------------------------------------


def test_no_more_calls_are_in_flight_than_the_model_concurrency(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("slotted", [fake.delay(0.3)])
    client = make_client(vlm_max_concurrency=2, vlm_timeout_s=5.0)
    judgements: list[Judgement] = []

    started = time.monotonic()
    threads = [
        threading.Thread(target=lambda: judgements.append(judge(client, "slotted")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Four calls of 0.3 s through two slots take two rounds; four slots would take one.
    assert time.monotonic() - started >= 0.6
    assert [j.failure_reason for j in judgements] == [None] * 4
    # The time waited for a slot is not the model's: each call records its own exchange only.
    assert all(call.latency_ms < 550 for j in judgements for call in j.calls)


def test_a_call_that_finds_no_free_slot_before_its_deadline_is_unavailable(
    make_client: Callable[..., VLMClient], server: FakeVLMServer
) -> None:
    server.script("busy-slot", [fake.delay(0.6)])
    client = make_client(vlm_max_concurrency=1, vlm_timeout_s=5.0)
    holder = threading.Thread(target=lambda: judge(client, "busy-slot"))
    holder.start()
    time.sleep(0.1)

    judgement = judge(client, "waiting", deadline=time.monotonic() + 0.2)
    holder.join()

    assert judgement.failure_reason == "model_unavailable"
    assert judgement.calls == []
    assert server.requests_for("waiting") == []
