"""All SQL for policies, their versions and the shadow budget. Every lookup names the tenant."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from moderation.policies.models import Policy, PolicyVersion, PolicyVersionStatus, ShadowUsage


def get_policy(
    session: Session, tenant_id: uuid.UUID, slug: str, *, for_update: bool = False
) -> Policy | None:
    query = select(Policy).where(Policy.tenant_id == tenant_id, Policy.slug == slug)
    if for_update:
        query = query.with_for_update()
    return session.scalars(query).one_or_none()


def list_policies(session: Session, tenant_id: uuid.UUID) -> list[Policy]:
    return list(
        session.scalars(select(Policy).where(Policy.tenant_id == tenant_id).order_by(Policy.slug))
    )


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


def versions_by_id(
    session: Session, version_ids: Sequence[uuid.UUID]
) -> list[tuple[PolicyVersion, str]]:
    """Versions with their policy's slug, for presenting verdicts of several versions."""
    if not version_ids:
        return []
    rows = session.execute(
        select(PolicyVersion, Policy.slug)
        .join(Policy, Policy.id == PolicyVersion.policy_id)
        .where(PolicyVersion.id.in_(set(version_ids)))
    )
    return [(version, slug) for version, slug in rows]


def list_versions(session: Session, policy_id: uuid.UUID) -> list[PolicyVersion]:
    return list(
        session.scalars(
            select(PolicyVersion)
            .where(PolicyVersion.policy_id == policy_id)
            .order_by(PolicyVersion.version)
        )
    )


def version_with_status(
    session: Session, policy_id: uuid.UUID, status: PolicyVersionStatus
) -> PolicyVersion | None:
    return session.scalars(
        select(PolicyVersion).where(
            PolicyVersion.policy_id == policy_id, PolicyVersion.status == status
        )
    ).one_or_none()


def versions_with_status(
    session: Session, policy_ids: Sequence[uuid.UUID], status: PolicyVersionStatus
) -> dict[uuid.UUID, PolicyVersion]:
    if not policy_ids:
        return {}
    rows = session.scalars(
        select(PolicyVersion).where(
            PolicyVersion.policy_id.in_(set(policy_ids)), PolicyVersion.status == status
        )
    )
    return {row.policy_id: row for row in rows}


def shadow_of(session: Session, version_id: uuid.UUID) -> PolicyVersion | None:
    """The shadow version of the policy that `version_id` belongs to, in one query."""
    policy_of_version = (
        select(PolicyVersion.policy_id).where(PolicyVersion.id == version_id).scalar_subquery()
    )
    return session.scalars(
        select(PolicyVersion).where(
            PolicyVersion.policy_id == policy_of_version,
            PolicyVersion.status == PolicyVersionStatus.shadow,
        )
    ).one_or_none()


def latest_version_number(session: Session, policy_id: uuid.UUID) -> int:
    latest = session.scalar(
        select(func.max(PolicyVersion.version)).where(PolicyVersion.policy_id == policy_id)
    )
    return int(latest or 0)


def reserve_shadow_call(session: Session, tenant_id: uuid.UUID, day: date, cap: int) -> bool:
    """Count one shadow call against the day's cap; False (and nothing counted) when it is full.

    One conditional upsert: concurrent workers can never together pass the cap.
    """
    first_call = insert(ShadowUsage).values(tenant_id=tenant_id, day=day, calls=1, skipped=0)
    statement = first_call.on_conflict_do_update(
        index_elements=[ShadowUsage.tenant_id, ShadowUsage.day],
        set_={"calls": ShadowUsage.calls + 1},
        where=ShadowUsage.calls < cap,
    ).returning(ShadowUsage.calls)
    return session.execute(statement).scalar_one_or_none() is not None


def add_shadow_usage(
    session: Session,
    tenant_id: uuid.UUID,
    day: date,
    *,
    calls: int = 0,
    skipped: int = 0,
    failed: int = 0,
) -> None:
    first = insert(ShadowUsage).values(
        tenant_id=tenant_id, day=day, calls=max(calls, 0), skipped=skipped, failed=failed
    )
    statement = first.on_conflict_do_update(
        index_elements=[ShadowUsage.tenant_id, ShadowUsage.day],
        set_={
            "calls": func.greatest(ShadowUsage.calls + calls, 0),
            "skipped": ShadowUsage.skipped + skipped,
            "failed": ShadowUsage.failed + failed,
        },
    )
    session.execute(statement)


def shadow_usage_on(session: Session, tenant_id: uuid.UUID, day: date) -> ShadowUsage | None:
    return session.get(ShadowUsage, (tenant_id, day))


def shadow_usage_totals(session: Session) -> tuple[int, int, int]:
    """Calls, skipped and failed shadow runs over all tenants and days."""
    row = session.execute(
        select(
            func.coalesce(func.sum(ShadowUsage.calls), 0),
            func.coalesce(func.sum(ShadowUsage.skipped), 0),
            func.coalesce(func.sum(ShadowUsage.failed), 0),
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def set_status(
    session: Session, version: PolicyVersion, status: PolicyVersionStatus
) -> PolicyVersion:
    """Move a version to `status`; flushed at once so the one-active/one-shadow indexes see the
    old holder leave before the new one arrives."""
    values: dict[str, object] = {"status": status, "status_changed_at": func.now()}
    if status is PolicyVersionStatus.active and version.activated_at is None:
        values["activated_at"] = func.now()
    session.execute(
        update(PolicyVersion)
        .where(PolicyVersion.id == version.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    session.refresh(version)
    return version
