"""Rows and payloads for tests. Each test makes its own tenant, so tests never see each other."""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from PIL import ExifTags, Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import Action, Decision, DecisionSource, ReviewReason
from moderation.decisions.rules import Outcome
from moderation.decisions.service import record_decision
from moderation.policies.service import version_for_submission
from moderation.review.models import ReviewTask, TaskStatus
from moderation.submissions.models import Submission, SubmissionImage, SubmissionStatus, Verdict
from moderation.tenants.models import Role
from moderation.tenants.service import Principal, create_api_key, create_tenant


@dataclass(frozen=True)
class TenantKeys:
    tenant_id: uuid.UUID
    ingest: str
    reviewer: str
    admin: str
    webhook_secret: str = ""
    inbound_secret: str | None = None

    def headers(self, role: str = "ingest") -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


def make_tenant(
    database_url: str,
    name: str = "acme",
    *,
    callback_url: str | None = None,
    inbound_signing: bool = False,
) -> TenantKeys:
    """A tenant with a key per role and its own copy of the policy templates, active."""
    with session_scope(get_sessionmaker(database_url)) as session:
        tenant = create_tenant(
            session, name, callback_url=callback_url, inbound_signing=inbound_signing
        )
        keys = {role: create_api_key(session, tenant.id, role).secret for role in Role}
    return TenantKeys(
        tenant_id=tenant.id,
        ingest=keys[Role.ingest],
        reviewer=keys[Role.reviewer],
        admin=keys[Role.admin],
        webhook_secret=tenant.webhook_secret,
        inbound_secret=tenant.inbound_secret,
    )


def make_queued_submission(
    database_url: str,
    tenant: TenantKeys,
    text: str,
    *,
    policy: str | None = None,
    images: int = 1,
    **fields: Any,
) -> uuid.UUID:
    """A queued submission whose task was never sent: a test runs the pipeline on it itself."""
    with session_scope(get_sessionmaker(database_url)) as session:
        submission = Submission(
            tenant_id=tenant.tenant_id,
            external_id=marker(),
            payload_sha256="0" * 64,
            text=text,
            metadata_={},
            policy_version_id=version_for_submission(session, tenant.tenant_id, policy).id,
            **{"status": SubmissionStatus.queued, "attempts": 0, **fields},
        )
        session.add(submission)
        session.flush()
        session.add_all(
            SubmissionImage(submission_id=submission.id, position=n, source_data=image_bytes())
            for n in range(images)
        )
        return submission.id


