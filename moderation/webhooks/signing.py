"""Standard Webhooks signatures, made and checked by the `standardwebhooks` package.

The reference library assumes well-formed input: given a signature without a comma, one that
is not base64, a body that is not UTF-8 or a secret that is not base64, it raises ValueError,
binascii.Error or UnicodeDecodeError instead of its own WebhookVerificationError. An attacker
controls all of those, so headers are checked for shape here first, and anything the library
still raises is turned into a refusal: a malformed header is the sender's error, never ours.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# How far a sender's clock may be from ours (the library enforces the same five minutes).
TIMESTAMP_TOLERANCE_S = 300

# Printable ASCII without spaces: the id is echoed in logs and stored as a key.
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,256}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# "v1,<base64 of 32 bytes>" entries separated by spaces; a few spare entries for rotations.
_SIGNATURE_HEADER_MAX = 1024
_SIGNATURE_ENTRY = re.compile(r"v[0-9]+,[A-Za-z0-9+/=_-]{1,200}")


class SignatureRejected(Exception):
    """The request is not signed by a secret we know: 401."""


class MalformedSignatureHeaders(Exception):
    """A signature header cannot even be read: 400."""


def sign(secrets: Sequence[str], webhook_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` value: one `v1,` signature per secret, space-separated."""
    return " ".join(
        Webhook(secret).sign(msg_id=webhook_id, timestamp=timestamp, data=body)
        for secret in secrets
    )


def verify(secrets: Sequence[str], headers: Mapping[str, str], body: bytes) -> str:
    """Return the request's webhook-id if any of `secrets` signed `body`; raise otherwise."""
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    if not (webhook_id and timestamp and signature):
        raise SignatureRejected(
            "this tenant signs its submissions: webhook-id, webhook-timestamp and "
            "webhook-signature headers are required"
        )
    if not _WEBHOOK_ID.fullmatch(webhook_id):
        raise MalformedSignatureHeaders("webhook-id must be 1 to 256 printable ASCII characters")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise MalformedSignatureHeaders("webhook-timestamp must be whole seconds since 1970")
    if len(signature) > _SIGNATURE_HEADER_MAX or not all(
        _SIGNATURE_ENTRY.fullmatch(entry) for entry in signature.split(" ")
    ):
        raise MalformedSignatureHeaders(
            "webhook-signature must be space-separated 'v1,<base64>' entries"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedSignatureHeaders(
            "a signed body must be UTF-8 text: send images as URLs or base64 in JSON"
        ) from exc
    plain_headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }
    reason = "no signature matches a current secret of this tenant"
    for secret in secrets:
        try:
            Webhook(secret).verify(text, plain_headers, json_parse=False)
            return webhook_id
        except WebhookVerificationError as exc:
            message = str(exc)
            if "timestamp" in message.lower():
                raise SignatureRejected(
                    f"webhook-timestamp is more than {TIMESTAMP_TOLERANCE_S // 60} minutes "
                    "away from now"
                ) from exc
        except (ValueError, TypeError, binascii.Error, UnicodeError, OverflowError):
            # The library choking on input that passed the shape checks: a bad signature all
            # the same. (Base64 of the wrong length lands here.)
            continue
    raise SignatureRejected(reason)
