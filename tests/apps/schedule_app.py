"""A worker application for the multi-process schedule tests, run with ``plait worker``.

Configured by environment like ``apps.workflow_app``. Each run of ``ticked`` records its run id
under its tick (``<prefix>:test:tick:<schedule id>:<scheduled_at>`` set) and the tick in
``<prefix>:test:ticks:<schedule id>`` (zset, scheduled_at -> tick ms), and in
``<prefix>:test:caught:<schedule id>`` when the run is a catch-up.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from apps.definitions import Job, ticked

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import RetryPolicy, StepContext, WorkflowConsumer

URL = os.environ.get("PLAIT_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("PLAIT_PREFIX", "plait-test")
INSTANCE = os.environ.get("PLAIT_ID", f"worker-{os.getpid()}")

_client: list[Any] = []
ticks: WorkflowConsumer[Job, Any] = WorkflowConsumer(ticked)


@ticks.step("record")
async def record(ctx: StepContext[Job]) -> str:
    if not _client:
        _client.append(aioredis.Redis.from_url(URL))
    schedule, at = ctx.meta["schedule_id"], ctx.meta["scheduled_at"]
    tick_ms = int(datetime.fromisoformat(at).timestamp() * 1000)
    await _client[0].sadd(f"{PREFIX}:test:tick:{schedule}:{tick_ms}", ctx.run_id)
    await _client[0].zadd(f"{PREFIX}:test:ticks:{schedule}", {at: tick_ms})
    if ctx.meta["catch_up"] == "1":
        await _client[0].zadd(f"{PREFIX}:test:caught:{schedule}", {at: tick_ms})
    return INSTANCE


provider = RedisWorkflowProvider.from_url(
    URL,
    prefix=PREFIX,
    provider_id=INSTANCE,
    stall_timeout=timedelta(seconds=1),
    shutdown_timeout=timedelta(seconds=1),
    retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=20)),
)
provider.register(ticks)
