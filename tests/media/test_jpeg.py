"""strip_metadata: every segment about the picture goes, the picture itself stays bit for bit."""

from __future__ import annotations

import contextlib
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms

from moderation.media.errors import ImageDecodeError
from moderation.media.jpeg import strip_metadata
from tests.media.test_decode import encode, jpeg_markers_before_scan, noise, normalize

SECRETS = (b"Spy Camera", b"Uploader Name", b"secret xmp", b"10.1.2.3", b"ICC_PROFILE", b"Exif")


def with_everything(image: Image.Image, **params: object) -> bytes:
    """A JPEG carrying EXIF, ICC, XMP and a comment, as phones and editors write them."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Spy Camera"
    exif[ExifTags.Base.Artist] = "Uploader Name"
    icc_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(
        image,
        "JPEG",
        exif=exif,
        icc_profile=icc_profile,
        xmp=b"<x:xmpmeta>secret xmp</x:xmpmeta>",
        comment=b"uploaded from 10.1.2.3",
        **params,
    )


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def insert_after_soi(data: bytes, extra: bytes) -> bytes:
    return data[:2] + extra + data[2:]


def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


@pytest.mark.parametrize(
    ("mode", "params"),
    [
        ("RGB", {}),
        ("RGB", {"progressive": True}),
        ("RGB", {"subsampling": 0, "quality": 95}),
        ("RGB", {"restart_marker_rows": 1}),
        ("RGB", {"optimize": True, "progressive": True, "restart_marker_blocks": 3}),
        ("L", {}),
        ("L", {"progressive": True}),
    ],
    ids=["baseline", "progressive", "444", "restarts", "optimized", "grey", "grey-progressive"],
)
def test_keeps_the_pixels_and_drops_every_metadata_segment(
    mode: str, params: dict[str, object]
) -> None:
    original = with_everything(noise(203, 117).convert(mode), **params)
    for secret in SECRETS:
        assert secret in original

    stripped = strip_metadata(original)

    assert stripped is not None
    assert pixels(stripped) == pixels(original)
    for secret in SECRETS:
        assert secret not in stripped
    markers = jpeg_markers_before_scan(stripped)
    assert not [marker for marker in markers if 0xE0 <= marker <= 0xEF or marker == 0xFE]
    assert stripped.endswith(b"\xff\xd9")


def test_drops_segments_between_progressive_scans_and_whatever_follows_the_end() -> None:
    original = encode(noise(64, 48), "JPEG", progressive=True)
    second_scan = original.index(b"\xff\xda", original.index(b"\xff\xda") + 2)
    hidden = segment(0xFE, b"between scans 10.1.2.3") + segment(0xE1, b"Exif\x00\x00 GPS")
    planted = original[:second_scan] + hidden + original[second_scan:] + b"trailer: serial 1234"

    stripped = strip_metadata(planted)

    assert stripped is not None
    assert pixels(stripped) == pixels(original)
    for secret in (b"between scans", b"GPS", b"serial 1234"):
        assert secret not in stripped
    assert stripped == original[:2] + original[original.index(b"\xff\xdb") :]


def test_the_same_picture_with_other_metadata_strips_to_the_same_bytes() -> None:
    picture = noise(120, 80)
    plain = encode(picture, "JPEG")

    assert strip_metadata(with_everything(picture)) == strip_metadata(plain)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8",
        b"\xff\xd8\xff\xd9",
        b"\xff\xd8\xff\xe0\x00",
        b"\xff\xd8\xff\xe0\xff\xff",
    ],
    ids=["empty", "png", "soi-only", "no-picture", "short-length", "length-past-end"],
)
def test_refuses_what_is_not_a_whole_jpeg(data: bytes) -> None:
    assert strip_metadata(data) is None


def test_refuses_a_jpeg_without_its_end() -> None:
    whole = encode(noise(64, 48), "JPEG")

    assert strip_metadata(whole[:-2]) is None
    assert strip_metadata(whole[: len(whole) // 2]) is None


def test_refuses_an_adobe_block_whose_transform_decides_the_colours() -> None:
    adobe = segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 1))

    assert strip_metadata(insert_after_soi(encode(noise(64, 48), "JPEG"), adobe)) is None


def test_refuses_components_that_would_read_as_rgb_without_the_jfif_header() -> None:
    data = bytearray(encode(noise(64, 48), "JPEG"))
    frame = data.index(b"\xff\xc0")
    for index, component_id in enumerate(b"RGB"):
        data[frame + 10 + 3 * index] = component_id
    scan = data.index(b"\xff\xda")
    for index, component_id in enumerate(b"RGB"):
        data[scan + 5 + 2 * index] = component_id

    assert strip_metadata(bytes(data)) is None


@pytest.mark.parametrize("frame_marker", [0xC3, 0xC9, 0xCA])
def test_refuses_codings_other_than_huffman_dct(frame_marker: int) -> None:
    data = bytearray(encode(noise(64, 48), "JPEG"))
    data[data.index(b"\xff\xc0") + 1] = frame_marker

    assert strip_metadata(bytes(data)) is None


def test_refuses_an_unknown_segment_before_the_scan() -> None:
    data = insert_after_soi(encode(noise(64, 48), "JPEG"), segment(0xCC, b"\x00\x01"))

    assert strip_metadata(data) is None


FITTING = encode(noise(96, 64), "JPEG", progressive=True, restart_marker_blocks=2)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8),
    keep=st.floats(0.0, 1.0),
)
def test_damaged_bytes_give_a_clean_jpeg_or_none_and_never_an_exception(
    changes: list[tuple[float, int]], keep: float
) -> None:
    data = bytearray(FITTING)
    for where, value in changes:
        data[int(where * (len(data) - 1))] = value
    damaged = bytes(data[: int(len(data) * keep)])

    stripped = strip_metadata(damaged)

    if stripped is not None:
        assert stripped.startswith(b"\xff\xd8") and stripped.endswith(b"\xff\xd9")
        assert len(stripped) <= len(damaged)
        assert not [m for m in jpeg_markers_before_scan(stripped) if 0xE0 <= m <= 0xEF]
    with contextlib.suppress(ImageDecodeError):
        normalize(damaged)
