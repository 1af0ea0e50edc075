"""Policy rubrics: versioned, immutable once written, one version active per policy."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy.orm import Session

from moderation.core.errors import Conflict, NotFound, ValidationFailed
from moderation.core.time import utcnow
from moderation.policies import repository
from moderation.policies.models import Policy, PolicyVersion
from moderation.policies.schemas import PolicyDocument

DEFAULT_POLICY = "default"


def content_sha256(document: PolicyDocument) -> str:
    canonical = json.dumps(document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def read_policy_file(path: Path) -> PolicyDocument:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationFailed(f"cannot read policy file {path}: {exc}") from exc
    return parse_policy_document(raw)


def parse_policy_document(raw: Any) -> PolicyDocument:
    try:
        return PolicyDocument.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors()
        ]
        raise ValidationFailed("the policy document is not valid", errors=errors) from exc


def store_policy_version(
    session: Session, document: PolicyDocument, *, activate_if_first: bool = True
) -> tuple[PolicyVersion, bool]:
    """Store a version; storing the same content again is a no-op (returns created=False).

    A different document under an existing version number is refused: versions are immutable.
    """
    policy = repository.get_policy(session, document.slug, for_update=True)
    if policy is None:
        policy = Policy(slug=document.slug, title=document.title)
        repository.add(session, policy)
    digest = content_sha256(document)
    existing = repository.get_version(session, policy.id, document.version)
    if existing is not None:
        if existing.content_sha256 != digest:
            raise Conflict(
                f"policy {document.slug} version {document.version} exists with other content; "
                "versions are immutable, write a new version number"
            )
        return existing, False
    version = PolicyVersion(
        policy_id=policy.id,
        version=document.version,
        document=document.model_dump(mode="json"),
        content_sha256=digest,
    )
    repository.add(session, version)
    if policy.active_version is None and activate_if_first:
        policy.active_version = document.version
        policy.activated_at = utcnow()
    session.flush()
    return version, True


def create_draft_version(session: Session, slug: str, raw: dict[str, Any]) -> PolicyVersion:
    """The API's way in: the next version number is assigned here, not by the caller."""
    policy = repository.get_policy(session, slug, for_update=True)
    next_version = 1 if policy is None else repository.latest_version_number(session, policy.id) + 1
    document = parse_policy_document({**raw, "slug": slug, "version": next_version})
    version, _ = store_policy_version(session, document, activate_if_first=policy is None)
    return version


def activate_version(session: Session, slug: str, version_number: int) -> Policy:
    policy = repository.get_policy(session, slug, for_update=True)
    if policy is None or repository.get_version(session, policy.id, version_number) is None:
        raise NotFound(f"policy {slug} has no version {version_number}")
    policy.active_version = version_number
    policy.activated_at = utcnow()
    session.flush()
    return policy


def active_version(session: Session, slug: str) -> PolicyVersion:
    policy = repository.get_policy(session, slug)
    if policy is None or policy.active_version is None:
        raise ValidationFailed(
            f"no active policy named {slug!r}",
            errors=[{"loc": ["body", "policy"], "msg": "unknown policy", "type": "value_error"}],
        )
    version = repository.get_version(session, policy.id, policy.active_version)
    assert version is not None  # active_version always names a stored version
    return version


def get_policy(session: Session, slug: str) -> Policy:
    policy = repository.get_policy(session, slug)
    if policy is None:
        raise NotFound(f"no policy named {slug!r}")
    return policy


def list_policies(session: Session) -> list[Policy]:
    return repository.list_policies(session)


def list_versions(session: Session, slug: str) -> list[PolicyVersion]:
    return repository.list_versions(session, get_policy(session, slug).id)


def get_version(session: Session, slug: str, version_number: int) -> PolicyVersion:
    version = repository.get_version(session, get_policy(session, slug).id, version_number)
    if version is None:
        raise NotFound(f"policy {slug} has no version {version_number}")
    return version


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
