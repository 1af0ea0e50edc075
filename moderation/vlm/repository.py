"""All SQL about the model: the circuit states that workers publish."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from moderation.vlm.breaker import CircuitSnapshot
from moderation.vlm.models import ModelCircuit

# Rows of workers gone this long are deleted by the next worker that publishes.
_FORGET_AFTER = timedelta(days=1)


def publish_circuit(session: Session, worker: str, model: str, snapshot: CircuitSnapshot) -> None:
    values = {
        "model": model,
        "state": snapshot.state,
        "consecutive_failures": snapshot.consecutive_failures,
        "opened_at": snapshot.opened_at,
        "last_error": snapshot.last_error[:2000] if snapshot.last_error else None,
        "updated_at": func.now(),
    }
    session.execute(
        insert(ModelCircuit)
        .values(worker=worker, **values)
        .on_conflict_do_update(index_elements=[ModelCircuit.worker], set_=values)
    )
    session.execute(
        delete(ModelCircuit).where(ModelCircuit.updated_at < func.now() - _FORGET_AFTER)
    )


def withdraw_circuit(session: Session, worker: str) -> None:
    """A worker that stops cleanly takes its row with it."""
    session.execute(delete(ModelCircuit).where(ModelCircuit.worker == worker))


def live_circuits(session: Session, fresh_within: timedelta) -> list[ModelCircuit]:
    return list(
        session.scalars(
            select(ModelCircuit)
            .where(ModelCircuit.updated_at >= func.now() - fresh_within)
            .order_by(ModelCircuit.worker)
        )
    )
