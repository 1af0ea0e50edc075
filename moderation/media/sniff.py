"""Tell an image from anything else by its first bytes, cheaply, at ingest.

The worker decodes with Pillow later; this only spares a client the round trip of a 202 and a
`decode_failed` review for a PDF, a text file or a video sent as an image. The signatures are
those of the formats the worker opens (moderation.media.decode), so whatever passes here is at
least claimed to be one of them; whether it decodes is still the worker's call.
"""

from __future__ import annotations

SNIFF_BYTES = 16

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),
    (b"MM\x00+", "image/tiff"),
)

ACCEPTED_MIME_TYPES = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
)


def sniff_image_mime(data: bytes) -> str | None:
    """The image type the bytes start like, or None when they are not an image we accept."""
    head = data[:SNIFF_BYTES]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for signature, mime in _SIGNATURES:
        if head.startswith(signature):
            return mime
    return None
