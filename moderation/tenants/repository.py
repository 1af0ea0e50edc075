from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from moderation.tenants.models import ApiKey, Tenant


def add_tenant(session: Session, tenant: Tenant) -> Tenant:
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(
    session: Session, tenant_id: uuid.UUID, *, for_update: bool = False
) -> Tenant | None:
    return session.get(Tenant, tenant_id, with_for_update=for_update)


def add_api_key(session: Session, key: ApiKey) -> ApiKey:
    session.add(key)
    session.flush()
    return key


def find_live_key(session: Session, key_sha256: str) -> ApiKey | None:
    return session.scalars(
        select(ApiKey).where(ApiKey.key_sha256 == key_sha256, ApiKey.revoked_at.is_(None))
    ).one_or_none()
