"""The one writer of audit events: every part of the service records history through here.

The chain (seq, prev_sha256, sha256) is made by the database as each event is inserted, so
callers only say what happened, to which submission, and who did it.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from moderation.audit import repository
from moderation.audit.chain import ChainReport, verify_chains
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


def verify_audit_chains(session: Session, tenant_id: uuid.UUID | None = None) -> ChainReport:
    """Recompute every chain (or one tenant's) from the stored rows and name each break."""
    return verify_chains(repository.stored_events(session, tenant_id))
