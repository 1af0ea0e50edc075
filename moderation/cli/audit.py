"""`audit verify`: prove the audit trail is as it was appended, or name where it is not."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from moderation.cli.base import CommandFailed, add_command, emit, sessions
from moderation.config import Settings


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.audit.service import verify_audit_chains
    from moderation.database import session_scope

    tenant_id: uuid.UUID | None = None
    if args.tenant is not None:
        try:
            tenant_id = uuid.UUID(args.tenant)
        except ValueError as exc:
            raise CommandFailed(
                f"--tenant must be a tenant id (a UUID), got {args.tenant!r}"
            ) from exc
    with session_scope(sessions(settings)) as session:
        # A consistent snapshot: events appended while the walk runs are not half-seen.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        report = verify_audit_chains(session, tenant_id)
    scope = f"tenant {tenant_id}" if tenant_id else "all tenants"
    summary = f"{report.events} events in {report.chains} chains ({scope})"
    if report.intact:
        emit(args, report.as_dict(), f"intact: {summary}")
        return
    broken = len({b.chain for b in report.breaks})
    lines = [str(b) for b in report.breaks]
    emit(args, report.as_dict(), "\n".join(lines))
    raise CommandFailed(
        f"audit trail broken: {len(report.breaks)} breaks in {broken} of {report.chains} "
        f"chains ({summary})"
    )


def register(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check the audit trail").add_subparsers(
        dest="action", required=True
    )
    verify = add_command(
        audit,
        "verify",
        cmd_audit_verify,
        "recompute every audit chain from the stored events and name each break "
        "(exit 1 when any chain is broken)",
        json_flag=True,
    )
    verify.add_argument("--tenant", help="only this tenant's chains (a tenant id)")
