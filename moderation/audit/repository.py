"""All SQL for the audit trail."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from moderation.audit.chain import StoredEvent
from moderation.audit.models import AuditEvent


def add_event(
    session: Session,
    tenant_id: uuid.UUID,
    submission_id: uuid.UUID | None,
    event: str,
    actor: str,
    data: dict[str, Any] | None = None,
) -> None:
    # seq, prev_sha256, sha256 and created_at are the database trigger's to set.
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
            .order_by(AuditEvent.seq)
        )
    )


def stored_events(
    session: Session, tenant_id: uuid.UUID | None = None, *, batch: int = 2000
) -> Iterator[StoredEvent]:
    """Every event as stored, chain by chain in `seq` order, streamed from a server cursor.

    `data` is read as the database's text rendering of the JSON value, which is what the
    chain's hash covers (jsonb normalises key order and spacing, so the text is canonical).
    """
    query = select(
        AuditEvent.id,
        AuditEvent.tenant_id,
        AuditEvent.submission_id,
        AuditEvent.seq,
        AuditEvent.event,
        AuditEvent.actor,
        cast(AuditEvent.data, Text),
        AuditEvent.created_at,
        AuditEvent.prev_sha256,
        AuditEvent.sha256,
    ).order_by(
        AuditEvent.tenant_id,
        AuditEvent.submission_id.asc().nulls_first(),
        AuditEvent.seq,
        AuditEvent.id,
    )
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    for row in session.execute(query.execution_options(yield_per=batch)):
        yield StoredEvent(
            id=row[0],
            tenant_id=row[1],
            submission_id=row[2],
            seq=row[3],
            event=row[4],
            actor=row[5],
            data_text=row[6],
            created_at=row[7],
            prev_sha256=row[8],
            sha256=row[9],
        )
