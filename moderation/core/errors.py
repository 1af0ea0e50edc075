"""Domain errors carry their HTTP status; one handler renders them as RFC 9457 problem+json.

Services raise these and never import FastAPI, so the same rules hold for the CLI and workers.
"""

from __future__ import annotations

import re
from typing import Any

# `<_io.BytesIO object at 0x7f...>` and the like: an address and a class name, meaningless to a
# reader and a peek into the process to anyone else.
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class DomainError(Exception):
    status: int = 400
    title: str = "Bad request"
    type_slug: str = "bad-request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        # Response headers that come with this error (Retry-After; the handler adds the
        # WWW-Authenticate challenge to every 401).
        self.headers: dict[str, str] = {}


class BadRequest(DomainError):
    """The request cannot even be read (a malformed header or body), before any field is checked."""

    status, title, type_slug = 400, "Bad request", "bad-request"


class Unauthorized(DomainError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"


class Forbidden(DomainError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class NotFound(DomainError):
    status, title, type_slug = 404, "Not found", "not-found"


class NotAcceptable(DomainError):
    status, title, type_slug = 406, "Not acceptable", "not-acceptable"


class Conflict(DomainError):
    status, title, type_slug = 409, "Conflict", "conflict"


class PayloadTooLarge(DomainError):
    status, title, type_slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(DomainError):
    status, title, type_slug = 415, "Unsupported media type", "unsupported-media-type"


class ValidationFailed(DomainError):
    status, title, type_slug = 422, "Validation failed", "validation-failed"


class ServiceUnavailable(DomainError):
    """A dependency (the database, usually) cannot be reached; nothing about the request is wrong.

    Clients should come back after `retry_after` seconds and send the same request again.
    """

    status, title, type_slug = 503, "Service unavailable", "service-unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.headers["Retry-After"] = str(retry_after)


def describe_exception(exc: BaseException) -> str:
    """An exception as a reviewer or a client may read it: its kind and message, no reprs."""
    message = " ".join(_OBJECT_REPR.sub("", str(exc)).split())
    kind = type(exc).__name__
    return f"{kind}: {message}" if message else kind


class TooManyRequests(DomainError):
    status, title, type_slug = 429, "Too many requests", "too-many-requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.headers["Retry-After"] = str(retry_after_s)
