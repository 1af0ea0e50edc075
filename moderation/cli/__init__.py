"""The `moderation` command.

Exit codes: 0 success, 2 usage (argparse), 1 failure with one clear line on stderr. Commands
whose output a script may need take --json and then print exactly one JSON object.
Each command group lives in a module of its own and adds itself to the parser in `register`.
"""

from __future__ import annotations

import argparse
import json
import sys

from moderation.cli import audit, backtests, policies, reports, run, tenants
from moderation.cli.base import CommandFailed, configure_logging, logger
from moderation.config import get_settings
from moderation.core.errors import DomainError

COMMAND_GROUPS = (run, tenants, policies, audit, reports, backtests)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moderation", description="Content moderation with visual context."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def report_domain_error(args: argparse.Namespace, exc: DomainError) -> None:
    """One line saying what failed, then one line per bad field (`path: what is wrong`).

    With --json the same goes to stdout as one object, for scripts.
    """
    errors = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))}
        for error in exc.errors or []
    ]
    lines = [f"moderation: {exc.detail}"] + [
        f"  {'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
        for error in errors
    ]
    print("\n".join(lines), file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": exc.detail, "status": exc.status, "errors": errors}))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        configure_logging(settings)
        args.handler(args, settings)
    except DomainError as exc:
        report_domain_error(args, exc)
        return 1
    except CommandFailed as exc:
        print(f"moderation: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logger.debug("command failed", exc_info=True)
        print(f"moderation: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
