from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from moderation.core.models import Base, CreatedAt, UUIDKey, str_enum


class EventType(StrEnum):
    decided = "moderation.decided"
    review_required = "moderation.review_required"


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    # Every attempt of the schedule failed.
    failed = "failed"
    # The receiver answered 410 Gone (now or for an earlier event): nothing more is sent there.
    disabled = "disabled"


class AttemptOutcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    # 410 Gone: the receiver asked never to be called again.
    gone = "gone"


class WebhookEndpoint(UUIDKey, CreatedAt, Base):
    """A receiver URL of a tenant; disabled when it answers 410 Gone."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (UniqueConstraint("tenant_id", "url"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class WebhookDelivery(UUIDKey, CreatedAt, Base):
    """One event for one receiver, with its schedule. Its attempts are WebhookAttempt rows.

    The body is stored as the exact text that is signed and sent, so every attempt and every
    redelivery sends the same bytes under the same webhook-id.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id"),
        UniqueConstraint("submission_id", "sequence"),
        Index("ix_webhook_deliveries_tenant_created", "tenant_id", "created_at", "id"),
    )

    webhook_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    submission_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[EventType] = mapped_column(str_enum(EventType, 64))
    # Per submission, from 1: a receiver keeps the highest it has seen and drops older events.
    sequence: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(str_enum(DeliveryStatus))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Position in the retry schedule; a redelivery starts the schedule again.
    schedule_step: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set while an attempt is on the wire, so a redelivery cannot start a second one.
    in_flight_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class WebhookAttempt(UUIDKey, CreatedAt, Base):
    """One POST to a receiver and what came back (created_at is when it was sent)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "number"),)

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[AttemptOutcome] = mapped_column(str_enum(AttemptOutcome))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_snippet: Mapped[str | None] = mapped_column(Text)


class InboundWebhook(CreatedAt, Base):
    """A signed submission already answered: a repeat of its webhook-id gets the same answer."""

    __tablename__ = "inbound_webhooks"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    webhook_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    submission_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE")
    )
    # NULL while the first request is still being answered.
    status_code: Mapped[int | None] = mapped_column(Integer)
    response: Mapped[dict[str, Any] | None]
