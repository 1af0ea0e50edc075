"""Animated and multi-page uploads end to end: a harmless first frame hides nothing.

The fake model plays one that recognises violence by colour: a red image is violent. Each file
opens on a grey frame and turns red later; only a pipeline that shows the model later frames can
block it.
"""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image, ImageStat

from tests.factories import TenantKeys, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer

GREY = (128, 128, 128)
RED = (230, 20, 20)


def animated(image_format: str, colours: list[tuple[int, int, int]]) -> bytes:
    frames = []
    for index, colour in enumerate(colours):
        frame = Image.new("RGB", (120, 90), colour)
        frame.putpixel((index, 0), (index * 9 % 256, 0, 0))  # keep every frame distinct
        frames.append(frame)
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    if image_format != "TIFF":
        options["duration"] = 80
    if image_format == "WEBP":
        options["lossless"] = True
    buffer = io.BytesIO()
    frames[0].save(buffer, format=image_format, **options)
    return buffer.getvalue()


def submit_animation(
    client: httpx.Client, tenant: TenantKeys, fake_vlm: FakeVLMServer, data: bytes
) -> tuple[str, dict[str, object]]:
    case = marker()
    fake_vlm.script(case, [fake.SeesColour(RED)])
    response = client.post(
        "/v1/submissions",
        json={
            "external_id": case,
            "text": f"my animation {case}",
            "images": [{"data": base64.b64encode(data).decode()}],
        },
        headers=tenant.headers(),
    )
    assert response.status_code == 202, response.text
    return case, wait_for_outcome(client, response.json()["id"], tenant.headers())


@pytest.mark.parametrize(
    ("image_format", "mime"),
    [
        ("GIF", "image/gif"),
        ("PNG", "image/png"),  # APNG
        ("WEBP", "image/webp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_a_violent_later_frame_blocks_the_upload(client, tenant, fake_vlm, image_format, mime):
    colours = [GREY] * 12
    colours[9] = RED

    case, result = submit_animation(client, tenant, fake_vlm, animated(image_format, colours))

    assert result["decision"]["action"] == "block", result["decision"]
    [category] = result["decision"]["categories"]
    assert (category["category"], category["position"], category["frame"]) == ("violence", 0, 9)
    [verdict] = result["verdicts"]
    [violation] = verdict["violations"]
    assert (violation["position"], violation["frame"]) == (0, 9)
    [image] = result["images"]
    assert image["source_mime"] == mime and image["frame_count"] == 12
    shown = [frame["frame"] for frame in image["frames"]]
    assert shown[0] == 0 and 9 in shown and len(shown) <= 8
    assert sum(frame["tokens"] for frame in image["frames"]) <= 1024
    if image_format != "TIFF":
        assert image["frames"][shown.index(9)]["time_ms"] == 9 * 80

    # The model was told which image is which frame, and saw more than the first frame.
    [request] = fake_vlm.requests_for(case)
    parts = request["messages"][-1]["content"]
    assert sum(part["type"] == "image_url" for part in parts) == len(shown)
    labels = [part["text"] for part in parts if part["type"] == "text"]
    assert "frame 9 of 12 numbered from 0" in "\n".join(labels)

    # The reviewer sees the evidence frame the verdict names.
    evidence = client.get(
        f"/v1/submissions/{result['id']}/images/0/frames/9", headers=tenant.headers("reviewer")
    )
    assert evidence.status_code == 200
    assert evidence.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(evidence.content)) as picture:
        red, green, blue = ImageStat.Stat(picture.convert("RGB")).mean
    assert red > 180 and green < 80 and blue < 80


def test_the_same_animation_without_the_violent_frame_is_allowed(client, tenant, fake_vlm):
    _, result = submit_animation(client, tenant, fake_vlm, animated("GIF", [GREY] * 12))

    assert result["decision"]["action"] == "allow"
    assert len(result["images"][0]["frames"]) >= 2


def test_frame_routes_refuse_frames_that_were_not_kept(client, tenant, fake_vlm):
    colours = [GREY] * 30
    colours[20] = RED
    _, result = submit_animation(client, tenant, fake_vlm, animated("GIF", colours))
    kept = {frame["frame"] for frame in result["images"][0]["frames"]}
    missing = next(index for index in range(30) if index not in kept)
    reviewer = tenant.headers("reviewer")
    base = f"/v1/submissions/{result['id']}/images/0/frames"

    assert client.get(f"{base}/{missing}", headers=reviewer).status_code == 404
    assert client.get(f"{base}/0", headers=reviewer).status_code == 200
    assert client.get(f"{base}/99999999999", headers=reviewer).status_code == 422
    assert client.get(f"{base}/0", headers=tenant.headers("ingest")).status_code == 403
