"""The `moderation` command.

Exit codes: 0 success, 2 usage (argparse), 1 failure with one clear line on stderr. Commands
whose output a script may need take --json and then print exactly one JSON object.
Each command group lives in a module of its own and adds itself to the parser in `register`.
"""

from __future__ import annotations

import argparse
import sys

from moderation.cli import audit, policies, run, tenants
from moderation.cli.base import CommandFailed, configure_logging, logger
from moderation.config import get_settings
from moderation.core.errors import DomainError

COMMAND_GROUPS = (run, tenants, policies, audit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moderation", description="Content moderation with visual context."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        configure_logging(settings)
        args.handler(args, settings)
    except (DomainError, CommandFailed) as exc:
        print(f"moderation: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logger.debug("command failed", exc_info=True)
        print(f"moderation: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
