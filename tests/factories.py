"""Rows and payloads for tests. Each test makes its own tenant, so tests never see each other."""

from __future__ import annotations

import base64
import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

from moderation.database import get_sessionmaker, session_scope
from moderation.policies.service import active_version
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
            policy_version_id=active_version(session, "default").id,
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
