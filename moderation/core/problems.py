"""Render every error as RFC 9457 application/problem+json."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from moderation.core.errors import DomainError
from moderation.core.fields import NUL_FREE_MESSAGE, NUL_FREE_PATTERN

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger(__name__)


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem: what every error of this API looks like."""

    type: str = Field(examples=["https://moderation.dev/problems/not-found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["submission 7d0c6f4e-0000-4000-8000-000000000000 does not exist"])
    errors: list[FieldError] | None = None


_DESCRIPTIONS = {
    400: "The request is malformed",
    401: "Missing or unknown API key",
    403: "The key's role may not do this",
    404: "No such object for this tenant",
    406: "None of the media types in `Accept` can be produced",
    409: "Conflicts with the object's current state",
    413: "The request body is too large",
    415: "Unsupported content type",
    422: "The request does not validate; `errors` names each bad field",
    429: "Too many requests; retry after the time in `Retry-After`",
    503: "A dependency is unavailable; retry after the time in `Retry-After`",
}


_HTTP_TITLES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
}


_RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problem+json errors a route can answer."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": Problem,
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER_HEADER
        responses[status] = entry
    return responses


def field_errors(errors: Iterable[Any], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """pydantic's errors as the `errors` member: where, what, which kind.

    A validator that checks a whole JSON value names the bad part in `ctx["path"]`; it is
    appended to the location so the client sees `["body", "metadata", "tags", 3]`, not just the
    field. The input itself is never echoed back: it may be megabytes, or the very bytes that
    could not be stored.
    """
    result = []
    for error in errors:
        context = error.get("ctx") or {}
        loc = [*prefix, *error.get("loc", ()), *context.get("path", ())]
        message = error.get("msg")
        if context.get("pattern") == NUL_FREE_PATTERN:
            message = NUL_FREE_MESSAGE
        result.append({"loc": loc, "msg": message, "type": error.get("type")})
    return result


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    type_slug: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://moderation.dev/problems/{type_slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = jsonable_encoder(errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        headers = dict(exc.headers)
        if exc.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        return problem_response(
            exc.status,
            exc.title,
            exc.detail,
            type_slug=exc.type_slug,
            errors=exc.errors,
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        return problem_response(
            422,
            "Validation failed",
            "the request does not match the schema",
            type_slug="validation-failed",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        return problem_response(
            exc.status_code,
            title,
            str(exc.detail),
            type_slug=title.lower().replace(" ", "-"),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return problem_response(
            500, "Internal error", "the server failed; nothing was lost", type_slug="internal"
        )
