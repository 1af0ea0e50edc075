"""`moderation migrate`: bring the schema to head.

No policy is loaded here: the shipped rubrics in `policies/*.yaml` are templates, copied into a
tenant when it is created (or on request) and read from their files at that moment.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from moderation.shipped import shipped_path


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(shipped_path("migrations")))
    config.attributes["database_url"] = database_url
    return config


def upgrade_schema(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")
