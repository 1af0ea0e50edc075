"""A JPEG that already fits the budget is sent as it is, stripped; everything else is rendered."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageDraw

from moderation.media.budget import DecodeBudget
from moderation.media.decode import DecodeLimits, NormalizedImage, normalize_media
from moderation.media.errors import ImageDecodeError
from moderation.media.jpeg import strip_metadata
from tests.media.test_decode import (
    MAX_BYTES,
    MAX_PIXELS,
    assert_clean_jpeg,
    encode,
    noise,
    normalize,
    server_tokens,
)
from tests.media.test_jpeg import SECRETS, pixels, segment, with_everything


def passed_through(result: NormalizedImage, original: bytes) -> bool:
    return result.data == strip_metadata(original)


def test_a_photo_that_fits_is_sent_as_it_is_without_its_metadata() -> None:
    original = with_everything(noise(640, 480))

    result = normalize(original)

    assert passed_through(result, original)
    assert_clean_jpeg(result)
    assert (result.width, result.height, result.tokens) == (640, 480, 23 * 17)
    assert pixels(result.data) == pixels(original)
    for secret in SECRETS:
        assert secret not in result.data


@pytest.mark.parametrize(
    ("size", "params"),
    [((640, 480), {"progressive": True}), ((300, 500), {}), ((1000, 700), {})],
)
def test_baseline_progressive_and_any_size_inside_the_budget_pass(
    size: tuple[int, int], params: dict[str, object]
) -> None:
    original = encode(noise(*size), "JPEG", **params)

    result = normalize(original)

    assert passed_through(result, original)
    assert (result.width, result.height) == size
    assert result.tokens == server_tokens(*size) <= 1024


def test_a_grey_photo_passes_as_grey() -> None:
    original = encode(noise(320, 240).convert("L"), "JPEG")

    result = normalize(original)

    assert passed_through(result, original)
    assert pixels(result.data)[0] == "L"


def test_an_explicit_upright_orientation_passes() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 1
    original = encode(noise(320, 240), "JPEG", exif=exif)

    assert passed_through(normalize(original), original)


def test_the_token_count_follows_the_unit() -> None:
    original = encode(noise(640, 480), "JPEG")

    result = normalize(original, unit=32)

    assert passed_through(result, original)
    assert result.tokens == 20 * 15 == server_tokens(640, 480, unit=32)


def adobe_ycbcr_jpeg() -> bytes:
    data = encode(noise(320, 240), "JPEG")
    adobe = segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 1))
    return data[:2] + adobe + data[2:]


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return encode(noise(320, 240), "JPEG", exif=exif)


def multi_picture_jpeg() -> bytes:
    return encode(noise(320, 240), "MPO", save_all=True, append_images=[noise(320, 240, 1)])


@pytest.mark.parametrize(
    ("data", "caps"),
    [
        (encode(noise(1920, 1080), "JPEG"), {}),
        (encode(noise(640, 480), "JPEG"), {"max_tokens": 256}),
        (encode(noise(40, 40), "JPEG"), {}),
        (encode(noise(640, 480), "PNG"), {}),
        (encode(noise(640, 480), "WEBP"), {}),
        (encode(noise(320, 240).convert("CMYK"), "JPEG"), {}),
        (adobe_ycbcr_jpeg(), {}),
        (rotated_jpeg(), {}),
        (multi_picture_jpeg(), {}),
    ],
    ids=[
        "needs-downscale",
        "above-a-smaller-budget",
        "needs-upscale",
        "png",
        "webp",
        "cmyk",
        "adobe",
        "exif-rotated",
        "mpo",
    ],
)
def test_everything_else_is_rendered_to_the_grid(data: bytes, caps: dict[str, int]) -> None:
    result = normalize(data, **caps)

    assert not passed_through(result, data)
    assert_clean_jpeg(result)
    assert result.width % 28 == 0 and result.height % 28 == 0
    assert pixels(result.data)[0] == "RGB"


@pytest.mark.parametrize("params", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_a_truncated_jpeg_that_would_fit_is_still_an_error(params: dict[str, object]) -> None:
    whole = encode(noise(640, 480), "JPEG", **params)

    for cut in (len(whole) // 2, len(whole) - 2):
        with pytest.raises(ImageDecodeError):
            normalize(whole[:cut])


FITTING_JPEG = encode(noise(160, 120), "JPEG")
FITTING_PROGRESSIVE_JPEG = encode(noise(160, 120), "JPEG", progressive=True)


def full_decode_fails(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            image.load()
    except Exception:
        return True
    return False


@settings(max_examples=150, deadline=None)
@given(
    original=st.sampled_from([FITTING_JPEG, FITTING_PROGRESSIVE_JPEG]),
    changes=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
    keep=st.floats(0.3, 1.0),
)
def test_a_jpeg_a_full_decode_refuses_is_refused_when_it_would_fit(
    original: bytes, changes: list[tuple[float, int]], keep: float
) -> None:
    """The check decode at 1/8 scale reads the whole entropy-coded stream: whatever breaks a
    decode at full size breaks it too."""
    scan = original.index(b"\xff\xda")
    data = bytearray(original)
    for where, value in changes:
        data[scan + int(where * (len(data) - scan - 1))] = value
    mutated = bytes(data[: max(scan, int(len(data) * keep))])

    if full_decode_fails(mutated):
        with pytest.raises(ImageDecodeError):
            normalize(mutated)


def bad_later_scan() -> bytes:
    """A progressive JPEG whose second scan asks for coefficients past the last one."""
    data = bytearray(FITTING_PROGRESSIVE_JPEG)
    first = data.index(b"\xff\xda")
    second = data.index(b"\xff\xda", first + 2)
    components = data[second + 4]
    data[second + 5 + 2 * components + 1] = 0x70
    return bytes(data)


def undefined_huffman_table() -> bytes:
    data = bytearray(FITTING_JPEG)
    data[data.index(b"\xff\xda") + 6] = 0x33
    return bytes(data)


@pytest.mark.parametrize(
    "data", [bad_later_scan(), undefined_huffman_table()], ids=["bad-scan", "undefined-table"]
)
def test_a_broken_jpeg_with_its_end_marker_is_still_an_error(data: bytes) -> None:
    assert strip_metadata(data) is not None and full_decode_fails(data)

    with pytest.raises(ImageDecodeError):
        normalize(data)


def test_the_check_decode_holds_a_share_of_the_decode_budget() -> None:
    limits = DecodeLimits(
        max_bytes=MAX_BYTES,
        max_pixels=MAX_PIXELS,
        max_decoded_bytes=MAX_PIXELS * 4,
        unit=28,
        max_tokens=1024,
    )

    with pytest.raises(ImageDecodeError, match="decode budget"):
        normalize_media(encode(noise(640, 480), "JPEG"), limits, budget=DecodeBudget(1024))


def plain_picture(width: int, height: int, seed: int) -> Image.Image:
    """Cheap to make at any size, and not flat: a few coloured blocks on a grey ground."""
    image = Image.new("RGB", (width, height), (seed % 256, 128, 200))
    draw = ImageDraw.Draw(image)
    for index in range(4):
        box = (width * index // 5, height * index // 7, width * (index + 1) // 4, height - 1)
        draw.rectangle(box, fill=((seed * 37 + index * 60) % 256, index * 50, 90))
    return image


@st.composite
def jpeg_sizes(draw: st.DrawFn) -> tuple[int, int]:
    width = draw(st.integers(min_value=1, max_value=1600))
    height = draw(st.integers(min_value=max(1, -(-width // 200)), max_value=min(1600, width * 200)))
    return width, height


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=jpeg_sizes(),
    unit=st.sampled_from([28, 32]),
    max_tokens=st.sampled_from([64, 256, 1024, 4096]),
    seed=st.integers(0, 255),
)
def test_the_predicted_tokens_are_what_the_server_counts_for_the_image_sent(
    size: tuple[int, int], unit: int, max_tokens: int, seed: int
) -> None:
    original = encode(plain_picture(*size, seed), "JPEG")

    result = normalize(original, unit=unit, max_tokens=max_tokens)

    with Image.open(io.BytesIO(result.data)) as sent:
        assert sent.size == (result.width, result.height)
    assert result.tokens == server_tokens(result.width, result.height, unit) <= max_tokens
    if passed_through(result, original):
        assert (result.width, result.height) == size


def adobe_jpeg_with_a_comment(size: tuple[int, int]) -> bytes:
    data = encode(noise(*size), "JPEG", comment=b"uploaded from 10.1.2.3")
    adobe = segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 1))
    return data[:2] + adobe + data[2:]


@pytest.mark.parametrize(
    "data",
    [
        adobe_jpeg_with_a_comment((196, 112)),
        adobe_jpeg_with_a_comment((1920, 1080)),
        encode(noise(196, 112), "PNG", exif=Image.Exif(), icc_profile=b"\0" * 128),
        encode(noise(196, 112), "JPEG", comment=b"uploaded from 10.1.2.3", subsampling=0),
    ],
    ids=["rendered-at-its-own-size", "rendered-resized", "png-at-its-own-size", "passed"],
)
def test_no_comment_survives_however_the_picture_is_rendered(data: bytes) -> None:
    """Pillow's JPEG writer copies a comment from the picture it is given; the picture rendered
    at its own size is the decoded upload itself, comment and all."""
    result = normalize(data)

    assert_clean_jpeg(result)
    assert b"10.1.2.3" not in result.data
    assert (result.width, result.height) in ((196, 112), (1176, 672))
