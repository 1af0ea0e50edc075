"""The worker's heartbeat: one thread per worker process that keeps its claims alive.

A lease must be short, so that a killed worker's submissions come back soon, yet a model call
may take minutes. So the lease is renewed while its worker lives: every `lease_s / 3` this
thread extends every lease the process holds, in one UPDATE. A process that dies stops
renewing, and its leases run out within `lease_s`.

A lease is renewed only until its task's hard time limit. A task that hangs past it (a hung
thread cannot be killed in the threads pool) loses its lease like a dead worker would, and the
relay hands the submission to another worker; the lease check before the final write keeps
the late result out.

The same beat publishes the model circuit breaker's state, so the API can report it; a change
of state wakes the thread at once.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings
from moderation.database import session_scope
from moderation.submissions import repository
from moderation.vlm import repository as model_repository
from moderation.vlm.breaker import CircuitSnapshot
from moderation.vlm.client import VLMClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _HeldLease:
    token: uuid.UUID
    renew_until: float  # time.monotonic()


class WorkerHeartbeat:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        vlm: VLMClient,
        worker_name: str,
    ) -> None:
        self._lease = timedelta(seconds=settings.lease_s)
        self._interval = settings.lease_renew_interval_s
        self._sessions = sessions
        self._vlm = vlm
        self._worker_name = worker_name
        self._lock = threading.Lock()
        self._held: dict[uuid.UUID, _HeldLease] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._persistent = False
        vlm.circuit.add_listener(self._circuit_changed)

    @contextmanager
    def hold(
        self, submission_id: uuid.UUID, lease_token: uuid.UUID, *, renew_for_s: float
    ) -> Iterator[None]:
        """Keep the lease alive while the block runs, for at most `renew_for_s` seconds."""
        with self._lock:
            self._held[submission_id] = _HeldLease(lease_token, time.monotonic() + renew_for_s)
            self._start_locked()
        try:
            yield
        finally:
            with self._lock:
                held = self._held.get(submission_id)
                if held is not None and held.token == lease_token:
                    del self._held[submission_id]

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def start(self) -> None:
        """Beat until `stop()`: a worker process's heartbeat, started with the worker.

        Without it (a pipeline run inside another process: tests, tools), `hold` starts the
        thread on demand, and it ends once it holds no lease, so an idle process neither keeps
        a thread nor keeps reporting a circuit nobody uses.
        """
        with self._lock:
            self._persistent = True
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="moderation-heartbeat", daemon=True)
        self._thread.start()
        # The first beat goes at once: the API learns of this worker's circuit without delay.
        self._wake.set()

    def stop(self) -> None:
        """Stop beating and take this worker's circuit row away (a clean shutdown)."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            thread, self._thread = self._thread, None
            self._persistent = False
        if thread is not None:
            thread.join(timeout=10)
        try:
            with session_scope(self._sessions) as session:
                model_repository.withdraw_circuit(session, self._worker_name)
        except Exception as exc:
            logger.warning("could not withdraw the circuit state of %s: %s", self._worker_name, exc)

    def beat(self) -> None:
        """Renew every live lease and publish the breaker's state, in one transaction."""
        now = time.monotonic()
        with self._lock:
            overdue = [sid for sid, lease in self._held.items() if lease.renew_until <= now]
            for submission_id in overdue:
                del self._held[submission_id]
            leases = [(sid, lease.token) for sid, lease in self._held.items()]
        for submission_id in overdue:
            logger.warning(
                "submission %s ran past the task's hard time limit; its lease is left to expire",
                submission_id,
            )
        with session_scope(self._sessions) as session:
            renewed = repository.renew_leases(session, leases, self._lease) if leases else set()
            model_repository.publish_circuit(
                session, self._worker_name, self._vlm.model, self._vlm.circuit.snapshot()
            )
        lost = [(sid, token) for sid, token in leases if sid not in renewed]
        if lost:
            with self._lock:
                for submission_id, token in lost:
                    held = self._held.get(submission_id)
                    if held is not None and held.token == token:
                        del self._held[submission_id]
            logger.warning(
                "lost the lease on %d submissions (%s); their results will be discarded",
                len(lost),
                ", ".join(str(sid) for sid, _ in lost[:5]),
            )

    def _circuit_changed(self, snapshot: CircuitSnapshot) -> None:
        logger.warning(
            "model circuit %s (%d consecutive failures; last: %s)",
            snapshot.state.value,
            snapshot.consecutive_failures,
            snapshot.last_error,
        )
        with self._lock:
            self._start_locked()
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            # After a failed beat (database unreachable) try again sooner, backing off up to the
            # normal interval: the leases need renewing as soon as the database is back.
            wait = self._interval if failures == 0 else min(self._interval, 0.5 * 2**failures)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.beat()
                failures = 0
            except Exception as exc:
                failures = min(failures + 1, 10)
                logger.warning("heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)
            with self._lock:
                if not self._persistent and not self._held:
                    self._thread = None
                    return
