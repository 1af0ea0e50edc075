"""A real HTTP server speaking the OpenAI chat API, standing in for a Qwen-VL server.

Only the model is faked, and it is faked at the HTTP level, so the real `openai` client, its
timeouts and our retry layer all run in tests. Tests script replies per marker (a string in the
caption); load tests run it standalone, answering from a fixed mix of verdicts:

    python -m tests.fakes.fake_vlm --port 8001 --latency-ms 200 --mix safe=0.7,block=0.2,review=0.1
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import itertools
import json
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

from moderation.policies.schemas import CategoryExample, PolicyCategory, PolicyDocument
from moderation.vlm.verdict import ModelVerdict

Wrap = Literal["plain", "fenced", "think", "think_close_only", "prose"]

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# Pixels per side of one visual token of that model.
QWEN25_UNIT = 28
# The default policy's category ids: every verdict this fake makes up uses one of them.
CATEGORY_IDS = (
    "sexual",
    "child_safety",
    "violence",
    "hate",
    "harassment",
    "self_harm",
    "weapons_drugs",
    "scam_spam",
)


def policy_document(*, slug: str = "default", version: int = 1) -> PolicyDocument:
    """A small rubric with the default policy's category ids, so the fake's verdicts fit it."""
    categories = [
        PolicyCategory(
            id=category_id,
            name=category_id.replace("_", " ").capitalize(),
            definition=f"Content that depicts or promotes {category_id.replace('_', ' ')}.",
            allowed=["News reporting and education about it."],
            examples=[
                CategoryExample(content=f"A graphic {category_id} scene.", severity=3),
                CategoryExample(content=f"A documentary still about {category_id}."),
            ],
            block_at=1 if category_id == "child_safety" else 3,
        )
        for category_id in CATEGORY_IDS
    ]
    return PolicyDocument(
        slug=slug,
        version=version,
        title="Default community policy",
        instructions="Judge what the upload shows and says, in context.",
        categories=categories,
    )


# Replies ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerdictReply:
    """A 200 whose content is a verdict object, wrapped the way real servers wrap it."""

    verdict: Mapping[str, Any]
    wrap: Wrap = "plain"
    finish_reason: str = "stop"
    # Log-probability of the rating token, sent when the request asks for logprobs.
    rating_logprob: float = -0.05

    @property
    def content(self) -> str:
        body = json.dumps(self.verdict)
        match self.wrap:
            case "plain":
                return body
            case "fenced":
                return f"```json\n{body}\n```"
            case "think":
                return f"<think>\nThe caption and image look ordinary.\n</think>\n\n{body}"
            case "think_close_only":
                return f"Let me look at the image first. It seems fine.\n</think>\n\n{body}"
            case "prose":
                return f"Here is my assessment of the upload.\n\n{body}\n\nLet me know if needed."


@dataclass(frozen=True)
class RawReply:
    """A 200 with exactly this content, e.g. an object cut off with finish_reason "length"."""

    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class ErrorReply:
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DelayedReply:
    """Sleeps before answering, to make the client's timeout fire."""

    seconds: float
    then: Reply


@dataclass(frozen=True)
class SeesColour:
    """Answers like a model that recognises one kind of violation by its colour.

    Every image of the request is decoded; the first whose average colour is within `tolerance`
    of `colour` is named as the evidence of an unsafe verdict. Without one, `otherwise` answers.
    Tests paint a violent frame in that colour to check which frames the model was shown.
    """

    colour: tuple[int, int, int]
    category: str = "violence"
    severity: int = 3
    confidence: float = 0.95
    tolerance: int = 40
    otherwise: VerdictReply = field(
        default_factory=lambda: VerdictReply(verdict=safe_verdict(0.97))
    )

    def reply_to(self, body: dict[str, Any]) -> VerdictReply:
        for index, colour in enumerate(_image_colours(body)):
            if all(abs(a - b) <= self.tolerance for a, b in zip(colour, self.colour, strict=True)):
                return VerdictReply(
                    verdict=unsafe_verdict(
                        self.category, self.severity, self.confidence, image=index
                    )
                )
        return self.otherwise


Reply = VerdictReply | RawReply | ErrorReply | DelayedReply | SeesColour


