"""smart_resize must give what Qwen-VL's own preprocessing gives, and never break our budget."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moderation.media.errors import ImageDecodeError
from moderation.media.resize import image_tokens, smart_resize

MIN_TOKENS = 4


def qwen_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The oracle: qwen_vl_utils.vision_process.smart_resize, transcribed line for line."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@st.composite
def image_sizes(draw: st.DrawFn) -> tuple[int, int]:
    """Sides in 1..20000 with an aspect ratio Qwen accepts (at most 200:1)."""
    height = draw(st.integers(min_value=1, max_value=20_000))
    width = draw(
        st.integers(min_value=math.ceil(height / 200), max_value=min(20_000, height * 200))
    )
    return height, width


units = st.sampled_from([28, 32])
budgets = st.integers(min_value=16, max_value=16_384)


@pytest.mark.parametrize(
    ("height", "width", "unit", "max_tokens", "expected"),
    [
        # A 1080p frame under Qwen's own defaults (16384 tokens): only rounded to the unit.
        (1080, 1920, 28, 16_384, (1092, 1932)),
        (1080, 1920, 32, 16_384, (1088, 1920)),
        # The same frame under the service's default budget of 1024 tokens: scaled down.
        (1080, 1920, 28, 1024, (672, 1176)),
        (1080, 1920, 32, 1024, (768, 1344)),
        (4000, 3000, 28, 1024, (1008, 756)),
        (3024, 4032, 28, 1280, (840, 1148)),
        # Tiny images are scaled up to the 4-token minimum.
        (10, 10, 28, 1024, (56, 56)),
        (1, 200, 28, 16, (28, 196)),
    ],
)
def test_matches_qwen_exactly(
    height: int, width: int, unit: int, max_tokens: int, expected: tuple[int, int]
) -> None:
    assert smart_resize(height, width, unit=unit, max_tokens=max_tokens) == expected
    assert (
        qwen_smart_resize(height, width, unit, MIN_TOKENS * unit * unit, max_tokens * unit * unit)
        == expected
    )


@pytest.mark.parametrize(
    ("height", "width", "max_tokens", "qwen_gives", "expected"),
    [
        # Upscaled to the minimum, the long side rounds up past a 16-token budget (17 tokens).
        (1, 70, 16, (28, 476), (28, 448)),
        # Scaled down, the short side floors to 0; Qwen makes it one unit and overshoots 3.5x.
        (100, 20_000, 16, (28, 1568), (28, 448)),
        (20_000, 100, 16, (1568, 28), (448, 28)),
    ],
)
def test_keeps_the_budget_where_qwen_overshoots(
    height: int,
    width: int,
    max_tokens: int,
    qwen_gives: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    unit = 28
    assert (
        qwen_smart_resize(height, width, unit, MIN_TOKENS * unit * unit, max_tokens * unit * unit)
        == qwen_gives
    )
    assert smart_resize(height, width, unit=unit, max_tokens=max_tokens) == expected


@pytest.mark.parametrize(("height", "width"), [(1, 201), (201, 1), (20_000, 99), (3, 1000)])
def test_refuses_aspect_ratios_above_200(height: int, width: int) -> None:
    with pytest.raises(ImageDecodeError, match="aspect ratio") as caught:
        smart_resize(height, width, unit=28, max_tokens=1024)
    assert caught.value.reason == "decode_failed"


@pytest.mark.parametrize(("height", "width"), [(0, 10), (10, 0), (0, 0), (-5, 10)])
def test_refuses_empty_sides(height: int, width: int) -> None:
    with pytest.raises(ImageDecodeError, match="empty side"):
        smart_resize(height, width, unit=28, max_tokens=1024)


@pytest.mark.parametrize(
    ("unit", "max_tokens", "min_tokens"), [(0, 1024, 4), (28, 3, 4), (28, 1024, 0)]
)
def test_refuses_a_budget_that_cannot_be_met(unit: int, max_tokens: int, min_tokens: int) -> None:
    with pytest.raises(ValueError, match="budget"):
        smart_resize(100, 100, unit=unit, max_tokens=max_tokens, min_tokens=min_tokens)


def test_counts_one_token_per_unit_square() -> None:
    assert image_tokens(672, 1176, unit=28) == 24 * 42
    assert image_tokens(28, 28, unit=28) == 1


@settings(max_examples=400, deadline=None)
@given(size=image_sizes(), unit=units, max_tokens=budgets)
def test_stays_on_the_unit_grid_and_inside_the_budget(
    size: tuple[int, int], unit: int, max_tokens: int
) -> None:
    height, width = size
    new_height, new_width = smart_resize(height, width, unit=unit, max_tokens=max_tokens)

    assert new_height % unit == 0 and new_width % unit == 0
    assert new_height >= unit and new_width >= unit
    assert MIN_TOKENS <= image_tokens(new_height, new_width, unit=unit) <= max_tokens


@settings(max_examples=400, deadline=None)
@given(size=image_sizes(), unit=units, max_tokens=budgets)
def test_is_qwen_wherever_qwen_keeps_the_budget(
    size: tuple[int, int], unit: int, max_tokens: int
) -> None:
    height, width = size
    qwen = qwen_smart_resize(height, width, unit, MIN_TOKENS * unit * unit, max_tokens * unit**2)
    if (qwen[0] // unit) * (qwen[1] // unit) <= max_tokens:
        assert smart_resize(height, width, unit=unit, max_tokens=max_tokens) == qwen


@settings(max_examples=400, deadline=None)
@given(size=image_sizes(), unit=units, max_tokens=budgets)
def test_keeps_each_side_within_one_unit_of_the_ideal_scaled_size(
    size: tuple[int, int], unit: int, max_tokens: int
) -> None:
    """Derivation of the bound.

    Qwen picks one scale s for both sides: s = 1 if rounding each side to the unit grid fits
    the budget, s = sqrt(max_pixels / (h*w)) when scaling down, s = sqrt(min_pixels / (h*w))
    when scaling up. Each side is then the ideal side*s moved to the grid by round (at most u/2
    away, or up to one unit u when a side below u/2 is raised to u), floor (less than u below)
    or ceil (less than u above). So, per side:

        |new_h - h*s| < u   and   |new_w - w*s| < u.

    For the aspect ratio this gives, dividing the second by w and the first by h and adding,
    |new_w/w - new_h/h| < u/w + u/h, that is

        |new_w - new_h * w/h| < u * (1 + w/h).

    The only exception is the budget guard, which can only act when s != 1 and the short side's
    ideal is below one unit: the short side is then one unit (still within u of its ideal) and
    the long side may be cut below its ideal, but only as far as the budget forces, so the token
    count is then exactly max_tokens. A relative tolerance of 1e-9 absorbs float rounding of s.
    """
    height, width = size
    new_height, new_width = smart_resize(height, width, unit=unit, max_tokens=max_tokens)

    rounded = max(unit, round(height / unit) * unit) * max(unit, round(width / unit) * unit)
    if rounded > max_tokens * unit * unit:
        scale = math.sqrt(max_tokens * unit * unit / (height * width))
    elif rounded < MIN_TOKENS * unit * unit:
        scale = math.sqrt(MIN_TOKENS * unit * unit / (height * width))
    else:
        scale = 1.0
    ideal_height, ideal_width = height * scale, width * scale
    tolerance = 1e-9 * max(ideal_height, ideal_width)
    guard_may_act = scale != 1.0 and min(ideal_height, ideal_width) < unit
    budget_full = image_tokens(new_height, new_width, unit=unit) == max_tokens

    for new_side, ideal_side in ((new_height, ideal_height), (new_width, ideal_width)):
        assert new_side < ideal_side + unit + tolerance
        assert new_side > ideal_side - unit - tolerance or (guard_may_act and budget_full)

    if not guard_may_act:
        assert abs(new_width - new_height * width / height) < unit * (1 + width / height) + 1e-6


@settings(max_examples=200, deadline=None)
@given(size=image_sizes(), unit=units, max_tokens=budgets)
def test_does_not_care_which_side_is_which(
    size: tuple[int, int], unit: int, max_tokens: int
) -> None:
    """The decoder sizes an image before applying its EXIF rotation and relies on this."""
    height, width = size
    new_height, new_width = smart_resize(height, width, unit=unit, max_tokens=max_tokens)
    assert smart_resize(width, height, unit=unit, max_tokens=max_tokens) == (new_width, new_height)
