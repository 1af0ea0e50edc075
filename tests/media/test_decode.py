"""normalize_image: every accepted input becomes one clean JPEG on the model's grid; all else fails
with ImageDecodeError, before any expensive decoding where the header already tells."""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms, ImageFile
from PIL.PngImagePlugin import PngInfo

from moderation.media.decode import NormalizedImage, normalize_image
from moderation.media.errors import ImageDecodeError
from moderation.media.resize import image_tokens
from tests.media.test_resize import qwen_smart_resize

UNIT = 28
MAX_TOKENS = 1024
MAX_BYTES = 5 * 1024 * 1024
MAX_PIXELS = 64_000_000

RED = (255, 0, 0)
BLUE = (0, 0, 255)

# JPEG markers a clean file may hold before its scan: SOF0-2 frame headers, DHT Huffman tables,
# DQT quantisation tables, DRI restart interval and APP0, the JFIF header. Anything else (APP1
# EXIF/XMP, APP2 ICC, APP13 IPTC, COM comments, ...) is metadata that must have been dropped.
CLEAN_JPEG_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD, 0xE0})
# Qwen2.5-VL's server defaults, min_pixels 3136 and max_pixels 12845056, as tokens.
SERVER_MIN_TOKENS = 4
SERVER_MAX_TOKENS = 16384


def server_tokens(width: int, height: int, unit: int = UNIT) -> int:
    """What a Qwen-VL server with its default pixel range charges for an image of this size."""
    grid_height, grid_width = qwen_smart_resize(
        height, width, unit, SERVER_MIN_TOKENS * unit * unit, SERVER_MAX_TOKENS * unit * unit
    )
    return image_tokens(grid_height, grid_width, unit=unit)


def normalize(data: bytes, **caps: int) -> NormalizedImage:
    limits = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, "unit": UNIT}
    limits.update(caps)
    return normalize_image(data, max_tokens=limits.pop("max_tokens", MAX_TOKENS), **limits)


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.frombytes(
        "RGB", (width, height), random.Random(seed).randbytes(width * height * 3)
    )


def split_red_blue(width: int, height: int) -> Image.Image:
    """Red on the left half, blue on the right: any rotation shows in where the colours end up."""
    image = Image.new("RGB", (width, height), RED)
    image.paste(BLUE, (width // 2, 0, width, height))
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming a size, with a bogus image body that decoding would choke on."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        checksum = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", checksum)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def jpeg_markers_before_scan(data: bytes) -> list[int]:
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    markers: list[int] = []
    position = 2
    while position < len(data):
        assert data[position] == 0xFF, f"no marker at {position}"
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data follows, metadata is all seen
            return markers
        markers.append(marker)
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + length
    raise AssertionError("JPEG without a scan")


def assert_clean_jpeg(result: NormalizedImage, unit: int = UNIT) -> Image.Image:
    assert result.mime == "image/jpeg"
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    assert set(jpeg_markers_before_scan(result.data)) <= CLEAN_JPEG_MARKERS
    for signature in (b"Exif\x00", b"ICC_PROFILE", b"http://ns.adobe.com/xap", b"Photoshop"):
        assert signature not in result.data
    decoded = Image.open(io.BytesIO(result.data), formats=["JPEG"])
    decoded.load()
    # Grey only when a grey JPEG was sent as it is; every rendering is RGB.
    assert decoded.mode in ("RGB", "L")
    assert decoded.size == (result.width, result.height)
    # The server merely rounds the sides to the unit: our count is the one it charges.
    assert qwen_smart_resize(
        result.height,
        result.width,
        unit,
        SERVER_MIN_TOKENS * unit * unit,
        SERVER_MAX_TOKENS * unit * unit,
    ) == (round(result.height / unit) * unit, round(result.width / unit) * unit)
    assert result.tokens == server_tokens(result.width, result.height, unit)
    assert not decoded.getexif()
    assert not {"exif", "icc_profile", "xmp", "comment"} & decoded.info.keys()
    return decoded


def colour_at(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    pixel = image.getpixel((x, y))
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def close_to(actual: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - e) <= 24 for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize(
    ("image_format", "source_mime"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_accepts_each_allowed_format(image_format: str, source_mime: str) -> None:
    result = normalize(encode(noise(640, 480), image_format))

    assert result.source_mime == source_mime
    decoded = assert_clean_jpeg(result)
    # 640x480 rounds to 644x476 on the 28 px grid: 23*17 tokens, well inside 1024. A JPEG that
    # fits is sent as it is (the server does the rounding), anything else resized to the grid.
    size = (640, 480) if image_format == "JPEG" else (644, 476)
    assert (result.width, result.height, result.tokens) == (*size, 23 * 17)
    assert decoded.mode == "RGB"


def test_accepts_a_multi_picture_jpeg_as_a_jpeg_and_keeps_the_first_picture() -> None:
    """Phone cameras write MPO: a JPEG with more pictures appended. Pillow names it apart."""
    pictures = [Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), BLUE)]
    data = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:])
    assert Image.open(io.BytesIO(data), formats=["JPEG"]).format == "MPO"

    result = normalize(data)

    assert result.source_mime == "image/jpeg"
    assert close_to(colour_at(assert_clean_jpeg(result), 20, 20), RED)


