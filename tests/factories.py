"""Rows and payloads for tests. Each test makes its own tenant, so tests never see each other."""

from __future__ import annotations

import base64
import io
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import ExifTags, Image
from sqlalchemy.orm import Session

from moderation.database import get_sessionmaker, session_scope
from moderation.submissions.models import Submission, SubmissionImage, SubmissionStatus
from moderation.tenants.models import Role
from moderation.tenants.service import create_api_key, create_tenant


@dataclass(frozen=True)
class TenantKeys:
    tenant_id: uuid.UUID
    ingest: str
    reviewer: str
    admin: str

    def headers(self, role: str = "ingest") -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


def make_tenant(database_url: str, name: str = "acme") -> TenantKeys:
    with session_scope(get_sessionmaker(database_url)) as session:
        tenant = create_tenant(session, name)
        keys = {role: create_api_key(session, tenant.id, role).secret for role in Role}
    return TenantKeys(
        tenant_id=tenant.id,
        ingest=keys[Role.ingest],
        reviewer=keys[Role.reviewer],
        admin=keys[Role.admin],
    )


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


def make_submission(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    images: Sequence[bytes] = (),
    text: str | None = "a caption",
) -> Submission:
    """A queued submission with inline images, as ingest stores it, without going through HTTP."""
    from moderation.policies.service import DEFAULT_POLICY, active_version

    submission = Submission(
        tenant_id=tenant_id,
        external_id=marker(),
        payload_sha256="0" * 64,
        text=text,
        metadata_={},
        policy_version_id=active_version(session, DEFAULT_POLICY).id,
        status=SubmissionStatus.queued,
        attempts=0,
    )
    session.add(submission)
    session.flush()
    session.add_all(
        SubmissionImage(submission_id=submission.id, position=position, source_data=data)
        for position, data in enumerate(images)
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
