"""Tenants and their API keys. A key is shown once; only its sha256 is stored."""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from moderation.core.cache import ExpiringCache
from moderation.core.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from moderation.core.time import utcnow
from moderation.policies.service import install_templates
from moderation.tenants import repository
from moderation.tenants.models import ApiKey, Role, Tenant

KEY_PREFIX = "mk_"

# How long an API process trusts what it read about a key or a tenant's signing: every request
# needs both, and a few seconds of memory turn two queries per request into none. A key revoked
# (or a tenant made to sign its submissions) elsewhere takes effect within this many seconds.
AUTH_CACHE_S = 5.0
_live_keys: ExpiringCache[str, Principal] = ExpiringCache(AUTH_CACHE_S)
_signs_submissions: ExpiringCache[uuid.UUID, bool] = ExpiringCache(AUTH_CACHE_S)


@dataclass(frozen=True)
class Principal:
    """Who is calling: one tenant, one role, and the person's name where the key has one."""

    tenant_id: uuid.UUID
    role: Role
    key_id: uuid.UUID
    name: str | None = None

    @property
    def actor(self) -> str:
        """How the audit trail names the caller: the person first, the key that proves it."""
        if self.name:
            return f"{self.name} (key:{self.key_id})"
        return f"key:{self.key_id}"


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str


def new_webhook_secret() -> str:
    """Standard Webhooks secrets are `whsec_` + base64 of 24 or more random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hash_api_key(secret: str) -> str:
    # API keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_tenant(
    session: Session,
    name: str,
    *,
    callback_url: str | None = None,
    inbound_signing: bool = False,
    daily_token_budget: int | None = None,
    with_policy_templates: bool = True,
) -> Tenant:
    """A new tenant owns a copy of each shipped policy template, active, so it can submit at
    once; its admins then version those copies without touching any other tenant's."""
    tenant = Tenant(
        name=name,
        callback_url=callback_url,
        webhook_secret=new_webhook_secret(),
        inbound_secret=new_webhook_secret() if inbound_signing else None,
        daily_token_budget=_checked_budget(daily_token_budget),
    )
    repository.add_tenant(session, tenant)
    if with_policy_templates:
        install_templates(session, tenant.id)
    return tenant


@dataclass(frozen=True)
class TokenBudget:
    """A tenant's model-token spending today against its daily budget (None: unlimited)."""

    budget: int | None
    used_today: int

    @property
    def exhausted(self) -> bool:
        return self.budget is not None and self.used_today >= self.budget

    def explain(self) -> str:
        return (
            f"the tenant's daily model-token budget of {self.budget} is spent "
            f"({self.used_today} tokens used today, UTC); it renews at 00:00 UTC"
        )


def token_budget(session: Session, tenant_id: uuid.UUID) -> TokenBudget:
    budget, used = repository.budget_and_usage_today(session, tenant_id)
    return TokenBudget(budget=budget, used_today=used)


def record_token_usage(session: Session, tenant_id: uuid.UUID, tokens: int) -> None:
    if tokens > 0:
        repository.add_token_usage(session, tenant_id, tokens)


