"""`moderation migrate`: bring the schema to head, then load the shipped policy rubrics."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session

from moderation.policies.models import PolicyVersion
from moderation.policies.service import read_policy_file, store_policy_version
from moderation.shipped import shipped_path


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(shipped_path("migrations")))
    config.attributes["database_url"] = database_url
    return config


def upgrade_schema(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def load_shipped_policies(session: Session) -> list[tuple[PolicyVersion, bool]]:
    """Idempotent: a version already stored with the same content is left alone."""
    return [
        store_policy_version(session, read_policy_file(path))
        for path in sorted(shipped_path("policies").glob("*.yaml"))
    ]