def test_sizes_a_large_photo_down_to_the_token_budget() -> None:
    result = normalize(encode(noise(1920, 1080), "JPEG"))

    assert (result.width, result.height) == (1176, 672)
    assert result.tokens == 42 * 24 <= MAX_TOKENS


def test_scales_a_tiny_image_up_to_the_minimum() -> None:
    result = normalize(encode(Image.new("RGB", (1, 1), RED), "PNG"))

    assert (result.width, result.height, result.tokens) == (56, 56, 4)


def test_refuses_an_aspect_ratio_qwen_does_not_take() -> None:
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        normalize(encode(Image.new("RGB", (402, 2), RED), "PNG"))


@pytest.mark.parametrize("image_format", ["PPM", "ICO", "TGA", "PCX", "JPEG2000", "PDF"])
def test_refuses_formats_outside_the_allow_list(image_format: str) -> None:
    data = encode(noise(32, 32), image_format)

    with pytest.raises(ImageDecodeError):
        normalize(data)


@pytest.mark.parametrize(
    "data",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        b"\xff\xd8\xff\xe0" + b"garbage" * 20,
        b"GIF89a",
        b"RIFF\x10\x00\x00\x00WEBPVP8 ",
    ],
    ids=["eps", "svg", "html", "http", "png-garbage", "jpeg-garbage", "gif-header", "webp-header"],
)
def test_refuses_bytes_that_are_not_a_decodable_image(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        normalize(data)

    assert caught.value.reason == "decode_failed"


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_refuses_a_truncated_file(image_format: str) -> None:
    whole = encode(noise(300, 200), image_format)

    with pytest.raises(ImageDecodeError):
        normalize(whole[: len(whole) * 2 // 3])


def test_refuses_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        normalize(b"")


def test_refuses_more_bytes_than_the_limit() -> None:
    data = encode(noise(64, 64), "PNG")

    with pytest.raises(ImageDecodeError, match="byte limit"):
        normalize(data, max_bytes=len(data) - 1)


def test_refuses_a_decompression_bomb() -> None:
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 100

    with pytest.raises(ImageDecodeError):
        normalize(bomb)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(2_000, 2_000), (10_000, 10_000)])
def test_checks_the_pixel_limit_from_the_header_before_decoding(width: int, height: int) -> None:
    """The body of this file is junk: a pixel-limit message proves decoding never started."""
    with pytest.raises(ImageDecodeError, match="pixel limit"):
        normalize(png_header_only(width, height), max_pixels=1_000_000)


def test_leaves_pillow_globals_alone() -> None:
    max_image_pixels = Image.MAX_IMAGE_PIXELS
    for data in (png_header_only(100_000, 100_000), encode(noise(50, 50), "PNG")):
        with contextlib.suppress(ImageDecodeError):
            normalize(data)

    assert max_image_pixels == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_drops_all_metadata_from_a_jpeg() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Spy Camera"
    exif[ExifTags.Base.Artist] = "Uploader Name"
    icc_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(
        noise(200, 100),
        "JPEG",
        exif=exif,
        icc_profile=icc_profile,
        xmp=b"<x:xmpmeta>secret</x:xmpmeta>",
        comment=b"uploaded from 10.1.2.3",
    )
    source = Image.open(io.BytesIO(data))
    assert {"exif", "icc_profile", "xmp", "comment"} <= source.info.keys()

    result = normalize(data)

    assert_clean_jpeg(result)
    for secret in (b"Spy Camera", b"Uploader Name", b"secret", b"10.1.2.3"):
        assert secret not in result.data


def test_drops_all_metadata_from_a_png() -> None:
    text = PngInfo()
    text.add_text("Comment", "uploaded from 10.1.2.3")
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>secret</x:xmpmeta>")
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Spy Camera"
    data = encode(noise(200, 100), "PNG", pnginfo=text, exif=exif, icc_profile=b"\x00" * 128)

    result = normalize(data)

    assert_clean_jpeg(result)
    for secret in (b"Spy Camera", b"secret", b"10.1.2.3"):
        assert secret not in result.data


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_applies_the_exif_orientation(image_format: str) -> None:
    """Orientation 6 means "rotate 90 degrees clockwise to display": left half ends up on top."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(split_red_blue(120, 60), image_format, exif=exif)

    result = normalize(data)

    decoded = assert_clean_jpeg(result)
    assert result.height > result.width
    # 60x120 as displayed rounds to 56x112 on the 28 px grid.
    assert (result.width, result.height) == (56, 112)
    assert close_to(colour_at(decoded, 28, 10), RED)
    assert close_to(colour_at(decoded, 28, 100), BLUE)


def test_sizes_a_rotated_large_jpeg_like_its_displayed_shape() -> None:
    """A phone photo: stored landscape, shown portrait. Decoded at reduced scale (JPEG draft)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8  # rotate 90 degrees counter-clockwise to display
    data = encode(split_red_blue(4032, 3024), "JPEG", exif=exif)

    result = normalize(data)

    decoded = assert_clean_jpeg(result)
    assert (result.width, result.height) == (756, 1008)
    assert close_to(colour_at(decoded, 378, 100), BLUE)
    assert close_to(colour_at(decoded, 378, 900), RED)


@pytest.mark.parametrize(
    "transparent",
    [
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
        Image.new("LA", (64, 64), (0, 0)),
        Image.new("PA", (64, 64), (0, 0)),
    ],
    ids=["RGBA", "LA", "PA"],
)
def test_puts_transparency_on_white(transparent: Image.Image) -> None:
    result = normalize(encode(transparent, "PNG" if transparent.mode != "PA" else "TIFF"))

    decoded = assert_clean_jpeg(result)
    assert close_to(colour_at(decoded, 30, 30), (255, 255, 255))


def test_puts_a_transparent_palette_entry_on_white() -> None:
    palette_image = Image.new("P", (64, 64), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0])
    palette_image.paste(1, (0, 0, 32, 64))
    data = encode(palette_image, "PNG", transparency=0)

    decoded = assert_clean_jpeg(normalize(data))

    assert close_to(colour_at(decoded, 10, 30), RED)
    assert close_to(colour_at(decoded, 50, 30), (255, 255, 255))


