from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.factories import TenantKeys, make_tenant


@pytest.fixture
def client(api_url: str, worker: subprocess.Popen[bytes]) -> Iterator[httpx.Client]:
    """An HTTP client for a running stack: API, worker process, broker, Postgres, fake model."""
    assert worker.poll() is None, "the worker process died"
    with httpx.Client(base_url=api_url, timeout=30) as http:
        yield http


@pytest.fixture
def tenant(migrated: str) -> TenantKeys:
    return make_tenant(migrated)
