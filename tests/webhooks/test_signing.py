"""Signatures made and checked with `standardwebhooks`, and hostile headers refused cleanly."""

from __future__ import annotations

import binascii
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from moderation.tenants.service import new_webhook_secret
from moderation.webhooks.signing import (
    MalformedSignatureHeaders,
    SignatureRejected,
    sign,
    verify,
)

SECRET = new_webhook_secret()
OTHER = new_webhook_secret()
BODY = b'{"external_id":"a1","text":"hello"}'


def signed_headers(
    secrets: list[str], body: bytes = BODY, *, webhook_id: str = "msg_1", at: float | None = None
) -> dict[str, str]:
    moment = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": sign(secrets, webhook_id, moment, body.decode()),
    }


def test_a_signature_made_here_verifies_with_the_reference_library() -> None:
    headers = signed_headers([SECRET])
    Webhook(SECRET).verify(BODY, headers)  # raises if not
    assert verify([SECRET], headers, BODY) == "msg_1"


def test_two_secrets_give_two_signatures_each_valid_alone() -> None:
    headers = signed_headers([SECRET, OTHER])
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(entry.startswith("v1,") for entry in entries)
    for secret, entry in zip([SECRET, OTHER], entries, strict=True):
        Webhook(secret).verify(BODY, {**headers, "webhook-signature": entry})


def test_either_live_secret_is_accepted() -> None:
    assert verify([SECRET, OTHER], signed_headers([OTHER]), BODY) == "msg_1"


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"external_id":"a2"}'},
        {"secret": "other"},
        {"webhook-id": "msg_2"},
    ],
)
def test_anything_changed_after_signing_is_rejected(change: dict[str, object]) -> None:
    headers = signed_headers([OTHER if change.get("secret") else SECRET])
    if "webhook-id" in change:
        headers["webhook-id"] = str(change["webhook-id"])
    body = change.get("body", BODY)
    assert isinstance(body, bytes)
    with pytest.raises(SignatureRejected):
        verify([SECRET], headers, body)


@pytest.mark.parametrize("offset", [-305, -3600, 305, 86400])
def test_a_timestamp_more_than_five_minutes_off_is_rejected(offset: int) -> None:
    headers = signed_headers([SECRET], at=time.time() + offset)
    with pytest.raises(SignatureRejected, match="5 minutes"):
        verify([SECRET], headers, BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_rejected(missing: str) -> None:
    headers = signed_headers([SECRET])
    del headers[missing]
    with pytest.raises(SignatureRejected, match="required"):
        verify([SECRET], headers, BODY)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", "soon"),
        ("webhook-timestamp", "1.7e9"),
        ("webhook-timestamp", "nan"),
        ("webhook-timestamp", "-5"),
        ("webhook-timestamp", "9" * 400),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,a,b"),
        ("webhook-signature", "v1,!!!!"),
        ("webhook-signature", "garbage"),
        ("webhook-signature", "v1," + "A" * 5000),
        ("webhook-signature", "v1,é"),
        ("webhook-id", "x" * 300),
        ("webhook-id", "msg 1"),
        ("webhook-id", "msg_ü"),
    ],
)
def test_malformed_headers_are_a_clean_refusal(header: str, value: str) -> None:
    headers = {**signed_headers([SECRET]), header: value}
    with pytest.raises((MalformedSignatureHeaders, SignatureRejected)):
        verify([SECRET], headers, BODY)


def test_signature_base64_of_the_wrong_length_is_a_rejection_not_a_crash() -> None:
    headers = {**signed_headers([SECRET]), "webhook-signature": "v1,abc"}
    # The reference library itself raises binascii.Error here...
    with pytest.raises(binascii.Error):
        Webhook(SECRET).verify(BODY, headers)
    # ...which must not escape as a server error.
    with pytest.raises(SignatureRejected):
        verify([SECRET], headers, BODY)


def test_the_reference_library_raises_foreign_exceptions_on_malformed_input() -> None:
    """Why the checks above exist: these would be 500s if passed straight through."""
    headers = signed_headers([SECRET])
    with pytest.raises(ValueError):
        Webhook(SECRET).verify(BODY, {**headers, "webhook-signature": "v1"})
    with pytest.raises(UnicodeDecodeError):
        Webhook(SECRET).verify(b"\xff\xfe", headers)


def test_a_body_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(MalformedSignatureHeaders, match="UTF-8"):
        verify([SECRET], signed_headers([SECRET]), b"\xff\xfe")


@settings(max_examples=300, deadline=None)
@given(
    webhook_id=st.text(max_size=300),
    timestamp=st.text(max_size=40),
    signature=st.text(max_size=300),
    body=st.binary(max_size=200),
)
def test_no_header_or_body_raises_anything_but_a_refusal(
    webhook_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }
    with pytest.raises((MalformedSignatureHeaders, SignatureRejected)):
        verify([SECRET], headers, body)