def test_keeps_semi_transparent_colour_blended_with_white() -> None:
    result = normalize(encode(Image.new("RGBA", (64, 64), (0, 0, 255, 128)), "PNG"))

    assert close_to(colour_at(assert_clean_jpeg(result), 30, 30), (127, 127, 255))


@pytest.mark.parametrize("image_format", ["GIF", "WEBP"])
def test_takes_the_first_frame_of_an_animation(image_format: str) -> None:
    frames = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2

    decoded = assert_clean_jpeg(normalize(data))

    assert close_to(colour_at(decoded, 30, 30), RED)


def test_scales_sixteen_bit_grey_instead_of_clipping_it() -> None:
    grey = Image.new("I;16", (64, 64), 32768)

    decoded = assert_clean_jpeg(normalize(encode(grey, "PNG")))

    assert close_to(colour_at(decoded, 30, 30), (128, 128, 128))


def test_converts_cmyk() -> None:
    cmyk = Image.new("RGB", (64, 64), RED).convert("CMYK")

    decoded = assert_clean_jpeg(normalize(encode(cmyk, "JPEG")))

    assert close_to(colour_at(decoded, 30, 30), RED)


def test_same_input_gives_the_same_bytes_and_hash() -> None:
    data = encode(noise(500, 400, seed=7), "PNG")

    assert normalize(data) == normalize(data)


