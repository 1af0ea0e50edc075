"""Checks every request and response share, whatever route they reach, in one ASGI layer.

- A NUL character (`%00`) in the path or a query parameter is refused with a 422 naming where it
  was. No route can store or look up such a value (PostgreSQL text refuses NUL), and catching it
  here covers every route, including ones added later, before any handler runs. Routes also
  declare their parameters with NUL-free types, so the OpenAPI document says so too.
- Every response says `X-Content-Type-Options: nosniff`: the API serves uploaded bytes (the
  normalized images), and a browser must never second-guess their declared type.
- Bodies are capped by content type and JSON bodies checked for shape before any parser sees
  them (moderation.core.limits).

One layer rather than one per concern: each layer of middleware is a coroutine call, a closure
over `send` and a scope lookup on every request, and ingest is mostly requests this small.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.core.errors import ValidationFailed
from moderation.core.fields import NUL_FREE_MESSAGE
from moderation.core.limits import BodyLimits, BodySizeLimit

_NOSNIFF_NAME = b"x-content-type-options"
_NOSNIFF = (_NOSNIFF_NAME, b"nosniff")


def _nul_in_target(scope: Scope) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    if "\x00" in scope.get("path", ""):
        errors.append({"loc": ["path"], "msg": NUL_FREE_MESSAGE, "type": "string_nul"})
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                errors.append(
                    {"loc": ["query", name], "msg": NUL_FREE_MESSAGE, "type": "string_nul"}
                )
    return errors


def _with_nosniff(message: Message) -> None:
    headers = [
        header for header in message.get("headers", ()) if header[0].lower() != _NOSNIFF_NAME
    ]
    headers.append(_NOSNIFF)
    message["headers"] = headers


class RequestBoundary(BodySizeLimit):
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        super().__init__(app, limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                _with_nosniff(message)
            await send(message)

        errors = _nul_in_target(scope)
        if errors:
            from moderation.core.problems import problem_response

            error = ValidationFailed("the request target is not valid", errors=errors)
            response = problem_response(
                error.status, error.title, error.detail, type_slug=error.type_slug, errors=errors
            )
            await response(scope, receive, send_with_nosniff)
            return
        await self.limit(scope, receive, send_with_nosniff)
