"""Pure pieces of ingest: payload identity, inline image decoding, cursors."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from moderation.config import Settings
from moderation.core.errors import PayloadTooLarge, ValidationFailed
from moderation.core.pagination import decode_cursor, encode_cursor
from moderation.submissions.service import ImageSource, NewSubmission, decode_inline_image

SETTINGS = Settings(image_max_bytes=1000)


def test_payload_identity_ignores_nothing_that_matters():
    base = NewSubmission("e1", "hello", [ImageSource(data=b"abc")], {"a": 1}, None, None)
    same = NewSubmission("e1", "hello", [ImageSource(data=b"abc")], {"a": 1}, None, None)
    assert base.payload_sha256() == same.payload_sha256()
    for changed in (
        NewSubmission("e1", "hello!", [ImageSource(data=b"abc")], {"a": 1}),
        NewSubmission("e1", "hello", [ImageSource(data=b"abd")], {"a": 1}),
        NewSubmission("e1", "hello", [ImageSource(url="https://x.example/a.png")], {"a": 1}),
        NewSubmission("e1", "hello", [ImageSource(data=b"abc")], {"a": 2}),
        NewSubmission("e1", "hello", [ImageSource(data=b"abc")], {"a": 1}, "strict"),
    ):
        assert changed.payload_sha256() != base.payload_sha256()


def test_inline_images_accept_plain_base64_and_data_urls():
    png = b"\x89PNG\r\n\x1a\n...."
    encoded = base64.b64encode(png).decode()
    assert decode_inline_image(encoded, 0, SETTINGS) == png
    assert decode_inline_image(f"data:image/png;base64,{encoded}", 0, SETTINGS) == png


@pytest.mark.parametrize("data", ["!!!", "data:image/png,raw", ""])
def test_bad_inline_images_are_validation_errors(data):
    with pytest.raises(ValidationFailed):
        decode_inline_image(data, 3, SETTINGS)


def test_oversized_inline_image_is_refused_before_decoding():
    with pytest.raises(PayloadTooLarge):
        decode_inline_image(base64.b64encode(b"x" * 2000).decode(), 0, SETTINGS)


def test_cursor_round_trip_and_garbage():
    moment, row = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(moment, row)) == (moment, row)
    with pytest.raises(ValidationFailed):
        decode_cursor("not-a-cursor")
