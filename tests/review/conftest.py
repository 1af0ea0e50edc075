from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings
from moderation.database import get_sessionmaker, session_scope
from tests.factories import make_tenant_row

Transaction = Callable[[], AbstractContextManager[Session]]


@pytest.fixture
def sessions(migrated: str) -> sessionmaker[Session]:
    return get_sessionmaker(migrated)


@pytest.fixture
def tx(sessions: sessionmaker[Session]) -> Transaction:
    """One committed unit of work, as a request or a worker would run it."""

    def open_transaction() -> AbstractContextManager[Session]:
        return session_scope(sessions)

    return open_transaction


@pytest.fixture
def tenant_id(tx: Transaction) -> Iterator[uuid.UUID]:
    with tx() as session:
        created = make_tenant_row(session)
    yield created


@pytest.fixture
def settings(migrated: str) -> Settings:
    return Settings(database_url=migrated, review_lease_s=60)
