"""Ingest and read submissions. The moderation itself is in moderation.pipeline."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from moderation.audit import service as audit
from moderation.config import Settings
from moderation.core.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from moderation.core.pagination import Page, decode_cursor, encode_cursor
from moderation.database import AsyncPool
from moderation.decisions.models import Action, Decision, ShadowOutcome
from moderation.media.sniff import ACCEPTED_MIME_TYPES, SNIFF_BYTES, sniff_image_mime
from moderation.policies import service as policies
from moderation.queue import MODERATE_SUBMISSION, enqueue_after_commit, send_committed
from moderation.submissions import repository
from moderation.submissions.models import (
    Submission,
    SubmissionImage,
    SubmissionStatus,
    Verdict,
    VerdictRole,
)
from moderation.submissions.schemas import (
    AuditEventRead,
    DecisionRead,
    FrameRead,
    ImageRead,
    PolicyRef,
    RedriveRead,
    ShadowOutcomeRead,
    SubmissionCreate,
    SubmissionRead,
    SubmissionSummary,
    VerdictRead,
    ViolationRead,
)
from moderation.tenants.service import Principal
from moderation.webhooks.service import check_callback_url

# A JSON body this small parses in about a tenth of a millisecond: less than a hop to a worker
# thread and back, so it is parsed on the event loop; a larger one (inline images) is not.
PARSE_ON_LOOP_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class ImageSource:
    url: str | None = None
    data: bytes | None = None
    # An uploaded file the form parser spooled to disk, and its sha256 (taken while checking
    # it). Read only when its row is written, one image at a time: a request with every image
    # at the cap never holds them all in memory at once.
    upload: BinaryIO | None = None
    upload_sha256: str | None = None

    def content_sha256(self) -> str | None:
        if self.upload_sha256 is not None:
            return self.upload_sha256
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    def read(self) -> bytes | None:
        if self.upload is None:
            return self.data
        self.upload.seek(0)
        return self.upload.read()


@dataclass(frozen=True)
class NewSubmission:
    """A submission as received, whichever wire form (JSON or multipart) it came in."""

    external_id: str
    text: str | None
    images: list[ImageSource]
    metadata: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None
    callback_url: str | None = None

    def payload_sha256(self) -> str:
        """Identity of the payload, for idempotent redelivery: same hash, same submission."""
        images = [
            {"url": image.url} if image.url is not None else {"sha256": image.content_sha256()}
            for image in self.images
        ]
        canonical = {
            "text": self.text,
            "images": images,
            "metadata": self.metadata,
            "policy": self.policy,
            "callback_url": self.callback_url,
        }
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(encoded.encode()).hexdigest()


def decode_inline_image(data: str, position: int, settings: Settings) -> bytes:
    payload = data
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if not header.endswith(";base64"):
            raise _image_error(position, "a data: URL must be base64-encoded")
    # The encoded form is 4/3 of the bytes: refuse before decoding anything huge.
    if len(payload) > (settings.image_max_bytes * 4) // 3 + 4:
        raise PayloadTooLarge(f"image {position} is larger than {settings.image_max_bytes} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _image_error(position, "data is not valid base64") from exc
    check_image(raw, position, settings)
    return raw


def check_image(raw: bytes, position: int, settings: Settings) -> None:
    """Refuse at once what the worker would refuse later: empty, too large, or not an image."""
    check_image_start(raw[:SNIFF_BYTES], len(raw), position, settings)


def check_upload(upload: BinaryIO, position: int, settings: Settings) -> str:
    """check_image for a file on disk, read in chunks; returns its sha256."""
    upload.seek(0)
    digest = hashlib.sha256()
    start = upload.read(SNIFF_BYTES)
    size = len(start)
    digest.update(start)
    while size <= settings.image_max_bytes and (chunk := upload.read(1024 * 1024)):
        size += len(chunk)
        digest.update(chunk)
    check_image_start(start, size, position, settings)
    return digest.hexdigest()


def check_image_start(start: bytes, size: int, position: int, settings: Settings) -> None:
    if not size:
        raise _image_error(position, "image is empty")
    if size > settings.image_max_bytes:
        raise PayloadTooLarge(f"image {position} is larger than {settings.image_max_bytes} bytes")
    if sniff_image_mime(start) is None:
        accepted = ", ".join(ACCEPTED_MIME_TYPES)
        message = f"not an image of an accepted type ({accepted})"
        raise UnsupportedMediaType(
            f"image {position} is {message}",
            errors=[{"loc": ["body", "images", position], "msg": message, "type": "image_type"}],
        )


def _image_error(position: int, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"image {position}: {message}",
        errors=[{"loc": ["body", "images", position], "msg": message, "type": "value_error"}],
    )


def new_submission_from_json(body: SubmissionCreate, settings: Settings) -> NewSubmission:
    images = [
        ImageSource(url=str(image.url))
        if image.url is not None
        else ImageSource(data=decode_inline_image(image.data or "", position, settings))
        for position, image in enumerate(body.images)
    ]
    return NewSubmission(
        external_id=body.external_id,
        text=body.text,
        images=images,
        metadata=body.metadata,
        policy=body.policy,
        callback_url=str(body.callback_url) if body.callback_url else None,
    )


@dataclass(frozen=True)
class StoredSubmission:
    """Enough of a stored submission to answer its ingest request."""

    id: uuid.UUID
    external_id: str
    status: SubmissionStatus


@dataclass(frozen=True)
class _IngestPlan:
    """A checked submission as the ingest statement takes it."""

    values: dict[str, Any]
    payload_sha256: str
    policy_slug: str
    pinned_version: int | None
    # Every image is a URL: the statement writes them all (and an upload needs no later write).
    by_url_only: bool


def _plan_ingest(principal: Principal, new: NewSubmission, settings: Settings) -> _IngestPlan:
    if new.callback_url is not None:
        check_callback_url(new.callback_url, settings)
    if len(new.images) > settings.image_max_count:
        raise ValidationFailed(
            f"at most {settings.image_max_count} images per submission",
            errors=[{"loc": ["body", "images"], "msg": "too many images", "type": "value_error"}],
        )
    payload_sha256 = new.payload_sha256()
    slug, pinned = policies.parse_policy_reference(new.policy)
    return _IngestPlan(
        values={
            "id": uuid.uuid4(),
            "tenant_id": principal.tenant_id,
            "external_id": new.external_id,
            "payload_sha256": payload_sha256,
            "text": new.text,
            "metadata": new.metadata,
            "callback_url": new.callback_url,
        },
        payload_sha256=payload_sha256,
        policy_slug=slug,
        pinned_version=pinned,
        by_url_only=all(image.url is not None for image in new.images),
    )


def _url_rows(new: NewSubmission) -> list[repository.NewImageRow]:
    return [repository.NewImageRow(url=image.url, data=None, sha256=None) for image in new.images]


def ingests_without_session(new: NewSubmission) -> bool:
    """Whether `ingest_new` can store this submission: it carries no uploaded bytes."""
    return all(image.url is not None for image in new.images)


async def ingest_new(
    pool: AsyncPool, principal: Principal, new: NewSubmission, settings: Settings
) -> StoredSubmission | None:
    """The common case of `create_submission`, a new submission whose images (if any) are URLs,
    stored by one statement that commits on its own, on the event loop, and its moderation
    queued once it has.

    None when nothing was stored: a redelivery, a conflict, or no such policy version.
    `create_submission` tells those apart (and answers each as it should) with a session.
    """
    plan = _plan_ingest(principal, new, settings)
    result = await repository.ingest_submission_async(
        pool,
        plan.values,
        policy_slug=plan.policy_slug,
        pinned_version=plan.pinned_version,
        images=_url_rows(new),
        image_count=len(new.images),
        actor=principal.actor,
    )
    if result.created_id is None:
        return None
    send_committed(MODERATE_SUBMISSION, str(result.created_id))
    return StoredSubmission(result.created_id, new.external_id, SubmissionStatus.queued)


def create_submission(
    session: Session, principal: Principal, new: NewSubmission, settings: Settings
) -> tuple[StoredSubmission, bool]:
    """Store the submission and queue its moderation; (submission, created).

    The common case, a new submission, is one statement: the row, its images and its audit
    events written together (see `repository.ingest_submission`).
    """
    plan = _plan_ingest(principal, new, settings)
    result = repository.ingest_submission(
        session,
        plan.values,
        policy_slug=plan.policy_slug,
        pinned_version=plan.pinned_version,
        # URLs travel in the statement; uploaded bytes are written one image at a time after
        # it, so a request never holds every upload in memory at once.
        images=_url_rows(new) if plan.by_url_only else [],
        image_count=len(new.images),
        actor=principal.actor,
    )
    if result.created_id is not None:
        if not plan.by_url_only:
            _store_new_images(session, result.created_id, new.images)
        enqueue_after_commit(session, MODERATE_SUBMISSION, str(result.created_id))
        return StoredSubmission(result.created_id, new.external_id, SubmissionStatus.queued), True
    # Already submitted (a redelivery, or a concurrent twin that committed first).
    existing = repository.find_by_external_id(session, principal.tenant_id, new.external_id)
    if existing is None:
        if not result.version_found:
            # Raises the precise reason: no such policy, no active version, no such pin.
            policies.version_for_submission(session, principal.tenant_id, new.policy)
        raise Conflict(f"external_id {new.external_id!r} is being submitted concurrently")
    if existing.payload_sha256 != plan.payload_sha256:
        raise Conflict(
            f"external_id {new.external_id!r} was already submitted with a different payload"
        )
    return StoredSubmission(existing.id, existing.external_id, existing.status), False


def _store_new_images(
    session: Session, submission_id: uuid.UUID, images: list[ImageSource]
) -> None:
    # One row at a time, each written and let go before the next image is read.
    for position, image in enumerate(images):
        repository.insert_image(
            session,
            SubmissionImage(
                submission_id=submission_id,
                position=position,
                source_url=image.url,
                source_data=image.read(),
                source_sha256=image.content_sha256(),
            ),
        )


def get_submission(session: Session, principal: Principal, submission_id: uuid.UUID) -> Submission:
    submission = repository.get_for_tenant(session, principal.tenant_id, submission_id)
    if submission is None:
        raise NotFound(f"submission {submission_id} does not exist")
    return submission


def read_submission(
    session: Session, principal: Principal, submission_id: uuid.UUID
) -> SubmissionRead:
    submission = get_submission(session, principal, submission_id)
    return present_submission(session, submission)


def present_submission(session: Session, submission: Submission) -> SubmissionRead:
    decisions = [_present_decision(d) for d in repository.decisions_of(session, submission.id)]
    verdicts = repository.verdicts_of(session, submission.id)
    outcomes = repository.shadow_outcomes_of(session, submission.id)
    labels = policies.version_labels(
        session,
        [submission.policy_version_id]
        + [v.policy_version_id for v in verdicts]
        + [o.policy_version_id for o in outcomes],
    )
    slug, version_number = labels[submission.policy_version_id]
    return SubmissionRead(
        id=submission.id,
        external_id=submission.external_id,
        status=submission.status,
        text=submission.text,
        metadata=submission.metadata_,
        callback_url=submission.callback_url,
        policy=PolicyRef(slug=slug, version=version_number),
        decision=decisions[-1] if decisions else None,
        decisions=decisions,
        verdicts=[
            _present_verdict(v, *labels[v.policy_version_id])
            for v in verdicts
            if v.role is VerdictRole.live
        ],
        shadow=[
            _present_shadow_outcome(
                outcome,
                *labels[outcome.policy_version_id],
                [
                    _present_verdict(v, *labels[v.policy_version_id])
                    for v in verdicts
                    if v.role is VerdictRole.shadow
                    and v.policy_version_id == outcome.policy_version_id
                ],
            )
            for outcome in outcomes
        ],
        images=_present_images(session, submission.id),
        attempts=submission.attempts,
        redrive=RedriveRead(
            next_at=submission.redrive_at,
            until=submission.redrive_until,
            redrives=submission.redrives,
        )
        if submission.redrive_until is not None
        else None,
        created_at=submission.created_at,
        updated_at=submission.updated_at,
    )


def _present_images(session: Session, submission_id: uuid.UUID) -> list[ImageRead]:
    frames: dict[int, list[FrameRead]] = {}
    for frame in repository.frames_of(session, submission_id):
        frames.setdefault(frame.position, []).append(
            FrameRead.model_validate(frame, from_attributes=True)
        )
    return [
        ImageRead.model_validate(
            {
                "position": image.position,
                "source_url": image.source_url,
                "sha256": image.sha256,
                "width": image.width,
                "height": image.height,
                "mime": image.mime,
                "source_mime": image.source_mime,
                "tokens": image.tokens,
                "error": image.error,
                "frame_count": image.frame_count,
                "frames": frames.get(image.position, []),
                "original_purged_at": image.source_purged_at,
                "normalized_purged_at": image.data_purged_at,
            }
        )
        for image in repository.images_of(session, submission_id)
    ]


def _present_shadow_outcome(
    outcome: ShadowOutcome, slug: str, version: int, verdicts: list[VerdictRead]
) -> ShadowOutcomeRead:
    return ShadowOutcomeRead.model_validate(
        {
            "policy": slug,
            "policy_version": version,
            "action": outcome.action,
            "reason": outcome.reason,
            "detail": outcome.detail,
            "categories": outcome.categories,
            "model_calls": outcome.model_calls,
            "verdicts": verdicts,
            "created_at": outcome.created_at,
        }
    )


def _present_decision(decision: Decision) -> DecisionRead:
    return DecisionRead.model_validate(
        {
            "action": decision.action,
            "source": decision.source,
            "reason": decision.reason,
            "detail": decision.detail,
            "categories": decision.categories,
            "actor": decision.actor,
            "decided_at": decision.created_at,
        }
    )


def violations_with_evidence(verdict: Verdict) -> list[ViolationRead]:
    """The verdict's violations, each with the uploaded file and frame its `image` index means."""
    refs = verdict.image_refs or []
    violations = []
    for violation in (verdict.parsed or {}).get("violations", []):
        index = violation.get("image")
        # Verdicts stored before frames were tracked have no refs: there, image i was upload i.
        if isinstance(index, int) and 0 <= index < len(refs):
            position, frame = refs[index]
            violation = {**violation, "position": position, "frame": frame}
        elif isinstance(index, int) and not refs:
            violation = {**violation, "position": index, "frame": 0}
        violations.append(ViolationRead.model_validate(violation))
    return violations


