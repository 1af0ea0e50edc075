"""A loopback receiver of callbacks that checks every signature with `standardwebhooks`.

Each test opens an endpoint of its own (a path), tells it the tenant's secret and what to
answer, attempt after attempt, and then reads what arrived.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# An answer: a status, or a status with extra headers (a redirect's Location, say).
Answer = int | tuple[int, dict[str, str]]


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    verified: bool
    # Which of the endpoint's secrets each signature of the header matched (None: none).
    signatures: list[int | None]

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Endpoint:
    path: str
    url: str
    secrets: list[str]
    answers: list[Answer]
    received: list[Received] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.path} got {len(self.received)} callbacks, expected {count}"
                )
            time.sleep(0.05)
        return list(self.received)


class CallbackReceiver:
    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        endpoints = self.endpoints

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                endpoint = endpoints.get(self.path)
                if endpoint is None:
                    self.send_error(404)
                    return
                headers = {name.lower(): value for name, value in self.headers.items()}
                endpoint.received.append(_check(endpoint, headers, body))
                answer = endpoint.answers[min(len(endpoint.received), len(endpoint.answers)) - 1]
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                reply = json.dumps({"seen": len(endpoint.received)}).encode()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def endpoint(self, secrets: list[str], answers: list[Answer] | None = None) -> Endpoint:
        path = f"/hooks/{uuid.uuid4().hex}"
        endpoint = Endpoint(
            path=path,
            url=f"http://127.0.0.1:{self.port}{path}",
            secrets=secrets,
            answers=answers or [204],
        )
        self.endpoints[path] = endpoint
        return endpoint

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _check(endpoint: Endpoint, headers: dict[str, str], body: bytes) -> Received:
    verified = False
    for secret in endpoint.secrets:
        try:
            Webhook(secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            pass
    matches: list[int | None] = []
    for entry in headers.get("webhook-signature", "").split(" "):
        single = {**headers, "webhook-signature": entry}
        matched = None
        for position, secret in enumerate(endpoint.secrets):
            try:
                Webhook(secret).verify(body, single)
                matched = position
                break
            except WebhookVerificationError:
                continue
        matches.append(matched)
    return Received(
        at=time.monotonic(), headers=headers, body=body, verified=verified, signatures=matches
    )
