from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, FetchedValue, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt


class AuditEvent(CreatedAt, Base):
    """Append-only, hash-chained history.

    A chain is one submission's events, or one tenant's events that belong to no submission.
    The database numbers each new event (`seq`), links it to the previous one (`prev_sha256`) and
    hashes it (`sha256`) in a BEFORE INSERT trigger that serialises appends per chain; another
    trigger refuses updates and deletes. `moderation audit verify` recomputes every chain.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index(
            "uq_audit_events_submission_seq",
            "submission_id",
            "seq",
            unique=True,
            postgresql_where=text("submission_id IS NOT NULL"),
        ),
        Index(
            "uq_audit_events_tenant_seq",
            "tenant_id",
            "seq",
            unique=True,
            postgresql_where=text("submission_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    submission_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    event: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Set by the database trigger, never by the writer.
    seq: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue())
    prev_sha256: Mapped[str | None] = mapped_column(String(64), server_default=FetchedValue())
    sha256: Mapped[str] = mapped_column(String(64), server_default=FetchedValue())
