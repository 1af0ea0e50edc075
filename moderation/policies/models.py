from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey


class Policy(UUIDKey, CreatedAt, Base):
    __tablename__ = "policies"

    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    # The version new submissions get; old submissions keep the one they were judged with.
    active_version: Mapped[int | None] = mapped_column(Integer)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PolicyVersion(UUIDKey, CreatedAt, Base):
    """Immutable once written (a database trigger refuses updates)."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("policy_id", "version"),)

    policy_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("policies.id", ondelete="RESTRICT"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]]
    content_sha256: Mapped[str] = mapped_column(String(64))
