"""Policy rubrics: owned by one tenant, versioned, immutable once written.

A version is a draft until an admin activates it; then new submissions of that tenant are judged
and decided by it, while old verdicts keep the version they were judged with. A version can also
run in shadow: judged alongside the active one on live traffic, deciding nothing.

The shipped files in `policies/*.yaml` are templates: a new tenant gets a copy of each, active.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy.orm import Session

from moderation.core.errors import Conflict, NotFound, ValidationFailed
from moderation.policies import repository
from moderation.policies.models import Policy, PolicyVersion, PolicyVersionStatus
from moderation.policies.schemas import (
    PolicyDocument,
    PolicyRead,
    PolicyVersionRead,
    PolicyVersionSummary,
    PolicyWithVersions,
)
from moderation.shipped import shipped_path

DEFAULT_POLICY = "default"

# `slug` or `slug@version` (a pinned version, for replays).
_POLICY_REF = re.compile(r"^(?P<slug>[a-z0-9][a-z0-9-]{0,63})(?:@(?P<version>[1-9][0-9]{0,8}))?$")


@dataclass(frozen=True)
class StoredVersion:
    version: PolicyVersion
    slug: str
    created: bool


# Documents --------------------------------------------------------------------------------------


def content_sha256(document: PolicyDocument) -> str:
    canonical = json.dumps(document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_policy_file(path: Path) -> PolicyDocument:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationFailed(f"cannot read policy file {path}: {exc}") from exc
    return parse_policy_document(raw)


def parse_policy_document(raw: Any, *, loc_prefix: tuple[str, ...] = ()) -> PolicyDocument:
    """Validate a rubric, naming every bad field (its path and what is wrong with it)."""
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"loc": [*loc_prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise ValidationFailed("the policy document is not valid", errors=errors) from exc


def template_documents() -> list[PolicyDocument]:
    """The shipped rubrics, read from their files each time: a new release's files are what a
    tenant created after the upgrade gets, with no table to keep in step."""
    return [read_policy_file(path) for path in sorted(shipped_path("policies").glob("*.yaml"))]


# Writing versions -------------------------------------------------------------------------------


def _policy_for_writing(session: Session, tenant_id: uuid.UUID, slug: str, title: str) -> Policy:
    policy = repository.get_policy(session, tenant_id, slug, for_update=True)
    if policy is None:
        policy = Policy(tenant_id=tenant_id, slug=slug, title=title)
        repository.add(session, policy)
    return policy


def store_policy_version(
    session: Session,
    tenant_id: uuid.UUID,
    document: PolicyDocument,
    *,
    activate: bool = False,
    activate_if_first: bool = True,
) -> StoredVersion:
    """Store a version as written in its file; storing the same content again changes nothing.

    A different document under an existing version number is refused: versions are immutable.
    The first version of a policy new to the tenant goes live at once with `activate_if_first`
    (there is nothing live to compare it against); any other stays a draft unless `activate`.
    """
    policy = _policy_for_writing(session, tenant_id, document.slug, document.title)
    digest = content_sha256(document)
    existing = repository.get_version(session, policy.id, document.version)
    if existing is not None:
        if existing.content_sha256 != digest:
            raise Conflict(
                f"policy {document.slug} version {document.version} exists with other content; "
                "versions are immutable, write a new version number"
            )
        if activate:
            _activate(session, policy, existing)
        return StoredVersion(existing, policy.slug, created=False)
    first = repository.latest_version_number(session, policy.id) == 0
    version = _add_version(session, policy, document, digest)
    if activate or (first and activate_if_first):
        _activate(session, policy, version)
    return StoredVersion(version, policy.slug, created=True)


def _add_version(
    session: Session, policy: Policy, document: PolicyDocument, digest: str
) -> PolicyVersion:
    version = PolicyVersion(
        policy_id=policy.id,
        version=document.version,
        document=document.model_dump(mode="json"),
        content_sha256=digest,
        status=PolicyVersionStatus.draft,
    )
    repository.add(session, version)
    return version


def install_template(
    session: Session, tenant_id: uuid.UUID, template: PolicyDocument, *, activate: bool = False
) -> StoredVersion:
    """Copy a shipped rubric into the tenant's policy of the same slug.

    Installing the same template twice changes nothing. When the tenant has already written its
    own version under the template's number, the template is stored as the next version.
    """
    policy = _policy_for_writing(session, tenant_id, template.slug, template.title)
    versions = repository.list_versions(session, policy.id)
    for existing in versions:
        same = template.model_copy(update={"version": existing.version})
        if existing.content_sha256 == content_sha256(same):
            if activate:
                _activate(session, policy, existing)
            return StoredVersion(existing, policy.slug, created=False)
    taken = {existing.version for existing in versions}
    number = template.version if template.version not in taken else max(taken) + 1
    document = template.model_copy(update={"version": number})
    version = _add_version(session, policy, document, content_sha256(document))
    if activate or not versions:
        _activate(session, policy, version)
    return StoredVersion(version, policy.slug, created=True)


def install_templates(
    session: Session, tenant_id: uuid.UUID, *, activate: bool = False
) -> list[StoredVersion]:
    """Every shipped rubric into the tenant; a policy new to the tenant is active at once."""
    return [
        install_template(session, tenant_id, template, activate=activate)
        for template in template_documents()
    ]


def create_draft_version(
    session: Session, tenant_id: uuid.UUID, slug: str, raw: dict[str, Any]
) -> PolicyVersionRead:
    """The API's way in: always a draft, numbered here, not by the caller."""
    policy = repository.get_policy(session, tenant_id, slug, for_update=True)
    next_version = 1 if policy is None else repository.latest_version_number(session, policy.id) + 1
    document = parse_policy_document(
        {**raw, "slug": slug, "version": next_version}, loc_prefix=("body",)
    )
    stored = store_policy_version(session, tenant_id, document, activate_if_first=False)
    return present_version(stored.version, stored.slug)


