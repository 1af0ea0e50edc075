from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from moderation.core.fields import VersionNumber
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.policies import service
from moderation.policies.schemas import (
    PolicyDraft,
    PolicyRead,
    PolicySlug,
    PolicyVersionRead,
    PolicyWithVersions,
)
from moderation.tenants.dependencies import Admin, AnyRole

router = APIRouter(prefix="/v1/policies", tags=["policies"])

# A slug that could never name a policy is a 422 naming the path parameter, not a lookup.
Slug = Annotated[PolicySlug, Path(description="the policy's slug, e.g. `default`")]


@router.get("", response_model=list[PolicyRead], responses=problem_responses(401))
def list_policies(session: DbSession, principal: AnyRole) -> list[PolicyRead]:
    """This tenant's policies, each with its active and shadow version."""
    return service.list_policies(session, principal.tenant_id)


@router.get("/{slug}", response_model=PolicyWithVersions, responses=problem_responses(401, 404))
def get_policy(slug: Slug, session: DbSession, principal: AnyRole) -> PolicyWithVersions:
    return service.read_policy(session, principal.tenant_id, slug)


@router.get(
    "/{slug}/versions/{version}",
    response_model=PolicyVersionRead,
    responses=problem_responses(401, 404),
)
def get_policy_version(
    slug: Slug, version: VersionNumber, session: DbSession, principal: AnyRole
) -> PolicyVersionRead:
    return service.read_version(session, principal.tenant_id, slug, version)


@router.post(
    "/{slug}/versions",
    response_model=PolicyVersionRead,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(401, 403, 422),
)
def create_policy_version(
    slug: Slug, draft: PolicyDraft, session: DbSession, principal: Admin
) -> PolicyVersionRead:
    """Store a new draft version, numbered after the policy's latest. Nothing is judged by it
    until it is activated (or shadowed)."""
    return service.create_draft_version(
        session, principal.tenant_id, slug, draft.model_dump(mode="json")
    )


@router.post(
    "/{slug}/versions/{version}/activate",
    response_model=PolicyWithVersions,
    responses=problem_responses(401, 403, 404),
)
def activate_policy_version(
    slug: Slug, version: VersionNumber, session: DbSession, principal: Admin
) -> PolicyWithVersions:
    """New submissions of this tenant are judged by this version; old verdicts keep theirs."""
    return service.activate_version(session, principal.tenant_id, slug, version)


@router.post(
    "/{slug}/versions/{version}/shadow",
    response_model=PolicyWithVersions,
    responses=problem_responses(401, 403, 404, 409),
)
def shadow_policy_version(
    slug: Slug, version: VersionNumber, session: DbSession, principal: Admin
) -> PolicyWithVersions:
    """Judge live submissions with this version too, for comparison; only the active version
    decides. Its model calls count against the daily shadow cap."""
    return service.shadow_version(session, principal.tenant_id, slug, version)


@router.delete(
    "/{slug}/versions/{version}/shadow",
    response_model=PolicyWithVersions,
    responses=problem_responses(401, 403, 404),
)
def stop_shadowing_policy_version(
    slug: Slug, version: VersionNumber, session: DbSession, principal: Admin
) -> PolicyWithVersions:
    """Stop judging live submissions with this version."""
    return service.stop_shadow(session, principal.tenant_id, slug, version)
