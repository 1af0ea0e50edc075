"""Per-key rate limits, by route class, on the maintained `limits` library.

Each API key gets its own budget per class of route (ingest, read, review, admin), so one
runaway script cannot starve the other keys of its tenant or of other tenants, nor write
policy versions by the thousand. The counters live in Redis when one is configured, shared by
every API process; in memory otherwise (the embedded default runs one API process).

Limits fail open: if Redis cannot be reached, requests pass (with a warning, and without asking
Redis again for a few seconds), because an outage of the limiter's store must not become an
outage of ingest.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from enum import StrEnum

from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from moderation.config import Settings
from moderation.core.errors import TooManyRequests

logger = logging.getLogger(__name__)

# How long to let requests through unchecked after the store failed, before asking it again.
_STORE_DOWN_PAUSE_S = 5.0
# Redis must answer at once or be treated as down: every authenticated request waits on it.
_REDIS_TIMEOUT_S = 0.5


class RouteClass(StrEnum):
    ingest = "ingest"
    read = "read"
    review = "review"
    admin = "admin"


def rate_limit_storage_uri(settings: Settings) -> str:
    """The store for the counters: the configured one, else a Redis broker, else memory."""
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    broker = settings.broker_url or ""
    if broker.startswith(("redis://", "rediss://")):
        return broker
    return "memory://"


class RateLimiter:
    """Thread-safe; one per API process."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.storage_uri = rate_limit_storage_uri(settings)
        options: dict[str, float] = {}
        if self.storage_uri.startswith(("redis://", "rediss://")):
            options = {"socket_timeout": _REDIS_TIMEOUT_S, "socket_connect_timeout": 0.5}
        storage = storage_from_string(self.storage_uri, **options)
        if not isinstance(storage, Storage):
            raise ValueError(f"{self.storage_uri} is an asyncio store; use a synchronous one")
        self._storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(self._storage)
        self._limits: dict[RouteClass, list[RateLimitItem]] = {
            route_class: parse_many(getattr(settings, f"rate_limit_{route_class.value}"))
            for route_class in RouteClass
        }
        self._lock = threading.Lock()
        self._store_down_until = 0.0

    def check(self, route_class: RouteClass, key: str) -> None:
        """Count one request of `key`; raise `TooManyRequests` if it is over a limit."""
        if not self.enabled or time.monotonic() < self._store_down_until:
            return
        try:
            for item in self._limits[route_class]:
                if not self._limiter.hit(item, route_class.value, key):
                    stats = self._limiter.get_window_stats(item, route_class.value, key)
                    retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                    raise TooManyRequests(
                        f"this key is over its {route_class.value} rate limit of {item}; "
                        f"retry in {retry_after} s",
                        retry_after_s=retry_after,
                    )
        except TooManyRequests:
            raise
        except Exception as exc:
            with self._lock:
                self._store_down_until = time.monotonic() + _STORE_DOWN_PAUSE_S
            logger.warning(
                "rate-limit store unreachable (%s); letting requests through for %.0f s",
                type(exc).__name__,
                _STORE_DOWN_PAUSE_S,
            )

    def reset(self) -> None:
        """Forget every counter (tests, and an operator lifting a block at once)."""
        self._storage.reset()
