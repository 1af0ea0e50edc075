from __future__ import annotations

import uuid

from sqlalchemy import Date, cast, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from moderation.tenants.models import ApiKey, Tenant, TenantTokenUsage

# Budgets count per UTC day, whatever the database server's time zone.
_TODAY_UTC = cast(func.timezone("UTC", func.now()), Date)


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


def add_token_usage(session: Session, tenant_id: uuid.UUID, tokens: int) -> None:
    """Add to today's counter; concurrent writers queue on the row, so none is lost."""
    statement = insert(TenantTokenUsage).values(tenant_id=tenant_id, day=_TODAY_UTC, tokens=tokens)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[TenantTokenUsage.tenant_id, TenantTokenUsage.day],
            set_={"tokens": TenantTokenUsage.tokens + statement.excluded.tokens},
        )
    )


def budget_and_usage_today(session: Session, tenant_id: uuid.UUID) -> tuple[int | None, int]:
    """The tenant's daily token budget (None: unlimited) and the tokens it spent today."""
    row = session.execute(
        select(Tenant.daily_token_budget, func.coalesce(TenantTokenUsage.tokens, 0))
        .outerjoin(
            TenantTokenUsage,
            (TenantTokenUsage.tenant_id == Tenant.id) & (TenantTokenUsage.day == _TODAY_UTC),
        )
        .where(Tenant.id == tenant_id)
    ).one_or_none()
    if row is None:
        return None, 0
    return row[0], int(row[1])


def token_usage_today(session: Session) -> list[tuple[uuid.UUID, int | None, int]]:
    """(tenant, budget, tokens today) for every tenant with a budget or with usage today."""
    rows = session.execute(
        select(Tenant.id, Tenant.daily_token_budget, func.coalesce(TenantTokenUsage.tokens, 0))
        .outerjoin(
            TenantTokenUsage,
            (TenantTokenUsage.tenant_id == Tenant.id) & (TenantTokenUsage.day == _TODAY_UTC),
        )
        .where(Tenant.daily_token_budget.is_not(None) | TenantTokenUsage.tokens.is_not(None))
        .order_by(Tenant.id)
    )
    return [(tenant_id, budget, int(tokens)) for tenant_id, budget, tokens in rows]


def set_daily_token_budget(session: Session, tenant: Tenant, budget: int | None) -> None:
    tenant.daily_token_budget = budget
    session.flush()
