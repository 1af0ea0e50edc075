"""Bearer-key authentication for routers: one dependency per set of roles.

Each dependency is a `RoleRequirement`, so the OpenAPI document knows which routes need a key
and which roles they admit without any declaration on the route itself.

Each dependency also counts the request against the key's rate limit for its class of route:
ingest for ingest-only routes, review for reviewer routes, admin for changes on admin routes,
and read for routes several roles share (status polling, policy reads) and for admins' reads
(deliveries, reports), which a dashboard may poll.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from moderation.core.openapi import RoleRequirement
from moderation.core.rate_limits import RateLimiter, RouteClass
from moderation.database import read_scope
from moderation.tenants import service
from moderation.tenants.models import Role
from moderation.tenants.service import Principal

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Set on a request whose rate limit an earlier layer (the ingest fast lane) already counted.
RATE_LIMIT_COUNTED = "rate_limit_counted"
_SINGLE_ROLE_CLASSES = {
    Role.ingest: RouteClass.ingest,
    Role.reviewer: RouteClass.review,
    Role.admin: RouteClass.admin,
}


def route_class_for(roles: frozenset[Role]) -> RouteClass:
    if len(roles) == 1:
        return _SINGLE_ROLE_CLASSES[next(iter(roles))]
    return RouteClass.read


class RequireRoles(RoleRequirement):
    """Authenticate the caller's key, count the request against the key's rate limit, and admit
    the key if its role is one of `roles` (or admin)."""

    def __init__(self, *roles: Role, route_class: RouteClass | None = None) -> None:
        self.allowed = frozenset(roles)
        self.roles = frozenset(role.value for role in roles)
        self.route_class = route_class or route_class_for(self.allowed)

    async def __call__(self, request: Request) -> Principal:
        # Read straight from the headers: declared as a parameter, FastAPI would validate it
        # on every request, and it is not part of the documented interface (the security
        # scheme is).
        authorization = request.headers.get("authorization")
        # A key seen moments ago needs no query, and so no hop to a worker thread and no
        # session either; a lookup runs in one, off the event loop, on a session of its own
        # (the route's own session, if it has one, is not opened for it).
        principal = service.recently_authenticated(authorization)
        if principal is None:
            principal = await run_in_threadpool(
                _authenticate, request.app.state.sessionmaker, authorization
            )
        # Counted before the role check: a key hammering routes it may not use is still load.
        limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
        if limiter is not None and not getattr(request.state, RATE_LIMIT_COUNTED, False):
            route_class = self.route_class
            if route_class is RouteClass.admin and request.method in _READS:
                route_class = RouteClass.read
            limiter.check(route_class, str(principal.key_id))
        service.require_role(principal, self.allowed)
        return principal


def _authenticate(factory: sessionmaker[Session], authorization: str | None) -> Principal:
    with read_scope(factory) as session:
        return service.authenticate(session, authorization)


def principal_with(*roles: Role, route_class: RouteClass | None = None) -> RequireRoles:
    return RequireRoles(*roles, route_class=route_class)


Ingest = Annotated[Principal, Depends(principal_with(Role.ingest))]
IngestOrReviewer = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer))]
Reviewer = Annotated[Principal, Depends(principal_with(Role.reviewer))]
Admin = Annotated[Principal, Depends(principal_with(Role.admin))]
AnyRole = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer, Role.admin))]
