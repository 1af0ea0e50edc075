"""Bearer-key authentication for routers: one dependency per set of roles.

Each dependency is a `RoleRequirement`, so the OpenAPI document knows which routes need a key
and which roles they admit without any declaration on the route itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from moderation.core.openapi import RoleRequirement
from moderation.database import DbSession
from moderation.tenants import service
from moderation.tenants.models import Role
from moderation.tenants.service import Principal


class RequireRoles(RoleRequirement):
    """Authenticate the caller's key and admit it if its role is one of `roles` (or admin)."""

    def __init__(self, *roles: Role) -> None:
        self.allowed = frozenset(roles)
        self.roles = frozenset(role.value for role in roles)

    def __call__(
        self,
        session: DbSession,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        principal = service.authenticate(session, authorization)
        service.require_role(principal, self.allowed)
        return principal


def principal_with(*roles: Role) -> RequireRoles:
    return RequireRoles(*roles)


Ingest = Annotated[Principal, Depends(principal_with(Role.ingest))]
IngestOrReviewer = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer))]
Reviewer = Annotated[Principal, Depends(principal_with(Role.reviewer))]
Admin = Annotated[Principal, Depends(principal_with(Role.admin))]
AnyRole = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer, Role.admin))]
