"""Caps on request bodies, by content type, enforced while they stream in.

Each kind of body gets the cap its largest legitimate use needs: JSON carries inline images as
base64, multipart carries them as files, a urlencoded form carries only text, and anything else
is refused by every route, so none of it is worth reading.

Multipart files are spooled to disk by the form parser before a handler sees them, so a size
check in the handler would come after the disk filled up; this one stops reading at the cap.
JSON bodies are read whole (they are parsed whole anyway) and their shape is checked before any
parser sees them: see moderation.core.json_limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.core.errors import DomainError, PayloadTooLarge
from moderation.core.json_limits import check_json_shape


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int
    multipart_bytes: int
    form_bytes: int = 1024 * 1024
    other_bytes: int = 64 * 1024

    def cap_for(self, content_type: str) -> int:
        if is_json(content_type):
            return self.json_bytes
        if content_type == "multipart/form-data":
            return self.multipart_bytes
        if content_type == "application/x-www-form-urlencoded":
            return self.form_bytes
        return self.other_bytes


def media_type(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.limit(scope, receive, send)

    async def limit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an HTTP request on within its cap, or answer 413 (or 422 for a JSON shape)."""
        headers = scope.get("headers", [])
        content_type = media_type(headers)
        cap = self.limits.cap_for(content_type)
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > cap:
                await self._refuse(scope, send, PayloadTooLarge(self._detail(content_type, cap)))
                return
        if is_json(content_type) and scope.get("method") in ("POST", "PUT", "PATCH"):
            await self._json(scope, receive, send, content_type, cap)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise PayloadTooLarge(self._detail(content_type, cap))
            return message

        await self.app(scope, counting_receive, send)

    async def _json(
        self, scope: Scope, receive: Receive, send: Send, content_type: str, cap: int
    ) -> None:
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > cap:
                await self._refuse(scope, send, PayloadTooLarge(self._detail(content_type, cap)))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        try:
            check_json_shape(body)
        except DomainError as exc:
            await self._refuse(scope, send, exc)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _detail(content_type: str, cap: int) -> str:
        kind = content_type or "a body without a content type"
        return f"request body ({kind}) is larger than {cap} bytes"

    async def _refuse(self, scope: Scope, send: Send, error: DomainError) -> None:
        from moderation.core.problems import problem_response

        response = problem_response(
            error.status, error.title, error.detail, type_slug=error.type_slug, errors=error.errors
        )
        await response(scope, self._drain, send)

    @staticmethod
    async def _drain() -> Message:
        return {"type": "http.disconnect"}
