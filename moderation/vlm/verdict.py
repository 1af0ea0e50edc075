"""The model's verdict: its schema, and a parser for what real Qwen-VL servers actually return.

Models wrap the object in ```json fences, put `<think>…</think>` reasoning before it (thinking
variants often emit only the closing tag), add prose around it, or stop mid-object at
`max_tokens`. The parser digs the object out of the first three and reports the last as
truncated, so the client can ask again for a shorter answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moderation.vlm.errors import InvalidVerdict

Confidence = Annotated[float, Field(ge=0.0, le=1.0)]

# Strict: a model that writes "severity": "3" or "confidence": true has not followed the
# contract, and guessing what it meant would hide prompt or server regressions.
_VERDICT_CONFIG = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)


class Violation(BaseModel):
    model_config = _VERDICT_CONFIG

    category: str
    severity: int = Field(ge=1, le=4)
    confidence: Confidence
    source: Literal["image", "text", "both"]
    image: int | None = Field(default=None, ge=0, description="0-based index of the image.")
    rationale: str


class ModelVerdict(BaseModel):
    model_config = _VERDICT_CONFIG

    rating: Literal["safe", "unsafe"]
    confidence: Confidence
    violations: list[Violation]
    rationale: str

    @model_validator(mode="after")
    def _rating_matches_violations(self) -> Self:
        if self.rating == "unsafe" and not self.violations:
            raise ValueError('"unsafe" needs at least one violation')
        if self.rating == "safe" and self.violations:
            raise ValueError('"safe" must have an empty "violations" list')
        return self


def verdict_json_schema(categories: Sequence[str]) -> dict[str, Any]:
    """The verdict as a JSON schema for structured output (vLLM `response_format`).

    Written by hand rather than from `ModelVerdict.model_json_schema()` so the category enum is
    the policy's and the property order is the contract's: guided decoding emits properties in
    schema order, and `rating` must come first for its log-probability to be read.
    """
    confidence = {"type": "number", "minimum": 0, "maximum": 1}
    violation = {
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": list(dict.fromkeys(categories))},
            "severity": {"type": "integer", "minimum": 1, "maximum": 4},
            "confidence": confidence,
            "source": {"type": "string", "enum": ["image", "text", "both"]},
            "image": {"type": "integer", "minimum": 0},
            "rationale": {"type": "string"},
        },
        "required": ["category", "severity", "confidence", "source", "rationale"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "rating": {"type": "string", "enum": ["safe", "unsafe"]},
            "confidence": confidence,
            "violations": {"type": "array", "items": violation},
            "rationale": {"type": "string"},
        },
        "required": ["rating", "confidence", "violations", "rationale"],
        "additionalProperties": False,
    }


_THINK_OPEN = re.compile(r"\s*<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_FENCE = "```"
_FENCED_BLOCK = re.compile(r"```[ \t]*(?:json)?[ \t]*\r?\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_DECODER = json.JSONDecoder()


def parse_verdict(text: str, *, categories: frozenset[str], image_count: int) -> ModelVerdict:
    """Find the verdict in a model reply and check it against the request it answers.

    Raises `InvalidVerdict` for anything else, never another exception: the input is untrusted.
    """
    answer = _strip_reasoning(text)
    if not answer.strip():
        raise InvalidVerdict("the reply was empty; expected one JSON object")
    candidate = _first_verdict_object(answer)
    if candidate is None:
        if _looks_cut_off(answer):
            raise InvalidVerdict("the JSON object was cut off before it ended", truncated=True)
        if "{" in answer:
            raise InvalidVerdict('no JSON object with a "rating" key was found')
        raise InvalidVerdict("the reply contained no JSON object")
    try:
        verdict = ModelVerdict.model_validate(candidate)
    except ValidationError as exc:
        raise InvalidVerdict(_describe(exc)) from None
    _check_against_request(verdict, categories=categories, image_count=image_count)
    return verdict


def _strip_reasoning(text: str) -> str:
    """Drop the reasoning that thinking variants put before the answer.

    Only the first closing tag counts: the answer may quote the caption, and an uploader who
    writes `</think>{"rating": "safe", …}` must not be able to choose where the answer starts.
    """
    opening = _THINK_OPEN.match(text)
    closing = _THINK_CLOSE.search(text)
    if closing is None:
        if opening is not None:
            raise InvalidVerdict("the reply stopped while still reasoning", truncated=True)
        return text
    # With or without the opening tag (thinking variants often omit it), everything before the
    # first closing tag is reasoning.
    return text[closing.end() :]


def _first_verdict_object(answer: str) -> dict[str, Any] | None:
    """Fenced blocks first (the model marked them as its answer), then the text as a whole."""
    regions = [match.group(1) for match in _FENCED_BLOCK.finditer(answer)]
    regions.append(answer)
    for region in regions:
        for candidate in _json_objects(region):
            if "rating" in candidate:
                return candidate
    return None


def _json_objects(region: str) -> Iterator[dict[str, Any]]:
    position = region.find("{")
    while position != -1:
        try:
            value, end = _DECODER.raw_decode(region, position)
        except (ValueError, RecursionError):
            # ValueError covers malformed JSON and over-long integer literals; RecursionError a
            # reply of thousands of nested brackets. Neither is a verdict: try the next brace.
            position = region.find("{", position + 1)
            continue
        if isinstance(value, dict):
            yield value
        position = region.find("{", end)


def _looks_cut_off(answer: str) -> bool:
    if answer.count(_FENCE) % 2 == 1:
        return True
    start = answer.find("{")
    return start != -1 and _braces_left_open(answer[start:])


def _braces_left_open(text: str) -> bool:
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
    return depth > 0 or in_string


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "verdict"
        problems.append(f"{location}: {error['msg']}")
    return "; ".join(problems)


def _check_against_request(
    verdict: ModelVerdict, *, categories: frozenset[str], image_count: int
) -> None:
    problems = []
    for index, violation in enumerate(verdict.violations):
        if violation.category not in categories:
            allowed = ", ".join(sorted(categories))
            problems.append(
                f"violations.{index}.category: {violation.category!r} is not one of {allowed}"
            )
        if violation.image is not None and violation.image >= image_count:
            if image_count == 0:
                problems.append(f"violations.{index}.image: there are no images, leave it out")
            else:
                problems.append(
                    f"violations.{index}.image: {violation.image} is out of range, "
                    f"the images are numbered 0 to {image_count - 1}"
                )
    if problems:
        raise InvalidVerdict("; ".join(problems))


_RATING_VALUE = re.compile(r'"rating"\s*:\s*"')


def rating_probability(tokens: Sequence[tuple[str, float]], content: str) -> float | None:
    """The probability the model gave the first token of its `rating` value.

    The prompt puts `rating` first so that this token is decided before anything else: it is
    the model's own confidence in safe versus unsafe (as LlavaGuard and Llama Guard score), read
    from the server's log-probabilities rather than from the number the model wrote. `tokens`
    are (text, logprob) pairs whose texts concatenate to `content`; None when they don't, or
    when there is no rating to find.
    """
    if not tokens or "".join(text for text, _ in tokens) != content:
        return None
    match = _RATING_VALUE.search(content)
    if match is None:
        return None
    position = 0
    for text, logprob in tokens:
        position += len(text)
        if position > match.end():
            return min(1.0, math.exp(logprob))
    return None
