"""All SQL for submissions and their history."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, defer

from moderation.decisions.models import Action, Decision, ShadowOutcome
from moderation.submissions.models import (
    Submission,
    SubmissionImage,
    SubmissionImageFrame,
    SubmissionStatus,
    Verdict,
)


def insert_submission(session: Session, values: dict[str, Any]) -> uuid.UUID | None:
    """Insert unless (tenant, external_id) exists; None means it already did.

    ON CONFLICT makes two concurrent identical webhooks safe without a retry loop.
    """
    statement = (
        insert(Submission)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "external_id"])
        .returning(Submission.id)
    )
    return session.execute(statement).scalar_one_or_none()


def find_by_external_id(
    session: Session, tenant_id: uuid.UUID, external_id: str
) -> Submission | None:
    return session.scalars(
        select(Submission).where(
            Submission.tenant_id == tenant_id, Submission.external_id == external_id
        )
    ).one_or_none()


def get_for_tenant(
    session: Session, tenant_id: uuid.UUID, submission_id: uuid.UUID
) -> Submission | None:
    return session.scalars(
        select(Submission).where(Submission.id == submission_id, Submission.tenant_id == tenant_id)
    ).one_or_none()


def get(session: Session, submission_id: uuid.UUID) -> Submission | None:
    return session.get(Submission, submission_id)


def insert_image(session: Session, image: SubmissionImage) -> None:
    """Write one image row now and forget it, so its bytes can be freed before the next."""
    session.add(image)
    session.flush()
    session.expunge(image)


def list_for_tenant(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None,
    external_id: str | None,
    status: SubmissionStatus | None,
    action: Action | None,
    since: datetime | None,
) -> list[Submission]:
    query = select(Submission).where(Submission.tenant_id == tenant_id)
    if external_id is not None:
        query = query.where(Submission.external_id == external_id)
    if status is not None:
        query = query.where(Submission.status == status)
    if action is not None:
        query = query.where(Submission.action == action)
    if since is not None:
        query = query.where(Submission.created_at >= since)
    if after is not None:
        created_at, row_id = after
        query = query.where(
            or_(
                Submission.created_at < created_at,
                and_(Submission.created_at == created_at, Submission.id < row_id),
            )
        )
    query = query.order_by(Submission.created_at.desc(), Submission.id.desc()).limit(limit)
    return list(session.scalars(query))


def images_of(
    session: Session, submission_id: uuid.UUID, *, with_source: bool = False
) -> list[SubmissionImage]:
    """Image rows in order; the byte columns stay unloaded unless the caller needs the source."""
    deferred = [defer(SubmissionImage.data)]
    if not with_source:
        deferred.append(defer(SubmissionImage.source_data))
    return list(
        session.scalars(
            select(SubmissionImage)
            .where(SubmissionImage.submission_id == submission_id)
            .order_by(SubmissionImage.position)
            .options(*deferred)
        )
    )


@dataclass(frozen=True)
class StoredSource:
    position: int
    url: str | None
    # Whether the inline upload is still stored (it is deleted after the final decision).
    has_data: bool


def stored_sources(session: Session, submission_id: uuid.UUID) -> list[StoredSource]:
    """Where each image comes from, without reading any upload bytes."""
    rows = session.execute(
        select(
            SubmissionImage.position,
            SubmissionImage.source_url,
            SubmissionImage.source_data.is_not(None),
        )
        .where(SubmissionImage.submission_id == submission_id)
        .order_by(SubmissionImage.position)
    )
    return [StoredSource(position, url, bool(has_data)) for position, url, has_data in rows]


def source_bytes(session: Session, submission_id: uuid.UUID, position: int) -> bytes | None:
    """One inline upload's bytes, transferred in binary.

    Postgres sends bytea as hex text unless asked for binary, and the driver would hold the
    hex string (twice the size) next to the bytes while converting: 60 MB in flight for a
    20 MB upload, in each worker thread reading one.
    """
    connection = session.connection().connection.driver_connection
    if not isinstance(connection, psycopg.Connection):
        return session.scalar(
            select(SubmissionImage.source_data).where(
                SubmissionImage.submission_id == submission_id,
                SubmissionImage.position == position,
            )
        )
    with connection.cursor(binary=True) as cursor:
        cursor.execute(
            "SELECT source_data FROM submission_images WHERE submission_id = %s AND position = %s",
            (submission_id, position),
        )
        row = cursor.fetchone()
    return bytes(row[0]) if row is not None and row[0] is not None else None


def replace_frames(
    session: Session, submission_id: uuid.UUID, position: int, frames: list[SubmissionImageFrame]
) -> None:
    """The sampled frames of one image; a second run of the same work replaces the first's."""
    session.execute(
        delete(SubmissionImageFrame).where(
            SubmissionImageFrame.submission_id == submission_id,
            SubmissionImageFrame.position == position,
        )
    )
    session.add_all(frames)


