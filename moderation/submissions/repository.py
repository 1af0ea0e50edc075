"""All SQL for submissions and their history."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, JSONB
from sqlalchemy.orm import Session, defer
from sqlalchemy.types import Integer, Interval, String, Text, Uuid

from moderation.database import AsyncPool
from moderation.decisions.models import Action, Decision, ShadowOutcome
from moderation.submissions.models import (
    Submission,
    SubmissionImage,
    SubmissionImageFrame,
    SubmissionStatus,
    Verdict,
)


@dataclass(frozen=True)
class NewImageRow:
    url: str | None
    data: bytes | None
    sha256: str | None


@dataclass(frozen=True)
class IngestResult:
    """What the one ingest statement did: the new row's id, or why there is none."""

    created_id: uuid.UUID | None
    # False when the tenant has no such policy version; nothing was written then.
    version_found: bool


# Ingest's whole write, in one round trip: the policy version the submission is judged by, the
# idempotent insert, its images and its first two audit events. Each write reads from the one
# before it, so nothing after the insert runs when (tenant, external_id) already exists or the
# policy has no such version. The events are inserted in order in one statement: the audit
# chain's trigger sees the rows inserted before it in the same statement, so they chain.
_INGEST = text(
    """
WITH version AS (
    SELECT v.id, v.version
    FROM policy_versions v JOIN policies p ON p.id = v.policy_id
    WHERE p.tenant_id = :tenant_id AND p.slug = :slug
      AND CASE WHEN CAST(:pinned AS integer) IS NULL THEN v.status = 'active'
               ELSE v.version = CAST(:pinned AS integer) END
), inserted AS (
    INSERT INTO submissions (id, tenant_id, external_id, payload_sha256, text, metadata,
                             callback_url, policy_version_id, status, attempts)
    SELECT :id, :tenant_id, :external_id, :payload_sha256, :text, :metadata,
           :callback_url, version.id, 'queued', 0
    FROM version
    ON CONFLICT (tenant_id, external_id) DO NOTHING
    RETURNING id
), images AS (
    INSERT INTO submission_images (id, submission_id, position, source_url, source_data,
                                   source_sha256)
    SELECT gen_random_uuid(), inserted.id, image.position - 1, image.url, image.data, image.sha
    FROM inserted,
         unnest(CAST(:urls AS text[]), CAST(:datas AS bytea[]), CAST(:shas AS text[]))
             WITH ORDINALITY AS image(url, data, sha, position)
), events AS (
    INSERT INTO audit_events (tenant_id, submission_id, event, actor, data)
    SELECT :tenant_id, inserted.id, event.name, event.actor, event.data
    FROM inserted, version, LATERAL (VALUES
        (1, 'received', CAST(:actor AS text),
         jsonb_build_object('images', CAST(:image_count AS integer),
                            'policy_version', version.version)),
        (2, 'queued', 'system', CAST('{}' AS jsonb))
    ) AS event(ordinal, name, actor, data)
    ORDER BY event.ordinal
)
SELECT (SELECT id FROM inserted) AS created_id, EXISTS (SELECT 1 FROM version) AS version_found
"""
).bindparams(
    bindparam("id", type_=Uuid()),
    bindparam("tenant_id", type_=Uuid()),
    bindparam("slug", type_=String()),
    bindparam("pinned", type_=Integer()),
    bindparam("external_id", type_=String()),
    bindparam("payload_sha256", type_=String()),
    bindparam("text", type_=Text()),
    bindparam("metadata", type_=JSONB()),
    bindparam("callback_url", type_=String()),
    bindparam("urls", type_=ARRAY(Text())),
    bindparam("datas", type_=ARRAY(BYTEA())),
    bindparam("shas", type_=ARRAY(Text())),
    bindparam("actor", type_=Text()),
    bindparam("image_count", type_=Integer()),
)


def _ingest_params(
    values: dict[str, Any],
    policy_slug: str,
    pinned_version: int | None,
    images: Sequence[NewImageRow],
    image_count: int,
    actor: str,
) -> dict[str, Any]:
    return {
        **values,
        "slug": policy_slug,
        "pinned": pinned_version,
        "urls": [image.url for image in images],
        "datas": [image.data for image in images],
        "shas": [image.sha256 for image in images],
        "actor": actor,
        "image_count": image_count,
    }


def ingest_submission(
    session: Session,
    values: dict[str, Any],
    *,
    policy_slug: str,
    pinned_version: int | None,
    images: Sequence[NewImageRow],
    image_count: int,
    actor: str,
) -> IngestResult:
    """Insert a queued submission with `images` and its `received`/`queued` events, unless
    (tenant, external_id) exists or the policy has no such version. `image_count` is what the
    submission has in all, for the audit trail: uploaded bytes may be written after, apart."""
    params = _ingest_params(values, policy_slug, pinned_version, images, image_count, actor)
    row = session.execute(_INGEST, params).one()
    return IngestResult(created_id=row.created_id, version_found=bool(row.version_found))


# The same statement in psycopg's own placeholders, for connections no SQLAlchemy engine holds.
_INGEST_PSYCOPG = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", _INGEST.text)


async def ingest_submission_async(
    pool: AsyncPool,
    values: dict[str, Any],
    *,
    policy_slug: str,
    pinned_version: int | None,
    images: Sequence[NewImageRow],
    image_count: int,
    actor: str,
) -> IngestResult:
    """ingest_submission as a statement of its own, committed when it returns.

    Sending it twice is harmless: the second finds (tenant, external_id) taken and writes
    nothing, which AsyncPool relies on when it resends after a lost connection.
    """
    params = _ingest_params(values, policy_slug, pinned_version, images, image_count, actor)
    row = await pool.fetch_one(_INGEST_PSYCOPG, {**params, "metadata": Jsonb(values["metadata"])})
    assert row is not None  # the statement's last SELECT always returns one row
    return IngestResult(created_id=row[0], version_found=bool(row[1]))


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


