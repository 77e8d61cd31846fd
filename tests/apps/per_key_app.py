"""A worker application for the multi-process per-key concurrency test (``plait worker``).

Configured by environment like ``apps.workflow_app``. Each attempt of ``keyed``'s step records
its start and end (Redis time, µs) in ``<prefix>:test:spans`` (hash ``<run>|<key>|<attempt>``
-> ``start,end``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import anyio
import redis.asyncio as aioredis
from apps.definitions import Keyed, keyed

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import RetryPolicy, StepContext, WorkflowConsumer

URL = os.environ.get("PLAIT_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("PLAIT_PREFIX", "plait-test")
INSTANCE = os.environ.get("PLAIT_ID", f"worker-{os.getpid()}")

_client: list[Any] = []
keyeds: WorkflowConsumer[Keyed, Any] = WorkflowConsumer(keyed)


async def _now(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1_000_000 + int(micros)


@keyeds.step("work")
async def work(ctx: StepContext[Keyed]) -> str:
    if not _client:
        _client.append(aioredis.Redis.from_url(URL))
    client = _client[0]
    start = await _now(client)
    await anyio.sleep(0.02)
    end = await _now(client)
    field = f"{ctx.run_id}|{ctx.input.key}|{ctx.attempt}"
    await client.hset(f"{PREFIX}:test:spans", field, f"{start},{end}")
    return INSTANCE


provider = RedisWorkflowProvider.from_url(
    URL,
    prefix=PREFIX,
    provider_id=INSTANCE,
    stall_timeout=timedelta(seconds=1),
    shutdown_timeout=timedelta(seconds=1),
    concurrency=10,
    retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=20)),
)
provider.register(keyeds)
