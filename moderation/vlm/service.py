"""What the service knows about the model server's health, read from the workers' reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from moderation.config import Settings
from moderation.vlm import repository
from moderation.vlm.breaker import CircuitState


@dataclass(frozen=True)
class CircuitSummary:
    """The circuit breakers of the workers alive now (each reports every heartbeat)."""

    workers: int
    by_state: dict[CircuitState, int] = field(default_factory=dict)
    open_since: datetime | None = None

    @property
    def open_workers(self) -> int:
        return self.by_state.get(CircuitState.open, 0) + self.by_state.get(
            CircuitState.half_open, 0
        )

    @property
    def state(self) -> CircuitState:
        """Open if any worker's breaker is open (or probing), closed otherwise."""
        if self.by_state.get(CircuitState.open):
            return CircuitState.open
        if self.by_state.get(CircuitState.half_open):
            return CircuitState.half_open
        return CircuitState.closed


def report_freshness(settings: Settings) -> timedelta:
    """A worker reports at every heartbeat; three missed beats and it counts as gone."""
    return timedelta(seconds=max(3 * settings.lease_renew_interval_s, 10.0))


def circuit_summary(session: Session, settings: Settings) -> CircuitSummary:
    rows = repository.live_circuits(session, report_freshness(settings))
    by_state: dict[CircuitState, int] = {}
    for row in rows:
        by_state[row.state] = by_state.get(row.state, 0) + 1
    opened = [row.opened_at for row in rows if row.opened_at is not None]
    return CircuitSummary(
        workers=len(rows), by_state=by_state, open_since=min(opened) if opened else None
    )