@dataclass(frozen=True)
class ClaimedWork:
    """A submission this worker now holds the lease on, with what judging it needs."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    lease_token: uuid.UUID
    attempts: int
    redrives: int
    text: str | None
    policy_version_id: uuid.UUID
    # Another version of the same policy in shadow now, if there is one.
    shadow_version_id: uuid.UUID | None
    # Where each image comes from; no upload bytes are read here.
    images: list[StoredSource]
    # An earlier decision exists (a re-drive, say): a review task may be waiting on it.
    decided_before: bool = False
    # The tenant's daily model-token budget (None: unlimited) and the tokens it spent today.
    token_budget: int | None = None
    tokens_today: int = 0
    # The submission or its tenant has a callback URL: a decision is announced to it.
    announces: bool = False


# A worker's claim, in one round trip: take the lease if nobody holds a live one, note the
# start in the audit trail (not when the attempts that died are used up: that run only records
# the give-up), and read back the text, where the images come from, the policy's shadow
# version, whether the submission was decided before, the tenant's token budget and spending
# today, and whether a decision will be announced to a receiver. The audit
# chain's trigger locks the submission row, which this same statement has just updated, so it
# adds no wait.
_CLAIM = text(
    """
WITH claimed AS (
    UPDATE submissions
    SET status = 'processing', lease_token = :lease_token, lease_expires_at = now() + :lease,
        attempts = attempts + 1, updated_at = now()
    WHERE id = :submission_id
      AND (status = 'queued' OR (status = 'processing' AND lease_expires_at < now()))
    RETURNING id, tenant_id, text, policy_version_id, attempts, redrives, callback_url
), started AS (
    INSERT INTO audit_events (tenant_id, submission_id, event, actor, data)
    SELECT tenant_id, id, 'processing_started', :actor, jsonb_build_object('attempt', attempts)
    FROM claimed WHERE attempts - redrives <= :max_attempts
)
SELECT claimed.id, claimed.tenant_id, claimed.text, claimed.policy_version_id, claimed.attempts,
       claimed.redrives,
       (SELECT shadow.id FROM policy_versions live
        JOIN policy_versions shadow
          ON shadow.policy_id = live.policy_id AND shadow.status = 'shadow'
        WHERE live.id = claimed.policy_version_id AND shadow.id <> live.id) AS shadow_version_id,
       EXISTS (SELECT 1 FROM decisions WHERE decisions.submission_id = claimed.id)
           AS decided_before,
       tenant.daily_token_budget,
       coalesce((SELECT usage.tokens FROM tenant_token_usage usage
                 WHERE usage.tenant_id = claimed.tenant_id
                   AND usage.day = CAST(timezone('UTC', now()) AS DATE)), 0) AS tokens_today,
       coalesce(claimed.callback_url, tenant.callback_url) IS NOT NULL AS announces,
       image.position, image.source_url, image.source_data IS NOT NULL AS has_data
FROM claimed JOIN tenants tenant ON tenant.id = claimed.tenant_id
LEFT JOIN submission_images image ON image.submission_id = claimed.id
ORDER BY image.position
"""
).bindparams(
    bindparam("submission_id", type_=Uuid()),
    bindparam("lease_token", type_=Uuid()),
    bindparam("lease", type_=Interval()),
    bindparam("actor", type_=Text()),
    bindparam("max_attempts", type_=Integer()),
)


def claim(
    session: Session, submission_id: uuid.UUID, lease: timedelta, *, actor: str, max_attempts: int
) -> ClaimedWork | None:
    """Take the work if nobody holds a live lease on it; a second delivery gets None."""
    lease_token = uuid.uuid4()
    rows = session.execute(
        _CLAIM,
        {
            "submission_id": submission_id,
            "lease_token": lease_token,
            "lease": lease,
            "actor": actor,
            "max_attempts": max_attempts,
        },
    ).all()
    if not rows:
        return None
    first = rows[0]
    return ClaimedWork(
        id=first.id,
        tenant_id=first.tenant_id,
        lease_token=lease_token,
        attempts=first.attempts,
        redrives=first.redrives,
        text=first.text,
        policy_version_id=first.policy_version_id,
        shadow_version_id=first.shadow_version_id,
        images=[
            StoredSource(row.position, row.source_url, bool(row.has_data))
            for row in rows
            if row.position is not None
        ],
        decided_before=bool(first.decided_before),
        token_budget=first.daily_token_budget,
        tokens_today=int(first.tokens_today),
        announces=bool(first.announces),
    )


# Built once: every judgement asks it, and building the expression costs more than running it.
_REUSABLE_VERDICT = (
    select(Verdict)
    .join(Submission, Submission.id == Verdict.submission_id)
    .where(
        Submission.tenant_id == bindparam("tenant_id"),
        Verdict.prompt_sha256 == bindparam("prompt_sha256"),
        Verdict.model == bindparam("model"),
        Verdict.parsed.is_not(None),
        Verdict.error.is_(None),
    )
    .order_by(Verdict.created_at.desc())
    .limit(1)
)


def find_reusable_verdict(
    session: Session, tenant_id: uuid.UUID, prompt_sha256: str, model: str
) -> Verdict | None:
    """The newest valid verdict this tenant got for exactly this prompt from this model."""
    return session.scalars(
        _REUSABLE_VERDICT,
        {"tenant_id": tenant_id, "prompt_sha256": prompt_sha256, "model": model},
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
