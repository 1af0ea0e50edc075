"""All SQL for callbacks and inbound webhook-ids."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from moderation.webhooks.models import (
    DeliveryStatus,
    InboundWebhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)


def endpoint_for(session: Session, tenant_id: uuid.UUID, url: str) -> WebhookEndpoint:
    """The tenant's endpoint row for `url`, created on first use (race-free)."""
    session.execute(
        insert(WebhookEndpoint)
        .values(id=uuid.uuid4(), tenant_id=tenant_id, url=url)
        .on_conflict_do_nothing(index_elements=["tenant_id", "url"])
    )
    return session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.url == url
        )
    ).one()


def get_endpoint(session: Session, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    return session.get(WebhookEndpoint, endpoint_id)


def endpoints_of(session: Session, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
    )


def next_sequence(session: Session, submission_id: uuid.UUID) -> int:
    """The submission's next event number. Decisions on one submission are serialized by its
    row lock, and the unique (submission_id, sequence) constraint catches any that are not."""
    current = session.scalar(
        select(func.max(WebhookDelivery.sequence)).where(
            WebhookDelivery.submission_id == submission_id
        )
    )
    return int(current or 0) + 1


def add(session: Session, row: object) -> None:
    session.add(row)
    session.flush()


def get_delivery(
    session: Session, delivery_id: uuid.UUID, *, for_update: bool = False
) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id, with_for_update=for_update)


def get_delivery_for_tenant(
    session: Session, tenant_id: uuid.UUID, delivery_id: uuid.UUID, *, for_update: bool = False
) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id
    )
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def list_deliveries(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    submission_id: uuid.UUID | None,
    status: DeliveryStatus | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if submission_id is not None:
        query = query.where(WebhookDelivery.submission_id == submission_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if after is not None:
        created_at, row_id = after
        query = query.where(
            or_(
                WebhookDelivery.created_at < created_at,
                and_(WebhookDelivery.created_at == created_at, WebhookDelivery.id < row_id),
            )
        )
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    return list(session.scalars(query.limit(limit)))


def attempts_of(
    session: Session, delivery_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[WebhookAttempt]]:
    found: dict[uuid.UUID, list[WebhookAttempt]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    rows = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
    )
    for attempt in rows:
        found[attempt.delivery_id].append(attempt)
    return found


def disable_pending_deliveries(session: Session, endpoint_id: uuid.UUID, reason: str) -> int:
    """Stop every delivery still waiting for an endpoint that asked never to be called again."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.status == DeliveryStatus.pending,
        )
        .values(
            status=DeliveryStatus.disabled,
            next_attempt_at=None,
            last_error=reason,
            updated_at=func.now(),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def count_deliveries_by_status(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(
        select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
    )
    return [(str(status), int(count)) for status, count in rows]


def count_attempts_by_outcome(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(
        select(WebhookAttempt.outcome, func.count()).group_by(WebhookAttempt.outcome)
    )
    return [(str(outcome), int(count)) for outcome, count in rows]


def count_disabled_endpoints(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).where(WebhookEndpoint.disabled_at.is_not(None))) or 0
    )


def reserve_inbound(session: Session, tenant_id: uuid.UUID, webhook_id: str) -> bool:
    """Claim a webhook-id for this request; False when an earlier request holds it.

    A concurrent request with the same id waits here until the first one commits or rolls
    back, so it then sees the first answer, or takes over if the first failed.
    """
    result = session.execute(
        insert(InboundWebhook)
        .values(tenant_id=tenant_id, webhook_id=webhook_id)
        .on_conflict_do_nothing(index_elements=["tenant_id", "webhook_id"])
        .returning(InboundWebhook.webhook_id)
    )
    return result.scalar_one_or_none() is not None


def get_inbound(session: Session, tenant_id: uuid.UUID, webhook_id: str) -> InboundWebhook | None:
    return session.get(InboundWebhook, (tenant_id, webhook_id))


def store_inbound_answer(
    session: Session,
    tenant_id: uuid.UUID,
    webhook_id: str,
    *,
    submission_id: uuid.UUID,
    status_code: int,
    response: dict[str, Any],
) -> None:
    session.execute(
        update(InboundWebhook)
        .where(InboundWebhook.tenant_id == tenant_id, InboundWebhook.webhook_id == webhook_id)
        .values(submission_id=submission_id, status_code=status_code, response=response)
        .execution_options(synchronize_session=False)
    )
