"""Services a chaos test may stop: a Redis and a PostgreSQL of the test's own, on ports of their
own, and the check that the machine's RabbitMQ is there.

The machine's shared services are never stopped. RabbitMQ is only used, through a queue of the
test's own that is deleted afterwards; a test that restarts the broker does it to a private
Redis.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import psycopg

from tests.conftest import free_port

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _wait(ready: object, what: str, timeout: float) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class PrivateRedis:
    """redis-server in the foreground, keeping nothing on disk: a restart forgets every message,
    as a broker that crashed without persistence would."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("no redis-server on this machine")
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _wait(lambda: _port_open(self.port), f"redis on {self.port}", 15)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def postgres_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A throwaway cluster on a port of its own; as root it runs as the `postgres` system user,
    in a directory that user owns."""

    def __init__(self) -> None:
        bin_dir = postgres_binaries()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries on this machine")
        self.bin_dir = bin_dir
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="moderation-chaos-pg-"))
        self.data = self.root / "data"
        if self.user:
            shutil.chown(self.root, self.user)
            self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c max_connections=200 -c fsync=off -c synchronous_commit=on"
        )
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open sessions are cut, as in a crash or a failover."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """A new database on `server_url` (copied from `template` if given); its libpq URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{clause}')  # type: ignore[arg-type]
    parts = urllib.parse.urlsplit(server_url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def amqp_unreachable_reason(url: str) -> str | None:
    """None when a broker answers at `url`; else why not, for the skip message."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ is unreachable at {url} ({type(exc).__name__}: {exc})"
    return None


def delete_amqp_queue(url: str, name: str) -> None:
    """Remove what Celery declared for a test's queue from the shared RabbitMQ."""
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(url, connect_timeout=3) as connection:
        channel = connection.channel()
        channel.queue_delete(queue=name)
        channel.exchange_delete(exchange=name)
