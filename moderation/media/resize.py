"""The image size Qwen-VL will actually look at, computed before the model is called.

Qwen2/2.5/3-VL cut an image into patches and merge 2x2 of them into one visual token, so every
side must be a multiple of the merged patch (28 px for Qwen2/2.5-VL, 32 px for Qwen3-VL) and the
token count is (height/unit) * (width/unit). The model server (vLLM, SGLang, DashScope) runs this
same `smart_resize` on whatever it receives. Doing it ourselves first means:

- the token cost of an image is known before the call, so a budget can be enforced and reported;
- the server's own resize is a no-op on our output (sides already multiples of the unit, area
  inside its pixel range), so the bytes we store and show reviewers are what the model saw.

An image that needs no shrinking to fit the budget (`fits_as_is`) can be sent as it is: the
server merely rounds each side to the unit, which gives the same grid and the same token count
as our resize would, so resizing it ourselves would be work for nothing. Such an image is
stored at its own size; the model sees it rounded to the grid, a few pixels at most per side.
"""

from __future__ import annotations

import math

from moderation.media.errors import ImageDecodeError

# Qwen's processors refuse anything more elongated than this; so do we, with a clear reason.
MAX_ASPECT_RATIO = 200
# The pixel range a Qwen-VL server resizes into when the request names none, in tokens: Qwen2.5-VL
# defaults to min_pixels 3136 and max_pixels 12845056, which are 4 and 16384 tokens of 28x28.
SERVER_MIN_TOKENS = 4
SERVER_MAX_TOKENS = 16384


def smart_resize(
    height: int, width: int, *, unit: int, max_tokens: int, min_tokens: int = 4
) -> tuple[int, int]:
    """Return (new_height, new_width) exactly as qwen_vl_utils / Qwen2VLImageProcessor would.

    The arithmetic is theirs, float operations in the same order, so the result matches the
    server's bit for bit. Where the original breaks a small budget (a very elongated image whose
    short side scales below one unit: Qwen floors it to 0, or clamps it to one unit and then
    overshoots the budget on the long side), the short side becomes one unit and the long side
    shrinks until the budget holds. Those inputs are rare; for every other input the answer is
    Qwen's own.
    """
    if unit < 1 or min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"bad token budget: unit={unit} min={min_tokens} max={max_tokens}")
    if height < 1 or width < 1:
        raise ImageDecodeError(f"image has an empty side ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageDecodeError(
            f"aspect ratio of {width}x{height} is above {MAX_ASPECT_RATIO}:1, "
            "which Qwen-VL does not accept"
        )

    max_pixels = max_tokens * unit * unit
    min_pixels = min_tokens * unit * unit
    new_height = max(unit, round(height / unit) * unit)
    new_width = max(unit, round(width / unit) * unit)
    if new_height * new_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        new_height = math.floor(height / beta / unit) * unit
        new_width = math.floor(width / beta / unit) * unit
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / unit) * unit
        new_width = math.ceil(width * beta / unit) * unit

    rows, columns = _fit_budget(new_height // unit, new_width // unit, max_tokens=max_tokens)
    return rows * unit, columns * unit


def image_tokens(height: int, width: int, *, unit: int) -> int:
    return (height // unit) * (width // unit)


def server_grid(height: int, width: int, *, unit: int) -> tuple[int, int]:
    """The (height, width) a Qwen-VL server with its default pixel range resizes an image to."""
    return smart_resize(
        height, width, unit=unit, max_tokens=SERVER_MAX_TOKENS, min_tokens=SERVER_MIN_TOKENS
    )


def fits_as_is(height: int, width: int, *, unit: int, max_tokens: int) -> bool:
    """Whether the server, given this image unresized, reaches the very grid we would resize to.

    True when both our budget and the server's default range leave the image at its own size
    rounded to the unit: nothing had to be scaled down to fit the budget or up to the minimum.
    A side that rounds to nothing (under half a unit) never fits as is.
    """
    rounded = (round(height / unit) * unit, round(width / unit) * unit)
    if min(rounded) < unit:
        return False
    return (
        smart_resize(height, width, unit=unit, max_tokens=max_tokens) == rounded
        and server_grid(height, width, unit=unit) == rounded
    )


def _fit_budget(rows: int, columns: int, *, max_tokens: int) -> tuple[int, int]:
    """Keep at least one unit per side, and the token count inside the budget.

    Only the long side is ever shortened: the short side is already at one unit (or close) when
    this triggers, and shortening the long one keeps as much of the image's content as fits.
    """
    rows, columns = max(1, rows), max(1, columns)
    if rows * columns > max_tokens:
        if rows <= columns:
            columns = max(1, max_tokens // rows)
        else:
            rows = max(1, max_tokens // columns)
    return rows, columns
