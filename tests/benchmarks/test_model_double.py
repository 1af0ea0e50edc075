"""The load doubles count visual tokens as a Qwen-VL server does, from the size they receive."""

from __future__ import annotations

import base64
import io

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from benchmarks.model_double import image_tokens
from tests.fakes.fake_vlm import _estimate_prompt_tokens
from tests.media.test_resize import qwen_smart_resize


def test_an_image_off_the_grid_costs_what_the_server_rounds_it_to() -> None:
    # 640x480 is resized by the server to 644x476: 23 x 17 tokens.
    assert image_tokens(640, 480, 28) == 23 * 17
    assert image_tokens(644, 476, 28) == 23 * 17
    # Scaled into the server's default range: up to 4 tokens, down to at most 16384.
    assert image_tokens(10, 10, 28) == 4
    assert image_tokens(8000, 8000, 28) <= 16384


@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    unit=st.sampled_from([28, 32]),
)
def test_the_count_is_qwens_smart_resize_under_its_default_pixel_range(
    width: int, height: int, unit: int
) -> None:
    if max(width, height) / min(width, height) > 200:
        return
    grid_height, grid_width = qwen_smart_resize(
        height, width, unit, 4 * unit * unit, 16384 * unit * unit
    )

    assert image_tokens(width, height, unit) == (grid_height // unit) * (grid_width // unit)


def test_the_fake_model_charges_images_by_their_size() -> None:
    def body(size: tuple[int, int]) -> dict[str, object]:
        buffer = io.BytesIO()
        Image.new("RGB", size).save(buffer, format="JPEG")
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
        content = [
            {"type": "text", "text": "x" * 40},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        return {"messages": [{"role": "user", "content": content}]}

    assert _estimate_prompt_tokens(body((640, 480))) == 10 + 23 * 17
    assert _estimate_prompt_tokens(body((1176, 672))) == 10 + 42 * 24
    assert _estimate_prompt_tokens(body((56, 56))) == 10 + 4
