"""Ingest and read submissions. The moderation itself is in moderation.pipeline."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from moderation.audit import service as audit
from moderation.config import Settings
from moderation.core.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from moderation.core.pagination import Page, decode_cursor, encode_cursor
from moderation.decisions.models import Action, Decision, ShadowOutcome
from moderation.policies import service as policies
from moderation.queue import MODERATE_SUBMISSION, enqueue_after_commit
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
    ImageRead,
    PolicyRef,
    RedriveRead,
    ShadowOutcomeRead,
    SubmissionCreate,
    SubmissionRead,
    SubmissionSummary,
    VerdictRead,
)
from moderation.tenants.service import Principal
from moderation.webhooks.service import check_callback_url


@dataclass(frozen=True)
class ImageSource:
    url: str | None = None
    data: bytes | None = None


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
            {"url": image.url}
            if image.url is not None
            else {"sha256": hashlib.sha256(image.data or b"").hexdigest()}
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
    check_image_size(raw, position, settings)
    return raw


def check_image_size(raw: bytes, position: int, settings: Settings) -> None:
    if not raw:
        raise _image_error(position, "image is empty")
    if len(raw) > settings.image_max_bytes:
        raise PayloadTooLarge(f"image {position} is larger than {settings.image_max_bytes} bytes")


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


def create_submission(
    session: Session, principal: Principal, new: NewSubmission, settings: Settings
) -> tuple[Submission, bool]:
    """Store the submission and queue its moderation; (submission, created)."""
    if new.callback_url is not None:
        check_callback_url(new.callback_url, settings)
    if len(new.images) > settings.image_max_count:
        raise ValidationFailed(
            f"at most {settings.image_max_count} images per submission",
            errors=[{"loc": ["body", "images"], "msg": "too many images", "type": "value_error"}],
        )
    payload_sha256 = new.payload_sha256()
    existing = repository.find_by_external_id(session, principal.tenant_id, new.external_id)
    if existing is None:
        version = policies.version_for_submission(session, principal.tenant_id, new.policy)
        submission_id = repository.insert_submission(
            session,
            {
                "id": uuid.uuid4(),
                "tenant_id": principal.tenant_id,
                "external_id": new.external_id,
                "payload_sha256": payload_sha256,
                "text": new.text,
                "metadata": new.metadata,
                "callback_url": new.callback_url,
                "policy_version_id": version.id,
                "status": SubmissionStatus.queued,
                "attempts": 0,
            },
        )
        if submission_id is not None:
            _store_new_images(session, submission_id, new.images)
            audit.record_event(
                session,
                principal.tenant_id,
                submission_id,
                "received",
                principal.actor,
                {"images": len(new.images), "policy_version": version.version},
            )
            audit.record_event(session, principal.tenant_id, submission_id, "queued", "system", {})
            enqueue_after_commit(session, MODERATE_SUBMISSION, str(submission_id))
            submission = repository.get(session, submission_id)
            assert submission is not None
            return submission, True
        # Lost a race with an identical concurrent request: fall through to the winner's row.
        existing = repository.find_by_external_id(session, principal.tenant_id, new.external_id)
        assert existing is not None
    if existing.payload_sha256 != payload_sha256:
        raise Conflict(
            f"external_id {new.external_id!r} was already submitted with a different payload"
        )
    return existing, False


def _store_new_images(
    session: Session, submission_id: uuid.UUID, images: list[ImageSource]
) -> None:
    repository.add_all(
        session,
        [
            SubmissionImage(
                submission_id=submission_id,
                position=position,
                source_url=image.url,
                source_data=image.data,
                source_sha256=hashlib.sha256(image.data).hexdigest() if image.data else None,
            )
            for position, image in enumerate(images)
        ],
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
        images=[
            ImageRead.model_validate(image, from_attributes=True)
            for image in repository.images_of(session, submission.id)
        ],
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


def _present_verdict(verdict: Verdict, policy_slug: str, policy_version: int) -> VerdictRead:
    parsed = verdict.parsed or {}
    return VerdictRead.model_validate(
        {
            "rating": parsed.get("rating"),
            "confidence": parsed.get("confidence"),
            "violations": parsed.get("violations", []),
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
    if image.data is None or image.mime is None:
        raise NotFound(f"image {position} has not been normalized (yet): {image.error or 'queued'}")
    return image.data, image.mime


def audit_trail(
    session: Session, principal: Principal, submission_id: uuid.UUID
) -> list[AuditEventRead]:
    get_submission(session, principal, submission_id)
    return [
        AuditEventRead.model_validate(event, from_attributes=True)
        for event in audit.events_of(session, submission_id)
    ]
