"""Turn untrusted upload bytes into the one JPEG the model sees, the reviewer sees and we hash.

Everything about the input is treated as hostile: the type is sniffed from the bytes against a
short allow-list (a declared mime type or extension is never consulted, and formats that run
external programs or rarely seen parsers, such as EPS, PDF or PSD, are never opened), the pixel
count is checked from the header before any pixel is decoded, and nothing but pixels survives:
EXIF (GPS positions, device serials), ICC profiles, XMP and text chunks are dropped, so the stored
bytes leak nothing about the uploader and the same picture always hashes the same.

This runs in worker threads, so it touches no Pillow globals: `Image.MAX_IMAGE_PIXELS` and
`ImageFile.LOAD_TRUNCATED_IMAGES` keep their defaults (Pillow's own, looser bomb check stays in
force next to our pixel cap, and truncated files stay errors).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps

from moderation.core.errors import describe_exception
from moderation.media.errors import ImageDecodeError
from moderation.media.resize import image_tokens, smart_resize

OUTPUT_MIME = "image/jpeg"
JPEG_QUALITY = 90

# The formats uploads actually arrive in. Keys are Pillow format names, values the mime type we
# report for them. MPO is what Pillow calls a JPEG carrying extra pictures (phone cameras write
# these); it is a JPEG to everyone else, so it reports as one.
SOURCE_MIME_BY_FORMAT: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
_OPENABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# EXIF orientations 5-8 are the rotations by 90 degrees: width and height trade places.
_SIDE_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class NormalizedImage:
    data: bytes
    sha256: str
    width: int
    height: int
    mime: str
    source_mime: str
    tokens: int


def normalize_image(
    data: bytes, *, max_bytes: int, max_pixels: int, unit: int, max_tokens: int
) -> NormalizedImage:
    """Decode, orient, flatten and resize one image to the model's token budget.

    Raises ImageDecodeError for anything that is not a decodable image of an allowed format
    within the caps; the message says which cap or what was wrong.
    """
    if not data:
        raise ImageDecodeError("image is empty")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"image is {len(data)} bytes, above the {max_bytes} byte limit")

    try:
        with Image.open(io.BytesIO(data), formats=_OPENABLE_FORMATS) as opened:
            source_mime = SOURCE_MIME_BY_FORMAT.get(opened.format or "", "")
            if not source_mime:
                raise ImageDecodeError(f"image format {opened.format} is not accepted")
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} pixels, above the {max_pixels} pixel limit"
                )
            # Sized from the header, before decoding: an absurd aspect ratio costs nothing, and
            # the target follows the original's proportions even when JPEG draft mode below
            # decodes at a reduced scale.
            target_height, target_width = smart_resize(
                height, width, unit=unit, max_tokens=max_tokens
            )
            # JPEG can decode at 1/2, 1/4 or 1/8 scale almost for free; Pillow picks the
            # smallest scale still at least the target size. Other formats ignore this.
            opened.draft("RGB", (target_width, target_height))
            opened.load()
            # Read after load: TIFF applies its orientation while loading (its header size is
            # already the displayed one) and drops the tag, so only a tag left now still turns
            # the picture. smart_resize is symmetric, so the turned target is the swapped one.
            if _exif_orientation(opened) in _SIDE_SWAPPING_ORIENTATIONS:
                target_height, target_width = target_width, target_height
            ImageOps.exif_transpose(opened, in_place=True)
            encoded = _encode_jpeg(_flatten_to_rgb(opened), (target_width, target_height))
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image refused as a decompression bomb: {exc}") from exc
    except Exception as exc:
        # Pillow's parsers report hostile or broken input with almost any exception type
        # (OSError, ValueError, SyntaxError, struct.error, IndexError, ...); every one of them
        # means the same thing here: not an image we can judge.
        raise ImageDecodeError(f"image could not be decoded: {describe_exception(exc)}") from exc

    return NormalizedImage(
        data=encoded,
        sha256=hashlib.sha256(encoded).hexdigest(),
        width=target_width,
        height=target_height,
        mime=OUTPUT_MIME,
        source_mime=source_mime,
        tokens=image_tokens(target_height, target_width, unit=unit),
    )


def _flatten_to_rgb(picture: Image.Image) -> Image.Image:
    """Give every input the same three 8-bit channels, as a viewer would show it.

    Transparency is composited on white: merely dropping alpha would show whatever colour the
    transparent pixels happen to store, often black, and hide dark content drawn on them.
    16-bit grey is scaled down rather than clipped, which would turn most of it white.
    """
    if picture.mode == "P" or "transparency" in picture.info:
        picture = picture.convert("RGBA")
    if picture.mode in _ALPHA_MODES:
        rgba = picture.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if picture.mode in _WIDE_INTEGER_MODES:
        picture = picture.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return picture.convert("RGB")


def _exif_orientation(picture: Image.Image) -> int:
    orientation = picture.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if isinstance(orientation, int) else 1


def _encode_jpeg(picture: Image.Image, size: tuple[int, int]) -> bytes:
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    # A fresh image carries no `info`: Pillow's JPEG writer would otherwise copy a comment from
    # it, and later Pillow versions may copy more.
    clean = Image.new("RGB", picture.size)
    clean.paste(picture)
    buffer = io.BytesIO()
    clean.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
