"""A durable sleep lives in Redis, not in a worker: it survives the restart of every worker.

Workers are separate ``plait worker`` processes (``tests/apps``) on the real Redis.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from apps.definitions import Job, napper
from conftest import REDIS_URL, Spawn, eventually, ready

from plait.providers.redis import RedisWorkflowProvider

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.slow]


@pytest.fixture
def backend() -> str:
    """These tests run on the real Redis only (keys under the test's prefix are cleaned)."""
    return "redis"


async def test_a_sleep_survives_the_restart_of_every_worker_process(
    spawn: Spawn, prefix: str, tmp_path: Path
) -> None:
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        first = [spawn("w1"), spawn("w2")]
        await ready(tmp_path, "w1", "w2")
        handle = await caller.execute(napper, Job(n=1))

        async def sleeping() -> bool:
            waits = (await handle.describe()).waits
            return "nap" in waits and waits["nap"].state == "waiting"

        await eventually(sleeping, timeout=20, what="the run sleeps")
        for process in first:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        # every worker died while the run sleeps; a new one wakes it when it is due
        due = (await handle.describe()).waits["nap"].due
        assert due is not None
        spawn("w3")
        await ready(tmp_path, "w3")
        assert await handle.result(timeout=30) is None
        info = await handle.describe()
        assert info.waits["nap"].state == "woke"
        assert info.steps["after"].started_at is not None
        assert info.steps["after"].started_at >= due
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            ran = await client.hgetall(f"{prefix}:test:ran")
        finally:
            await client.aclose()
        assert ran == {
            f"{handle.run_id}:before".encode(): b"1",
            f"{handle.run_id}:after".encode(): b"1",
        }
