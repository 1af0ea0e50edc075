"""Engine and sessions. Whoever opens a session commits it; services only flush."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from moderation import models  # noqa: F401 - every mapper registered before the first flush
from moderation.config import Settings


def sqlalchemy_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and pin them to psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return sqlalchemy_url(settings.database_url)
    from moderation.embedded import embedded_database_url

    return embedded_database_url(settings)


@functools.cache
def get_engine(url: str, pool_size: int = 10) -> Engine:
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


@functools.cache
def get_sessionmaker(url: str, pool_size: int = 10) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url, pool_size), expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work for workers and commands: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for one read, on a connection in autocommit: no BEGIN and COMMIT round trips
    around a statement that needs no transaction. Nothing written through it is kept."""
    session = factory()
    try:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
    finally:
        session.close()


async def request_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, committed when the handler returns.

    Declared with scope="function" (see DbSession) so the commit happens before the response is
    sent: a client that sees 202 can rely on the row being there. Opening a session touches no
    connection, so it happens on the event loop; the commit, which does, runs in a worker
    thread, and a request that never used the database skips even that.
    """
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    session = factory()
    try:
        yield session
    except BaseException:
        # Also on cancellation, where nothing may be awaited any more: returning the connection
        # rolls it back, a short blocking step on a path that is rare.
        session.close()
        raise
    if session.in_transaction():
        await run_in_threadpool(_commit_and_close, session)
    else:
        session.close()


def _commit_and_close(session: Session) -> None:
    try:
        session.commit()
    finally:
        session.close()


DbSession = Annotated[Session, Depends(request_session, scope="function")]
