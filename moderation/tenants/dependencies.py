"""Bearer-key authentication for routers: one dependency per set of roles.

Each dependency also counts the request against the key's rate limit for its class of route:
ingest for ingest-only routes, review for reviewer routes, admin for admin routes, and read for
routes several roles share (status polling, policy reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from moderation.core.rate_limits import RateLimiter, RouteClass
from moderation.database import DbSession
from moderation.tenants import service
from moderation.tenants.models import Role
from moderation.tenants.service import Principal

_SINGLE_ROLE_CLASSES = {
    Role.ingest: RouteClass.ingest,
    Role.reviewer: RouteClass.review,
    Role.admin: RouteClass.admin,
}


def route_class_for(roles: frozenset[Role]) -> RouteClass:
    if len(roles) == 1:
        return _SINGLE_ROLE_CLASSES[next(iter(roles))]
    return RouteClass.read


def principal_with(*roles: Role, route_class: RouteClass | None = None) -> Callable[..., Principal]:
    allowed = frozenset(roles)
    limit_class = route_class or route_class_for(allowed)

    def dependency(
        request: Request,
        session: DbSession,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        principal = service.authenticate(session, authorization)
        # Counted before the role check: a key hammering routes it may not use is still load.
        limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
        if limiter is not None:
            limiter.check(limit_class, str(principal.key_id))
        service.require_role(principal, allowed)
        return principal

    return dependency


Ingest = Annotated[Principal, Depends(principal_with(Role.ingest))]
IngestOrReviewer = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer))]
Reviewer = Annotated[Principal, Depends(principal_with(Role.reviewer))]
Admin = Annotated[Principal, Depends(principal_with(Role.admin))]
AnyRole = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer, Role.admin))]
