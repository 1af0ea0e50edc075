"""Domain errors carry their HTTP status; one handler renders them as RFC 9457 problem+json.

Services raise these and never import FastAPI, so the same rules hold for the CLI and workers.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status: int = 400
    title: str = "Bad request"
    type_slug: str = "bad-request"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


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


class BadRequest(DomainError):
    """The request cannot even be read (a malformed header, say), before any field is checked."""

    status, title, type_slug = 400, "Bad request", "bad-request"