def safe_verdict(confidence: float = 0.97) -> dict[str, Any]:
    return {
        "rating": "safe",
        "confidence": confidence,
        "violations": [],
        "rationale": "Nothing in the upload breaks the policy.",
    }


def unsafe_verdict(
    category: str,
    severity: int,
    confidence: float,
    *,
    source: str = "image",
    image: int | None = 0,
) -> dict[str, Any]:
    violation: dict[str, Any] = {
        "category": category,
        "severity": severity,
        "confidence": confidence,
        "source": source,
        "rationale": f"The upload shows {category} content.",
    }
    if image is not None:
        violation["image"] = image
    return {
        "rating": "unsafe",
        "confidence": confidence,
        "violations": [violation],
        "rationale": f"The upload breaks the {category} rules.",
    }


def verdict(
    obj: ModelVerdict | Mapping[str, Any], *, wrap: Wrap = "plain", rating_logprob: float = -0.05
) -> VerdictReply:
    if isinstance(obj, ModelVerdict):
        obj = obj.model_dump(mode="json", exclude_none=True)
    return VerdictReply(verdict=dict(obj), wrap=wrap, rating_logprob=rating_logprob)


def raw(text: str, finish_reason: str = "stop") -> RawReply:
    return RawReply(text=text, finish_reason=finish_reason)


