"""Give the memory of large freed buffers back to the operating system at once.

glibc's malloc serves each thread from an arena of its own, and it raises its threshold for
serving allocations with their own memory maps to the size of the largest buffer freed so far
(up to 32 MB). After a few image decodes, a decoded strip or a Pillow block of 16 MB therefore
comes from a thread's arena and stays there when freed: with sixteen threads each keeping the
high-water mark of its own decodes, a worker measured at 3 GB resident while the decode budget
held 320 MB. A fixed threshold keeps every buffer of a megabyte or more in a memory map of its
own, returned to the system when freed (the same 16-thread run peaked at under 500 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt's parameter number for the mmap threshold (malloc.h), stable across glibc versions.
_M_MMAP_THRESHOLD = -3
LARGE_ALLOCATION_BYTES = 1024 * 1024


def return_large_allocations(threshold: int = LARGE_ALLOCATION_BYTES) -> bool:
    """Whether the allocator now maps buffers of `threshold` bytes or more on their own.

    Only glibc has this knob; elsewhere (musl, macOS) nothing changes and False comes back.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not applied:
        logger.warning("the allocator refused an mmap threshold of %d bytes", threshold)
    return applied
