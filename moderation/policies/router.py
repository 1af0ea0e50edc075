from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from moderation.core.fields import VersionNumber
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.policies import service
from moderation.policies.models import Policy, PolicyVersion
from moderation.policies.schemas import (
    PolicyDocument,
    PolicyDraft,
    PolicyRead,
    PolicySlug,
    PolicyVersionRead,
    PolicyVersionSummary,
    PolicyWithVersions,
)
from moderation.tenants.dependencies import Admin, AnyRole

router = APIRouter(prefix="/v1/policies", tags=["policies"])

# A slug that could never name a policy is a 422 naming the path parameter, not a lookup.
Slug = Annotated[PolicySlug, Path(description="the policy's slug, e.g. `default`")]


def _version_read(policy: Policy, version: PolicyVersion) -> PolicyVersionRead:
    return PolicyVersionRead(
        id=version.id,
        slug=policy.slug,
        version=version.version,
        active=policy.active_version == version.version,
        content_sha256=version.content_sha256,
        created_at=version.created_at,
        document=PolicyDocument.model_validate(version.document),
    )


@router.get("", response_model=list[PolicyRead])
def list_policies(session: DbSession, _: AnyRole) -> list[Policy]:
    return service.list_policies(session)


@router.get("/{slug}", response_model=PolicyWithVersions)
def get_policy(slug: Slug, session: DbSession, _: AnyRole) -> PolicyWithVersions:
    policy = service.get_policy(session, slug)
    versions = [
        PolicyVersionSummary(
            version=v.version,
            active=policy.active_version == v.version,
            content_sha256=v.content_sha256,
            created_at=v.created_at,
        )
        for v in service.list_versions(session, slug)
    ]
    return PolicyWithVersions(
        slug=policy.slug,
        title=policy.title,
        active_version=policy.active_version,
        activated_at=policy.activated_at,
        created_at=policy.created_at,
        versions=versions,
    )


@router.get("/{slug}/versions/{version}", response_model=PolicyVersionRead)
def get_policy_version(
    slug: Slug, version: VersionNumber, session: DbSession, _: AnyRole
) -> PolicyVersionRead:
    return _version_read(
        service.get_policy(session, slug), service.get_version(session, slug, version)
    )


@router.post(
    "/{slug}/versions",
    response_model=PolicyVersionRead,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409),
)
def create_policy_version(
    slug: Slug, draft: PolicyDraft, session: DbSession, _: Admin
) -> PolicyVersionRead:
    version = service.create_draft_version(session, slug, draft.model_dump(mode="json"))
    return _version_read(service.get_policy(session, slug), version)


@router.post("/{slug}/versions/{version}/activate", response_model=PolicyRead)
def activate_policy_version(
    slug: Slug, version: VersionNumber, session: DbSession, _: Admin
) -> Policy:
    return service.activate_version(session, slug, version)
