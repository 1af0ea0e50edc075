"""Download a tenant-supplied image URL, within the size and time caps.

The URL is attacker-chosen, so the request goes through the shared outbound guard
(`moderation.outbound.http`): public addresses only unless allow-listed in
MODERATION_FETCH_ALLOW_HOSTS, DNS answers pinned, every redirect hop checked again, one deadline
for the whole fetch. Whatever goes wrong, including a redirect to `data:` or `file:`, ends as an
ImageFetchError, which the worker records as the review reason `fetch_failed`.
"""

from __future__ import annotations

import httpx

from moderation.config import Settings
from moderation.media.errors import ImageFetchError
from moderation.outbound.addresses import is_blocked_address
from moderation.outbound.http import OutboundError, OutboundLimits, redacted, send_guarded

USER_AGENT = "moderation-fetch/0.1"

__all__ = ["USER_AGENT", "fetch_image", "is_blocked_address"]


def fetch_image(
    url: str, settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> bytes:
    """Return the body of `url`, following redirects, within the size and time caps.

    `transport` replaces the network for tests; the address checks still run.
    """
    limits = OutboundLimits(
        allow_hosts=frozenset(settings.fetch_allow_hosts),
        allow_hosts_setting="MODERATION_FETCH_ALLOW_HOSTS",
        total_timeout_s=settings.fetch_timeout_s,
        max_redirects=settings.fetch_max_redirects,
    )
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*"}
    try:
        with send_guarded("GET", url, limits, headers=headers, transport=transport) as response:
            if not 200 <= response.status_code < 300:
                raise ImageFetchError(
                    f"{redacted(response.url)} answered HTTP {response.status_code}",
                    transient=_is_transient_status(response.status_code),
                )
            return response.read_capped(settings.image_max_bytes)
    except OutboundError as exc:
        raise ImageFetchError(str(exc), transient=exc.transient) from exc


def _is_transient_status(status: int) -> bool:
    """Server errors, timeouts reported by a proxy, and rate limiting pass; the rest stays."""
    return status >= 500 or status in (408, 425, 429)
