"""A cap on request bodies, enforced while they stream in.

Multipart files are spooled to disk by the form parser before a handler sees them, so a size
check in the handler would come after the disk filled up; this one stops reading at the cap.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation.core.errors import PayloadTooLarge


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._detail())
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        from moderation.core.problems import problem_response

        response = problem_response(
            413, PayloadTooLarge.title, self._detail(), type_slug=PayloadTooLarge.type_slug
        )
        await response(scope, self._drain, send)

    @staticmethod
    async def _drain() -> Message:
        return {"type": "http.disconnect"}
