"""The single source of schema truth: migrations match the models and run both ways."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from alembic import command
from psycopg import sql

from moderation.schema_migrations import alembic_config


@pytest.fixture
def empty_database(postgres_server_url: str):
    name = f"moderation_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, query = postgres_server_url.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    yield url.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_migrations_upgrade_downgrade_and_match_the_models(empty_database: str):
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.check(config)  # raises if the models and the migrations disagree
    command.downgrade(config, "base")
    command.upgrade(config, "head")
