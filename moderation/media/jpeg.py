"""Remove everything but the picture from a JPEG without decoding it.

A JPEG is a sequence of marker segments. The ones that make the picture are the frame header
(SOF), the quantisation and Huffman tables (DQT, DHT), the restart interval (DRI) and the scans
(SOS, each followed by its entropy-coded data), up to the end marker (EOI). Everything else is
about the picture, not of it: JFIF and EXIF headers (camera, GPS position, serial numbers,
thumbnails), ICC profiles, XMP, Photoshop/IPTC blocks (APP0-APP15), comments (COM), and
whatever a camera or a tool appended after EOI. Copying only the first kind gives the same
pixels in a file that says nothing about where it came from.

Only the JPEGs every decoder reads the same way are accepted: 8-bit baseline, extended or
progressive Huffman coding, one or three components, no Adobe colour transform block (its flag
decides how a decoder reads the components). A three-component file whose component
ids spell "RGB" is refused, because without its JFIF header libjpeg would read it as RGB rather
than YCbCr, and the colours would change.
"""

from __future__ import annotations

import re

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
# Baseline, extended sequential and progressive DCT with Huffman coding.
_FRAME_MARKERS = frozenset({0xC0, 0xC1, 0xC2})
_SOS = 0xDA
# Tables, restart interval and the number of lines: kept wherever they appear.
_TABLE_MARKERS = frozenset({0xC4, 0xDB, 0xDD, 0xDC})
_APP_FIRST, _APP_LAST = 0xE0, 0xEF
_ADOBE = 0xEE
_COM = 0xFE
# Inside entropy-coded data a 0xFF byte is followed by 0x00 (a stuffed 0xFF) or by a restart
# marker (RST0-RST7); anything else after it is the next marker segment.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def strip_metadata(data: bytes) -> bytes | None:
    """The same JPEG with only the segments that make the picture, or None if it is not one
    this can vouch for (another coding, an unknown segment, no end marker)."""
    if not data.startswith(_SOI):
        return None
    kept = [_SOI]
    position = 2
    seen_frame = seen_scan = False
    size = len(data)
    while position + 2 <= size:
        if data[position] != 0xFF:
            return None
        # Any number of 0xFF fill bytes may precede a marker.
        while position + 2 < size and data[position + 1] == 0xFF:
            position += 1
        marker = data[position + 1]
        if marker == 0xD9:
            if not seen_scan:
                return None
            kept.append(_EOI)
            return b"".join(kept)
        if position + 4 > size:
            return None
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if end > size or end < position + 4:
            return None
        if marker == _ADOBE and data.startswith(b"Adobe", position + 4):
            # Its colour transform flag decides how the components are read: without it a
            # decoder would read them another way.
            return None
        if _APP_FIRST <= marker <= _APP_LAST or marker == _COM:
            position = end
            continue
        if marker in _FRAME_MARKERS:
            if seen_frame or not _plain_frame(data[position + 4 : end]):
                return None
            seen_frame = True
        elif marker == _SOS:
            if not seen_frame:
                return None
            seen_scan = True
            following = _NEXT_MARKER.search(data, end)
            if following is None:
                return None
            kept.append(data[position : following.start()])
            position = following.start()
            continue
        elif marker not in _TABLE_MARKERS:
            return None
        kept.append(data[position:end])
        position = end
    return None


def _plain_frame(header: bytes) -> bool:
    """8-bit samples, one or three components, and component ids that mean YCbCr or grey."""
    if len(header) < 6 or header[0] != 8:
        return False
    components = header[5]
    if components not in (1, 3) or len(header) < 6 + 3 * components:
        return False
    ids = bytes(header[6 + 3 * index] for index in range(components))
    return ids != b"RGB"
