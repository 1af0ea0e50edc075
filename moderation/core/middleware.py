"""Checks every request and response share, whatever route they reach.

- A NUL character (`%00`) in the path or a query parameter is refused with a 422 naming where it
  was. No route can store or look up such a value (PostgreSQL text refuses NUL), and catching it
  here covers every route, including ones added later, before any handler runs. Routes also
  declare their parameters with NUL-free types, so the OpenAPI document says so too.
- Every response says `X-Content-Type-Options: nosniff`: the API serves uploaded bytes (the
  normalized images), and a browser must never second-guess their declared type.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.core.errors import ValidationFailed
from moderation.core.fields import NUL_FREE_MESSAGE


def _nul_in_target(scope: Scope) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    if "\x00" in scope.get("path", ""):
        errors.append({"loc": ["path"], "msg": NUL_FREE_MESSAGE, "type": "string_nul"})
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or "\x00" in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                errors.append(
                    {"loc": ["query", name], "msg": NUL_FREE_MESSAGE, "type": "string_nul"}
                )
    return errors


class RequestBoundary:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Content-Type-Options"] = "nosniff"
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
        await self.app(scope, receive, send_with_nosniff)
