from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from moderation.policies.models import Policy, PolicyVersion


def get_policy(session: Session, slug: str, *, for_update: bool = False) -> Policy | None:
    query = select(Policy).where(Policy.slug == slug)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def list_policies(session: Session) -> list[Policy]:
    return list(session.scalars(select(Policy).order_by(Policy.slug)))


def add(session: Session, row: Policy | PolicyVersion) -> None:
    session.add(row)
    session.flush()


def get_version(session: Session, policy_id: uuid.UUID, version: int) -> PolicyVersion | None:
    return session.scalars(
        select(PolicyVersion).where(
            PolicyVersion.policy_id == policy_id, PolicyVersion.version == version
        )
    ).one_or_none()


def get_version_by_id(session: Session, version_id: uuid.UUID) -> PolicyVersion | None:
    return session.get(PolicyVersion, version_id)


def list_versions(session: Session, policy_id: uuid.UUID) -> list[PolicyVersion]:
    return list(
        session.scalars(
            select(PolicyVersion)
            .where(PolicyVersion.policy_id == policy_id)
            .order_by(PolicyVersion.version)
        )
    )


def latest_version_number(session: Session, policy_id: uuid.UUID) -> int:
    latest = session.scalar(
        select(func.max(PolicyVersion.version)).where(PolicyVersion.policy_id == policy_id)
    )
    return int(latest or 0)