# Moving versions between draft, active, shadow and retired ----------------------------------


def _locked_version(
    session: Session, tenant_id: uuid.UUID, slug: str, number: int
) -> tuple[Policy, PolicyVersion]:
    policy = repository.get_policy(session, tenant_id, slug, for_update=True)
    version = None if policy is None else repository.get_version(session, policy.id, number)
    if policy is None or version is None:
        raise NotFound(f"policy {slug} has no version {number}")
    return policy, version


def _resting_status(version: PolicyVersion) -> PolicyVersionStatus:
    """Where a version goes when it stops being active or shadow."""
    if version.activated_at is not None:
        return PolicyVersionStatus.retired
    return PolicyVersionStatus.draft


def _activate(session: Session, policy: Policy, version: PolicyVersion) -> None:
    if version.status is PolicyVersionStatus.active:
        return
    current = repository.version_with_status(session, policy.id, PolicyVersionStatus.active)
    if current is not None:
        repository.set_status(session, current, PolicyVersionStatus.retired)
    repository.set_status(session, version, PolicyVersionStatus.active)


def activate_version(
    session: Session, tenant_id: uuid.UUID, slug: str, number: int
) -> PolicyWithVersions:
    """New submissions of this tenant are judged by this version; a shadow version promoted
    this way stops shadowing. Submissions already stored keep the version they have."""
    policy, version = _locked_version(session, tenant_id, slug, number)
    _activate(session, policy, version)
    return present_policy(session, policy)


