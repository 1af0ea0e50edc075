"""The one place the service talks to the vision-language model, and its one retry layer.

The OpenAI SDK's own retries are switched off and its ten-minute default timeout replaced:
transient failures are retried here, with backoff and jitter, within the caller's deadline, so
a model call always ends before the task's soft time limit. Every exchange is kept as a
`ModelCall`, because the pipeline stores each one (raw output, tokens, latency) as evidence.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, cast

import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, completion_create_params

from moderation.config import Settings
from moderation.policies.schemas import PolicyDocument
from moderation.vlm.breaker import CircuitBreaker
from moderation.vlm.errors import InvalidVerdict, ModelUnavailable, ProviderRefused
from moderation.vlm.prompt import ModelImage, build_messages, prompt_sha256, render_policy_prompt
from moderation.vlm.verdict import (
    ModelVerdict,
    parse_verdict,
    rating_probability,
    verdict_json_schema,
)

logger = logging.getLogger(__name__)

FailureReason = Literal["model_unavailable", "provider_refused", "invalid_model_output"]

RETRY_BASE_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 20.0
# A server asking us to wait longer than this is down, not busy: give the item to a reviewer.
RETRY_AFTER_LIMIT_S = 60.0
# 408 is a timeout reported by a proxy; the other 4xx will not change on a second try.
_TRANSIENT_4XX = frozenset({408, 429})
_ERROR_TEXT_LIMIT = 2000


@dataclass(frozen=True)
class ModelCall:
    """One request to the model and what came back, stored by the caller as a verdict row."""

    model: str
    prompt_sha256: str
    raw_output: str | None
    parsed: dict[str, Any] | None
    error: str | None
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: int
    # The probability of the rating's first token, when the server returned log-probabilities.
    rating_probability: float | None = None


@dataclass(frozen=True)
class Judgement:
    """A verdict, or the review reason why there is none, with every call it took."""

    verdict: ModelVerdict | None
    calls: list[ModelCall]
    failure_reason: FailureReason | None
    # Why there is no verdict, when no call recorded it (the circuit breaker refused the call).
    failure_detail: str | None = None


class VLMClient:
    """Judges uploads against a policy. One instance is shared by all threads of a worker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._openai = openai.OpenAI(
            base_url=settings.vlm_base_url,
            api_key=settings.vlm_api_key.get_secret_value(),
            timeout=openai.Timeout(settings.vlm_timeout_s),
            max_retries=0,
        )
        # Calls in flight from this process, at most the model server's share for it. Threads
        # beyond it wait here with their item ready, so a freed slot is used at once.
        self._slots = threading.BoundedSemaphore(settings.vlm_max_concurrency)
        self.circuit = CircuitBreaker(
            settings.vlm_breaker_failures,
            settings.vlm_breaker_cooldown_s,
            probe_timeout_s=settings.vlm_timeout_s + 1.0,
        )

    def judge(
        self,
        policy: PolicyDocument,
        images: Sequence[ModelImage],
        text: str | None,
        *,
        deadline: float | None = None,
    ) -> Judgement:
        """Ask for a verdict, asking once more if the first answer is unusable.

        `deadline` is a `time.monotonic()` value; no call or backoff sleep runs past it. Model
        trouble never raises: it comes back as `failure_reason`, for the item to go to review.
        """
        request = _VerdictRequest(
            messages=build_messages(render_policy_prompt(policy), images, text),
            images=images,
            categories=policy.category_ids,
            category_order=[category.id for category in policy.categories],
            deadline=deadline,
        )
        calls: list[ModelCall] = []
        try:
            with self._model_slot(deadline):
                verdict = self._ask_with_one_correction(request, calls)
        except ModelUnavailable as exc:
            return Judgement(
                verdict=None,
                calls=calls,
                failure_reason="model_unavailable",
                failure_detail=str(exc),
            )
        except ProviderRefused:
            return Judgement(verdict=None, calls=calls, failure_reason="provider_refused")
        except InvalidVerdict:
            return Judgement(verdict=None, calls=calls, failure_reason="invalid_model_output")
        return Judgement(verdict=verdict, calls=calls, failure_reason=None)

    @contextmanager
    def _model_slot(self, deadline: float | None) -> Iterator[None]:
        """Hold one of the calls this process may have in flight, for one whole exchange."""
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._slots.acquire(timeout=wait):
            raise ModelUnavailable("every model slot stayed busy until the deadline")
        try:
            yield
        finally:
            self._slots.release()

    def prompt_fingerprint(
        self, policy: PolicyDocument, images: Sequence[ModelImage], text: str | None
    ) -> str:
        """The sha256 the first call of `judge` would record, known before calling."""
        return prompt_sha256(build_messages(render_policy_prompt(policy), images, text), images)

    @property
    def model(self) -> str:
        return self._settings.vlm_model

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether the model server answers `GET /models`, for the readiness probe."""
        try:
            self._openai.models.list(timeout=timeout)
        except openai.OpenAIError:
            return False
        return True

    def close(self) -> None:
        self._openai.close()

    def _ask_with_one_correction(
        self, request: _VerdictRequest, calls: list[ModelCall]
    ) -> ModelVerdict:
        try:
            return self._exchange(request, calls)
        except InvalidVerdict as problem:
            rejected_output = calls[-1].raw_output
            logger.info("model output rejected, asking once more: %s", problem.message)
            correction = request.with_messages(
                _correction_messages(request.messages, rejected_output, problem)
            )
        return self._exchange(correction, calls)

    def _exchange(self, request: _VerdictRequest, calls: list[ModelCall]) -> ModelVerdict:
        """One request, retried on transient failures; the reply parsed into a verdict."""
        digest = prompt_sha256(request.messages, request.images)
        attempts = self._settings.vlm_max_retries + 1
        last_failure = "no attempt was made"
        for attempt in range(attempts):
            timeout = self._time_for_call(request.deadline)
            # An open breaker ends the exchange here, without a call: the outage is known.
            self.circuit.before_call()
            started = time.monotonic()
            retry_after: float | None = None
            try:
                completion = self._create_completion(request, timeout)
            except openai.APIStatusError as exc:
                last_failure = _describe_error(exc)
                calls.append(self._failed_call(digest, last_failure, started))
                if exc.status_code >= 500:
                    self.circuit.record_failure(last_failure)
                else:
                    # A 4xx is an answer about this request: the server itself is up.
                    self.circuit.record_success()
                if _is_provider_refusal(exc):
                    raise ProviderRefused(last_failure) from exc
                if exc.status_code < 500 and exc.status_code not in _TRANSIENT_4XX:
                    raise ModelUnavailable(last_failure) from exc
                retry_after = _retry_after_s(exc.response.headers)
            except openai.APIConnectionError as exc:  # timeouts included
                last_failure = _describe_error(exc)
                calls.append(self._failed_call(digest, last_failure, started))
                self.circuit.record_failure(last_failure)
            except openai.OpenAIError as exc:
                last_failure = _describe_error(exc)
                calls.append(self._failed_call(digest, last_failure, started))
                self.circuit.record_failure(last_failure)
                raise ModelUnavailable(last_failure) from exc
            else:
                self.circuit.record_success()
                return self._read_completion(request, completion, digest, started, calls)
            if attempt + 1 < attempts:
                self._wait_before_retry(
                    attempt, attempts, retry_after, request.deadline, last_failure
                )
        raise ModelUnavailable(f"gave up after {attempts} attempts: {last_failure}")

    def _create_completion(self, request: _VerdictRequest, timeout: float) -> ChatCompletion:
        """POST the chat completion through the SDK's client (its errors, headers, connection
        pool and response type), with a body that is already wire-ready.

        `chat.completions.create` would first walk the whole request, base64 images included,
        to transform typed parameters into JSON: about half of this call's CPU, for messages
        built as plain JSON in the first place (`build_messages`).
        """
        body: dict[str, Any] = {
            "model": self._settings.vlm_model,
            "messages": cast("list[ChatCompletionMessageParam]", request.messages),
            "temperature": 0,
            "max_tokens": self._settings.vlm_max_output_tokens,
        }
        response_format = self._response_format(request.category_order)
        if not isinstance(response_format, openai.Omit):
            body["response_format"] = response_format
        if self._settings.vlm_logprobs:
            body |= {"logprobs": True, "top_logprobs": 5}
        return self._openai.post(
            "/chat/completions", body=body, cast_to=ChatCompletion, options={"timeout": timeout}
        )

    def _response_format(
        self, category_order: Sequence[str]
    ) -> completion_create_params.ResponseFormat | openai.Omit:
        match self._settings.vlm_response_format:
            case "json_schema":
                return {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "moderation_verdict",
                        "schema": verdict_json_schema(category_order),
                        "strict": True,
                    },
                }
            case "json_object":
                return {"type": "json_object"}
            case "none":
                return openai.omit

    def _read_completion(
        self,
        request: _VerdictRequest,
        completion: ChatCompletion,
        digest: str,
        started: float,
        calls: list[ModelCall],
    ) -> ModelVerdict:
        latency_ms = _elapsed_ms(started)
        reply = _ReplyFields.read(completion)
        if reply is None:
            failure = "the response is not a chat completion (no choices)"
            calls.append(self._failed_call(digest, failure, started))
            raise ModelUnavailable(failure)
        raw_output = reply.content
        finish_reason = reply.finish_reason
        input_tokens = reply.input_tokens
        output_tokens = reply.output_tokens

        def record(parsed: dict[str, Any] | None, error: str | None) -> None:
            calls.append(
                ModelCall(
                    model=self._settings.vlm_model,
                    prompt_sha256=digest,
                    raw_output=raw_output,
                    parsed=parsed,
                    error=error,
                    finish_reason=finish_reason,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    latency_ms=latency_ms,
                    rating_probability=(
                        rating_probability(reply.token_logprobs, raw_output or "")
                        if parsed is not None
                        else None
                    ),
                )
            )

        try:
            verdict = parse_verdict(
                raw_output or "", categories=request.categories, image_count=len(request.images)
            )
        except InvalidVerdict as problem:
            if finish_reason == "length" and not problem.truncated:
                problem = InvalidVerdict(
                    f"{problem.message} (the reply hit the output token limit)", truncated=True
                )
            record(None, problem.message)
            if finish_reason == "content_filter":
                raise ProviderRefused("the provider's content filter stopped the reply") from None
            raise problem from None
        # A reply cut off after a complete, valid verdict (trailing prose) is still a verdict.
        record(verdict.model_dump(mode="json"), None)
        return verdict

    def _failed_call(self, digest: str, error: str, started: float) -> ModelCall:
        return ModelCall(
            model=self._settings.vlm_model,
            prompt_sha256=digest,
            raw_output=None,
            parsed=None,
            error=error,
            finish_reason=None,
            input_tokens=None,
            output_tokens=None,
            latency_ms=_elapsed_ms(started),
        )

    def _time_for_call(self, deadline: float | None) -> float:
        if deadline is None:
            return self._settings.vlm_timeout_s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ModelUnavailable("the deadline passed before the model could be asked")
        return min(self._settings.vlm_timeout_s, remaining)

    def _wait_before_retry(
        self,
        attempt: int,
        attempts: int,
        retry_after: float | None,
        deadline: float | None,
        failure: str,
    ) -> None:
        if retry_after is not None and retry_after > RETRY_AFTER_LIMIT_S:
            raise ModelUnavailable(f"the server asked to wait {retry_after:.0f} s: {failure}")
        # Full jitter spreads the retries of many workers that failed together.
        backoff = random.uniform(0, min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2**attempt))  # noqa: S311
        delay = retry_after if retry_after is not None else backoff
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise ModelUnavailable(f"no time left before the deadline to retry: {failure}")
        logger.warning(
            "model call failed (%s); retry %d of %d in %.2f s",
            failure,
            attempt + 1,
            attempts - 1,
            delay,
        )
        time.sleep(delay)


@dataclass(frozen=True)
class _VerdictRequest:
    """Everything one exchange needs, so the client itself keeps no per-call state."""

    messages: list[dict[str, Any]]
    images: Sequence[ModelImage]
    categories: frozenset[str]
    category_order: list[str]
    deadline: float | None

    def with_messages(self, messages: list[dict[str, Any]]) -> _VerdictRequest:
        return _VerdictRequest(
            messages=messages,
            images=self.images,
            categories=self.categories,
            category_order=self.category_order,
            deadline=self.deadline,
        )


@dataclass(frozen=True)
class _ReplyFields:
    content: str | None
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    token_logprobs: list[tuple[str, float]]

    @classmethod
    def read(cls, completion: object) -> _ReplyFields | None:
        """The fields we use, or None when the body is no chat completion at all.

        The SDK builds responses without validating them (strict validation would also reject
        servers' own finish reasons), so any field may be missing or of another type here.
        """
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            return None
        content = getattr(getattr(choices[0], "message", None), "content", None)
        finish_reason = getattr(choices[0], "finish_reason", None)
        usage = getattr(completion, "usage", None)
        input_tokens = getattr(usage, "prompt_tokens", None)
        output_tokens = getattr(usage, "completion_tokens", None)
        token_logprobs = [
            (token, float(logprob))
            for entry in getattr(getattr(choices[0], "logprobs", None), "content", None) or []
            if isinstance(token := getattr(entry, "token", None), str)
            and isinstance(logprob := getattr(entry, "logprob", None), int | float)
        ]
        return cls(
            content=content if isinstance(content, str) else None,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            input_tokens=input_tokens if isinstance(input_tokens, int) else None,
            output_tokens=output_tokens if isinstance(output_tokens, int) else None,
            token_logprobs=token_logprobs,
        )


def _correction_messages(
    messages: list[dict[str, Any]], rejected_output: str | None, problem: InvalidVerdict
) -> list[dict[str, Any]]:
    """The conversation so far, plus what was wrong with the answer, worded for the model."""
    previous: list[dict[str, Any]] = []
    if rejected_output:
        previous.append({"role": "assistant", "content": rejected_output})
    if not rejected_output:
        complaint = "Your previous reply was empty."
    elif problem.truncated:
        complaint = (
            f"Your reply was cut off ({problem.message}). "
            "Keep every rationale to a few words so the whole object fits."
        )
    else:
        complaint = f"Your reply was not a valid verdict: {problem.message}."
    request = (
        f"{complaint} Reply again with only the JSON object described in the instructions, "
        'starting with {"rating":'
    )
    return [*messages, *previous, {"role": "user", "content": request}]


def _is_provider_refusal(exc: openai.APIStatusError) -> bool:
    """DashScope's content-safety refusal: 400 with code `data_inspection_failed`.

    The SDK lifts the `error` object of the body, so `code` and `type` cover both the nested and
    the top-level shape; the message (which quotes the body) covers DashScope's native
    `DataInspectionFailed` spelling.
    """
    if exc.status_code != 400:
        return False
    said = " ".join(str(part) for part in (exc.code, exc.type, exc.message) if part)
    return "datainspectionfailed" in said.lower().replace("_", "")


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's own wait, from `retry-after-ms` or `retry-after` (seconds or HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return _usable_wait(float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _usable_wait(float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _usable_wait((when - datetime.now(UTC)).total_seconds())


def _usable_wait(seconds: float) -> float | None:
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _describe_error(exc: openai.OpenAIError) -> str:
    if isinstance(exc, openai.APIStatusError):
        code = f" {exc.code}" if exc.code else ""
        text = f"HTTP {exc.status_code}{code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_ERROR_TEXT_LIMIT]


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