def test_runs_in_parallel_threads_with_the_same_results() -> None:
    inputs = [encode(noise(300 + n * 40, 200, seed=n), "PNG") for n in range(8)]
    sequential = [normalize(data) for data in inputs]

    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(normalize, inputs * 2))

    assert parallel == sequential * 2


def _valid_image(seed: int, size: tuple[int, int], image_format: str, mode: str) -> bytes:
    rgb = noise(*size, seed=seed)
    if mode == "I;16":
        image = rgb.convert("L").convert("I").point(lambda value: value * 256).convert("I;16")
    elif mode == "F":
        image = rgb.convert("L").convert("F")
    else:
        image = rgb.convert("RGBA").convert(mode)
    return encode(image, image_format)


MODES_BY_FORMAT = {
    "JPEG": ["L", "RGB", "CMYK"],
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "WEBP": ["RGB", "RGBA"],
    "GIF": ["L", "P", "RGB"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"],
}


@st.composite
def valid_images(draw: st.DrawFn) -> bytes:
    image_format = draw(st.sampled_from(sorted(MODES_BY_FORMAT)))
    mode = draw(st.sampled_from(MODES_BY_FORMAT[image_format]))
    width = draw(st.integers(min_value=1, max_value=300))
    height = draw(st.integers(min_value=max(1, -(-width // 200)), max_value=min(300, width * 200)))
    return _valid_image(draw(st.integers(0, 2**16)), (width, height), image_format, mode)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=valid_images(),
    unit=st.sampled_from([28, 32]),
    max_tokens=st.sampled_from([16, 64, 256, 1024]),
)
def test_any_valid_image_becomes_a_valid_jpeg_inside_the_budget(
    data: bytes, unit: int, max_tokens: int
) -> None:
    result = normalize(data, unit=unit, max_tokens=max_tokens)

    assert_clean_jpeg(result, unit=unit)
    assert 4 <= result.tokens <= max_tokens


MAGIC_PREFIXES = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
]
SEED_IMAGES = [
    _valid_image(1, (24, 16), image_format, modes[-1])
    for image_format, modes in MODES_BY_FORMAT.items()
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid small image with a few bytes overwritten and maybe its tail cut off."""
    data = bytearray(draw(st.sampled_from(SEED_IMAGES)))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


hostile_bytes = st.one_of(
    st.binary(max_size=512),
    st.builds(
        lambda prefix, rest: prefix + rest, st.sampled_from(MAGIC_PREFIXES), st.binary(max_size=512)
    ),
    mutated_images(),
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt TIFF tags
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_bytes)
def test_arbitrary_bytes_only_ever_raise_decode_errors(data: bytes) -> None:
    try:
        result = normalize(data, max_pixels=4_000_000)
    except ImageDecodeError:
        return
    assert result.tokens <= MAX_TOKENS
    assert set(jpeg_markers_before_scan(result.data)) <= CLEAN_JPEG_MARKERS