def shadow_version(
    session: Session, tenant_id: uuid.UUID, slug: str, number: int
) -> PolicyWithVersions:
    """Judge live traffic with this version too, without deciding; it replaces any other shadow."""
    policy, version = _locked_version(session, tenant_id, slug, number)
    if version.status is PolicyVersionStatus.active:
        raise Conflict(
            f"policy {slug} version {number} is the active version; shadow another version "
            "to compare it with this one"
        )
    if version.status is not PolicyVersionStatus.shadow:
        current = repository.version_with_status(session, policy.id, PolicyVersionStatus.shadow)
        if current is not None:
            repository.set_status(session, current, _resting_status(current))
        repository.set_status(session, version, PolicyVersionStatus.shadow)
    return present_policy(session, policy)


def stop_shadow(
    session: Session, tenant_id: uuid.UUID, slug: str, number: int
) -> PolicyWithVersions:
    """Stop judging live traffic with this version; asking twice is harmless."""
    policy, version = _locked_version(session, tenant_id, slug, number)
    if version.status is PolicyVersionStatus.shadow:
        repository.set_status(session, version, _resting_status(version))
    return present_policy(session, policy)


# Reading ----------------------------------------------------------------------------------------


def get_policy(session: Session, tenant_id: uuid.UUID, slug: str) -> Policy:
    policy = repository.get_policy(session, tenant_id, slug)
    if policy is None:
        raise NotFound(f"no policy named {slug!r}")
    return policy


def get_version(session: Session, tenant_id: uuid.UUID, slug: str, number: int) -> PolicyVersion:
    version = repository.get_version(session, get_policy(session, tenant_id, slug).id, number)
    if version is None:
        raise NotFound(f"policy {slug} has no version {number}")
    return version


def version_document(
    session: Session, tenant_id: uuid.UUID, slug: str, number: int
) -> tuple[PolicyVersion, PolicyDocument]:
    """Any version of the tenant's policy (a draft too), parsed: what a backtest judges with."""
    version = get_version(session, tenant_id, slug, number)
    return version, document_for_version(session, version.id)


def active_version(session: Session, tenant_id: uuid.UUID, slug: str) -> PolicyVersion:
    policy = repository.get_policy(session, tenant_id, slug)
    version = (
        None
        if policy is None
        else repository.version_with_status(session, policy.id, PolicyVersionStatus.active)
    )
    if version is None:
        raise ValidationFailed(
            f"no active policy named {slug!r}",
            errors=[
                {
                    "loc": ["body", "policy"],
                    "msg": f"this tenant has no active policy named {slug!r}",
                    "type": "value_error",
                }
            ],
        )
    return version


def version_for_submission(
    session: Session, tenant_id: uuid.UUID, reference: str | None
) -> PolicyVersion:
    """The version a new submission is judged by: the active one of the named policy (default
    `default`), or the exact version pinned with `slug@N`, whatever its status."""
    match = _POLICY_REF.fullmatch(reference or DEFAULT_POLICY)
    if match is None:
        raise _bad_policy_field(f"{reference!r} is not a policy slug or slug@version")
    slug, pinned = match["slug"], match["version"]
    if pinned is None:
        return active_version(session, tenant_id, slug)
    policy = repository.get_policy(session, tenant_id, slug)
    version = None if policy is None else repository.get_version(session, policy.id, int(pinned))
    if version is None:
        raise _bad_policy_field(f"this tenant's policy {slug!r} has no version {pinned}")
    return version


def _bad_policy_field(message: str) -> ValidationFailed:
    return ValidationFailed(
        message, errors=[{"loc": ["body", "policy"], "msg": message, "type": "value_error"}]
    )


# Versions are immutable, so a parsed document is kept for the life of the process: the worker
# reads its policy for every submission without a query or a re-parse.
_documents: dict[uuid.UUID, PolicyDocument] = {}


def document_for_version(session: Session, version_id: uuid.UUID) -> PolicyDocument:
    document = _documents.get(version_id)
    if document is None:
        version = repository.get_version_by_id(session, version_id)
        if version is None:
            raise NotFound(f"policy version {version_id} does not exist")
        document = _documents[version_id] = PolicyDocument.model_validate(version.document)
    return document


