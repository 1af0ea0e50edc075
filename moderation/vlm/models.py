"""What each worker process last said about its model circuit breaker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, str_enum
from moderation.vlm.breaker import CircuitState


class ModelCircuit(Base):
    """One row per live worker process, refreshed by its heartbeat.

    The breaker lives in each worker's memory; this row is how the API (another process) learns
    of it. A row whose `updated_at` is old belongs to a worker that is gone and is ignored.
    """

    __tablename__ = "model_circuits"

    worker: Mapped[str] = mapped_column(String(256), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    state: Mapped[CircuitState] = mapped_column(str_enum(CircuitState))
    consecutive_failures: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
