"""`policies`: a tenant's rubric documents: load a file, install the shipped templates, list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moderation.cli.base import add_command, emit, sessions, tenant_id_argument
from moderation.config import Settings


def cmd_policies_load(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import read_policy_file, store_policy_version
    from moderation.tenants.service import get_tenant

    tenant_id = tenant_id_argument(args.tenant)
    document = read_policy_file(Path(args.file))
    with session_scope(sessions(settings)) as session:
        get_tenant(session, tenant_id)
        stored = store_policy_version(session, tenant_id, document, activate=args.activate)
        payload = {
            "id": stored.version.id,
            "tenant_id": tenant_id,
            "slug": document.slug,
            "version": document.version,
            "status": stored.version.status.value,
            "created": stored.created,
            "content_sha256": stored.version.content_sha256,
        }
    state = "stored" if stored.created else "already stored, unchanged"
    emit(
        args,
        payload,
        f"policy {document.slug} version {document.version}: {state}; {payload['status']}",
    )


def cmd_policies_install_template(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import install_templates
    from moderation.tenants.service import get_tenant

    tenant_id = tenant_id_argument(args.tenant)
    with session_scope(sessions(settings)) as session:
        get_tenant(session, tenant_id)
        installed = [
            {
                "id": stored.version.id,
                "slug": stored.slug,
                "version": stored.version.version,
                "status": stored.version.status.value,
                "created": stored.created,
            }
            for stored in install_templates(session, tenant_id, activate=args.activate)
        ]
    text = "\n".join(
        f"{row['slug']} v{row['version']}: "
        f"{'installed' if row['created'] else 'already installed'}; {row['status']}"
        for row in installed
    )
    emit(args, {"tenant_id": tenant_id, "policies": installed}, text)


def cmd_policies_list(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import list_policies
    from moderation.tenants.service import get_tenant

    tenant_id = tenant_id_argument(args.tenant)
    with session_scope(sessions(settings)) as session:
        get_tenant(session, tenant_id)
        rows = [policy.model_dump(mode="json") for policy in list_policies(session, tenant_id)]

    def line(row: dict[str, Any]) -> str:
        shadow = f"\tshadow v{row['shadow_version']}" if row["shadow_version"] else ""
        return f"{row['slug']}\tactive v{row['active_version']}{shadow}\t{row['title']}"

    emit(
        args,
        {"tenant_id": tenant_id, "policies": rows},
        "\n".join(map(line, rows)) or "no policies",
    )


def register(commands: Any) -> None:
    policies = commands.add_parser(
        "policies", help="manage a tenant's policy rubrics"
    ).add_subparsers(dest="action", required=True)
    load = add_command(
        policies,
        "load",
        cmd_policies_load,
        "store a policy YAML file as a version of the tenant's policy (a draft, unless it is "
        "the policy's first version or --activate is given)",
        json_flag=True,
    )
    load.add_argument("file")
    load.add_argument("--tenant", required=True, help="tenant id")
    load.add_argument("--activate", action="store_true", help="make this version active")

    install = add_command(
        policies,
        "install-template",
        cmd_policies_install_template,
        "copy the shipped policy templates into the tenant (new versions stay drafts unless "
        "--activate; a policy new to the tenant is active at once)",
        json_flag=True,
    )
    install.add_argument("--tenant", required=True, help="tenant id")
    install.add_argument("--activate", action="store_true", help="make the templates active")

    listing = add_command(
        policies, "list", cmd_policies_list, "list the tenant's policies", json_flag=True
    )
    listing.add_argument("--tenant", required=True, help="tenant id")
