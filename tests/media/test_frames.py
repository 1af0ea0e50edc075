"""Animated and multi-page images: every frame is examined, the telling ones are shown."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageStat

from moderation.media.budget import DecodeBudget
from moderation.media.decode import DecodeLimits, NormalizedMedia, normalize_media
from moderation.media.errors import ImageDecodeError
from moderation.media.frames import choose_frames

GREY = (128, 128, 128)
RED = (230, 20, 20)
LIMITS = DecodeLimits(
    max_bytes=20 * 1024 * 1024,
    max_pixels=64_000_000,
    max_decoded_bytes=256 * 1024 * 1024,
    unit=28,
    max_tokens=1024,
    max_frames=8,
)


def animation(
    image_format: str, colours: list[tuple[int, int, int]], size: tuple[int, int] = (96, 64)
) -> bytes:
    """Frames of solid colours with a little texture, so encoders keep every frame."""
    frames = []
    for index, colour in enumerate(colours):
        frame = Image.new("RGB", size, colour)
        frame.putpixel((index % size[0], 0), (index * 7 % 256, 0, 0))
        frames.append(frame)
    buffer = io.BytesIO()
    extra: dict[str, object] = {"duration": [100 + 20 * i for i in range(len(frames))]}
    if image_format == "WEBP":
        extra["lossless"] = True
    if image_format in ("TIFF", "MPO"):
        extra = {}
    frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], **extra)
    return buffer.getvalue()


def mean_colour(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        red, green, blue = ImageStat.Stat(image.convert("RGB")).mean
    return round(red), round(green), round(blue)


def shown_colours(media: NormalizedMedia) -> list[tuple[int, int, int]]:
    return [mean_colour(frame.image.data) for frame in media.frames]


def is_red(colour: tuple[int, int, int]) -> bool:
    return colour[0] > 180 and colour[1] < 80 and colour[2] < 80


# A multi-picture JPEG is tested with two pictures, as cameras write them (Pillow's writer puts
# wrong offsets in files of three or more).
FORMATS = ["GIF", "PNG", "WEBP", "TIFF"]


# Choosing frames -------------------------------------------------------------------------------


def test_few_frames_are_all_shown() -> None:
    assert choose_frames([0, 100, 200], lambda a, b: 1.0, 8) == [0, 1, 2]


def test_frames_spread_over_the_running_time_include_the_first_and_the_last() -> None:
    starts = [index * 100 for index in range(100)]

    chosen = choose_frames(starts, lambda a, b: 0.0, 4)

    assert chosen[0] == 0 and chosen[-1] == 99
    assert len(chosen) == 2  # identical frames add nothing beyond the time spread


def test_a_long_frame_counts_for_its_time() -> None:
    # Frame 1 shows for 10 s of an 11 s animation: spread by time lands on it, not on 2..9.
    starts = [0, 100, 10_100, 10_200, 10_300, 10_400, 10_500, 10_600, 10_700, 10_800]

    assert 1 in choose_frames(starts, lambda a, b: 0.0, 6)


def test_the_frame_unlike_all_others_is_chosen_before_its_neighbours() -> None:
    kinds = ["calm"] * 50
    kinds[31] = "violent"

    chosen = choose_frames(list(range(50)), lambda a, b: 0.0 if kinds[a] == kinds[b] else 1.0, 4)

    assert chosen == [0, 31, 49]


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(2, 12),
    frames=st.integers(1, 200),
    odd=st.data(),
)
def test_choices_are_bounded_ordered_and_catch_the_odd_frame(
    count: int, frames: int, odd: st.DataObject
) -> None:
    odd_frame = odd.draw(st.integers(0, frames - 1))
    durations = odd.draw(st.lists(st.integers(20, 5000), min_size=frames, max_size=frames))
    starts = [sum(durations[:index]) for index in range(frames)]

    chosen = choose_frames(
        starts, lambda a, b: 0.0 if (a == odd_frame) == (b == odd_frame) else 5.0, count
    )

    assert chosen == sorted(set(chosen))
    assert 1 <= len(chosen) <= count
    assert chosen[0] == 0
    assert odd_frame in chosen
    if count >= 4:
        assert chosen[-1] == frames - 1


# Decoding animations ---------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", FORMATS)
def test_a_violent_later_frame_is_shown_to_the_model(image_format: str) -> None:
    colours = [GREY] * 24
    colours[17] = RED

    media = normalize_media(animation(image_format, colours), LIMITS)

    assert media.frame_count == 24
    assert len(media.frames) <= LIMITS.max_frames
    assert media.frames[0].index == 0
    shown = {
        frame.index: colour
        for frame, colour in zip(media.frames, shown_colours(media), strict=True)
    }
    assert 17 in shown and is_red(shown[17])
    assert sum(frame.image.tokens for frame in media.frames) <= LIMITS.max_tokens


@pytest.mark.parametrize("image_format", FORMATS)
def test_a_short_animation_is_shown_whole(image_format: str) -> None:
    media = normalize_media(animation(image_format, [GREY, RED, GREY]), LIMITS)

    assert [frame.index for frame in media.frames] == [0, 1, 2]
    assert is_red(shown_colours(media)[1])
    # Three frames share the image's budget.
    assert all(frame.image.tokens <= LIMITS.max_tokens // 3 for frame in media.frames)


@pytest.mark.parametrize("image_format", ["GIF", "PNG", "WEBP"])
def test_timed_frames_carry_their_start_time(image_format: str) -> None:
    media = normalize_media(animation(image_format, [GREY, RED, GREY]), LIMITS)

    assert [frame.time_ms for frame in media.frames] == [0, 100, 220]
    assert media.duration_ms == 360


def test_the_second_picture_of_a_multi_picture_jpeg_is_shown() -> None:
    media = normalize_media(animation("MPO", [GREY, RED]), LIMITS)

    assert media.source_mime == "image/jpeg"
    assert [frame.index for frame in media.frames] == [0, 1]
    assert is_red(shown_colours(media)[1])


def test_pages_have_no_time() -> None:
    media = normalize_media(animation("TIFF", [GREY, RED]), LIMITS)

    assert [frame.time_ms for frame in media.frames] == [None, None]
    assert media.duration_ms is None


def test_a_still_is_one_frame_with_the_whole_budget() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1920, 1080), GREY).save(buffer, format="PNG")

    media = normalize_media(buffer.getvalue(), LIMITS)

    assert media.frame_count == 1
    [frame] = media.frames
    assert frame.index == 0 and frame.time_ms is None
    assert frame.image.tokens == 42 * 24


def test_too_many_frames_are_refused_rather_than_judged_in_part() -> None:
    data = animation("GIF", [GREY, RED] * 30)
    limits = DecodeLimits(**{**LIMITS.__dict__, "frame_scan_limit": 50})

    with pytest.raises(ImageDecodeError, match="60 frames, above the 50"):
        normalize_media(data, limits)


def test_too_many_pixels_over_all_frames_are_refused() -> None:
    data = animation("GIF", [GREY, RED] * 10, size=(400, 300))
    limits = DecodeLimits(**{**LIMITS.__dict__, "frame_scan_max_pixels": 2_000_000})

    with pytest.raises(ImageDecodeError, match="pixel limit"):
        normalize_media(data, limits)


def test_each_page_of_a_multi_page_file_is_held_to_the_caps() -> None:
    small = Image.new("RGB", (64, 64), GREY)
    large = Image.new("RGBA", (1500, 1500), RED)
    buffer = io.BytesIO()
    small.save(buffer, format="TIFF", save_all=True, append_images=[large])
    limits = DecodeLimits(**{**LIMITS.__dict__, "max_decoded_bytes": 4_000_000})

    with pytest.raises(ImageDecodeError, match="bytes decoded"):
        normalize_media(buffer.getvalue(), limits)


@pytest.mark.parametrize("image_format", ["GIF", "PNG", "WEBP"])
def test_a_broken_later_frame_makes_the_image_unjudgeable(image_format: str) -> None:
    colours = [GREY, RED, GREY, RED, GREY, RED]
    data = animation(image_format, colours, size=(200, 200))

    with pytest.raises(ImageDecodeError):
        normalize_media(data[: len(data) * 3 // 4], LIMITS)


def test_the_animation_holds_its_share_of_the_decode_budget() -> None:
    budget = DecodeBudget(1 << 40, small_bytes=0)
    normalize_media(animation("GIF", [GREY, RED] * 5, size=(500, 400)), LIMITS, budget=budget)

    # Canvas, previous canvas and disposal region in RGBA, and the working copies.
    assert budget.usage().peak_in_use >= 3 * 500 * 400 * 4


def test_a_decode_larger_than_the_whole_budget_is_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (2000, 2000), RED).save(buffer, format="PNG")

    with pytest.raises(ImageDecodeError, match="decode budget"):
        normalize_media(buffer.getvalue(), LIMITS, budget=DecodeBudget(8 * 1024 * 1024))


@st.composite
def animations_with_one_violent_frame(draw: st.DrawFn) -> tuple[bytes, int]:
    image_format = draw(st.sampled_from(FORMATS))
    count = draw(st.integers(2, 40))
    violent = draw(st.integers(1, count - 1))
    rng = random.Random(draw(st.integers(0, 2**16)))
    calm = [(rng.randrange(60, 200),) * 3 for _ in range(count)]
    # Harmless frames vary in brightness; the violent one is red.
    colours: list[tuple[int, int, int]] = [(c[0], c[1], c[2]) for c in calm]
    colours[violent] = RED
    return animation(image_format, colours, size=(48, 32)), violent


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(animations_with_one_violent_frame())
def test_the_violent_frame_is_always_among_those_shown(case: tuple[bytes, int]) -> None:
    data, violent = case

    media = normalize_media(data, LIMITS)

    assert violent in [frame.index for frame in media.frames]
    assert len(media.frames) >= 2
