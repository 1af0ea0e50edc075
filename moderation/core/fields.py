"""Field types for everything a client sends, shaped by what PostgreSQL can store.

A value that passes these types can be written and read back; one that cannot is refused at the
boundary with a 422 that names the field, instead of reaching the database and failing there:

- text is free of NUL characters (PostgreSQL `text` and `jsonb` refuse them) and of lone UTF-16
  surrogates (not Unicode; `jsonb` refuses their escapes);
- numbers in free-form JSON are finite (`NaN` and `Infinity`, or `1e400` that overflows to it,
  are not JSON and `jsonb` refuses them);
- free-form JSON nests only so deep, so nothing that walks it later can run out of stack;
- integers that become SQL parameters fit the 32-bit `integer` column they are compared with;
- URLs name a host in so many characters, so the URL stored is the URL the client wrote.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Union

from fastapi import Path
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    Field,
    FiniteFloat,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import TypeAliasType

# Checked by pydantic's regex engine, which also refuses lone surrogates outright.
NUL_FREE_PATTERN = r"^[^\x00]*$"
NUL_FREE_MESSAGE = "must not contain NUL characters"

Text = Annotated[str, StringConstraints(pattern=NUL_FREE_PATTERN)]
"""Any string a client sends that ends up stored or compared in SQL."""

INT4_MAX = 2**31 - 1

# Path parameters compared with `integer` columns. Beyond these bounds PostgreSQL raises instead
# of finding nothing.
ImagePosition = Annotated[int, Path(ge=0, le=INT4_MAX, description="0-based image index")]
VersionNumber = Annotated[int, Path(ge=1, le=INT4_MAX, description="policy version number")]

# A span subtracted from (or added to) now() in SQL: a century either way keeps the result a
# timestamp PostgreSQL can hold; Python's own limit (a billion days) does not.
Duration = Annotated[timedelta, Field(ge=-timedelta(days=36_500), le=timedelta(days=36_500))]

METADATA_MAX_DEPTH = 16


def _json_problem(path: list[str | int], problem: str) -> PydanticCustomError:
    # `path` extends the error's location below the field; see problems.field_errors.
    context = {"path": path, "problem": problem}
    return PydanticCustomError("json_invalid_value", "{problem}", context)


def _unstorable_text(text: str) -> str | None:
    if "\x00" in text:
        return NUL_FREE_MESSAGE
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _walk(value: Any) -> Iterator[tuple[list[str | int], Any, int]]:
    """Every node of a parsed JSON value with its path and depth, iteratively: no recursion, so
    no input nests deep enough to exhaust the stack."""
    stack: list[tuple[list[str | int], Any, int]] = [([], value, 0)]
    while stack:
        path, node, depth = stack.pop()
        yield path, node, depth
        if isinstance(node, dict):
            stack.extend(([*path, key], child, depth + 1) for key, child in node.items())
        elif isinstance(node, list):
            stack.extend(([*path, index], child, depth + 1) for index, child in enumerate(node))


def _check_storable_json(value: dict[str, Any]) -> dict[str, Any]:
    for path, node, depth in _walk(value):
        if depth > METADATA_MAX_DEPTH:
            raise _json_problem(path, f"nested deeper than {METADATA_MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key in node:
                problem = _unstorable_text(key) if isinstance(key, str) else "keys must be text"
                if problem:
                    raise _json_problem([*path, str(key)], f"key {problem}")
        elif isinstance(node, str):
            problem = _unstorable_text(node)
            if problem:
                raise _json_problem(path, problem)
        elif isinstance(node, float) and not math.isfinite(node):
            raise _json_problem(path, "numbers must be finite (no NaN or Infinity)")
        elif node is not None and not isinstance(node, bool | int | float | list | dict):
            raise _json_problem(path, "not a JSON value")
    return value


# What free-form JSON may hold, written as a type only so that the OpenAPI document describes it
# exactly. Validation itself is the iterative walk above, which pydantic's recursive validators
# are not, and which reports the path of the first bad value.
StorableJson = TypeAliasType(  # type: ignore[misc]  # mypy cannot follow the recursion
    "StorableJson",
    Union[  # noqa: UP007 - a recursive alias needs the string forward references
        Text, bool, int, FiniteFloat, list["StorableJson"], dict[Text, "StorableJson"], None  # type: ignore[misc]
    ],
)
_STORABLE_OBJECT_DOCS = TypeAdapter(dict[Text, StorableJson]).core_schema


class _DescribedAsStorableJson:
    @classmethod
    def __get_pydantic_json_schema__(
        cls, _: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(_STORABLE_OBJECT_DOCS)


StorableJsonObject = Annotated[
    dict[str, Any], AfterValidator(_check_storable_json), _DescribedAsStorableJson
]
"""A free-form JSON object (labels, metadata) that `jsonb` will take."""


# Backslashes too: WHATWG parsers read them as slashes, other parsers do not.
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
_URL_START = re.compile(r"(?i)https?://")


def _require_host(value: Any) -> Any:
    # The WHATWG parser behind AnyHttpUrl reads `http:///x` as `http://x/` and `http:\\x` as
    # `http://x/`: the URL stored would not be the one the client wrote. Ask for an explicit
    # `scheme://host` first.
    if isinstance(value, str):
        if _URL_FORBIDDEN.search(value):
            raise PydanticCustomError("url_parsing", "URL must not contain spaces or controls")
        if not _URL_START.match(value):
            raise PydanticCustomError("url_scheme", "URL must start with http:// or https://")
        parts = urllib.parse.urlsplit(value)
        if not parts.hostname:
            raise PydanticCustomError("url_parsing", "URL must name a host")
    return value


WebUrl = Annotated[AnyHttpUrl, BeforeValidator(_require_host), Field(max_length=4096)]
"""An http(s) URL with an explicit host, parsed."""

WebUrlText = Annotated[Text, AfterValidator(_require_host)]
"""The same URL kept as the client wrote it, for checks that must see exactly that."""
