"""A worker process's share of the model server: how many judgements it keeps in flight, and who
goes first when they compete.

Live submissions and background work (backtests) call the same model through the same client.
Without a common budget, a backtest of ten thousand items would add its calls on top of live
traffic, and the model server's queue, not this service, would decide who waits. So every
judgement takes a slot first:

- there are `total` slots per process (MODERATION_VLM_MAX_CONCURRENCY, the same number as the
  worker's threads), so background work never adds calls beyond what live traffic alone may
  make;
- background work holds at most `background_cap` of them at once (a fraction of the total,
  MODERATION_BACKTEST_SHARE), so live traffic always has the rest;
- and a background caller takes a free slot only while no live caller is waiting for one: when
  both wait, the slot that frees goes to live work. A live judgement is therefore delayed at
  most by background calls already in flight, never by background calls queued behind it.

A slot is held for a whole judgement (the call, its retries, and the one re-ask on an invalid
reply), not per HTTP request: a judgement's backoff sleeps are short and bounded by its
deadline, and counting judgements keeps the rule simple enough to trust.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum


class CallPriority(StrEnum):
    # Submissions waiting for their decision (and their shadow runs).
    live = "live"
    # Work nobody is waiting on right now: backtests.
    background = "background"


@dataclass(frozen=True)
class SlotUse:
    live: int
    background: int
    live_waiting: int
    background_waiting: int


class ModelSlots:
    """Counts judgements in flight per priority; thread-safe, one per worker process."""

    def __init__(self, total: int, background_cap: int) -> None:
        if total < 1:
            raise ValueError("a model needs at least one slot")
        self.total = total
        self.background_cap = max(1, min(background_cap, total))
        self._condition = threading.Condition()
        self._in_use = {CallPriority.live: 0, CallPriority.background: 0}
        self._waiting = {CallPriority.live: 0, CallPriority.background: 0}

    def _free_for(self, priority: CallPriority) -> bool:
        in_use = self._in_use[CallPriority.live] + self._in_use[CallPriority.background]
        if in_use >= self.total:
            return False
        if priority is CallPriority.live:
            return True
        return (
            self._waiting[CallPriority.live] == 0
            and self._in_use[CallPriority.background] < self.background_cap
        )

    def acquire(self, priority: CallPriority, *, deadline: float | None = None) -> bool:
        """Take a slot, waiting until `deadline` (a `time.monotonic()` value) at most."""
        with self._condition:
            self._waiting[priority] += 1
            try:
                while not self._free_for(priority):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._condition.wait(remaining)
                self._in_use[priority] += 1
                return True
            finally:
                self._waiting[priority] -= 1
                # A live caller that gave up may have been what held background callers back.
                self._condition.notify_all()

    def release(self, priority: CallPriority) -> None:
        with self._condition:
            if self._in_use[priority] <= 0:
                raise RuntimeError(f"released a {priority} slot that was not held")
            self._in_use[priority] -= 1
            self._condition.notify_all()

    @contextmanager
    def hold(self, priority: CallPriority, *, deadline: float | None = None) -> Iterator[bool]:
        """`with slots.hold(...) as held:` runs the body with a slot when `held` is True."""
        held = self.acquire(priority, deadline=deadline)
        try:
            yield held
        finally:
            if held:
                self.release(priority)

    def use(self) -> SlotUse:
        with self._condition:
            return SlotUse(
                live=self._in_use[CallPriority.live],
                background=self._in_use[CallPriority.background],
                live_waiting=self._waiting[CallPriority.live],
                background_waiting=self._waiting[CallPriority.background],
            )