def error(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> ErrorReply:
    if body is None:
        body = {"error": {"message": f"fake error {status}", "type": "server_error", "code": None}}
    return ErrorReply(status=status, body=body, headers=dict(headers or {}))


def delay(seconds: float, then: Reply | None = None) -> DelayedReply:
    return DelayedReply(seconds=seconds, then=then if then is not None else verdict(safe_verdict()))


DATA_INSPECTION_FAILED = error(
    400,
    {
        "error": {
            "code": "data_inspection_failed",
            "message": "Input data may contain inappropriate content.",
            "type": "data_inspection_failed",
        }
    },
)

# What the standalone server answers for each name of --mix. No image index: the same reply
# must be valid for text-only submissions too.
MIX_REPLIES: dict[str, Reply] = {
    "safe": verdict(safe_verdict(0.97)),
    "block": verdict(unsafe_verdict("violence", 3, 0.95, source="both", image=None)),
    "review": verdict(unsafe_verdict("harassment", 1, 0.5, source="text", image=None)),
}


# The server ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    body: dict[str, Any]
    user_text: str
    marker: str | None
    """The scripted marker that chose the reply, if any."""

    @property
    def has_response_format(self) -> bool:
        return "response_format" in self.body


class _Script:
    def __init__(self, replies: Sequence[Reply]) -> None:
        if not replies:
            raise ValueError("a script needs at least one reply")
        self._replies = list(replies)
        self._next = 0

    def take(self) -> Reply:
        reply = self._replies[min(self._next, len(self._replies) - 1)]
        self._next += 1
        return reply


class FakeVLMServer:
    """`POST /v1/chat/completions` and `GET /v1/models` on a loopback port, thread per request."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_s: float = 0.0,
        mix: Mapping[str, float] | None = None,
    ) -> None:
        if mix is not None:
            unknown = set(mix) - set(MIX_REPLIES)
            if unknown or any(share < 0 for share in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(f"mix takes non-negative shares of {sorted(MIX_REPLIES)}")
        self.default_reply: Reply = verdict(safe_verdict(0.97))
        self._host = host
        self._port = port
        self._latency_s = latency_s
        self._mix = dict(mix) if mix else None
        self._lock = threading.Lock()
        self._scripts: dict[str, _Script] = {}
        self._received: deque[ReceivedRequest] = deque(maxlen=10_000)
        self._counts = {"requests": 0, "rejected": 0, "with_response_format": 0}
        self._ids = itertools.count(1)
        self._httpd: _FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> FakeVLMServer:
        httpd = _FakeHTTPServer((self._host, self._port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        # A restart listens on the same port, so clients configured with it find it again.
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections: afterwards the port refuses connections
        until `start()` listens on it again (outage tests stop and start one server)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.drop_connections()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeVLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    # scripting

    def script(self, marker: str, replies: Sequence[Reply]) -> None:
        """Answer requests whose user text contains `marker` with `replies`, in order.

        The last reply repeats once the sequence is used up.
        """
        with self._lock:
            self._scripts[marker] = _Script(replies)

    def requests_for(self, marker: str) -> list[dict[str, Any]]:
        """Bodies of the requests whose user text contains `marker`, scripted or not."""
        with self._lock:
            return [request.body for request in self._received if marker in request.user_text]

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._received)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._received.clear()
            self._counts = dict.fromkeys(self._counts, 0)
        self.default_reply = verdict(safe_verdict(0.97))

    # answering (called from the request threads)

    def answer(self, body: Any) -> tuple[int, Any, Mapping[str, str]]:
        """Status, JSON body and headers for one request to `POST /v1/chat/completions`."""
        problem = _check_chat_request(body)
        if problem is not None:
            with self._lock:
                self._counts["rejected"] += 1
            return 400, _error_body(problem, "invalid_request_error"), {}
        reply = self._choose_reply(body)
        if self._latency_s:
            time.sleep(self._latency_s)
        while isinstance(reply, DelayedReply):
            time.sleep(reply.seconds)
            reply = reply.then
        if isinstance(reply, SeesColour):
            reply = reply.reply_to(body)
        match reply:
            case ErrorReply(status=status, body=error_body, headers=headers):
                return status, error_body, headers
            case VerdictReply():
                completion = self._completion(
                    body, reply.content, reply.finish_reason, reply.rating_logprob
                )
                return 200, completion, {}
            case RawReply(text=text, finish_reason=finish_reason):
                return 200, self._completion(body, text, finish_reason), {}

    def _choose_reply(self, body: dict[str, Any]) -> Reply:
        """Markers are looked for in every user message, not only the last one, so a re-ask
        (whose last message is the client's correction) stays on its conversation's script."""
        text = _user_text(body)
        with self._lock:
            self._counts["requests"] += 1
            if "response_format" in body:
                self._counts["with_response_format"] += 1
            marker = next((marker for marker in self._scripts if marker in text), None)
            # Standalone load tests send images of megabytes: keep bodies only for scripts.
            kept = body if marker is not None or self._mix is None else {"model": body["model"]}
            self._received.append(ReceivedRequest(body=kept, user_text=text, marker=marker))
            if marker is not None:
                return self._scripts[marker].take()
        if self._mix is not None:
            return MIX_REPLIES[_pick_from_mix(self._mix, body)]
        return self.default_reply

    def _completion(
        self,
        body: dict[str, Any],
        content: str,
        finish_reason: str,
        rating_logprob: float = -0.05,
    ) -> dict[str, Any]:
        prompt_tokens = _estimate_prompt_tokens(body)
        completion_tokens = max(1, len(content) // 4)
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                    "logprobs": _token_logprobs(content, rating_logprob)
                    if body.get("logprobs")
                    else None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _FakeHTTPServer(ThreadingHTTPServer):
    fake: FakeVLMServer
    daemon_threads = True
    request_queue_size = 256  # load tests open many connections at once

    def server_activate(self) -> None:
        super().server_activate()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection, keep-alive ones included, as a server that dies would."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out has hung up before a delayed reply: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError | OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects
    # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to each.
    disable_nagle_algorithm = True
    timeout = 60
    server: _FakeHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "fake"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif self.path.rstrip("/") == "/fake/stats":
            self._send_json(200, fake.stats())
        else:
            self._send_json(404, _error_body(f"no route {self.path}", "not_found"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, _error_body(f"no route {self.path}", "not_found"))
            return
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        self._send_json(*self.server.fake.answer(body))

    def _send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        if isinstance(body, str | bytes):
            data = body.encode() if isinstance(body, str) else body
            content_type = "text/plain; charset=utf-8"
        else:
            data = json.dumps(body).encode()
            content_type = "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError:
            self.close_connection = True


_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


def _token_logprobs(content: str, rating_logprob: float) -> dict[str, Any]:
    """Word-and-punctuation tokens, as a real tokenizer roughly splits JSON; the first token of
    the rating value carries `rating_logprob`, the rest are near-certain."""
    value_start = re.search(r'"rating"\s*:\s*"', content)
    entries, position = [], 0
    for token in _TOKEN.findall(content):
        is_rating = value_start is not None and position == value_start.end()
        logprob = rating_logprob if is_rating else -0.001
        entries.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode()),
                "top_logprobs": [{"token": token, "logprob": logprob, "bytes": None}],
            }
        )
        position += len(token)
    return {"content": entries}


def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _check_chat_request(body: Any) -> str | None:
    """What a real server would reject; None when the request looks like a chat request."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for index, message in enumerate(messages):
        problem = _check_message(message)
        if problem is not None:
            return f"messages[{index}]: {problem}"
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            return "response_format must be an object"
        kind = response_format.get("type")
        if kind not in {"text", "json_object", "json_schema"}:
            return f"unknown response_format type {kind!r}"
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                return "response_format json_schema needs json_schema.schema"
        # DashScope's rule, kept here so a prompt that loses the word is caught in tests.
        if kind == "json_object" and "json" not in json.dumps(messages).lower():
            return "'messages' must contain the word 'json' to use 'response_format' json_object"
    return None


def _check_message(message: Any) -> str | None:
    if not isinstance(message, dict):
        return "must be an object"
    if message.get("role") not in {"system", "user", "assistant", "tool", "developer"}:
        return f"unknown role {message.get('role')!r}"
    content = message.get("content")
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return "content must be a string or a list of parts"
    for part in content:
        if not isinstance(part, dict):
            return "content parts must be objects"
        if part.get("type") == "text":
            if not isinstance(part.get("text"), str):
                return "a text part needs text"
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not url.startswith(("data:image/", "http")):
                return "an image_url part needs a data:image/ or http(s) url"
        else:
            return f"unknown content part type {part.get('type')!r}"
    return None


def _user_text(body: dict[str, Any]) -> str:
    texts: list[str] = []
    for message in body["messages"]:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(part["text"] for part in content if part.get("type") == "text")
    return "\n".join(texts)


def _image_colours(body: dict[str, Any]) -> list[tuple[int, int, int]]:
    """The average colour of each image of the request, in the order the model sees them."""
    from PIL import Image, ImageStat

    colours = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") != "image_url":
                continue
            _, _, encoded = part["image_url"]["url"].partition(";base64,")
            with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
                mean = ImageStat.Stat(image.convert("RGB")).mean
            colours.append((round(mean[0]), round(mean[1]), round(mean[2])))
    return colours


def _estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough four characters a token for text; images as a Qwen2.5-VL server counts them,
    from the size it receives."""
    characters = 0
    visual = 0
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, str):
            characters += len(content)
            continue
        for part in content:
            if part.get("type") == "text":
                characters += len(part["text"])
            elif part.get("type") == "image_url":
                visual += _visual_tokens(part["image_url"]["url"])
    return characters // 4 + visual


def _visual_tokens(url: str) -> int:
    from PIL import Image

    from benchmarks.model_double import image_tokens

    _, _, encoded = url.partition(";base64,")
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            width, height = image.size
    except Exception:
        return 0
    return image_tokens(width, height, QWEN25_UNIT)


def _pick_from_mix(mix: Mapping[str, float], body: dict[str, Any]) -> str:
    """The same request always gets the same answer, so load-test runs are comparable."""
    canonical = json.dumps(body["messages"], sort_keys=True).encode()
    point = int.from_bytes(hashlib.sha256(canonical).digest()[:8], "big") / 2**64
    total = sum(mix.values())
    cumulative = 0.0
    for name, share in mix.items():
        cumulative += share / total
        if point < cumulative:
            return name
    return next(reversed(list(mix)))


def _parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, _, share = item.partition("=")
        mix[name.strip()] = float(share)
    return mix


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible VLM for load tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--mix", type=_parse_mix, default={"safe": 1.0})
    args = parser.parse_args(argv)
    try:
        server = FakeVLMServer(
            args.host, args.port, latency_s=args.latency_ms / 1000, mix=args.mix
        ).start()
    except (ValueError, OSError) as exc:
        print(f"fake_vlm: {exc}", file=sys.stderr)
        return 1
    print(f"fake VLM listening on {server.base_url} (mix {args.mix})", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print(json.dumps(server.stats()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
