"""A worker application for the multi-process tests, run with ``plait worker``.

Configured by environment: ``PLAIT_URL``, ``PLAIT_PREFIX``, ``PLAIT_ID`` (instance name),
``PLAIT_STALL`` (stall timeout, s), ``PLAIT_COUNT_URL`` (where attempts are counted,
default ``PLAIT_URL``), ``PLAIT_STEP_SECONDS`` (work per chain step, s). Every
step attempt is counted in Redis (``<prefix>:test:ran`` hash, ``<run>:<step>`` -> attempts).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import redis.asyncio as aioredis
from apps.definitions import Job, booking, capped, chain, crunch, hold, napper, stuck
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import RetryPolicy, StepContext, WorkflowConsumer, WorkflowContext

URL = os.environ.get("PLAIT_URL", "redis://127.0.0.1:6379/0")
COUNT_URL = os.environ.get("PLAIT_COUNT_URL", URL)
"""Where step attempts are counted (straight to Redis when PLAIT_URL is a faulty path)."""
PREFIX = os.environ.get("PLAIT_PREFIX", "plait-test")
INSTANCE = os.environ.get("PLAIT_ID", f"worker-{os.getpid()}")
STEP_SECONDS = float(os.environ.get("PLAIT_STEP_SECONDS", "0.02"))
HOLD_SECONDS = float(os.environ.get("PLAIT_HOLD_SECONDS", "3"))

_counter: list[Any] = []


async def count(ctx: StepContext[Job], what: str) -> None:
    if not _counter:
        _counter.append(aioredis.Redis.from_url(COUNT_URL))
    await _counter[0].hincrby(f"{PREFIX}:test:ran", f"{ctx.run_id}:{what}", 1)


chains: WorkflowConsumer[Job, Any] = WorkflowConsumer(chain)


async def chain_step(ctx: StepContext[Job]) -> str:
    await count(ctx, ctx.step)
    await anyio.sleep(STEP_SECONDS)
    return INSTANCE


for name in ("s1", "s2", "s3"):
    chains.step(name)(chain_step)


@chains.on_complete
async def chain_done(ctx: WorkflowContext[Job]) -> dict[str, Any]:
    return {"n": ctx.input.n, "by": [ctx.results[s] for s in ("s1", "s2", "s3")]}


holds: WorkflowConsumer[Job, Any] = WorkflowConsumer(hold)


@holds.step("work")
async def work(ctx: StepContext[Job]) -> str:
    await count(ctx, "work")
    if ctx.attempt == 1:
        await anyio.sleep(HOLD_SECONDS)
    return f"{INSTANCE} attempt {ctx.attempt}"


bookings: WorkflowConsumer[Job, Any] = WorkflowConsumer(booking)


@bookings.step("book")
async def book(ctx: StepContext[Job]) -> str:
    await count(ctx, "book")
    return "B-1"


@bookings.rollback("book")
async def unbook(ctx: StepContext[Job]) -> None:
    await count(ctx, "unbook")


@bookings.step("wait")
async def wait(ctx: StepContext[Job]) -> None:
    await count(ctx, "wait")
    await anyio.sleep(3600)


crunches: WorkflowConsumer[Job, Any] = WorkflowConsumer(crunch)


@crunches.step("crunch")
async def crunch_step(ctx: StepContext[Job]) -> str:
    await count(ctx, "crunch")
    for _ in range(5):
        time.sleep(0.8)  # noqa: ASYNC251 - blocks the event loop, for less than the stall timeout (1 s)
        await anyio.lowlevel.checkpoint()
    return INSTANCE


cappeds: WorkflowConsumer[Job, Any] = WorkflowConsumer(capped)

PEAK = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


@cappeds.step("work")
async def capped_work(ctx: StepContext[Job]) -> None:
    await count(ctx, "work")
    client = _counter[0]
    await client.eval(PEAK, 2, f"{PREFIX}:test:running", f"{PREFIX}:test:peak")
    await anyio.sleep(0.05)
    await client.decr(f"{PREFIX}:test:running")


stucks: WorkflowConsumer[Job, Any] = WorkflowConsumer(stuck)


@stucks.step("done")
async def done(ctx: StepContext[Job]) -> str:
    await count(ctx, "done")
    return "D-1"


@stucks.rollback("done")
async def undone(ctx: StepContext[Job]) -> None:
    await count(ctx, "undone")


@stucks.step("hang")
def hang(ctx: StepContext[Job]) -> None:
    time.sleep(3600)  # a sync step that never returns: its thread cannot be stopped


nappers: WorkflowConsumer[Job, Any] = WorkflowConsumer(napper)


@nappers.step("before")
async def before_nap(ctx: StepContext[Job]) -> str:
    await count(ctx, "before")
    return INSTANCE


@nappers.step("after")
async def after_nap(ctx: StepContext[Job]) -> str:
    await count(ctx, "after")
    return INSTANCE


def _tracer_provider() -> Any:
    """Export spans as JSON lines to ``PLAIT_TRACE_FILE`` when it is set."""
    path = os.environ.get("PLAIT_TRACE_FILE")
    if not path:
        return None
    exporter = ConsoleSpanExporter(
        out=open(path, "a"),  # noqa: SIM115 - open for the process's life
        formatter=lambda span: span.to_json(indent=None) + "\n",
    )
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    return tracers


provider = RedisWorkflowProvider.from_url(
    URL,
    prefix=PREFIX,
    provider_id=INSTANCE,
    stall_timeout=timedelta(seconds=float(os.environ.get("PLAIT_STALL", "1"))),
    shutdown_timeout=timedelta(seconds=1),
    concurrency=10,
    retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=20)),
    tracer_provider=_tracer_provider(),
)
for consumer in (chains, holds, bookings, crunches, cappeds, stucks, nappers):
    provider.register(consumer)
