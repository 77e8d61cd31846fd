"""Shared fixtures: every contract test runs on ``memory://`` and on the real Redis.

Each test gets its own key prefix (never FLUSHALL) and, on ``memory://``, its own embedded
server name, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis as sync_redis

REDIS_URL = os.environ.get("PLAIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``memory`` (embedded) or ``redis`` (127.0.0.1:6379)."""
    return str(request.param)


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(backend: str) -> str:
    """The provider URL for the backend under test."""
    if backend == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return REDIS_URL


@pytest.fixture(autouse=True)
def _clean_redis_prefix(request: pytest.FixtureRequest, prefix: str) -> Iterator[None]:
    """Delete the test's keys from the real Redis afterwards (only its own prefix)."""
    yield
    if "backend" not in request.fixturenames or request.getfixturevalue("backend") != "redis":
        return
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()
