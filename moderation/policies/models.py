from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum
from moderation.core.time import utcnow


class PolicyVersionStatus(StrEnum):
    """Where a version stands. Only the content of a version is immutable, never its status."""

    # Written, not yet used for live traffic.
    draft = "draft"
    # New submissions of the tenant are judged and decided by it; one per policy.
    active = "active"
    # Live traffic is judged by it too, but it never decides; one per policy.
    shadow = "shadow"
    # Was active once and has been replaced; old verdicts keep pointing at it.
    retired = "retired"


class Policy(UUIDKey, CreatedAt, Base):
    """A tenant's rubric: one slug, many versions. Another tenant never sees it."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("tenant_id", "slug"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="RESTRICT"))
    slug: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))


class PolicyVersion(UUIDKey, CreatedAt, Base):
    """The document is immutable once written (a database trigger refuses to rewrite it); the
    status moves draft -> active -> retired, or into and out of shadow."""

    __tablename__ = "policy_versions"
    __table_args__ = (
        UniqueConstraint("policy_id", "version"),
        # At most one active and one shadow version per policy, whatever races the API sees.
        Index(
            "uq_policy_versions_one_active",
            "policy_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        Index(
            "uq_policy_versions_one_shadow",
            "policy_id",
            unique=True,
            postgresql_where=text("status = 'shadow'"),
        ),
    )

    policy_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("policies.id", ondelete="RESTRICT"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, Any]]
    content_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[PolicyVersionStatus] = mapped_column(
        str_enum(PolicyVersionStatus),
        default=PolicyVersionStatus.draft,
        server_default=PolicyVersionStatus.draft.value,
    )
    status_changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), default=utcnow
    )
    # The first time it went live; a version with one is `retired`, not `draft`, once replaced.
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ShadowUsage(Base):
    """Shadow model calls per tenant and UTC day, for the daily cap and the metrics.

    A row per day keeps the cap check one conditional upsert, exact across worker processes.
    """

    __tablename__ = "shadow_usage"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    # Shadow runs not made because the day's cap was reached.
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    # Shadow runs that raised; the live decision stood regardless.
    failed: Mapped[int] = mapped_column(Integer, default=0)
