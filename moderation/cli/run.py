"""Running the service: `up`, `api`, `worker`, `migrate`."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

from moderation.cli.base import CommandFailed, add_command, emit, logger, sessions
from moderation.config import Settings, get_settings


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import resolve_database_url
    from moderation.policies.service import template_documents
    from moderation.schema_migrations import upgrade_schema

    upgrade_schema(resolve_database_url(settings))
    # Parsed now so a broken template fails here, not when the next tenant is created.
    templates = [{"slug": t.slug, "version": t.version} for t in template_documents()]
    emit(
        args,
        {"migrated": True, "templates": templates},
        f"schema at head; {len(templates)} policy templates for new tenants",
    )


def cmd_api(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from moderation.main import create_app

    # uvicorn re-raises the signal that stopped it once it has shut down; the default SIGTERM
    # action would then end the process without running its exit handlers, and an embedded
    # PostgreSQL this process started would outlive it. As SystemExit, they run.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    options: dict[str, Any] = {
        "host": args.host or settings.api_host,
        "port": args.port or settings.api_port,
        "log_level": settings.log_level.lower(),
        "proxy_headers": True,
        # A line per request costs ingest a formatted record and a write; the service logs
        # what goes wrong on its own, and a proxy in front usually keeps an access log anyway.
        "access_log": bool(getattr(args, "access_log", False)),
    }
    workers = getattr(args, "workers", None) or 1
    if workers == 1:
        uvicorn.run(create_app(settings, tune_gc=True), **options)
        return
    # One process serves one core's worth of requests. Each of N processes builds its own app
    # (its own connection pool and key cache) from the same environment, so uvicorn is given
    # the factory to call rather than an app built here.
    uvicorn.run("moderation.main:create_server_app", factory=True, workers=workers, **options)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.queue import celery_app

    # Threads, not processes: a worker spends its time waiting on the model server, so one
    # process keeps many calls in flight (MODERATION_VLM_MAX_CONCURRENCY, which --concurrency
    # sets). It runs more threads than that (MODERATION_WORKER_THREADS): the model client lets
    # only that many calls out at once, and the other threads prepare and store items
    # meanwhile, so no model slot waits on this process's own work.
    if args.concurrency:
        os.environ["MODERATION_VLM_MAX_CONCURRENCY"] = str(args.concurrency)
        get_settings.cache_clear()
        settings = get_settings()
    _run_celery_worker(
        celery_app,
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.worker_thread_count}",
            # A node name of its own per process: on RabbitMQ, a second worker on the same host
            # under the default name fails on the first one's exclusive control queue.
            f"--hostname=moderation-{os.getpid()}@%h",
            f"--loglevel={settings.log_level.upper()}",
            f"--queues={settings.queue_name}",
            "--without-gossip",
            "--without-mingle",
        ],
    )


# The exit code Celery gives a worker that stopped on an error it could not recover from.
_CELERY_UNRECOVERABLE = 1


def _run_celery_worker(celery_app: Any, argv: list[str]) -> None:
    """Run the Celery worker; if it stops by itself on an unrecoverable error after it was
    ready, start it afresh in this same process.

    Celery ends a worker on an error its consumer did not expect, and some come from races in
    its broker connection's clean-up after the broker went away (seen with Redis restarts under
    the threads pool). The work is safe either way (leases and the relay see to that), but a
    worker that stays down until someone notices is an outage of its own. A stop that was asked
    for (SIGTERM, SIGINT) ends the process as usual, and so does a worker that never got ready.
    """
    from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

    seen: dict[str, Any] = {"ready": False, "asked": False, "exitcode": None}

    def on_ready(**_: Any) -> None:
        seen["ready"] = True

    def on_asked(**_: Any) -> None:
        seen["asked"] = True

    def on_shutdown(sender: Any = None, **_: Any) -> None:
        seen["exitcode"] = getattr(sender, "exitcode", None)

    watched = [(worker_ready, on_ready), (worker_shutting_down, on_asked)]
    watched.append((worker_shutdown, on_shutdown))
    for signal_, receiver in watched:
        signal_.connect(receiver, weak=False)
    try:
        celery_app.worker_main(argv)
    finally:
        for signal_, receiver in watched:
            signal_.disconnect(receiver)
    if seen["ready"] and not seen["asked"] and seen["exitcode"] == _CELERY_UNRECOVERABLE:
        logger.error("the worker stopped on an unrecoverable error; starting it again")
        time.sleep(1)  # not a tight loop, should the error come back at once
        os.execv(sys.executable, [sys.executable, "-m", "moderation", *sys.argv[1:]])  # noqa: S606


def _local_credentials(settings: Settings) -> dict[str, str]:
    """The local tenant and keys `up` prints; created once, kept in the data directory."""
    from moderation.database import session_scope
    from moderation.tenants.models import Role
    from moderation.tenants.service import create_api_key, create_tenant

    path = settings.data_dir / "local-credentials.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    with session_scope(sessions(settings)) as session:
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


def _hold_up_lock(settings: Settings) -> IO[str]:
    """One `up` per data directory: a second one would share the first's embedded database and
    broker, fail to bind its port, and print keys and a banner for a service it is not running.

    The lock is an flock on a file in the data directory, released by the kernel however the
    holder ends, so a crashed `up` never blocks the next.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "up.lock"
    lock = path.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise CommandFailed(
            f"moderation up is already running for {settings.data_dir} (pid {holder}); "
            "stop it first, or give this one its own MODERATION_DATA_DIR and --port"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CommandFailed(
                f"cannot listen on {host}:{port} ({exc.strerror}); is moderation already "
                "running? Stop it or pass --port"
            ) from None


def cmd_up(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import resolve_database_url

    # Both checks come before anything starts or prints, so a second `up` says why it cannot
    # run and leaves the first one's database, broker and keys alone.
    lock = _hold_up_lock(settings)
    host, port = args.host or settings.api_host, args.port or settings.api_port
    _check_port_free(host, port)

    database_url = resolve_database_url(settings)
    os.environ["MODERATION_DATABASE_URL"] = database_url
    from moderation.queue import resolve_broker_url

    broker_url = resolve_broker_url(settings)
    os.environ["MODERATION_BROKER_URL"] = broker_url
    get_settings.cache_clear()
    settings = get_settings()

    cmd_migrate(argparse.Namespace(json=False), settings)
    credentials = _local_credentials(settings)
    worker = subprocess.Popen([sys.executable, "-m", "moderation", "worker"], env=os.environ.copy())
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
    try:
        # cmd_api turns SIGTERM into SystemExit, so this `finally` runs and the worker is
        # stopped before the embedded database shuts down.
        cmd_api(
            argparse.Namespace(
                host=host, port=port, workers=args.workers, access_log=args.access_log
            ),
            settings,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        lock.close()


def register(commands: Any) -> None:
    up = add_command(
        commands, "up", cmd_up, "migrate, then run API, worker and relay on this machine"
    )
    api = add_command(commands, "api", cmd_api, "run the HTTP API")
    for command in (up, api):
        command.add_argument("--host")
        command.add_argument("--port", type=int)
        command.add_argument(
            "--workers", type=int, default=1, help="API processes, to use more than one core"
        )
        command.add_argument(
            "--access-log", action="store_true", help="log a line for every HTTP request"
        )
    worker = add_command(commands, "worker", cmd_worker, "run a Celery worker (and the relay)")
    worker.add_argument("--concurrency", type=int, help="model calls in flight (threads)")
    add_command(
        commands,
        "migrate",
        cmd_migrate,
        "migrate the schema, check the shipped policy templates",
        json_flag=True,
    )
