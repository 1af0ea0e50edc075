from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt


class AuditEvent(CreatedAt, Base):
    """Append-only history of a submission (a database trigger refuses updates and deletes)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_submission", "submission_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    submission_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    event: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
