"""The decode budget is only a bound if each decode's estimate is one: measured in a fresh process,
the memory a decode adds stays under the cost it reserved."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

MB = 1024 * 1024

# VmHWM (the peak resident size) belongs to the process image, unlike ru_maxrss, which Linux
# carries over from the forking parent; writing 5 to clear_refs starts it again from now.
MEASURE = """
import json, sys
from moderation.media.budget import DecodeBudget
from moderation.media.decode import DecodeLimits, normalize_media

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)

data = open(sys.argv[1], "rb").read()
limits = DecodeLimits(
    max_bytes=len(data) + 1, max_pixels=100_000_000, max_decoded_bytes=1 << 30,
    unit=28, max_tokens=1024, max_frames=8, frame_scan_max_pixels=1 << 40,
)
budget = DecodeBudget(1 << 40, small_bytes=0)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
media = normalize_media(data, limits, budget=budget)
print(json.dumps({"added": status("VmHWM") - before, "reserved": budget.usage().peak_in_use,
                  "frames": len(media.frames)}))
"""


def gradient(size: tuple[int, int], mode: str) -> Image.Image:
    grey = Image.linear_gradient("L").resize(size)
    bands = [grey, grey.transpose(Image.Transpose.ROTATE_90).resize(size), grey, grey]
    return Image.merge(mode, bands[: len(mode)])


def encoded(image_format: str, frames: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    extra: dict[str, object] = (
        {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    )
    if image_format == "WEBP":
        extra["quality"] = 30
    frames[0].save(buffer, format=image_format, **extra)
    return buffer.getvalue()


CASES = {
    "rgba-png": lambda: encoded("PNG", [gradient((2500, 2500), "RGBA")]),
    "rgb-webp": lambda: encoded("WEBP", [gradient((1600, 1600), "RGB")]),
    "animated-webp": lambda: encoded(
        "WEBP", [gradient((900, 900), "RGBA").rotate(10 * n) for n in range(10)]
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_decode_adds_no_more_memory_than_it_reserved(case: str, tmp_path: Path) -> None:
    path = tmp_path / case
    path.write_bytes(CASES[case]())

    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    measured = json.loads(run.stdout)

    print(f"{case}: added {measured['added'] // MB} MiB, reserved {measured['reserved'] // MB} MiB")
    assert measured["added"] <= measured["reserved"]
    # An estimate far above the truth would make decodes wait for nothing.
    assert measured["reserved"] <= 3 * measured["added"] + 48 * MB
