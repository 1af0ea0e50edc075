"""Engine and sessions. Whoever opens a session commits it; services only flush."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from sqlalchemy import create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from moderation import models  # noqa: F401 - every mapper registered before the first flush
from moderation.config import Settings
from moderation.core.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

# What the database raises when it cannot be reached or gave up on us: refused or dropped
# connections, the server shutting down, a full pool, a cancelled statement, a deadlock. None
# of these says anything about the request, and the same request may well succeed shortly.
# Data errors (a value the column refuses) are not among them: those are refused at the
# boundary by the field types in moderation.core.fields.
DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)
# The same outages, as psycopg raises them on the async connections (AsyncPool), which no
# SQLAlchemy engine wraps (AsyncPool's PoolTimeout is an OperationalError).
ASYNC_DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
DATABASE_RETRY_AFTER_S = 5


def sqlalchemy_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and pin them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The URL as psycopg itself takes it, without SQLAlchemy's driver suffix."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return sqlalchemy_url(settings.database_url)
    from moderation.embedded import embedded_database_url

    return embedded_database_url(settings)


@functools.cache
def get_engine(
    url: str, pool_size: int = 10, connect_timeout_s: int = 5, pool_timeout_s: float = 5.0
) -> Engine:
    """An engine that fails within seconds when the database is away, instead of hanging.

    `connect_timeout` bounds a connection attempt to an address that does not answer;
    `pool_timeout` bounds the wait for a free connection when all are busy.
    """
    connect_args = {"connect_timeout": connect_timeout_s} if url.startswith("postgresql") else {}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=pool_timeout_s,
        connect_args=connect_args,
    )


@functools.cache
def get_sessionmaker(
    url: str, pool_size: int = 10, connect_timeout_s: int = 5, pool_timeout_s: float = 5.0
) -> sessionmaker[Session]:
    engine = get_engine(url, pool_size, connect_timeout_s, pool_timeout_s)
    return sessionmaker(engine, expire_on_commit=False)


def database_unavailable(exc: BaseException) -> ServiceUnavailable:
    """The 503 a request gets when the database is away; the cause goes to the log only."""
    logger.warning("database unavailable: %s", exc.__class__.__name__, exc_info=exc)
    return ServiceUnavailable(
        "the database is unavailable; retry shortly", retry_after=DATABASE_RETRY_AFTER_S
    )


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work for workers and commands: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        try:
            session.rollback()
        except DATABASE_OUTAGES:
            # The connection is gone, and the transaction with it; the original error is the
            # one worth raising.
            logger.debug("rollback on a lost connection failed", exc_info=True)
        raise
    finally:
        session.close()


@contextmanager
def statement_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session on a connection in autocommit, for work that is one statement: a single
    statement is atomic by itself, so the BEGIN and COMMIT round trips around it buy nothing.
    Each statement sent through it commits on its own; write several only through
    `session_scope`."""
    session = factory()
    try:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
    finally:
        session.close()


# Reads need no transaction either: a read is a statement.
read_scope = statement_scope


class PoolTimeout(psycopg.OperationalError):
    """Every connection of an AsyncPool stayed busy for longer than its pool timeout."""


class AsyncPool:
    """A few psycopg async connections in autocommit, for the one-statement writes that the
    event loop can make itself: no worker thread, no ORM session, no BEGIN and COMMIT around a
    statement that is a transaction of its own.

    Connections are opened on demand, up to `size`, and kept. One that died with the database
    (a restart, a dropped socket) is thrown away when a statement fails on it, and a statement
    that failed that way on a kept connection is sent once more on a new one: the first
    request after a database restart does not pay for the old connection. Statements sent here
    must therefore be safe to send twice (an idempotent insert is).
    """

    def __init__(
        self, url: str, *, size: int = 10, connect_timeout_s: int = 5, pool_timeout_s: float = 5.0
    ) -> None:
        self._conninfo = libpq_url(url)
        self._connect_timeout_s = connect_timeout_s
        self._pool_timeout_s = pool_timeout_s
        # Each kept connection with its cursor: a cursor keeps the adapters it looked up for
        # the parameters' types, and every statement here has the same types.
        self._idle: list[psycopg.AsyncCursor[Any]] = []
        self._slots = asyncio.Semaphore(size)

    async def fetch_one(self, query: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run one statement; its first row. Raises one of ASYNC_DATABASE_OUTAGES on an outage."""
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._pool_timeout_s):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise PoolTimeout(
                    f"no database connection free within {self._pool_timeout_s} s"
                ) from exc
        else:
            await self._slots.acquire()
        try:
            kept = bool(self._idle)
            while True:
                cursor = self._idle.pop() if self._idle else await self._connect()
                try:
                    await cursor.execute(query, params)
                    row = await cursor.fetchone()
                except psycopg.OperationalError:
                    lost = cursor.connection.broken or cursor.connection.closed
                    await cursor.connection.close()
                    if kept and lost:
                        kept = bool(self._idle)
                        logger.debug("a kept database connection was lost; sending again")
                        continue
                    raise
                except BaseException:
                    await cursor.connection.close()
                    raise
                self._idle.append(cursor)
                return row
        finally:
            self._slots.release()

    async def _connect(self) -> psycopg.AsyncCursor[Any]:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_timeout_s
        )
        return connection.cursor()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for cursor in idle:
            await cursor.connection.close()


async def request_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, committed when the handler returns.

    Declared with scope="function" (see DbSession) so the commit happens before the response is
    sent: a client that sees 202 can rely on the row being there. Opening a session touches no
    connection, so it happens on the event loop; the commit, which does, runs in a worker
    thread, and a request that never used the database skips even that.
    Database outages, whether they strike in authentication, in the handler or at commit,
    become one 503 with `Retry-After`.
    """
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    session = factory()
    try:
        yield session
    except DATABASE_OUTAGES as exc:
        _close_quietly(session)
        raise database_unavailable(exc) from exc
    except BaseException:
        # Also on cancellation, where nothing may be awaited any more: returning the connection
        # rolls it back, a short blocking step on a path that is rare.
        _close_quietly(session)
        raise
    if not session.in_transaction():
        session.close()
        return
    try:
        await run_in_threadpool(_commit_and_close, session)
    except DATABASE_OUTAGES as exc:
        raise database_unavailable(exc) from exc


def _commit_and_close(session: Session) -> None:
    try:
        session.commit()
    finally:
        _close_quietly(session)


def _close_quietly(session: Session) -> None:
    """Give the connection back; one that died with the database is dropped, not raised."""
    try:
        session.close()
    except DATABASE_OUTAGES:
        logger.debug("closing a session on a lost connection failed", exc_info=True)


request_session_scope = asynccontextmanager(request_session)
"""request_session for a handler that opens its session only on the paths that need one."""

DbSession = Annotated[Session, Depends(request_session, scope="function")]
