"""A load double for an OpenAI-compatible Qwen-VL server: fixed latency, a concurrency cap, a log.

Not a model and not a test fake: it answers every chat completion with a valid verdict after a
fixed delay, holds at most `--max-concurrency` calls in service at once (the rest wait, as on a
GPU server whose batch is full), and writes one JSON line per call with what a throughput study
needs: when it arrived and was answered, the image sizes it received and the visual tokens they
cost, and how many leading prompt bytes it shared with the call before (the part a server's
prefix cache reuses). Tokens are counted as a Qwen-VL server counts them: it resizes whatever it
receives with its own smart_resize (sides rounded to the unit, scaled into its default pixel
range), so an image sent at any size costs what the server's grid holds.

    python -m benchmarks.model_double --port 8001 --latency-ms 500 --max-concurrency 32 \\
        --log /tmp/model.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import math
import time
from typing import Any

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SAFE = json.dumps(
    {"rating": "safe", "confidence": 0.97, "violations": [], "rationale": "Nothing harmful."}
)


# Qwen2.5-VL's processor defaults, min_pixels 3136 and max_pixels 12845056, in tokens.
SERVER_MIN_TOKENS = 4
SERVER_MAX_TOKENS = 16384


def image_tokens(width: int, height: int, unit: int) -> int:
    """Qwen-VL's count for an image of any size, after the server's own smart_resize.

    qwen_vl_utils' arithmetic, written out here rather than imported from the service, so the
    double checks the service's prediction instead of repeating it.
    """
    min_pixels = SERVER_MIN_TOKENS * unit * unit
    max_pixels = SERVER_MAX_TOKENS * unit * unit
    h_bar = max(unit, round(height / unit) * unit)
    w_bar = max(unit, round(width / unit) * unit)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(unit, math.floor(height / beta / unit) * unit)
        w_bar = max(unit, math.floor(width / beta / unit) * unit)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / unit) * unit
        w_bar = math.ceil(width * beta / unit) * unit
    return (h_bar // unit) * (w_bar // unit)


def _common_prefix(a: bytes, b: bytes) -> int:
    limit = min(len(a), len(b))
    if a[:limit] == b[:limit]:
        return limit
    low, high = 0, limit
    while low < high:  # binary search on slices: fast in C, no per-byte loop in Python
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


class ModelDouble:
    def __init__(self, latency_s: float, max_concurrency: int, unit: int, log_path: str) -> None:
        self.latency_s = latency_s
        self.slots = asyncio.Semaphore(max_concurrency)
        self.unit = unit
        self.log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the server
        self.previous_prefix = b""
        self.in_service = 0
        self.peak_in_service = 0

    def describe(self, body: dict[str, Any]) -> dict[str, Any]:
        images: list[dict[str, int]] = []
        text_parts: list[str] = []
        prefix_parts: list[bytes] = []
        for message in body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                prefix_parts.append(content.encode())
                continue
            for part in content or []:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    raw = base64.b64decode(url.partition(",")[2])
                    with Image.open(io.BytesIO(raw)) as image:
                        width, height = image.size
                    images.append(
                        {
                            "width": width,
                            "height": height,
                            "bytes": len(raw),
                            "tokens": image_tokens(width, height, self.unit),
                        }
                    )
                    # A server's prefix cache keys an image by its content: two different
                    # images part ways at the image, however alike their encodings begin.
                    prefix_parts.append(f"<image {hashlib.sha256(raw).hexdigest()}>".encode())
                elif part.get("type") == "text":
                    text_parts.append(part["text"])
                    prefix_parts.append(part["text"].encode())
        prompt = b"\n".join(prefix_parts)
        shared = _common_prefix(prompt, self.previous_prefix)
        self.previous_prefix = prompt
        return {
            "images": images,
            "text": "\n".join(text_parts)[-400:],
            "prompt_bytes": len(prompt),
            "shared_prefix_bytes": shared,
        }

    async def chat(self, request: Request) -> JSONResponse:
        arrived = time.time()
        body = await request.json()
        record = self.describe(body)
        async with self.slots:
            started = time.time()
            self.in_service += 1
            self.peak_in_service = max(self.peak_in_service, self.in_service)
            try:
                await asyncio.sleep(self.latency_s)
            finally:
                self.in_service -= 1
        visual = sum(image["tokens"] for image in record["images"])
        record |= {"arrived": arrived, "started": started, "answered": time.time()}
        self.log.write(json.dumps(record) + "\n")
        return JSONResponse(
            {
                "id": f"chatcmpl-{int(arrived * 1e6)}",
                "object": "chat.completion",
                "created": int(arrived),
                "model": body.get("model", "double"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": SAFE},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": visual + record["prompt_bytes"] // 4,
                    "completion_tokens": 24,
                    "total_tokens": visual + record["prompt_bytes"] // 4 + 24,
                },
            }
        )

    async def models(self, _: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "double", "object": "model"}]})

    async def stats(self, _: Request) -> JSONResponse:
        return JSONResponse({"peak_in_service": self.peak_in_service})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=500)
    parser.add_argument("--max-concurrency", type=int, default=32)
    parser.add_argument("--unit", type=int, default=28, help="pixels per visual token side")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    double = ModelDouble(args.latency_ms / 1000, args.max_concurrency, args.unit, args.log)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", double.chat, methods=["POST"]),
            Route("/v1/models", double.models),
            Route("/stats", double.stats),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
