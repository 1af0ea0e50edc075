"""How much decoded pixel memory a worker's threads may hold at once.

One decode of a large image holds its whole pixel buffer (Pillow decodes PNG, TIFF, GIF and WebP
in one piece), so a worker running many threads could hold many of those at once: sixteen
threads decoding 8000x8000 RGBA PNGs would need 4 GB. The budget is shared by all threads of a
process. A large decode waits, first come first served, until its estimated working memory fits
next to the decodes already running (the decoder refuses any image that could never fit).
Small decodes never wait, so the common case pays nothing; they are counted, so large decodes
make room for them, and what they can add beyond the budget is bounded by the thread count times
the small limit.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from moderation.media.errors import DecodeBudgetExhausted

# Decodes estimated at or below this never wait: pictures up to about 800x600, with their
# working copies and the decoder's fixed overhead.
SMALL_DECODE_BYTES = 24 * 1024 * 1024


@dataclass(frozen=True)
class BudgetUsage:
    in_use: int
    peak_in_use: int
    waits: int
    running_large: int


class DecodeBudget:
    def __init__(self, budget_bytes: int, *, small_bytes: int = SMALL_DECODE_BYTES) -> None:
        if budget_bytes < 1:
            raise ValueError("the decode budget must be positive")
        self.budget_bytes = budget_bytes
        self.small_bytes = small_bytes
        self._condition = threading.Condition()
        self._in_use = 0
        self._peak = 0
        self._waits = 0
        self._running = 0
        self._queue: deque[int] = deque()
        self._tickets = itertools.count()

    @contextmanager
    def reserve(self, cost: int, *, deadline: float | None = None) -> Iterator[None]:
        """Hold `cost` bytes of the budget while the block runs.

        `deadline` is a `time.monotonic()` value: a decode still waiting then raises
        DecodeBudgetExhausted rather than running past its task's time limit.
        """
        if cost <= self.small_bytes:
            with self._condition:
                self._take(cost, waited=False)
        else:
            self._acquire(cost, deadline)
        try:
            yield
        finally:
            with self._condition:
                self._in_use -= cost
                self._running -= 1
                self._condition.notify_all()

    def usage(self) -> BudgetUsage:
        with self._condition:
            return BudgetUsage(self._in_use, self._peak, self._waits, self._running)

    def _acquire(self, cost: int, deadline: float | None) -> None:
        with self._condition:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            waited = False
            try:
                while not self._may_start(ticket, cost):
                    waited = True
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise DecodeBudgetExhausted(
                            f"waited too long for {cost} bytes of decoding memory "
                            f"({self._in_use} of {self.budget_bytes} in use)"
                        )
                    self._condition.wait(remaining)
            except BaseException:
                self._queue.remove(ticket)
                self._condition.notify_all()
                raise
            self._queue.popleft()
            self._take(cost, waited=waited)
            # The next in line may fit too.
            self._condition.notify_all()

    def _take(self, cost: int, *, waited: bool) -> None:
        self._in_use += cost
        self._running += 1
        self._peak = max(self._peak, self._in_use)
        self._waits += waited

    def _may_start(self, ticket: int, cost: int) -> bool:
        # First come, first served: a big decode is not overtaken for ever by smaller ones.
        if self._queue[0] != ticket:
            return False
        return self._running == 0 or self._in_use + cost <= self.budget_bytes
