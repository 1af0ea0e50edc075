"""`policies`: load rubric documents and list them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moderation.cli.base import add_command, emit, sessions
from moderation.config import Settings


def cmd_policies_load(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import activate_version, read_policy_file, store_policy_version

    document = read_policy_file(Path(args.file))
    with session_scope(sessions(settings)) as session:
        version, created = store_policy_version(session, document)
        if args.activate:
            activate_version(session, document.slug, document.version)
        payload = {
            "id": version.id,
            "slug": document.slug,
            "version": document.version,
            "created": created,
            "content_sha256": version.content_sha256,
        }
    state = "stored" if created else "already stored, unchanged"
    emit(args, payload, f"policy {document.slug} version {document.version}: {state}")


def cmd_policies_list(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import list_policies

    with session_scope(sessions(settings)) as session:
        rows = [
            {"slug": p.slug, "title": p.title, "active_version": p.active_version}
            for p in list_policies(session)
        ]
    text = "\n".join(f"{r['slug']}\tv{r['active_version']}\t{r['title']}" for r in rows)
    emit(args, {"policies": rows}, text or "no policies")


def register(commands: Any) -> None:
    policies = commands.add_parser("policies", help="manage policy rubrics").add_subparsers(
        dest="action", required=True
    )
    load = add_command(
        policies, "load", cmd_policies_load, "store a policy YAML file", json_flag=True
    )
    load.add_argument("file")
    load.add_argument("--activate", action="store_true", help="make this version active")
    add_command(policies, "list", cmd_policies_list, "list policies", json_flag=True)
