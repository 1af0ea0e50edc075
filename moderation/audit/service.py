"""The one writer of audit events: every part of the service records history through here."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from moderation.audit import repository
from moderation.audit.models import AuditEvent


def record_event(
    session: Session,
    tenant_id: uuid.UUID,
    submission_id: uuid.UUID | None,
    event: str,
    actor: str,
    data: dict[str, Any] | None = None,
) -> None:
    repository.add_event(session, tenant_id, submission_id, event, actor, data)


def events_of(session: Session, submission_id: uuid.UUID) -> list[AuditEvent]:
    return repository.events_of(session, submission_id)
