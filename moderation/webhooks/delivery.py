"""Sending callbacks: one attempt per job run, the schedule kept in the delivery row.

Every attempt is one POST of the stored body, signed at send time with the tenant's current
secrets (both of them during a rotation's overlap), without following redirects: a 3xx is a
failure like any non-2xx, a timeout or a refused connection. A 410 Gone disables the endpoint.
After a failure the next attempt waits the next delay of MODERATION_WEBHOOK_RETRY_SCHEDULE_S;
when the list is used up the delivery is `failed`. Each attempt is stored with its status,
latency, error and the start of the answer, and leaves an audit event.

The schedule lives in Postgres rather than in Celery countdowns: workers acknowledge late, so a
Redis message with a countdown longer than the visibility timeout is handed out again early,
and the embedded broker never gives back an ETA message whose worker died. The delivery row's
`next_attempt_at` is the truth; its job in the `jobs` table only wakes the sender, and a run
that finds the row not yet due (or already finished) does nothing, so running twice is harmless.
A worker that dies mid-POST leaves the attempt unrecorded; its job's lease runs out and the
attempt is made again, which receivers absorb by the stable webhook-id.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.config import Settings
from moderation.core.time import utcnow
from moderation.database import session_scope
from moderation.jobs.service import (
    DONE,
    JobContext,
    JobKind,
    JobOutcome,
    RetryAt,
    through_database_outage,
)
from moderation.outbound.http import OutboundError, OutboundLimits, send_guarded
from moderation.tenants import service as tenants
from moderation.webhooks import repository, signing
from moderation.webhooks.models import AttemptOutcome, DeliveryStatus, WebhookAttempt
from moderation.webhooks.service import CALLBACK_ALLOW_HOSTS_SETTING, DELIVER_JOB

logger = logging.getLogger(__name__)

USER_AGENT = "moderation-webhooks/0.1"
AUDIT_ACTOR = "webhooks"
_SNIPPET_BYTES = 1024
# The job's claim outlasts the attempt's in-flight mark by this much, for the bookkeeping.
_LEASE_MARGIN_S = 10.0


@dataclass(frozen=True)
class AttemptPlan:
    delivery_id: uuid.UUID
    webhook_id: str
    url: str
    body: str
    secrets: list[str]


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    status_code: int | None
    latency_ms: int
    error: str | None
    response_snippet: str | None


def deliver_from_job(payload: Mapping[str, Any], context: JobContext) -> JobOutcome:
    delivery_id = uuid.UUID(str(payload["delivery_id"]))
    with session_scope(context.sessions) as session:
        plan = start_attempt(session, delivery_id, context.settings)
    if not isinstance(plan, AttemptPlan):
        return plan
    in_flight_ends = time.monotonic() + _in_flight_s(context.settings)
    result = send_attempt(plan, context.settings)

    def record() -> JobOutcome:
        with session_scope(context.sessions) as session:
            return finish_attempt(session, plan, result, context.settings)

    # The receiver has answered; if the database is away for a moment, waiting to record the
    # answer beats sending the same event again once the attempt's in-flight mark runs out.
    return through_database_outage(
        record, until=in_flight_ends, what=f"recording callback {plan.webhook_id}"
    )


def _in_flight_s(settings: Settings) -> float:
    """How long an attempt counts as on the wire: its timeout, then a grace for the record."""
    return settings.webhook_timeout_s + settings.webhook_attempt_grace_s


DELIVER_EVENT = JobKind(
    DELIVER_JOB,
    deliver_from_job,
    max_attempts=10,
    # Without settings at hand: longer than any attempt (at most 60 s) plus the default grace.
    lease_s=120.0,
    # A worker killed mid-attempt holds its delivery only as long as an attempt may take.
    lease_from_settings=lambda settings: _in_flight_s(settings) + _LEASE_MARGIN_S,
)


def start_attempt(
    session: Session, delivery_id: uuid.UUID, settings: Settings
) -> AttemptPlan | JobOutcome:
    """Mark the delivery in flight and say what to send; or why nothing is to be sent now."""
    delivery = repository.get_delivery(session, delivery_id, for_update=True)
    if delivery is None or delivery.status is not DeliveryStatus.pending:
        return DONE
    now = utcnow()
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
        return RetryAt(delivery.next_attempt_at)
    if delivery.in_flight_until is not None and delivery.in_flight_until > now:
        return RetryAt(delivery.in_flight_until)
    endpoint = repository.get_endpoint(session, delivery.endpoint_id)
    assert endpoint is not None
    if endpoint.disabled_at is not None:
        delivery.status = DeliveryStatus.disabled
        delivery.next_attempt_at = None
        delivery.last_error = f"endpoint disabled: {endpoint.disabled_reason}"
        return DONE
    tenant = tenants.get_tenant(session, delivery.tenant_id)
    delivery.in_flight_until = now + timedelta(seconds=_in_flight_s(settings))
    return AttemptPlan(
        delivery_id=delivery.id,
        webhook_id=delivery.webhook_id,
        url=endpoint.url,
        body=delivery.body,
        secrets=tenants.outbound_signing_secrets(tenant, now),
    )


def send_attempt(plan: AttemptPlan, settings: Settings) -> AttemptResult:
    """One signed POST through the outbound guard; never raises for anything the network does."""
    limits = OutboundLimits(
        allow_hosts=frozenset(settings.callback_allow_hosts),
        allow_hosts_setting=CALLBACK_ALLOW_HOSTS_SETTING,
        total_timeout_s=settings.webhook_timeout_s,
        connect_timeout_s=settings.webhook_connect_timeout_s,
        max_redirects=0,
    )
    started_at = utcnow()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": plan.webhook_id,
        "webhook-timestamp": str(int(started_at.timestamp())),
        "webhook-signature": signing.sign(plan.secrets, plan.webhook_id, started_at, plan.body),
    }
    started = time.monotonic()
    status_code: int | None = None
    snippet: str | None = None
    error: str | None = None
    try:
        with send_guarded(
            "POST", plan.url, limits, headers=headers, content=plan.body.encode()
        ) as response:
            status_code = response.status_code
            try:
                snippet = response.read_prefix(_SNIPPET_BYTES).decode("utf-8", "replace")
            except OutboundError as exc:
                # The status is what counts; a body cut short only loses the log's snippet.
                snippet = f"(answer unreadable: {exc})"
    except OutboundError as exc:
        error = str(exc)
    except Exception as exc:  # the guard's job is to raise only OutboundError; log, don't crash
        logger.exception("callback %s failed unexpectedly", plan.webhook_id)
        error = f"{type(exc).__name__}: {exc}"
    return AttemptResult(
        started_at=started_at,
        status_code=status_code,
        latency_ms=round((time.monotonic() - started) * 1000),
        error=error,
        response_snippet=snippet,
    )


def finish_attempt(
    session: Session, plan: AttemptPlan, result: AttemptResult, settings: Settings
) -> JobOutcome:
    """Record the attempt and decide what comes next: done, disabled, or the next retry."""
    delivery = repository.get_delivery(session, plan.delivery_id, for_update=True)
    if delivery is None:
        return DONE
    if delivery.in_flight_until is None:
        # Recorded already: a commit whose answer was lost with the connection, run again.
        if delivery.status is DeliveryStatus.pending and delivery.next_attempt_at is not None:
            return RetryAt(delivery.next_attempt_at)
        return DONE
    delivery.in_flight_until = None
    delivery.attempts += 1
    code = result.status_code
    if code is not None and 200 <= code < 300:
        outcome = AttemptOutcome.succeeded
    elif code == 410:
        outcome = AttemptOutcome.gone
    else:
        outcome = AttemptOutcome.failed
    error = result.error
    if error is None and outcome is not AttemptOutcome.succeeded:
        kind = "redirects are not followed" if code is not None and 300 <= code < 400 else None
        error = f"HTTP {code}" + (f" ({kind})" if kind else "")
    repository.add(
        session,
        WebhookAttempt(
            delivery_id=delivery.id,
            number=delivery.attempts,
            outcome=outcome,
            status_code=code,
            latency_ms=result.latency_ms,
            error=error[:2000] if error else None,
            response_snippet=result.response_snippet,
        ),
    )
    now = utcnow()
    next_outcome: JobOutcome = DONE
    if outcome is AttemptOutcome.succeeded:
        delivery.status = DeliveryStatus.delivered
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        delivery.last_error = None
    elif outcome is AttemptOutcome.gone:
        reason = f"the receiver answered 410 Gone at {now.isoformat()}"
        endpoint = repository.get_endpoint(session, delivery.endpoint_id)
        assert endpoint is not None
        endpoint.disabled_at = now
        endpoint.disabled_reason = reason
        delivery.status = DeliveryStatus.disabled
        delivery.next_attempt_at = None
        delivery.last_error = reason
        repository.disable_pending_deliveries(session, endpoint.id, reason)
    else:
        delivery.last_error = error
        delivery.schedule_step += 1
        schedule = settings.webhook_retry_schedule_s
        if delivery.status is DeliveryStatus.pending and delivery.schedule_step <= len(schedule):
            delay = schedule[delivery.schedule_step - 1]
            delay *= 1 + random.uniform(0, settings.webhook_retry_jitter)  # noqa: S311 - spread, not secrecy
            delivery.next_attempt_at = now + timedelta(seconds=delay)
            next_outcome = RetryAt(delivery.next_attempt_at)
        else:
            if delivery.status is DeliveryStatus.pending:
                delivery.status = DeliveryStatus.failed
            delivery.next_attempt_at = None
    record_event(
        session,
        delivery.tenant_id,
        delivery.submission_id,
        "callback_delivered" if outcome is AttemptOutcome.succeeded else "callback_failed",
        AUDIT_ACTOR,
        {
            "webhook_id": delivery.webhook_id,
            "event": delivery.event_type.value,
            "sequence": delivery.sequence,
            "attempt": delivery.attempts,
            "status_code": code,
            "latency_ms": result.latency_ms,
            "error": error,
            "next_attempt_at": (
                delivery.next_attempt_at.isoformat() if delivery.next_attempt_at else None
            ),
        },
    )
    session.flush()
    return next_outcome
