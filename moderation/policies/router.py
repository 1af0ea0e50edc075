from __future__ import annotations

from fastapi import APIRouter, status

from moderation.database import DbSession
from moderation.policies import service
from moderation.policies.models import Policy, PolicyVersion
from moderation.policies.schemas import (
    PolicyDocument,
    PolicyDraft,
    PolicyRead,
    PolicyVersionRead,
    PolicyVersionSummary,
    PolicyWithVersions,
)
from moderation.tenants.dependencies import Admin, AnyRole

router = APIRouter(prefix="/v1/policies", tags=["policies"])


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
def get_policy(slug: str, session: DbSession, _: AnyRole) -> PolicyWithVersions:
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
    slug: str, version: int, session: DbSession, _: AnyRole
) -> PolicyVersionRead:
    return _version_read(
        service.get_policy(session, slug), service.get_version(session, slug, version)
    )


@router.post(
    "/{slug}/versions", response_model=PolicyVersionRead, status_code=status.HTTP_201_CREATED
)
def create_policy_version(
    slug: str, draft: PolicyDraft, session: DbSession, _: Admin
) -> PolicyVersionRead:
    version = service.create_draft_version(session, slug, draft.model_dump(mode="json"))
    return _version_read(service.get_policy(session, slug), version)


@router.post("/{slug}/versions/{version}/activate", response_model=PolicyRead)
def activate_policy_version(slug: str, version: int, session: DbSession, _: Admin) -> Policy:
    return service.activate_version(session, slug, version)
