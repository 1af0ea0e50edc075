"""All SQL for the audit trail."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from moderation.audit.models import AuditEvent


def add_event(
    session: Session,
    tenant_id: uuid.UUID,
    submission_id: uuid.UUID | None,
    event: str,
    actor: str,
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(
            tenant_id=tenant_id,
            submission_id=submission_id,
            event=event,
            actor=actor,
            data=data or {},
        )
    )


def events_of(session: Session, submission_id: uuid.UUID) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.submission_id == submission_id)
            .order_by(AuditEvent.id)
        )
    )
