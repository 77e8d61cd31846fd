"""Two versions of one consumer, for the rolling deploy tests (``plait worker`` of ``:provider``).

Configured by environment: ``PLAIT_URL``, ``PLAIT_PREFIX``, ``PLAIT_ID`` (as ``workflow_app``),
``PLAIT_VERSION`` (``1`` or ``2``, default 2), ``PLAIT_STEP_SECONDS`` (work of each step
attempt, s), ``PLAIT_STALL``, ``PLAIT_SHUTDOWN`` (the provider's stall and shutdown timeouts, s)
and ``PLAIT_GRACE`` (``missing_handler_grace``, s).

Version 1 runs ``shipping_v1`` (steps ``pack``, ``label``; a rollback of ``pack``); version 2
runs ``shipping_v2``, which adds the step ``ship`` and a rollback of ``label``. ``ship`` fails
(non-retryably) the runs whose ``n`` is a multiple of 4, which compensate. Every step attempt
and every rollback is counted by its side effect, in the ``<prefix>:test:ran`` hash
(``<run>:<job>`` -> how many times it ran).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import anyio
import redis.asyncio as aioredis
from apps.definitions import Job, shipping_v1, shipping_v2

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import NonRetryableError, StepContext, WorkflowConsumer

URL = os.environ.get("PLAIT_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("PLAIT_PREFIX", "plait-test")
VERSION = os.environ.get("PLAIT_VERSION", "2")
STEP_SECONDS = float(os.environ.get("PLAIT_STEP_SECONDS", "0.01"))

_counter: list[Any] = []


async def count(run_id: str, job: str) -> None:
    """Record that ``job`` of ``run_id`` ran (its side effect)."""
    if not _counter:
        _counter.append(aioredis.Redis.from_url(URL))
    await _counter[0].hincrby(f"{PREFIX}:test:ran", f"{run_id}:{job}", 1)


async def work(ctx: StepContext[Job]) -> str:
    await anyio.sleep(STEP_SECONDS)
    await count(ctx.run_id, ctx.step)
    return VERSION


async def ship(ctx: StepContext[Job]) -> str:
    await anyio.sleep(STEP_SECONDS)
    await count(ctx.run_id, "ship")
    if ctx.input.n % 4 == 0:
        raise NonRetryableError(f"no carrier for parcel {ctx.input.n}")
    return VERSION


async def unpack(ctx: StepContext[Job]) -> None:
    await count(ctx.run_id, "rollback:pack")


async def unlabel(ctx: StepContext[Job]) -> None:
    await count(ctx.run_id, "rollback:label")


def consumer(version: str) -> WorkflowConsumer[Job, Any]:
    """The consumer of ``version`` (``1`` or ``2``)."""
    shipping = WorkflowConsumer(shipping_v2 if version == "2" else shipping_v1)
    shipping.step("pack")(work)
    shipping.step("label")(work)
    shipping.rollback("pack")(unpack)
    if version == "2":
        shipping.step("ship")(ship)
        shipping.rollback("label")(unlabel)
    return shipping


options: dict[str, Any] = {}
if "PLAIT_GRACE" in os.environ:
    options["missing_handler_grace"] = timedelta(seconds=float(os.environ["PLAIT_GRACE"]))
provider = RedisWorkflowProvider.from_url(
    URL,
    prefix=PREFIX,
    provider_id=os.environ.get("PLAIT_ID", f"deploy-{os.getpid()}"),
    stall_timeout=timedelta(seconds=float(os.environ.get("PLAIT_STALL", "30"))),
    shutdown_timeout=timedelta(seconds=float(os.environ.get("PLAIT_SHUTDOWN", "1"))),
    **options,
)
provider.register(consumer(VERSION))
