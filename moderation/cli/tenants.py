"""`tenants` and `keys`: who may call the API, and with which role."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from moderation.cli.base import CommandFailed, add_command, emit, sessions
from moderation.config import Settings


def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.tenants.service import create_tenant
    from moderation.webhooks.service import check_callback_url

    if args.callback_url is not None:
        check_callback_url(args.callback_url, settings, field="--callback-url")
    with session_scope(sessions(settings)) as session:
        tenant = create_tenant(
            session,
            args.name,
            callback_url=args.callback_url,
            inbound_signing=args.inbound_signing,
            daily_token_budget=args.daily_token_budget,
        )
        secrets = {"webhook_secret": tenant.webhook_secret}
        if tenant.inbound_secret:
            secrets["inbound_secret"] = tenant.inbound_secret
        payload = {
            "id": tenant.id,
            "name": tenant.name,
            "daily_token_budget": tenant.daily_token_budget,
            "secrets": secrets,
        }
    lines = [f"tenant {payload['id']} ({args.name})"] + [f"{k}: {v}" for k, v in secrets.items()]
    emit(args, payload, "\n".join(lines))


def _tenant_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise CommandFailed(f"--tenant must be a tenant id (a UUID), got {raw!r}") from exc


def cmd_tenants_rotate_secret(args: argparse.Namespace, settings: Settings) -> None:
    from datetime import timedelta

    from moderation.database import session_scope
    from moderation.tenants.service import rotate_secret

    tenant_id = _tenant_id(args.tenant)
    hours = (
        settings.secret_rotation_overlap_hours if args.overlap_hours is None else args.overlap_hours
    )
    if hours < 0:
        raise CommandFailed("--overlap-hours cannot be negative")
    with session_scope(sessions(settings)) as session:
        rotated = rotate_secret(
            session, tenant_id, inbound=args.inbound, overlap=timedelta(hours=hours)
        )
    which = "inbound_secret" if args.inbound else "webhook_secret"
    payload = {
        "id": tenant_id,
        "secrets": {which: rotated.secret},
        "previous_valid_until": rotated.previous_valid_until,
    }
    until = (
        f"the previous one keeps working until {rotated.previous_valid_until.isoformat()}"
        if rotated.previous_valid_until
        else "the previous one stopped working now"
    )
    emit(args, payload, f"new {which}: {rotated.secret}\n{until}")


def cmd_tenants_budget(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.tenants.service import set_daily_token_budget, token_budget

    tenant_id = _tenant_id(args.tenant)
    budget = None if args.unlimited else args.daily_tokens
    with session_scope(sessions(settings)) as session:
        set_daily_token_budget(session, tenant_id, budget)
        used = token_budget(session, tenant_id).used_today
    payload = {"id": tenant_id, "daily_token_budget": budget, "tokens_today": used}
    limit = "unlimited" if budget is None else f"{budget} tokens a day"
    emit(args, payload, f"tenant {tenant_id}: {limit} ({used} used today, UTC)")


def _token_count(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"a number of tokens (0 or more), got {value!r}")
    return count


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.tenants.models import Role
    from moderation.tenants.service import create_api_key

    tenant_id = _tenant_id(args.tenant)
    with session_scope(sessions(settings)) as session:
        issued = create_api_key(session, tenant_id, Role(args.role), name=args.name)
        payload = {
            "id": issued.key.id,
            "tenant_id": tenant_id,
            "role": args.role,
            "name": issued.key.name,
            "key": issued.secret,
        }
    holder = f" for {issued.key.name}" if issued.key.name else ""
    emit(args, payload, f"{args.role} key{holder} (shown once, store it now): {issued.secret}")


def register(commands: Any) -> None:
    tenants = commands.add_parser("tenants", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    create_tenant = add_command(
        tenants, "create", cmd_tenants_create, "create a tenant", json_flag=True
    )
    create_tenant.add_argument("name")
    create_tenant.add_argument("--callback-url")
    create_tenant.add_argument(
        "--inbound-signing", action="store_true", help="require signed inbound webhooks"
    )
    create_tenant.add_argument(
        "--daily-token-budget",
        type=_token_count,
        metavar="TOKENS",
        help="model tokens the tenant may spend per UTC day (default: unlimited)",
    )
    budget = add_command(
        tenants,
        "budget",
        cmd_tenants_budget,
        "set a tenant's daily model-token budget",
        json_flag=True,
    )
    budget.add_argument("--tenant", required=True, help="tenant id")
    amount = budget.add_mutually_exclusive_group(required=True)
    amount.add_argument("--daily-tokens", type=_token_count, metavar="TOKENS")
    amount.add_argument("--unlimited", action="store_true", help="remove the budget")

    rotate = add_command(
        tenants,
        "rotate-secret",
        cmd_tenants_rotate_secret,
        "issue a new signing secret; the old one keeps working during the overlap",
        json_flag=True,
    )
    rotate.add_argument("--tenant", required=True, help="tenant id")
    rotate.add_argument(
        "--inbound",
        action="store_true",
        help="rotate the secret that signs submissions (default: the one that signs callbacks)",
    )
    rotate.add_argument(
        "--overlap-hours",
        type=float,
        help="how long the old secret keeps working (default 24, or "
        "MODERATION_SECRET_ROTATION_OVERLAP_HOURS)",
    )

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create_key = add_command(keys, "create", cmd_keys_create, "create an API key", json_flag=True)
    create_key.add_argument("--tenant", required=True, help="tenant id")
    create_key.add_argument("--role", required=True, choices=["ingest", "reviewer", "admin"])
    create_key.add_argument(
        "--name",
        help="who holds the key, e.g. a reviewer's name; audit trails and reports show it",
    )
