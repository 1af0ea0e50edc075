"""The common ingest request, answered before the framework routes it.

Most of what an upload service sends is the same request: a small JSON body, images by URL or
none, from a key this process saw moments ago, for a tenant that does not sign its requests.
Its work is one statement that commits on its own; routing, dependency resolution and response
models cost an API process more CPU than that statement. This layer answers such a request
itself, with the same checks in the same order as the route (key, rate limit, role, body,
statement), and hands every other request, and every request one of those checks refuses, to
the route untouched, body included. The route therefore remains the one place where anything
but the happy path is answered: problems, redeliveries, conflicts, signed submissions, uploads.

It sits inside the request boundary, so body caps, JSON shape checks and response headers
apply to it as to every route.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.core.errors import DomainError
from moderation.core.rate_limits import RateLimiter, RouteClass
from moderation.database import ASYNC_DATABASE_OUTAGES
from moderation.submissions import service
from moderation.submissions.schemas import SubmissionAccepted, SubmissionCreate
from moderation.tenants import service as tenants
from moderation.tenants.dependencies import RATE_LIMIT_COUNTED
from moderation.tenants.models import Role

PATH = "/v1/submissions"
_INGEST = frozenset({Role.ingest})


class IngestFastLane:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        content_type = authorization = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
        if (
            content_type is None
            or content_type.split(b";")[0].strip().lower() != b"application/json"
            or authorization is None
        ):
            await self.app(scope, receive, send)
            return
        principal = tenants.recently_authenticated(authorization.decode("latin-1"))
        if principal is None or not tenants.known_not_to_sign(principal.tenant_id):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        answered = body is not None and await self._answer(scope, send, principal, body)
        if not answered:
            await self.app(scope, replay, send)

    async def _answer(
        self, scope: Scope, send: Send, principal: tenants.Principal, body: bytes
    ) -> bool:
        """Store and answer the submission; False hands it to the route instead."""
        state = scope["app"].state
        limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
        try:
            if limiter is not None:
                # A refusal here is counted again by the route, which answers it; a request
                # counted here and handed over anyway (a redelivery) is not counted twice.
                limiter.check(RouteClass.ingest, str(principal.key_id))
                scope.setdefault("state", {})[RATE_LIMIT_COUNTED] = True
            tenants.require_role(principal, _INGEST)
            parsed = SubmissionCreate.model_validate_json(body)
            new = service.new_submission_from_json(parsed, state.settings)
        except (DomainError, ValidationError):
            return False
        if not service.ingests_without_session(new):
            return False
        try:
            stored = await service.ingest_new(state.ingest_pool, principal, new, state.settings)
        except DomainError:
            return False
        except ASYNC_DATABASE_OUTAGES:
            return False
        if stored is None:
            return False
        content = (
            SubmissionAccepted(id=stored.id, external_id=stored.external_id, status=stored.status)
            .model_dump_json()
            .encode()
        )
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"location", f"{PATH}/{stored.id}".encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        return True


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The request's messages as received, and its body: None past the size parsed on the event
    loop (larger bodies are the route's, which parses them off it), or when the client went
    away; the route reads on from where this stopped."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > service.PARSE_ON_LOOP_MAX_BYTES:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)
