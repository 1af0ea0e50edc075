"""Turn untrusted upload bytes into the JPEGs the model sees, the reviewer sees and we hash.

Everything about the input is treated as hostile: the type is sniffed from the bytes against a
short allow-list (a declared mime type or extension is never consulted, and formats that run
external programs or rarely seen parsers, such as EPS, PDF or PSD, are never opened), the pixel
count and the decoded size are checked from the header before any pixel is decoded, and nothing
but pixels survives: EXIF (GPS positions, device serials), ICC profiles, XMP and text chunks are
dropped, so the stored bytes leak nothing about the uploader and the same picture always hashes
the same.

A JPEG that already fits the token budget is sent as it is. The model server rounds every image
it receives to its patch grid itself, so resizing such a photo ourselves would reach the same
grid and the same token count at the cost of a decode, a resize and an encode. When the photo
needs no shrinking, is a single plain JPEG (grey or YCbCr colour, no Adobe colour block, no EXIF
orientation turning it) and decodes cleanly (checked at 1/8 scale, which still reads every
coded byte), the upload's own bytes are kept with every metadata segment cut out: EXIF, XMP,
ICC, comments, thumbnails and anything after the end of the picture. Its size is then the
upload's own, not a multiple of the grid, and its token count is the one the server will charge.
Everything else is decoded and rendered as a new JPEG on the grid.

Memory is bounded three ways. The decoded size is capped in bytes, not only in pixels, because
Pillow holds four bytes for every colour pixel, alpha or not: an 8000x8000 RGBA PNG is 256 MB
decoded. JPEGs decode at 1/2, 1/4 or 1/8 scale when the model's size is that much smaller, and
everything else is shrunk strip by strip, so only the decoded buffer itself is ever full size.
And large decodes hold a share of the worker's `DecodeBudget`, so a worker's threads never hold
more decoded pixels at once than the budget allows.

Animations (GIF, APNG, animated WebP) and multi-page files (TIFF, multi-picture JPEG) are not
judged by their first frame: every frame is decoded once to a thumbnail, and a handful chosen by
`choose_frames` are sent to the model as images of their own, sharing the upload's token budget.

This runs in worker threads, so it touches no Pillow globals: `Image.MAX_IMAGE_PIXELS` and
`ImageFile.LOAD_TRUNCATED_IMAGES` keep their defaults (Pillow's own, looser bomb check stays in
force next to our caps, and truncated files stay errors).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageChops, ImageStat

from moderation.config import Settings
from moderation.core.errors import describe_exception
from moderation.media.budget import DecodeBudget
from moderation.media.errors import ImageDecodeError, MediaError
from moderation.media.frames import choose_frames
from moderation.media.jpeg import strip_metadata
from moderation.media.resize import fits_as_is, image_tokens, server_grid, smart_resize

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
# Formats whose frames are drawn over one canvas, so frame n can only be reached by decoding the
# frames before it, and the decoder keeps the canvas, the previous canvas and a disposal region.
_CANVAS_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
_CANVAS_BUFFERS = 3
# libwebp decodes into a buffer of its own, and Pillow copies that to bytes before its raw
# decoder copies it into the image: a WebP picture is held about four times over while it loads,
# an animated one once more for the decoder's canvas.
_WEBP_STILL_BUFFERS = 4
_WEBP_CANVAS_BUFFERS = 5

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
# EXIF orientations 5-8 are the rotations by 90 degrees: width and height trade places.
_SIDE_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Decoder state, thumbnails and the encoded output, whatever the image's size.
_DECODER_OVERHEAD = 8 * 1024 * 1024
# Shrinking works on horizontal strips of about this many decoded bytes at a time.
_STRIP_BYTES = 4 * 1024 * 1024
# Integer reduction (a box filter, fast) stops at twice the target; bicubic does the rest.
_REDUCING_GAP = 2.0
# Thumbnails that frames are compared on: 32x32 RGB is enough to tell pictures apart.
_SIGNATURE_SIZE = (32, 32)
# Browsers show GIF frames that claim 0-10 ms for 100 ms; so do we, for the running time.
_SHORTEST_FRAME_MS = 20
_DEFAULT_FRAME_MS = 100


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int
    max_decoded_bytes: int
    unit: int
    # Visual tokens for one uploaded file; an animation's frames share them.
    max_tokens: int
    # Frames of one animation or multi-page file shown to the model.
    max_frames: int = 1
    # An animation with more frames, or more pixels in all its frames, is not judged at all:
    # judging a part of it would let the rest through unseen.
    frame_scan_limit: int = 1000
    frame_scan_max_pixels: int = 500_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
            max_decoded_bytes=settings.image_max_decoded_bytes,
            unit=settings.patch_unit,
            max_tokens=settings.image_token_budget,
            max_frames=settings.image_max_frames,
            frame_scan_limit=settings.image_frame_scan_limit,
            frame_scan_max_pixels=settings.image_frame_scan_max_pixels,
        )


@dataclass(frozen=True)
class NormalizedImage:
    data: bytes
    sha256: str
    width: int
    height: int
    mime: str
    source_mime: str
    tokens: int


@dataclass(frozen=True)
class NormalizedFrame:
    """One picture of an upload as the model sees it; stills have exactly one, frame 0."""

    index: int
    # When the frame appears, for timed animations; None for stills and pages.
    time_ms: int | None
    image: NormalizedImage


@dataclass(frozen=True)
class NormalizedMedia:
    source_mime: str
    frame_count: int
    duration_ms: int | None
    # The frames shown to the model, in frame order; the first is always frame 0.
    frames: tuple[NormalizedFrame, ...]

    @property
    def primary(self) -> NormalizedImage:
        return self.frames[0].image


def normalize_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    unit: int,
    max_tokens: int,
    max_decoded_bytes: int | None = None,
    budget: DecodeBudget | None = None,
) -> NormalizedImage:
    """Decode, orient, flatten and resize the first picture of an upload to the token budget.

    Raises ImageDecodeError for anything that is not a decodable image of an allowed format
    within the caps; the message says which cap or what was wrong.
    """
    limits = DecodeLimits(
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        max_decoded_bytes=max_decoded_bytes if max_decoded_bytes is not None else max_pixels * 4,
        unit=unit,
        max_tokens=max_tokens,
        max_frames=1,
    )
    return normalize_media(data, limits, budget=budget).primary


def normalize_media(
    data: bytes,
    limits: DecodeLimits,
    *,
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
) -> NormalizedMedia:
    """Every picture of one upload the model should see, normalized; see the module docstring.

    `deadline` (a `time.monotonic()` value) bounds the wait for the decode budget.
    """
    if not data:
        raise ImageDecodeError("image is empty")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image is {len(data)} bytes, above the {limits.max_bytes} byte limit"
        )
    try:
        with Image.open(io.BytesIO(data), formats=_OPENABLE_FORMATS) as opened:
            return _normalize_opened(opened, data, limits, budget or _UNLIMITED, deadline)
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image refused as a decompression bomb: {exc}") from exc
    except Exception as exc:
        # Pillow's parsers report hostile or broken input with almost any exception type
        # (OSError, ValueError, SyntaxError, struct.error, IndexError, EOFError, ...); every one
        # of them means the same thing here: not an image we can judge.
        raise ImageDecodeError(f"image could not be decoded: {describe_exception(exc)}") from exc


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """What Pillow holds for a picture of this mode and size.

    One byte per pixel for bilevel, grey and palette images, two for 16-bit grey, and four for
    everything else: Pillow pads RGB, YCbCr and the like to four bytes, so alpha costs nothing
    more.
    """
    if mode in _ONE_BYTE_MODES:
        per_pixel = 1
    elif mode.startswith("I;16"):
        per_pixel = 2
    else:
        per_pixel = 4
    return size[0] * size[1] * per_pixel


# A budget nobody else shares: for callers outside a worker (tests, tools).
_UNLIMITED = DecodeBudget(1 << 62)


def _normalize_opened(
    opened: Image.Image,
    data: bytes,
    limits: DecodeLimits,
    budget: DecodeBudget,
    deadline: float | None,
) -> NormalizedMedia:
    source_mime = SOURCE_MIME_BY_FORMAT.get(opened.format or "", "")
    if not source_mime:
        raise ImageDecodeError(f"image format {opened.format} is not accepted")
    _check_pixels(opened.size, limits)
    frame_count = int(getattr(opened, "n_frames", 1)) if limits.max_frames > 1 else 1
    if frame_count <= 1:
        if _may_pass_through(opened, limits):
            passed = _pass_through(opened, data, source_mime, limits, budget, deadline)
            if passed is not None:
                return _still(passed, source_mime)
        return _normalize_still(opened, source_mime, limits, budget, deadline)
    return _normalize_frames(opened, source_mime, frame_count, limits, budget, deadline)


def _normalize_still(
    opened: Image.Image,
    source_mime: str,
    limits: DecodeLimits,
    budget: DecodeBudget,
    deadline: float | None,
) -> NormalizedMedia:
    # Sized from the header, before decoding: an absurd aspect ratio costs nothing, and the
    # target follows the original's proportions even when JPEG draft mode decodes smaller.
    header_size = opened.size
    target_height, target_width = smart_resize(
        header_size[1], header_size[0], unit=limits.unit, max_tokens=limits.max_tokens
    )
    if opened.format in ("JPEG", "MPO"):
        # JPEG can decode at 1/2, 1/4 or 1/8 scale almost for free; Pillow picks the smallest
        # scale still at least the target on both sides. A picture turned by its EXIF
        # orientation is stored with its sides swapped, so the target is swapped too.
        draft_target = (target_width, target_height)
        if _exif_orientation(opened) in _SIDE_SWAPPING_ORIENTATIONS:
            draft_target = (target_height, target_width)
        opened.draft("RGB", draft_target)
    decoded = _check_decoded(opened.mode, opened.size, limits)
    if opened.format == "WEBP":
        decoded *= _WEBP_STILL_BUFFERS
    cost = _check_cost(_working_bytes(decoded, opened.size, (target_width, target_height)), budget)
    with budget.reserve(cost, deadline=deadline):
        opened.load()
        image = _render(opened, header_size, limits.unit, limits.max_tokens, source_mime)
    return _still(image, source_mime)


def _still(image: NormalizedImage, source_mime: str) -> NormalizedMedia:
    return NormalizedMedia(
        source_mime=source_mime,
        frame_count=1,
        duration_ms=None,
        frames=(NormalizedFrame(index=0, time_ms=None, image=image),),
    )


def _may_pass_through(opened: Image.Image, limits: DecodeLimits) -> bool:
    """A JPEG the model server would see exactly as our rendering of it, from its header alone.

    Its size must already fit the budget (see `fits_as_is`), and it must be a plain JPEG whose
    pixels do not depend on anything we strip: a single picture (not MPO), grey or YCbCr colour
    (CMYK and YCCK need the Adobe block's transform flag, which is metadata), and no EXIF
    orientation turning it, since the orientation goes with the EXIF.
    """
    if opened.format != "JPEG" or opened.mode not in ("RGB", "L") or "adobe" in opened.info:
        return False
    width, height = opened.size
    if not fits_as_is(height, width, unit=limits.unit, max_tokens=limits.max_tokens):
        return False
    return _exif_orientation(opened) == 1


def _pass_through(
    opened: Image.Image,
    data: bytes,
    source_mime: str,
    limits: DecodeLimits,
    budget: DecodeBudget,
    deadline: float | None,
) -> NormalizedImage | None:
    """The upload's own JPEG, stripped of every metadata segment, or None to render it instead.

    Decoding at 1/8 scale runs the whole entropy-coded stream through the decoder, so a
    truncated or broken file fails here as it would at full size; only the inverse transform and
    the colour conversion are done on an eighth of each side.
    """
    stripped = strip_metadata(data)
    if stripped is None:
        return None
    width, height = opened.size
    opened.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    decoded = _check_decoded(opened.mode, opened.size, limits)
    with budget.reserve(_check_cost(decoded + _DECODER_OVERHEAD, budget), deadline=deadline):
        opened.load()
    grid_height, grid_width = server_grid(height, width, unit=limits.unit)
    return NormalizedImage(
        data=stripped,
        sha256=hashlib.sha256(stripped).hexdigest(),
        width=width,
        height=height,
        mime=OUTPUT_MIME,
        source_mime=source_mime,
        tokens=image_tokens(grid_height, grid_width, unit=limits.unit),
    )


def _normalize_frames(
    opened: Image.Image,
    source_mime: str,
    frame_count: int,
    limits: DecodeLimits,
    budget: DecodeBudget,
    deadline: float | None,
) -> NormalizedMedia:
    if frame_count > limits.frame_scan_limit:
        raise ImageDecodeError(
            f"image has {frame_count} frames, above the {limits.frame_scan_limit} frames "
            "that are examined; it is not judged on a part of them"
        )
    timed = opened.format in _CANVAS_FORMATS
    sizes = _frame_sizes(opened, frame_count, limits)
    largest = max(sizes, key=lambda size: size[0] * size[1])
    scanning = frame_count > limits.max_frames
    # A scan decodes every frame once, and rendering the chosen ones again up to the last.
    decoded_pixels = sum(width * height for width, height in sizes) * (2 if scanning else 1)
    if decoded_pixels > limits.frame_scan_max_pixels:
        raise ImageDecodeError(
            f"examining all {frame_count} frames of {largest[0]}x{largest[1]} would decode "
            f"{decoded_pixels} pixels, above the {limits.frame_scan_max_pixels} pixel limit"
        )
    if timed:
        buffers = _WEBP_CANVAS_BUFFERS if opened.format == "WEBP" else _CANVAS_BUFFERS
        # GIF frames after the first are composited in RGB or RGBA whatever the palette mode.
        frame_bytes = _check_decoded("RGBA", largest, limits) * buffers
    else:
        frame_bytes = max(_check_decoded(opened.mode, size, limits) for size in sizes)
    tokens_per_frame = max(4, limits.max_tokens // min(limits.max_frames, frame_count))
    target = smart_resize(largest[1], largest[0], unit=limits.unit, max_tokens=tokens_per_frame)
    cost = _check_cost(_working_bytes(frame_bytes, largest, (target[1], target[0])), budget)

    with budget.reserve(cost, deadline=deadline):
        start_ms: list[int] = []
        elapsed = 0
        signatures: list[Image.Image] = []
        if scanning:
            for index in range(frame_count):
                _load_frame(opened, index, sizes[index])
                start_ms.append(elapsed)
                elapsed += _frame_duration(opened)
                signatures.append(_signature(opened))
            chosen = choose_frames(
                start_ms if timed else list(range(frame_count)),
                lambda a, b: _difference(signatures[a], signatures[b]),
                limits.max_frames,
            )
        else:
            chosen = list(range(frame_count))
        tokens = max(4, limits.max_tokens // len(chosen))
        frames: list[NormalizedFrame] = []
        for index in chosen:
            _load_frame(opened, index, sizes[index])
            if not scanning:
                start_ms.append(elapsed)
                elapsed += _frame_duration(opened)
            image = _render(opened, opened.size, limits.unit, tokens, source_mime)
            frames.append(
                NormalizedFrame(
                    index=index, time_ms=start_ms[index] if timed else None, image=image
                )
            )
    return NormalizedMedia(
        source_mime=source_mime,
        frame_count=frame_count,
        duration_ms=elapsed if timed else None,
        frames=tuple(frames),
    )


def _frame_sizes(
    opened: Image.Image, frame_count: int, limits: DecodeLimits
) -> list[tuple[int, int]]:
    """Each frame's size, from headers only.

    Canvas formats draw every frame on the canvas the header declares. Pages (TIFF) and the
    pictures of a multi-picture JPEG each have a size of their own, read by seeking, which for
    these formats parses a header and decodes nothing.
    """
    if opened.format in _CANVAS_FORMATS:
        return [opened.size] * frame_count
    sizes = []
    for index in range(frame_count):
        opened.seek(index)
        _check_pixels(opened.size, limits)
        _check_decoded(opened.mode, opened.size, limits)
        sizes.append(opened.size)
    opened.seek(0)
    return sizes


def _load_frame(opened: Image.Image, index: int, expected: tuple[int, int]) -> None:
    opened.seek(index)
    if opened.size != expected:
        raise ImageDecodeError(f"frame {index} changed size while decoding")
    opened.load()


def _frame_duration(opened: Image.Image) -> int:
    duration = opened.info.get("duration")
    if not isinstance(duration, int | float) or duration < _SHORTEST_FRAME_MS:
        return _DEFAULT_FRAME_MS
    return int(duration)


def _check_pixels(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} pixels, above the {limits.max_pixels} pixel limit"
        )


def _check_decoded(mode: str, size: tuple[int, int], limits: DecodeLimits) -> int:
    needed = decoded_bytes(mode, size)
    if needed > limits.max_decoded_bytes:
        raise ImageDecodeError(
            f"image is {size[0]}x{size[1]} in mode {mode}, {needed} bytes decoded, above the "
            f"{limits.max_decoded_bytes} byte limit"
        )
    return needed


def _check_cost(cost: int, budget: DecodeBudget) -> int:
    """A decode needing more than the worker's whole budget is refused, so the budget is a
    true bound on what the worker's threads hold together."""
    if cost > budget.budget_bytes:
        raise ImageDecodeError(
            f"decoding this image would take about {cost // (1024 * 1024)} MiB, above the "
            f"worker's decode budget of {budget.budget_bytes // (1024 * 1024)} MiB"
        )
    return cost


def _reduction(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Integer factors that shrink `size` to no less than twice `target` on each side."""
    return (
        max(1, int(size[0] / target[0] / _REDUCING_GAP)),
        max(1, int(size[1] / target[1] / _REDUCING_GAP)),
    )


def _working_bytes(decoded: int, size: tuple[int, int], target: tuple[int, int]) -> int:
    """Peak memory of one decode: the pixel buffer, the shrunk copy twice over (it is flattened
    and resized), a few strips in flight, the output, and the decoder's own state."""
    # `target` is in display orientation and `size` in stored orientation; taking the smaller
    # factor of both orientations keeps the estimate an upper bound either way.
    factors = min(_reduction(size, target), _reduction(size, (target[1], target[0])))
    shrunk = math.ceil(size[0] / factors[0]) * math.ceil(size[1] / factors[1]) * 4
    strips = 4 * min(_STRIP_BYTES, size[0] * size[1] * 4)
    output = target[0] * target[1] * 4
    return decoded + 2 * shrunk + strips + 2 * output + _DECODER_OVERHEAD


def _render(
    picture: Image.Image,
    size_for_target: tuple[int, int],
    unit: int,
    max_tokens: int,
    source_mime: str,
) -> NormalizedImage:
    """One loaded picture, sized from `size_for_target` (its header size), as a clean JPEG."""
    orientation = _exif_orientation(picture)
    # TIFF applies its orientation while loading (its header size is already the displayed
    # one) and drops the tag, so only a tag left now still turns the picture. smart_resize is
    # symmetric, so the turned target is the swapped one.
    target_height, target_width = smart_resize(
        size_for_target[1], size_for_target[0], unit=unit, max_tokens=max_tokens
    )
    swaps = orientation in _SIDE_SWAPPING_ORIENTATIONS
    if swaps:
        target_height, target_width = target_width, target_height
    stored_target = (target_height, target_width) if swaps else (target_width, target_height)
    shrunk = _shrink_to_rgb(picture, _reduction(picture.size, stored_target))
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        shrunk = shrunk.transpose(method)
    encoded = _encode_jpeg(shrunk, (target_width, target_height))
    return NormalizedImage(
        data=encoded,
        sha256=hashlib.sha256(encoded).hexdigest(),
        width=target_width,
        height=target_height,
        mime=OUTPUT_MIME,
        source_mime=source_mime,
        tokens=image_tokens(target_height, target_width, unit=unit),
    )


def _shrink_to_rgb(picture: Image.Image, factors: tuple[int, int]) -> Image.Image:
    """Flatten to RGB and box-reduce by integer `factors`, a strip at a time.

    Converting a whole 8000x8000 picture would hold two or three more full-size copies next to
    the decoded one; strips keep that to a few megabytes. Flattening before reducing is exact:
    compositing on white and averaging are both linear. A picture already in plain RGB needs no
    flattening: it is reduced whole (which allocates only the reduced copy) or, at factors
    (1, 1), returned as it is, so nothing is copied for nothing. The result may therefore be
    `picture` itself, `info` and all.
    """
    if picture.mode == "RGB" and "transparency" not in picture.info:
        return picture if factors == (1, 1) else picture.reduce(factors)
    width, height = picture.size
    factor_x, factor_y = factors
    shrunk = Image.new("RGB", (math.ceil(width / factor_x), math.ceil(height / factor_y)))
    rows = max(factor_y, _STRIP_BYTES // max(1, width * 4) // factor_y * factor_y)
    for top in range(0, height, rows):
        strip = _flatten_to_rgb(picture.crop((0, top, width, min(height, top + rows))))
        if factors != (1, 1):
            strip = strip.reduce(factors)
        shrunk.paste(strip, (0, top // factor_y))
    return shrunk


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


def _signature(picture: Image.Image) -> Image.Image:
    """A 32x32 thumbnail to compare frames by; built strip-wise like the real rendering."""
    factors = (
        max(1, picture.size[0] // _SIGNATURE_SIZE[0]),
        max(1, picture.size[1] // _SIGNATURE_SIZE[1]),
    )
    return _shrink_to_rgb(picture, factors).resize(_SIGNATURE_SIZE, Image.Resampling.BOX)


def _difference(first: Image.Image, second: Image.Image) -> float:
    """Sum of squared differences: one strongly changed region outweighs faint noise all over."""
    return float(sum(ImageStat.Stat(ImageChops.difference(first, second)).sum2))


def _exif_orientation(picture: Image.Image) -> int:
    orientation = picture.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if isinstance(orientation, int) else 1


def _encode_jpeg(picture: Image.Image, size: tuple[int, int]) -> bytes:
    if picture.size != size:
        # Bicubic, as Qwen-VL's own image processor resizes: the model sees what it was trained
        # on, at about two thirds of Lanczos's cost. reducing_gap lets Pillow shrink large
        # inputs by a whole factor first (a cheap box filter) while the last step still
        # resamples from at least three times the target, which Pillow documents as
        # indistinguishable from resampling the full image.
        picture = picture.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    # Pillow's JPEG writer takes a comment from the picture's `info` unless one is given; every
    # other segment (EXIF, ICC, XMP) is written only when passed, so these stay empty.
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY, comment=b"", exif=b"")
    return buffer.getvalue()
