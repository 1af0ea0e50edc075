"""Bounded JSON: refuse a document by its shape before a parser builds it.

Parsing is where a small body becomes a big process. Sixty megabytes of `{},` are twenty million
Python objects and several gigabytes; a few kilobytes of `[` exhaust the stack of a recursive
parser. A skeleton of the document, with every string emptied, is cheap to compute (regular
expressions run in C, and inline images are strings) and tells how many values it holds, how deep
it nests and how long its numbers are. Every parse of untrusted JSON in the service goes through
here first: request bodies, form fields that carry JSON, and the pagination cursor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from moderation.core.errors import PayloadTooLarge, ValidationFailed

# More values than any request of this API carries: a submission's metadata is at most 16 KiB
# and its images a handful; a policy rubric has dozens of categories and examples, not thousands.
JSON_MAX_VALUES = 20_000
JSON_MAX_DEPTH = 32
# Digits beyond this are a parser's quadratic big-number conversion, not data.
JSON_MAX_NUMBER_LENGTH = 100

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(rb"[\[\]{}]")
_LONG_NUMBER = re.compile(rb"[-+.0-9eE]{%d,}" % (JSON_MAX_NUMBER_LENGTH + 1))

Loc = Sequence[str | int]


def _problem(loc: Loc, message: str, kind: str) -> list[dict[str, Any]]:
    return [{"loc": list(loc), "msg": message, "type": kind}]


def check_json_shape(
    raw: bytes | str,
    *,
    loc: Loc = ("body",),
    max_values: int = JSON_MAX_VALUES,
    max_depth: int = JSON_MAX_DEPTH,
) -> None:
    """Raise unless the document holds at most `max_values` values nested `max_depth` deep.

    Malformed JSON may pass (the parser that follows reports it); a well-formed document that
    passes is safe to parse.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    skeleton = _STRING.sub(b'""', data)
    # Every value but the first in a container follows a comma; every container opens with a
    # bracket. So this bounds the number of values from above.
    values = 1 + skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if values > max_values:
        message = f"holds more than {max_values} JSON values"
        raise PayloadTooLarge(
            f"the document {message}", errors=_problem(loc, message, "json_too_many_values")
        )
    if _LONG_NUMBER.search(skeleton):
        message = f"has a number longer than {JSON_MAX_NUMBER_LENGTH} characters"
        raise ValidationFailed(
            f"the document {message}", errors=_problem(loc, message, "json_number_too_long")
        )
    depth = 0
    for bracket in _BRACKET.finditer(skeleton):
        depth += 1 if bracket.group() in (b"[", b"{") else -1
        if depth > max_depth:
            message = f"nests deeper than {max_depth} levels"
            raise ValidationFailed(
                f"the document {message}", errors=_problem(loc, message, "json_too_deep")
            )


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond the range of a number")
    return number


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(
    raw: bytes | str,
    *,
    loc: Loc = ("body",),
    max_values: int = JSON_MAX_VALUES,
    max_depth: int = JSON_MAX_DEPTH,
) -> Any:
    """Parse untrusted JSON within the given bounds, as JSON (no NaN, no Infinity).

    Raises ValidationFailed (422) naming `loc` for anything that is not such a document.
    """
    check_json_shape(raw, loc=loc, max_values=max_values, max_depth=max_depth)
    try:
        return json.loads(raw, parse_float=_finite_float, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError, UnicodeDecodeError and the refusals above are ValueErrors.
        # RecursionError cannot happen after the depth check, but is no reason for a 500 if it did.
        message = str(exc) if isinstance(exc, ValueError) else "nests too deeply"
        raise ValidationFailed(
            "not valid JSON", errors=_problem(loc, message, "json_invalid")
        ) from exc