def set_daily_token_budget(session: Session, tenant_id: uuid.UUID, budget: int | None) -> Tenant:
    tenant = repository.get_tenant(session, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    repository.set_daily_token_budget(session, tenant, _checked_budget(budget))
    return tenant


def _checked_budget(budget: int | None) -> int | None:
    if budget is not None and not 0 <= budget <= 2**62:
        raise ValidationFailed(f"a daily token budget is a count of tokens, got {budget}")
    return budget


@dataclass(frozen=True)
class RotatedSecret:
    secret: str
    previous_valid_until: datetime | None


def rotate_secret(
    session: Session, tenant_id: uuid.UUID, *, inbound: bool, overlap: timedelta
) -> RotatedSecret:
    """Issue a new signing secret; the one it replaces keeps working for `overlap`.

    During the overlap callbacks carry a signature made with each secret, and inbound
    submissions signed with either are accepted, so both sides can switch at their own pace.
    Rotating again during an overlap retires the oldest secret at once.
    """
    tenant = repository.get_tenant(session, tenant_id, for_update=True)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    until = utcnow() + overlap if overlap > timedelta() else None
    secret = new_webhook_secret()
    if inbound:
        if tenant.inbound_secret is None:
            raise Conflict(
                f"tenant {tenant_id} does not sign its submissions; there is no inbound secret"
            )
        tenant.previous_inbound_secret = tenant.inbound_secret if until else None
        tenant.previous_inbound_secret_until = until
        tenant.inbound_secret = secret
    else:
        tenant.previous_webhook_secret = tenant.webhook_secret if until else None
        tenant.previous_webhook_secret_until = until
        tenant.webhook_secret = secret
    session.flush()
    return RotatedSecret(secret=secret, previous_valid_until=until)


def outbound_signing_secrets(tenant: Tenant, now: datetime) -> list[str]:
    """The secrets a callback is signed with now: the current one, and the previous one during
    its overlap."""
    return _live_secrets(
        tenant.webhook_secret,
        tenant.previous_webhook_secret,
        tenant.previous_webhook_secret_until,
        now,
    )


def inbound_signing_secrets(tenant: Tenant, now: datetime) -> list[str]:
    """The secrets an inbound signature may be made with; empty when none is required."""
    if tenant.inbound_secret is None:
        return []
    return _live_secrets(
        tenant.inbound_secret,
        tenant.previous_inbound_secret,
        tenant.previous_inbound_secret_until,
        now,
    )


def _live_secrets(
    current: str, previous: str | None, previous_until: datetime | None, now: datetime
) -> list[str]:
    if previous and previous_until and now < previous_until:
        return [current, previous]
    return [current]


def get_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    tenant = repository.get_tenant(session, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    return tenant


def create_api_key(
    session: Session, tenant_id: uuid.UUID, role: Role, *, name: str | None = None
) -> IssuedKey:
    if repository.get_tenant(session, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} does not exist")
    name = name.strip() if name else None
    if name is not None and not 1 <= len(name) <= 100:
        raise ValidationFailed("a key's name must be 1 to 100 characters")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant_id,
        role=role,
        key_sha256=hash_api_key(secret),
        prefix=secret[:11],
        name=name,
    )
    return IssuedKey(key=repository.add_api_key(session, key), secret=secret)


def _bearer_secret(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <api key>")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("Authorization must be 'Bearer <api key>'")
    return secret.strip()


def recently_authenticated(authorization: str | None) -> Principal | None:
    """The caller, if this process looked the key up moments ago; no database needed."""
    try:
        return _live_keys.get(hash_api_key(_bearer_secret(authorization)))
    except Unauthorized:
        return None


def authenticate(session: Session, authorization: str | None) -> Principal:
    key_sha256 = hash_api_key(_bearer_secret(authorization))
    cached = _live_keys.get(key_sha256)
    if cached is not None:
        return cached
    key = repository.find_live_key(session, key_sha256)
    if key is None:
        # Unknown keys are not remembered: anyone can send those, as many as they like.
        raise Unauthorized("unknown or revoked API key")
    principal = Principal(tenant_id=key.tenant_id, role=key.role, key_id=key.id, name=key.name)
    _live_keys.put(key_sha256, principal)
    return principal


def known_not_to_sign(tenant_id: uuid.UUID) -> bool:
    """True when this process learnt moments ago that the tenant sends unsigned submissions."""
    return _signs_submissions.get(tenant_id) is False


def signs_submissions(session: Session, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant's submissions must carry a signature (it has an inbound secret)."""
    cached = _signs_submissions.get(tenant_id)
    if cached is not None:
        return cached
    signs = get_tenant(session, tenant_id).inbound_secret is not None
    _signs_submissions.put(tenant_id, signs)
    return signs


def require_role(principal: Principal, allowed: frozenset[Role]) -> None:
    if principal.role is Role.admin or principal.role in allowed:
        return
    names = ", ".join(sorted(role.value for role in allowed | {Role.admin}))
    raise Forbidden(f"this needs one of the roles: {names}; the key has {principal.role.value}")
