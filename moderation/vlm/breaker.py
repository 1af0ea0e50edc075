"""A circuit breaker for the model server, one per worker process.

When the model server is down, every submission would otherwise spend its full retry budget
(timeouts, backoff sleeps) before going to review, holding a worker thread for a minute each and
piling load onto a server that is trying to come back. After `failure_threshold` consecutive
failed calls (connection errors, timeouts, 5xx) the breaker opens: calls fail at once as
`model_unavailable`, so the submissions go to re-drive instead of to reviewers. After the
cool-down one probe call is let through (half-open); its success closes the breaker, its
failure opens it for another cool-down.

Per process, not shared: each worker learns of an outage from its own calls within
`failure_threshold` calls, which costs less than a shared store on every call. Each worker
publishes its breaker's state to Postgres (see `moderation.pipeline.heartbeat`), so the API can
report it in `/readyz` and `/metrics`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from moderation.vlm.errors import ModelUnavailable


class CircuitState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


@dataclass(frozen=True)
class CircuitSnapshot:
    state: CircuitState
    consecutive_failures: int
    opened_at: datetime | None
    last_error: str | None


class CircuitOpen(ModelUnavailable):
    """The breaker refused the call: the model server failed too often just now."""


class CircuitBreaker:
    """Thread-safe; shared by every thread of a worker that calls the model."""

    def __init__(
        self,
        failure_threshold: int,
        cooldown_s: float,
        *,
        probe_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        # A probe whose caller never reported back (a bug, a killed thread) must not keep the
        # breaker half-open for ever: after this long another probe may go.
        self._probe_timeout_s = probe_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.closed
        self._failures = 0
        self._opened_at_monotonic = 0.0
        self._opened_at: datetime | None = None
        self._probe_started: float | None = None
        self._last_error: str | None = None
        self._listeners: list[Callable[[CircuitSnapshot], None]] = []

    def add_listener(self, listener: Callable[[CircuitSnapshot], None]) -> None:
        """Called (outside the lock) after every change of state."""
        self._listeners.append(listener)

    def before_call(self) -> None:
        """Raise `CircuitOpen` unless a call may go to the model server now."""
        with self._lock:
            now = self._clock()
            if self._state is CircuitState.closed:
                return
            if self._state is CircuitState.open:
                wait = self._opened_at_monotonic + self.cooldown_s - now
                if wait > 0:
                    raise CircuitOpen(self._refusal(f"next probe in {wait:.0f} s"))
                self._state = CircuitState.half_open
                self._probe_started = now
                changed = self._snapshot()
            else:
                probe_running = (
                    self._probe_started is not None
                    and now - self._probe_started < self._probe_timeout_s
                )
                if probe_running:
                    raise CircuitOpen(self._refusal("a probe call is in flight"))
                self._probe_started = now
                return
        self._notify(changed)

    def record_success(self) -> None:
        """The server answered (any status it would answer again: 2xx, or a 4xx about the
        request); it is up."""
        with self._lock:
            was_closed = self._state is CircuitState.closed
            self._failures = 0
            if was_closed:
                return
            self._state = CircuitState.closed
            self._probe_started = None
            self._opened_at = None
            changed = self._snapshot()
        self._notify(changed)

    def record_failure(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = error
            if self._state is CircuitState.closed and self._failures < self.failure_threshold:
                return
            if self._state is CircuitState.open:
                return  # a call that started before the breaker opened
            self._state = CircuitState.open
            self._opened_at_monotonic = self._clock()
            self._opened_at = datetime.now(UTC)
            self._probe_started = None
            changed = self._snapshot()
        self._notify(changed)

    def snapshot(self) -> CircuitSnapshot:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> CircuitSnapshot:
        return CircuitSnapshot(
            state=self._state,
            consecutive_failures=self._failures,
            opened_at=self._opened_at,
            last_error=self._last_error,
        )

    def _refusal(self, when: str) -> str:
        return (
            f"model circuit open after {self._failures} consecutive failures "
            f"({self._last_error}); {when}"
        )

    def _notify(self, snapshot: CircuitSnapshot) -> None:
        for listener in self._listeners:
            listener(snapshot)
