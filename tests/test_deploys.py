"""Rolling deploys: instances replaced one at a time never fail a run nor skip a rollback.

Workers are separate ``plait worker`` processes of ``tests/apps/deploy_app.py`` (two versions of
one consumer, chosen by ``PLAIT_VERSION``) on the real Redis.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from apps.definitions import shipping_v1
from conftest import REDIS_URL, Spawn, eventually, ready

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import WorkflowStatus

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.slow]

APP = "apps.deploy_app:provider"


@pytest.fixture
def backend() -> str:
    """These tests run on the real Redis only (keys under the test's prefix are cleaned)."""
    return "redis"


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    connection = aioredis.Redis.from_url(REDIS_URL)
    yield connection
    await connection.aclose()


async def test_a_stopped_worker_hands_its_running_steps_to_another_without_spending_attempts(
    spawn: Spawn, prefix: str, tmp_path: Path
) -> None:
    stall = 30.0
    slow = {"PLAIT_STEP_SECONDS": "3", "PLAIT_STALL": str(stall), "PLAIT_SHUTDOWN": "0.5"}
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        leaving = spawn("leaving", app=APP, PLAIT_VERSION="1", **slow)
        await ready(tmp_path, "leaving")
        handles = [await caller.execute(shipping_v1, {"n": n}) for n in range(6)]

        async def all_running() -> bool:
            infos = [await handle.describe() for handle in handles]
            return all(info.steps["pack"].state == "running" for info in infos)

        await eventually(all_running, what="every run's first step runs on the leaving worker")
        spawn("staying", app=APP, PLAIT_VERSION="1", **slow)
        await ready(tmp_path, "staying")
        began = time.monotonic()
        leaving.send_signal(signal.SIGTERM)
        results = [await handle.result(timeout=stall / 2) for handle in handles]
        took = time.monotonic() - began
        infos = [await handle.describe() for handle in handles]

    assert results == [None] * 6
    assert [info.status for info in infos] == [WorkflowStatus.COMPLETED] * 6
    assert {info.steps["pack"].attempts for info in infos} == {1}  # max_attempts=1: none spent
    assert took < stall / 2  # taken over at once, not reclaimed after the stall timeout
    assert leaving.wait(timeout=10) == 0
