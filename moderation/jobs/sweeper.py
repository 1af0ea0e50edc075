"""The sweeper: one loop per worker process that runs periodic sweeps and due jobs.

Periodic sweeps are plain functions run every so often (the submission re-send sweep is one).
Jobs are rows of the `jobs` table, claimed with `FOR UPDATE SKIP LOCKED` so that the sweepers
of several workers share the work without taking the same row, and run on a small thread pool
so one slow job (a callback receiver taking its full timeout) does not hold up the others or the
sweeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from moderation.jobs.service import (
    ClaimedJob,
    JobContext,
    JobKind,
    claim_due_jobs,
    run_claimed_job,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodicSweep:
    name: str
    # Returns how many things it handled, for the log.
    run: Callable[[], int]
    interval_s: float


class Sweeper:
    def __init__(
        self,
        context: JobContext,
        *,
        kinds: Sequence[JobKind],
        sweeps: Sequence[PeriodicSweep] = (),
        concurrency: int = 4,
    ) -> None:
        self.context = context
        self.kinds = list(kinds)
        self.sweeps = list(sweeps)
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")
        self._running = 0
        self._lock = threading.Lock()
        # Every sweep runs at the first tick: a worker that starts after a crash recovers at once.
        self._next_sweep_at = {sweep.name: 0.0 for sweep in self.sweeps}
        self._sweep_failures = {sweep.name: 0 for sweep in self.sweeps}

    def tick(self) -> int:
        """Run the sweeps that are due and start due jobs in free slots; jobs started."""
        now = time.monotonic()
        for sweep in self.sweeps:
            if now < self._next_sweep_at[sweep.name]:
                continue
            self._next_sweep_at[sweep.name] = now + sweep.interval_s
            try:
                count = sweep.run()
                self._sweep_failures[sweep.name] = 0
                if count:
                    logger.info("%s: %d", sweep.name, count)
            except Exception as exc:
                # Back off while it keeps failing (the database is down, say), up to a minute,
                # and resume the normal pace with the first run that works.
                failures = min(self._sweep_failures[sweep.name] + 1, 6)
                self._sweep_failures[sweep.name] = failures
                wait = min(sweep.interval_s * 2**failures, max(sweep.interval_s, 60.0))
                self._next_sweep_at[sweep.name] = now + wait
                logger.warning(
                    "%s failed (%s: %s); trying again in %.0fs",
                    sweep.name,
                    type(exc).__name__,
                    exc,
                    wait,
                )
        started = 0
        for kind in self.kinds:
            with self._lock:
                free = self.concurrency - self._running
            try:
                claimed = claim_due_jobs(self.context.sessions, kind, free, self.context.settings)
            except Exception:
                logger.exception("claiming %s jobs failed", kind.name)
                continue
            for job in claimed:
                with self._lock:
                    self._running += 1
                self._pool.submit(self._run, job, kind)
                started += 1
        return started

    def _run(self, job: ClaimedJob, kind: JobKind) -> None:
        try:
            run_claimed_job(job, kind, self.context)
        finally:
            with self._lock:
                self._running -= 1

    def run_until(self, stop: threading.Event, poll_interval_s: float) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                logger.exception("sweeper tick failed")
            stop.wait(poll_interval_s)

    def drain(self, timeout_s: float) -> bool:
        """Wait for running jobs (tests, shutdown); True when none is left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._running == 0:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        # Jobs still running finish on their own threads; one cut short is re-run after its
        # lease, so nothing waits here.
        self._pool.shutdown(wait=False, cancel_futures=True)