def shadow_for(
    session: Session, version_id: uuid.UUID
) -> tuple[PolicyVersion, PolicyDocument] | None:
    """The version shadowing the policy of `version_id` now, if any and if it is another one."""
    shadow = repository.shadow_of(session, version_id)
    if shadow is None or shadow.id == version_id:
        return None
    return shadow, document_for_version(session, shadow.id)


def version_labels(
    session: Session, version_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, int]]:
    """(slug, version number) for each version id, for presenting verdicts."""
    return {
        version.id: (slug, version.version)
        for version, slug in repository.versions_by_id(session, version_ids)
    }


# Read models ------------------------------------------------------------------------------------


def _summary_fields(version: PolicyVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "status": version.status,
        "active": version.status is PolicyVersionStatus.active,
        "content_sha256": version.content_sha256,
        "created_at": version.created_at,
        "status_changed_at": version.status_changed_at,
        "activated_at": version.activated_at,
    }


def present_version(version: PolicyVersion, slug: str) -> PolicyVersionRead:
    return PolicyVersionRead(
        id=version.id,
        slug=slug,
        document=PolicyDocument.model_validate(version.document),
        **_summary_fields(version),
    )


def _policy_fields(
    policy: Policy, active: PolicyVersion | None, shadow: PolicyVersion | None
) -> dict[str, Any]:
    return {
        "slug": policy.slug,
        "title": policy.title,
        "active_version": active.version if active else None,
        "shadow_version": shadow.version if shadow else None,
        "activated_at": active.status_changed_at if active else None,
        "created_at": policy.created_at,
    }


def present_policy(session: Session, policy: Policy) -> PolicyWithVersions:
    versions = repository.list_versions(session, policy.id)
    active = next((v for v in versions if v.status is PolicyVersionStatus.active), None)
    shadow = next((v for v in versions if v.status is PolicyVersionStatus.shadow), None)
    return PolicyWithVersions(
        **_policy_fields(policy, active, shadow),
        versions=[PolicyVersionSummary(**_summary_fields(v)) for v in versions],
    )


def list_policies(session: Session, tenant_id: uuid.UUID) -> list[PolicyRead]:
    policies = repository.list_policies(session, tenant_id)
    ids = [policy.id for policy in policies]
    active = repository.versions_with_status(session, ids, PolicyVersionStatus.active)
    shadow = repository.versions_with_status(session, ids, PolicyVersionStatus.shadow)
    return [
        PolicyRead(**_policy_fields(policy, active.get(policy.id), shadow.get(policy.id)))
        for policy in policies
    ]


def read_policy(session: Session, tenant_id: uuid.UUID, slug: str) -> PolicyWithVersions:
    return present_policy(session, get_policy(session, tenant_id, slug))


def read_version(
    session: Session, tenant_id: uuid.UUID, slug: str, number: int
) -> PolicyVersionRead:
    return present_version(get_version(session, tenant_id, slug, number), slug)


# The shadow's daily budget ----------------------------------------------------------------------


def today() -> date:
    return datetime.now(UTC).date()


def reserve_shadow_call(session: Session, tenant_id: uuid.UUID, daily_cap: int) -> bool:
    """Take one model call from the tenant's shadow budget for today (UTC); False when spent.

    An over-cap run is counted as skipped, so the metrics show what the cap held back.
    """
    day = today()
    if daily_cap > 0 and repository.reserve_shadow_call(session, tenant_id, day, daily_cap):
        return True
    repository.add_shadow_usage(session, tenant_id, day, skipped=1)
    return False


def settle_shadow_calls(
    session: Session, tenant_id: uuid.UUID, *, reserved: int, made: int, failed: bool = False
) -> None:
    """Count the calls a shadow run really made (a cache hit makes none, a re-ask two)."""
    repository.add_shadow_usage(
        session, tenant_id, today(), calls=made - reserved, failed=1 if failed else 0
    )