def frames_of(session: Session, submission_id: uuid.UUID) -> list[SubmissionImageFrame]:
    return list(
        session.scalars(
            select(SubmissionImageFrame)
            .where(SubmissionImageFrame.submission_id == submission_id)
            .order_by(SubmissionImageFrame.position, SubmissionImageFrame.frame)
            .options(defer(SubmissionImageFrame.data))
        )
    )


def frame_at(
    session: Session, submission_id: uuid.UUID, position: int, frame: int
) -> SubmissionImageFrame | None:
    return session.scalars(
        select(SubmissionImageFrame).where(
            SubmissionImageFrame.submission_id == submission_id,
            SubmissionImageFrame.position == position,
            SubmissionImageFrame.frame == frame,
        )
    ).one_or_none()


def purge_originals(session: Session, submission_id: uuid.UUID) -> int:
    """Delete the inline uploads of one submission; how many there were."""
    purged = session.execute(
        update(SubmissionImage)
        .where(
            SubmissionImage.submission_id == submission_id,
            SubmissionImage.source_data.is_not(None),
        )
        .values(source_data=None, source_purged_at=func.now())
        .returning(SubmissionImage.position)
        .execution_options(synchronize_session=False)
    )
    return len(purged.all())


@dataclass(frozen=True)
class PurgedMedia:
    submission_id: uuid.UUID
    tenant_id: uuid.UUID
    images: int


def purge_expired_originals(
    session: Session, *, decided_before: datetime, limit: int
) -> list[PurgedMedia]:
    """Delete inline uploads of submissions finally decided before `decided_before`.

    Submissions in review keep theirs: judging them again needs them.
    """
    expired = (
        select(SubmissionImage.id)
        .join(Submission, Submission.id == SubmissionImage.submission_id)
        .where(SubmissionImage.source_data.is_not(None), *_finally_decided_before(decided_before))
        .limit(limit)
        .with_for_update(of=SubmissionImage, skip_locked=True)
    )
    purged = session.execute(
        update(SubmissionImage)
        .where(SubmissionImage.id.in_(expired))
        .values(source_data=None, source_purged_at=func.now())
        .returning(SubmissionImage.submission_id)
        .execution_options(synchronize_session=False)
    )
    return _per_submission(session, [row[0] for row in purged])


def purge_expired_normalized(
    session: Session, *, decided_before: datetime, limit: int
) -> list[PurgedMedia]:
    """Delete normalized images and frames of submissions finally decided before
    `decided_before`; hashes, sizes, verdicts and decisions stay."""
    expired_images = (
        select(SubmissionImage.id)
        .join(Submission, Submission.id == SubmissionImage.submission_id)
        .where(SubmissionImage.data.is_not(None), *_finally_decided_before(decided_before))
        .limit(limit)
        .with_for_update(of=SubmissionImage, skip_locked=True)
    )
    purged = session.execute(
        update(SubmissionImage)
        .where(SubmissionImage.id.in_(expired_images))
        .values(data=None, data_purged_at=func.now())
        .returning(SubmissionImage.submission_id)
        .execution_options(synchronize_session=False)
    )
    submission_ids = [row[0] for row in purged]
    expired_frames = (
        select(SubmissionImageFrame.id)
        .join(Submission, Submission.id == SubmissionImageFrame.submission_id)
        .where(SubmissionImageFrame.data.is_not(None), *_finally_decided_before(decided_before))
        .limit(limit)
        .with_for_update(of=SubmissionImageFrame, skip_locked=True)
    )
    frames = session.execute(
        update(SubmissionImageFrame)
        .where(SubmissionImageFrame.id.in_(expired_frames))
        .values(data=None)
        .returning(SubmissionImageFrame.submission_id)
        .execution_options(synchronize_session=False)
    )
    submission_ids.extend(row[0] for row in frames)
    return _per_submission(session, submission_ids)


def _finally_decided_before(moment: datetime) -> list[ColumnElement[bool]]:
    latest_decision = (
        select(func.max(Decision.created_at))
        .where(Decision.submission_id == Submission.id)
        .scalar_subquery()
    )
    return [Submission.status == SubmissionStatus.decided, latest_decision < moment]


def _per_submission(session: Session, submission_ids: list[uuid.UUID]) -> list[PurgedMedia]:
    counts = Counter(submission_ids)
    if not counts:
        return []
    tenants = {
        submission_id: tenant_id
        for submission_id, tenant_id in session.execute(
            select(Submission.id, Submission.tenant_id).where(Submission.id.in_(list(counts)))
        )
    }
    return [
        PurgedMedia(submission_id, tenants[submission_id], images)
        for submission_id, images in counts.items()
    ]


def update_image(
    session: Session, submission_id: uuid.UUID, position: int, values: dict[str, Any]
) -> None:
    session.execute(
        update(SubmissionImage)
        .where(SubmissionImage.submission_id == submission_id, SubmissionImage.position == position)
        .values(**values)
    )


def image_at(session: Session, submission_id: uuid.UUID, position: int) -> SubmissionImage | None:
    return session.scalars(
        select(SubmissionImage).where(
            SubmissionImage.submission_id == submission_id, SubmissionImage.position == position
        )
    ).one_or_none()


