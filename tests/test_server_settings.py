"""A provider warns, once per server, when Redis may lose its data: an evicting
``maxmemory-policy`` or no persistence at all."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from conftest import REDIS_URL, eventually, redis_server, standalone_redis
from test_events_processes import free_port

from plait.events import EventIncompatibleSchemaError
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core import keys
from plait.providers.redis._core import server as server_checks
from plait.workflows import IncompatibleSchemaError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of the test's own with ``allkeys-lru`` and no persistence."""
    port = free_port()
    process = subprocess.Popen(
        [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


async def _answers(url: str) -> bool:
    try:
        return bool(sync_redis.Redis.from_url(url).ping())
    except sync_redis.ConnectionError:
        return False


@pytest.fixture(autouse=True)
def each_server_unchecked() -> None:
    server_checks._CHECKED.clear()


async def test_an_evicting_redis_without_persistence_is_warned_of_once(
    evicting_redis: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await eventually(lambda: _answers(evicting_redis), what="the test's Redis answers")
    caplog.set_level(logging.WARNING, logger="plait.redis")

    async with RedisWorkflowProvider.from_url(evicting_redis, prefix=prefix):
        pass
    async with RedisEventProvider.from_url(evicting_redis, prefix=prefix, group="g"):
        pass

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "maxmemory-policy is 'allkeys-lru'" in warnings[0]
    assert "persistence is off" in warnings[1]


async def test_a_noeviction_redis_is_not_warned_of_eviction(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="plait.redis")

    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix):
        pass

    assert not any("maxmemory-policy" in record.getMessage() for record in caplog.records)


def test_persistence_by_either_snapshots_or_the_append_only_file_is_enough() -> None:
    assert server_checks.problems({"maxmemory-policy": "noeviction", "save": "3600 1"}) == []
    assert server_checks.problems({"save": "", "appendonly": "yes"}) == []
    assert len(server_checks.problems({"maxmemory-policy": "volatile-lru", "save": ""})) == 2


async def test_the_embedded_server_is_not_checked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="plait.redis")

    async with RedisWorkflowProvider.from_url("memory://settings-check"):
        pass

    assert caplog.records == []


# -- the key schema's version ----------------------------------------------------------------


async def test_a_provider_records_the_key_schema_version_under_its_prefix(
    url: str, prefix: str
) -> None:
    async with RedisWorkflowProvider.from_url(url, prefix=prefix) as provider:
        client: Any = provider._connection.client
        assert await client.get(keys.schema_version(prefix)) == str(keys.SCHEMA_VERSION).encode()


async def test_a_provider_refuses_to_start_on_data_of_another_schema_version(
    url: str, prefix: str
) -> None:
    async with RedisEventProvider.from_url(url, prefix=prefix, group="g") as first:
        client: Any = first._connection.client
        await client.set(keys.schema_version(prefix), str(keys.SCHEMA_VERSION + 1))
        workflows = RedisWorkflowProvider.from_url(url, prefix=prefix)
        with pytest.raises(IncompatibleSchemaError, match="schema version") as refused:
            await workflows.start()
        assert (refused.value.found, refused.value.expected) == (
            str(keys.SCHEMA_VERSION + 1),
            str(keys.SCHEMA_VERSION),
        )
        assert not workflows.alive
        events = RedisEventProvider.from_url(url, prefix=prefix, group="g")
        with pytest.raises(EventIncompatibleSchemaError):
            await events.start()


async def test_a_redis_that_refuses_config_is_said_once_at_info_and_the_provider_starts(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="plait.redis")
    with standalone_redis(tmp_path, "--rename-command", "CONFIG", "") as port:  # as managed
        url = f"redis://127.0.0.1:{port}/0"
        async with RedisWorkflowProvider.from_url(url, prefix=prefix) as workflows:
            assert workflows.alive
        async with RedisEventProvider.from_url(url, prefix=prefix, group="g") as events:
            assert events.alive

    said = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert len(said) == 1
    level, message = said[0]
    assert level == "INFO"
    assert (
        f"cannot check the eviction and persistence settings of Redis at 127.0.0.1:{port}"
        in message
    )
    assert "make sure maxmemory-policy is noeviction and persistence is on" in message
