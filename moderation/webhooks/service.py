"""Callbacks out and signed submissions in.

A decision is turned into an event by `notify_decision`, in the transaction that records the
decision, so the event exists exactly when the decision does. The event is one delivery row
(with the exact body that will be signed) and a job that wakes the sender; the schedule itself
is the row's `next_attempt_at` (see `moderation.webhooks.delivery`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.config import Settings
from moderation.core.errors import BadRequest, Conflict, NotFound, Unauthorized, ValidationFailed
from moderation.core.pagination import Page, decode_cursor, encode_cursor
from moderation.core.time import utcnow
from moderation.jobs.service import enqueue_job
from moderation.outbound.http import OutboundError, check_url_shape
from moderation.tenants import service as tenants
from moderation.tenants.service import Principal
from moderation.webhooks import repository, signing
from moderation.webhooks.models import (
    DeliveryStatus,
    EventType,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from moderation.webhooks.schemas import AttemptRead, DeliveryRead, EndpointRead

DELIVER_JOB = "webhooks.deliver"
CALLBACK_ALLOW_HOSTS_SETTING = "MODERATION_CALLBACK_ALLOW_HOSTS"


@dataclass(frozen=True)
class DecisionNotice:
    """What a receiver is told about a decision, as plain data (this room imports no decisions)."""

    tenant_id: uuid.UUID
    submission_id: uuid.UUID
    external_id: str
    # The submission's own callback URL; the tenant's is used when it has none.
    callback_url: str | None
    action: str
    source: str
    reason: str | None
    categories: list[Any]
    decided_at: datetime
    actor: str | None
    policy_slug: str
    policy_version: int


def check_callback_url(raw_url: str, settings: Settings, *, field: str = "callback_url") -> None:
    """Refuse at once a callback URL that no attempt could ever reach: 422 naming the field."""
    try:
        check_url_shape(raw_url, settings.callback_allow_hosts, CALLBACK_ALLOW_HOSTS_SETTING)
    except OutboundError as exc:
        raise ValidationFailed(
            f"{field} cannot be called: {exc}",
            errors=[{"loc": ["body", field], "msg": str(exc), "type": "value_error"}],
        ) from exc


def delivery_job_key(delivery_id: uuid.UUID) -> str:
    return f"{DELIVER_JOB}:{delivery_id}"


def notify_decision(session: Session, notice: DecisionNotice) -> WebhookDelivery | None:
    """Queue the event for this decision; None when neither submission nor tenant has a URL."""
    tenant = tenants.get_tenant(session, notice.tenant_id)
    url = notice.callback_url or tenant.callback_url
    if not url:
        return None
    endpoint = repository.endpoint_for(session, notice.tenant_id, url)
    event_type = EventType.review_required if notice.action == "review" else EventType.decided
    sequence = repository.next_sequence(session, notice.submission_id)
    delivery_id = uuid.uuid4()
    body = {
        "type": event_type.value,
        "timestamp": notice.decided_at.isoformat(),
        "data": {
            "submission_id": str(notice.submission_id),
            "external_id": notice.external_id,
            "sequence": sequence,
            "decision": {
                "action": notice.action,
                "source": notice.source,
                "categories": notice.categories,
                "reason": notice.reason,
                "decided_at": notice.decided_at.isoformat(),
                "actor": notice.actor,
            },
            "policy": {"slug": notice.policy_slug, "version": notice.policy_version},
        },
    }
    disabled = endpoint.disabled_at is not None
    delivery = WebhookDelivery(
        id=delivery_id,
        webhook_id=f"msg_{delivery_id.hex}",
        tenant_id=notice.tenant_id,
        submission_id=notice.submission_id,
        endpoint_id=endpoint.id,
        event_type=event_type,
        sequence=sequence,
        body=json.dumps(body, separators=(",", ":"), default=str),
        status=DeliveryStatus.disabled if disabled else DeliveryStatus.pending,
        attempts=0,
        schedule_step=0,
        next_attempt_at=None if disabled else utcnow(),
        last_error=f"endpoint disabled: {endpoint.disabled_reason}" if disabled else None,
    )
    repository.add(session, delivery)
    if not disabled:
        enqueue_job(
            session,
            DELIVER_JOB,
            {"delivery_id": str(delivery_id)},
            run_at=delivery.next_attempt_at,
            key=delivery_job_key(delivery_id),
        )
    return delivery


def redeliver(
    session: Session, principal: Principal, delivery_id: uuid.UUID, settings: Settings
) -> DeliveryRead:
    """Send an event again now, under the same webhook-id, with a fresh retry schedule.

    An admin asking for this also re-enables an endpoint that answered 410 Gone.
    """
    delivery = repository.get_delivery_for_tenant(
        session, principal.tenant_id, delivery_id, for_update=True
    )
    if delivery is None:
        raise NotFound(f"delivery {delivery_id} does not exist")
    now = utcnow()
    if delivery.in_flight_until is not None and delivery.in_flight_until > now:
        raise Conflict("an attempt of this delivery is in flight; ask again when it has ended")
    endpoint = repository.get_endpoint(session, delivery.endpoint_id)
    assert endpoint is not None
    if endpoint.disabled_at is not None:
        endpoint.disabled_at = None
        endpoint.disabled_reason = None
    delivery.status = DeliveryStatus.pending
    delivery.schedule_step = 0
    delivery.next_attempt_at = now
    delivery.last_error = None
    enqueue_job(
        session,
        DELIVER_JOB,
        {"delivery_id": str(delivery.id)},
        run_at=now,
        key=delivery_job_key(delivery.id),
    )
    record_event(
        session,
        delivery.tenant_id,
        delivery.submission_id,
        "callback_redelivery_requested",
        principal.actor,
        {"webhook_id": delivery.webhook_id},
    )
    session.flush()
    return _present(delivery, endpoint, repository.attempts_of(session, [delivery.id])[delivery.id])


def list_deliveries(
    session: Session,
    principal: Principal,
    *,
    submission_id: uuid.UUID | None,
    status: DeliveryStatus | None,
    limit: int,
    cursor: str | None,
) -> Page[DeliveryRead]:
    rows = repository.list_deliveries(
        session,
        principal.tenant_id,
        submission_id=submission_id,
        status=status,
        after=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    page = rows[:limit]
    attempts = repository.attempts_of(session, [row.id for row in page])
    endpoints: dict[uuid.UUID, WebhookEndpoint] = {}
    for row in page:
        if row.endpoint_id not in endpoints:
            endpoint = repository.get_endpoint(session, row.endpoint_id)
            assert endpoint is not None
            endpoints[row.endpoint_id] = endpoint
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return Page[DeliveryRead](
        items=[_present(row, endpoints[row.endpoint_id], attempts[row.id]) for row in page],
        next_cursor=next_cursor,
    )


def list_endpoints(session: Session, principal: Principal) -> list[EndpointRead]:
    return [
        EndpointRead.model_validate(endpoint, from_attributes=True)
        for endpoint in repository.endpoints_of(session, principal.tenant_id)
    ]


def _present(
    delivery: WebhookDelivery, endpoint: WebhookEndpoint, attempts: list[WebhookAttempt]
) -> DeliveryRead:
    return DeliveryRead(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_type=delivery.event_type,
        submission_id=delivery.submission_id,
        sequence=delivery.sequence,
        url=endpoint.url,
        status=delivery.status,
        attempts=[
            AttemptRead(
                number=attempt.number,
                outcome=attempt.outcome,
                status_code=attempt.status_code,
                latency_ms=attempt.latency_ms,
                error=attempt.error,
                response_snippet=attempt.response_snippet,
                attempted_at=attempt.created_at,
            )
            for attempt in attempts
        ],
        next_attempt_at=delivery.next_attempt_at,
        delivered_at=delivery.delivered_at,
        last_error=delivery.last_error,
        endpoint_disabled_at=endpoint.disabled_at,
        created_at=delivery.created_at,
    )


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class InboundCheck:
    """The verified webhook-id of a signed request (None: the tenant does not sign), and the
    answer already given to it, if it is a repeat."""

    webhook_id: str | None
    repeat_of: StoredAnswer | None = None


# The check's result for a tenant that does not sign its submissions.
UNSIGNED = InboundCheck(webhook_id=None)


def inbound_signing_required(session: Session, tenant_id: uuid.UUID) -> bool:
    """Whether this tenant signs its submissions, so their raw bytes must be read to verify."""
    if not tenants.signs_submissions(session, tenant_id):
        return False
    tenant = tenants.get_tenant(session, tenant_id)
    return bool(tenants.inbound_signing_secrets(tenant, utcnow()))


def check_signed_submission(
    session: Session, tenant_id: uuid.UUID, headers: Mapping[str, str], body: bytes
) -> InboundCheck:
    """Verify a submission against the tenant's inbound secrets, before its body is parsed.

    Unsigned tenants pass. A bad or stale signature is 401, an unreadable header 400. A
    webhook-id seen before is answered with the first answer and starts nothing new.
    """
    if not tenants.signs_submissions(session, tenant_id):
        return InboundCheck(webhook_id=None)
    tenant = tenants.get_tenant(session, tenant_id)
    secrets = tenants.inbound_signing_secrets(tenant, utcnow())
    if not secrets:
        return InboundCheck(webhook_id=None)
    try:
        webhook_id = signing.verify(secrets, headers, body)
    except signing.SignatureRejected as exc:
        raise Unauthorized(str(exc)) from exc
    except signing.MalformedSignatureHeaders as exc:
        raise BadRequest(str(exc)) from exc
    if repository.reserve_inbound(session, tenant_id, webhook_id):
        return InboundCheck(webhook_id=webhook_id)
    earlier = repository.get_inbound(session, tenant_id, webhook_id)
    if earlier is None or earlier.status_code is None or earlier.response is None:
        # The first request failed and left nothing behind but a race's shadow: answer anew.
        return InboundCheck(webhook_id=webhook_id)
    return InboundCheck(
        webhook_id=webhook_id,
        repeat_of=StoredAnswer(status_code=earlier.status_code, body=dict(earlier.response)),
    )


def remember_answer(
    session: Session,
    tenant_id: uuid.UUID,
    webhook_id: str,
    *,
    submission_id: uuid.UUID,
    status_code: int,
    body: dict[str, Any],
) -> None:
    repository.store_inbound_answer(
        session,
        tenant_id,
        webhook_id,
        submission_id=submission_id,
        status_code=status_code,
        response=body,
    )
