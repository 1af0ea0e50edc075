"""Ingest tells images from other files by their first bytes, for every format the worker opens."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from moderation.media.decode import SOURCE_MIME_BY_FORMAT
from moderation.media.sniff import sniff_image_mime


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_format_the_worker_opens_is_recognised(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format=fmt)
    assert sniff_image_mime(buffer.getvalue()) == SOURCE_MIME_BY_FORMAT[fmt]


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj",
        b"hello, this is a text file\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x00\x00\x00\x18ftypmp42",  # an MP4 video
        b"PK\x03\x04",  # a zip archive
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # RIFF, but audio
        b"\xff\xd8",  # too short to be a JPEG
        b"",
    ],
    ids=["pdf", "text", "svg", "mp4", "zip", "wav", "truncated", "empty"],
)
def test_other_files_are_not_images(data):
    assert sniff_image_mime(data) is None