def _present_verdict(verdict: Verdict, policy_slug: str, policy_version: int) -> VerdictRead:
    parsed = verdict.parsed or {}
    violations = violations_with_evidence(verdict)
    return VerdictRead.model_validate(
        {
            "rating": parsed.get("rating"),
            "confidence": parsed.get("confidence"),
            "violations": violations,
            "rationale": parsed.get("rationale"),
            "rating_probability": verdict.rating_probability,
            "model": verdict.model,
            "policy": policy_slug,
            "policy_version": policy_version,
            "prompt_sha256": verdict.prompt_sha256,
            "attempt": verdict.attempt,
            "sequence": verdict.sequence,
            "latency_ms": verdict.latency_ms,
            "input_tokens": verdict.input_tokens,
            "output_tokens": verdict.output_tokens,
            "finish_reason": verdict.finish_reason,
            "error": verdict.error,
            "raw_output": verdict.raw_output,
            "reused_from": verdict.reused_from_id,
            "role": verdict.role,
            "created_at": verdict.created_at,
        }
    )


def list_submissions(
    session: Session,
    principal: Principal,
    *,
    limit: int,
    cursor: str | None,
    external_id: str | None,
    status: SubmissionStatus | None,
    action: Action | None,
    since: datetime | None,
) -> Page[SubmissionSummary]:
    rows = repository.list_for_tenant(
        session,
        principal.tenant_id,
        limit=limit + 1,
        after=decode_cursor(cursor) if cursor else None,
        external_id=external_id,
        status=status,
        action=action,
        since=since,
    )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return Page[SubmissionSummary](
        items=[SubmissionSummary.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )


def normalized_image(
    session: Session, principal: Principal, submission_id: uuid.UUID, position: int
) -> tuple[bytes, str]:
    get_submission(session, principal, submission_id)
    image = repository.image_at(session, submission_id, position)
    if image is None:
        raise NotFound(f"submission {submission_id} has no image {position}")
    if image.data_purged_at is not None:
        raise NotFound(f"image {position} was deleted under the retention rules")
    if image.data is None or image.mime is None:
        raise NotFound(f"image {position} has not been normalized (yet): {image.error or 'queued'}")
    return image.data, image.mime


def frame_image(
    session: Session, principal: Principal, submission_id: uuid.UUID, position: int, frame: int
) -> tuple[bytes, str]:
    """A frame the model was shown. Frame 0 of a still is the image itself."""
    get_submission(session, principal, submission_id)
    row = repository.frame_at(session, submission_id, position, frame)
    if row is None:
        if frame == 0:
            return normalized_image(session, principal, submission_id, position)
        raise NotFound(f"image {position} of submission {submission_id} has no frame {frame}")
    if row.data is None:
        raise NotFound(f"frame {frame} of image {position} was deleted under the retention rules")
    return row.data, row.mime


def audit_trail(
    session: Session, principal: Principal, submission_id: uuid.UUID
) -> list[AuditEventRead]:
    get_submission(session, principal, submission_id)
    return [
        AuditEventRead.model_validate(event, from_attributes=True)
        for event in audit.events_of(session, submission_id)
    ]
