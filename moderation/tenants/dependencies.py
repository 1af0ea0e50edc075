"""Bearer-key authentication for routers: one dependency per set of roles."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header

from moderation.database import DbSession
from moderation.tenants import service
from moderation.tenants.models import Role
from moderation.tenants.service import Principal


def principal_with(*roles: Role) -> Callable[..., Principal]:
    allowed = frozenset(roles)

    def dependency(
        session: DbSession,
        authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> Principal:
        principal = service.authenticate(session, authorization)
        service.require_role(principal, allowed)
        return principal

    return dependency


Ingest = Annotated[Principal, Depends(principal_with(Role.ingest))]
IngestOrReviewer = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer))]
Reviewer = Annotated[Principal, Depends(principal_with(Role.reviewer))]
Admin = Annotated[Principal, Depends(principal_with(Role.admin))]
AnyRole = Annotated[Principal, Depends(principal_with(Role.ingest, Role.reviewer, Role.admin))]
