"""Why an image could not be turned into model input, named after the review reasons.

A submission whose image fails here is never judged by the model and never allowed: the worker
records `reason` as the machine-readable review reason and `str(exc)` as the detail a reviewer
reads. These are not HTTP errors: the failure happens in a worker, long after the 202.
"""

from __future__ import annotations


class MediaError(Exception):
    reason: str = "media_failed"


class ImageFetchError(MediaError):
    """The URL was refused (scheme, address, redirects) or the server did not deliver in time.

    `transient` marks failures that may pass by themselves (timeouts, refused or dropped
    connections, 5xx, 408, 429, a DNS server that did not answer): those submissions are
    re-driven later. A 404, a 403, a refused address or an oversized body will not change.
    """

    reason = "fetch_failed"

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ImageDecodeError(MediaError):
    """The bytes are not an image we accept, or decoding it would cost more than the caps allow."""

    reason = "decode_failed"


class DecodeBudgetExhausted(MediaError):
    """The worker was too busy decoding other large images to decode this one in time."""

    reason = "processing_failed"


class OriginalGone(MediaError):
    """The inline upload was deleted under the retention rules and there is no URL to fetch."""

    reason = "processing_failed"
