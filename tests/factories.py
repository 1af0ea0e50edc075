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
from moderation.tenants.models import Role
from moderation.tenants.service import create_api_key, create_tenant


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
