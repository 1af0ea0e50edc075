"""A loopback image server for throughput runs: photos, screenshots and icons made up front.

Every image is generated before the server says it is ready, so serving costs only a socket
write. `GET /img/{kind}/{n}` returns image n of a kind; kinds with `distinct` set give every n
its own picture, the others cycle through a small pool (making a dozen 12-megapixel JPEGs takes
seconds; hundreds would take minutes).

    python -m benchmarks.image_server --port 8002 --count 600
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass

import uvicorn
from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True)
class Kind:
    name: str
    width: int
    height: int
    fmt: str
    distinct: bool = False


KINDS = {
    kind.name: kind
    for kind in (
        Kind("vga", 640, 480, "JPEG", distinct=True),
        Kind("phone", 4032, 3024, "JPEG"),
        Kind("screenshot", 1920, 1080, "PNG"),
        Kind("portrait", 1080, 1350, "JPEG"),
        Kind("meme", 512, 512, "JPEG"),
        Kind("icon", 64, 64, "PNG"),
    )
}
# The realistic mix: what a photo-sharing upload stream looks like, in equal parts.
REALISTIC = ("phone", "screenshot", "portrait", "meme", "icon")
POOL = 6


def make_image(kind: Kind, seed: int) -> bytes:
    """Texture that compresses like a photo (noise over gradients), different for every seed."""
    noise = Image.effect_noise((kind.width, kind.height), 24 + seed % 17)
    gradient = Image.linear_gradient("L").resize((kind.width, kind.height))
    shade = Image.new("L", (kind.width, kind.height), (seed * 53) % 256)
    image = Image.merge("RGB", (noise, gradient, shade))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x = (seed * 97 + i * 131) % max(1, kind.width - kind.width // 5)
        y = (seed * 61 + i * 89) % max(1, kind.height - kind.height // 5)
        color = ((seed * 29 + i * 70) % 256, (seed * 7 + i * 40) % 256, (i * 90) % 256)
        draw.rectangle((x, y, x + kind.width // 5, y + kind.height // 5), fill=color)
    buffer = io.BytesIO()
    if kind.fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=85)
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def build_library(count: int, kinds: list[str]) -> dict[tuple[str, int], bytes]:
    library: dict[tuple[str, int], bytes] = {}
    for name in kinds:
        kind = KINDS[name]
        for seed in range(count if kind.distinct else POOL):
            library[(name, seed)] = make_image(kind, seed)
    return library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=600, help="distinct images per distinct kind")
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    library = build_library(args.count, args.kinds.split(","))

    async def serve(request: Request) -> Response:
        name, n = request.path_params["kind"], int(request.path_params["n"])
        kind = KINDS.get(name)
        if kind is None:
            return Response(status_code=404)
        data = library.get((name, n if kind.distinct else n % POOL))
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type=f"image/{kind.fmt.lower()}")

    async def ready(_: Request) -> Response:
        return Response("ready")

    app = Starlette(routes=[Route("/img/{kind}/{n:int}", serve), Route("/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
