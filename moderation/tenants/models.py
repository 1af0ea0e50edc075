from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Date, DateTime, Enum, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey


class Role(StrEnum):
    ingest = "ingest"
    reviewer = "reviewer"
    admin = "admin"


class Tenant(UUIDKey, CreatedAt, Base):
    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(200))
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    # Signs outbound callbacks (Standard Webhooks); kept in clear because HMAC needs it.
    webhook_secret: Mapped[str] = mapped_column(String(200))
    # When set, inbound submissions must carry a valid Standard Webhooks signature.
    inbound_secret: Mapped[str | None] = mapped_column(String(200))
    # After a rotation the replaced secret keeps working until the overlap ends: callbacks are
    # signed with both, and inbound signatures made with either are accepted.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(200))
    previous_webhook_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    previous_inbound_secret: Mapped[str | None] = mapped_column(String(200))
    previous_inbound_secret_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Model tokens (prompt + completion) the tenant may spend per UTC day; None is unlimited.
    # Past it, submissions that would need a model call go to review (`budget_exceeded`).
    daily_token_budget: Mapped[int | None] = mapped_column(BigInteger)


class TenantTokenUsage(Base):
    """Model tokens a tenant spent on one UTC day: one counter row, added to as verdicts land.

    A counter rather than a sum over verdicts, so checking the budget before every model call
    reads one row however many calls the tenant made today.
    """

    __tablename__ = "tenant_token_usage"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ApiKey(UUIDKey, CreatedAt, Base):
    __tablename__ = "api_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])
    )
    # Only a hash is stored: the key is shown once, at creation.
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    # Who holds the key: the reviewer named in audit trails, claims and reports.
    name: Mapped[str | None] = mapped_column(String(100))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