def image_bytes(
    width: int = 640,
    height: int = 480,
    color: tuple[int, int, int] = (30, 120, 200),
    fmt: str = "PNG",
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def image_b64(**kwargs: Any) -> str:
    return base64.b64encode(image_bytes(**kwargs)).decode()


def marker() -> str:
    """A unique word to put in a caption so the fake model knows which script to play."""
    return f"case-{uuid.uuid4().hex[:12]}"


def wait_for_outcome(
    client: httpx.Client, submission_id: str, headers: dict[str, str], timeout: float = 45.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/submissions/{submission_id}", headers=headers)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body["status"] in ("decided", "in_review"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"submission {submission_id} still {body['status']}")
        time.sleep(0.2)


def insert_without_sending(
    database_url: str,
    tenant: TenantKeys,
    text: str,
    *,
    image_url: str | None = None,
    **fields: Any,
) -> uuid.UUID:
    """A submission whose task never reached the broker (crash between commit and send).

    Its one image is inline unless `image_url` is given."""
    with session_scope(get_sessionmaker(database_url)) as session:
        submission = Submission(
            tenant_id=tenant.tenant_id,
            external_id=marker(),
            payload_sha256="0" * 64,
            text=text,
            metadata_={},
            policy_version_id=version_for_submission(session, tenant.tenant_id, "default").id,
            **{"status": SubmissionStatus.queued, "attempts": 0, **fields},
        )
        session.add(submission)
        session.flush()
        session.add(
            SubmissionImage(
                submission_id=submission.id,
                position=0,
                source_url=image_url,
                source_data=None if image_url else image_bytes(),
            )
        )
        return submission.id


def make_api_key(database_url: str, tenant_id: uuid.UUID, role: str, name: str | None) -> str:
    """Another key of a tenant, e.g. a second reviewer with a name of their own."""
    with session_scope(get_sessionmaker(database_url)) as session:
        return create_api_key(session, tenant_id, Role(role), name=name).secret


# Session-level rows, for service tests that run without HTTP or a worker.


def make_principal(
    session: Session, tenant_id: uuid.UUID, role: str = "reviewer", name: str | None = None
) -> Principal:
    issued = create_api_key(session, tenant_id, Role(role), name=name)
    return Principal(tenant_id=tenant_id, role=Role(role), key_id=issued.key.id, name=name)


def make_tenant_row(session: Session, name: str = "acme") -> uuid.UUID:
    return create_tenant(session, name).id


def make_submission(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    text: str | None = "a caption",
    images: int = 1,
    policy: str = "default",
    status: SubmissionStatus = SubmissionStatus.processing,
    originals: Sequence[bytes] = (),
) -> Submission:
    """A submission as the worker leaves it just before deciding: images normalized, and the
    uploaded `originals` (one image each, instead of `images`) still stored."""
    version = version_for_submission(session, tenant_id, policy)
    submission = Submission(
        tenant_id=tenant_id,
        external_id=marker(),
        payload_sha256=uuid.uuid4().hex * 2,
        text=text,
        metadata_={},
        policy_version_id=version.id,
        status=status,
        attempts=1,
    )
    session.add(submission)
    session.flush()
    for position in range(len(originals) or images):
        session.add(
            SubmissionImage(
                submission_id=submission.id,
                position=position,
                source_data=originals[position] if originals else None,
                data=b"\xff\xd8fake",
                sha256=uuid.uuid4().hex * 2,
                width=28,
                height=28,
                mime="image/jpeg",
            )
        )
    session.flush()
    return submission


def jpeg_with_gps(width: int = 320, height: int = 240) -> bytes:
    """A camera JPEG that tells where and with what it was taken."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Spy Camera"
    exif[ExifTags.Base.Model] = "SC-1 serial 1234567"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (13.0, 24.0, 36.0)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 160, 90)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def make_verdict(
    session: Session, submission: Submission, parsed: dict[str, Any], *, model: str = "fake-vl"
) -> Verdict:
    verdict = Verdict(
        submission_id=submission.id,
        policy_version_id=submission.policy_version_id,
        attempt=1,
        sequence=0,
        model=model,
        prompt_sha256="0" * 64,
        raw_output=None,
        parsed=parsed,
        latency_ms=12,
    )
    session.add(verdict)
    session.flush()
    return verdict


def make_review_task(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    categories: list[dict[str, Any]] | None = None,
    reason: ReviewReason = ReviewReason.below_threshold,
    source: DecisionSource = DecisionSource.model,
    policy: str = "default",
) -> ReviewTask:
    """A submission sent to review the way the pipeline does it, through record_decision."""
    submission = make_submission(session, tenant_id, policy=policy)
    categories = [] if categories is None else categories
    if categories:
        violations = [
            {
                "category": c["category"],
                "severity": c["severity"],
                "confidence": c.get("confidence", 0.5),
                "source": "image",
                "image": 0,
                "rationale": f"looks like {c['category']}",
            }
            for c in categories
        ]
        make_verdict(
            session,
            submission,
            {"rating": "unsafe", "confidence": 0.5, "violations": violations, "rationale": "?"},
        )
    record_decision(session, submission, Outcome(Action.review, reason, categories), source=source)
    return waiting_task(session, submission.id)


def make_decided_submission(
    session: Session,
    tenant_id: uuid.UUID,
    action: Action = Action.block,
    categories: list[dict[str, Any]] | None = None,
) -> tuple[Submission, Decision]:
    submission = make_submission(session, tenant_id)
    categories = [{"category": "violence", "severity": 3}] if categories is None else categories
    decision = record_decision(
        session, submission, Outcome(action, categories=categories), source=DecisionSource.model
    )
    return submission, decision


def waiting_task(session: Session, submission_id: uuid.UUID) -> ReviewTask:
    task = session.scalars(
        select(ReviewTask).where(
            ReviewTask.submission_id == submission_id,
            ReviewTask.status.in_([TaskStatus.open, TaskStatus.claimed]),
        )
    ).one()
    return task


def age_task(session: Session, task_id: uuid.UUID, *, created_ago: float, due_in: float) -> None:
    """Move a task's clock: created `created_ago` seconds back, due `due_in` seconds from now."""
    session.execute(
        update(ReviewTask)
        .where(ReviewTask.id == task_id)
        .values(
            created_at=func.now() - timedelta(seconds=created_ago),
            due_at=func.now() + timedelta(seconds=due_in),
        )
    )


def expire_lease(session: Session, task_id: uuid.UUID) -> None:
    """Let a claim's lease run out without waiting for it."""
    session.execute(
        update(ReviewTask)
        .where(ReviewTask.id == task_id)
        .values(lease_expires_at=func.now() - timedelta(seconds=1))
    )


def hold_task(session: Session, task_id: uuid.UUID, principal: Principal) -> None:
    """Give one particular task to a reviewer, as if their claim had picked it."""
    session.execute(
        update(ReviewTask)
        .where(ReviewTask.id == task_id)
        .values(
            status=TaskStatus.claimed,
            claimed_by_key_id=principal.key_id,
            claimed_by_name=principal.name,
            claimed_at=func.now(),
            lease_expires_at=func.now() + timedelta(hours=1),
        )
    )
