"""Opaque keyset cursors: stable under concurrent inserts, unlike offsets.

A cursor comes back from the client, so it is decoded as the hostile input it may be: its size
is capped before decoding, its JSON is bounded before parsing, and its parts must be exactly an
aware timestamp and a UUID.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter, ValidationError

from moderation.core.errors import DomainError, ValidationFailed
from moderation.core.json_limits import load_json

T = TypeVar("T")

# What encode_cursor produces is about 100 characters; twice that leaves room for nothing else.
CURSOR_MAX_LENGTH = 200

CursorParam = Annotated[
    str | None,
    Query(
        max_length=CURSOR_MAX_LENGTH,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="`next_cursor` of the previous page",
    ),
]

_CURSOR_PARTS = TypeAdapter(tuple[AwareDatetime, uuid.UUID])


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page",
        examples=["WyIyMDI2LTExLTI0VDEwOjE1OjAyLjQ4WiIsICI3ZDBjNmY0ZSJd"],
    )


def encode_position(*values: str | int) -> str:
    """A cursor for any keyset: the sort values of the last row a page returned."""
    raw = json.dumps(list(values)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(cursor: str, size: int) -> list[str | int]:
    """The sort values encode_position packed: a flat list of `size` texts and integers, each
    storable and comparable in SQL (no NUL, integers within 64 bits), or a 422."""
    if len(cursor) > CURSOR_MAX_LENGTH:
        raise _invalid_cursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded)
        values = load_json(raw, loc=["query", "cursor"], max_values=size + 1, max_depth=1)
    except (DomainError, binascii.Error, ValueError, TypeError) as exc:
        raise _invalid_cursor() from exc
    if not isinstance(values, list) or len(values) != size:
        raise _invalid_cursor()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise _invalid_cursor()
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise _invalid_cursor()
        if isinstance(value, str) and "\x00" in value:
            raise _invalid_cursor()
    return values


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(
        "cursor is not one this API returned",
        errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
    )


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    if len(cursor) > CURSOR_MAX_LENGTH:
        raise _invalid_cursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded)
        parts = load_json(raw, loc=["query", "cursor"], max_values=3, max_depth=1)
        created_at, row_id = _CURSOR_PARTS.validate_python(parts)
    except (DomainError, ValidationError, binascii.Error, ValueError) as exc:
        raise _invalid_cursor() from exc
    return created_at, row_id