def verdicts_of(session: Session, submission_id: uuid.UUID) -> list[Verdict]:
    return list(
        session.scalars(
            select(Verdict)
            .where(Verdict.submission_id == submission_id)
            .order_by(Verdict.attempt, Verdict.sequence)
        )
    )


def decisions_of(session: Session, submission_id: uuid.UUID) -> list[Decision]:
    return list(
        session.scalars(
            select(Decision)
            .where(Decision.submission_id == submission_id)
            .order_by(Decision.created_at, Decision.id)
        )
    )


def shadow_outcomes_of(session: Session, submission_id: uuid.UUID) -> list[ShadowOutcome]:
    return list(
        session.scalars(
            select(ShadowOutcome)
            .where(ShadowOutcome.submission_id == submission_id)
            .order_by(ShadowOutcome.created_at, ShadowOutcome.id)
        )
    )


def claim(session: Session, submission_id: uuid.UUID, lease: timedelta) -> Submission | None:
    """Take the work if nobody holds a live lease on it; a second delivery gets None."""
    now = func.now()
    statement = (
        update(Submission)
        .where(
            Submission.id == submission_id,
            or_(
                Submission.status == SubmissionStatus.queued,
                and_(
                    Submission.status == SubmissionStatus.processing,
                    Submission.lease_expires_at < now,
                ),
            ),
        )
        .values(
            status=SubmissionStatus.processing,
            lease_token=uuid.uuid4(),
            lease_expires_at=now + lease,
            attempts=Submission.attempts + 1,
        )
        .returning(Submission)
        .execution_options(synchronize_session=False)
    )
    return session.scalars(statement).one_or_none()


def find_reusable_verdict(
    session: Session, tenant_id: uuid.UUID, prompt_sha256: str, model: str
) -> Verdict | None:
    """The newest valid verdict this tenant got for exactly this prompt from this model."""
    return session.scalars(
        select(Verdict)
        .join(Submission, Submission.id == Verdict.submission_id)
        .where(
            Submission.tenant_id == tenant_id,
            Verdict.prompt_sha256 == prompt_sha256,
            Verdict.model == model,
            Verdict.parsed.is_not(None),
            Verdict.error.is_(None),
        )
        .order_by(Verdict.created_at.desc())
        .limit(1)
    ).one_or_none()


def renew_leases(
    session: Session, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], lease: timedelta
) -> set[uuid.UUID]:
    """Extend every lease still held (same token, still processing); returns the renewed ids.

    A lease that ran out but was not taken by anyone yet is renewed too: nobody else owns it.
    """
    rows = session.execute(
        update(Submission)
        .where(
            tuple_(Submission.id, Submission.lease_token).in_(list(leases)),
            Submission.status == SubmissionStatus.processing,
        )
        .values(lease_expires_at=func.now() + lease)
        .returning(Submission.id)
        .execution_options(synchronize_session=False)
    )
    return set(rows.scalars())


def lock_if_leased(
    session: Session, submission_id: uuid.UUID, lease_token: uuid.UUID
) -> Submission | None:
    """Re-read a submission for the final write, only if this worker still owns it."""
    return session.scalars(
        select(Submission)
        .where(
            Submission.id == submission_id,
            Submission.lease_token == lease_token,
            Submission.status == SubmissionStatus.processing,
        )
        .with_for_update()
    ).one_or_none()


def stalled(session: Session, *, grace: timedelta, limit: int) -> list[Submission]:
    """Queued too long (a lost message) or processing past its lease (a lost worker)."""
    now = func.now()
    return list(
        session.scalars(
            select(Submission)
            .where(
                or_(
                    and_(
                        Submission.status == SubmissionStatus.queued,
                        Submission.queued_at < now - grace,
                    ),
                    and_(
                        Submission.status == SubmissionStatus.processing,
                        Submission.lease_expires_at < now,
                    ),
                )
            )
            .order_by(Submission.queued_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def awaiting_redrive() -> ColumnElement[bool]:
    """True for a submission in a re-drive cycle: sent to review by an outage and due to be
    judged again by itself (waiting for its turn, or being re-judged right now).

    Review queues leave these out unless asked (`?include_redrive=true`): a reviewer would only
    duplicate the re-drive. A decision of any kind, or the end of the re-drive window, clears it.
    """
    return Submission.redrive_until.is_not(None)


def count_awaiting_redrive(session: Session) -> int:
    return int(session.scalar(select(func.count()).where(awaiting_redrive())) or 0)


def due_for_redrive(session: Session, *, limit: int) -> list[Submission]:
    return list(
        session.scalars(
            select(Submission)
            .where(
                Submission.redrive_at <= func.now(),
                Submission.status == SubmissionStatus.in_review,
            )
            .order_by(Submission.redrive_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def try_relay_lock(session: Session) -> bool:
    """Only one relay sweeps at a time, however many workers run one."""
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(0x6D6F6465))))
