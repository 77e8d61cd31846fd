"""Bounded memory: 10,000 finished runs leave (almost) nothing behind once ``retention`` passes.

The test starts its own Redis (no persistence, a free port, a temp dir), so ``INFO memory``
measures plait alone. It records ``used_memory`` after a warm-up (scripts loaded, the stream,
its group and the stats hash exist), after 10,000 runs have finished (their records, results,
event streams and idempotency keys kept for ``retention``), and after ``retention`` expired
plus one reconciler pass. What may remain is bounded: the workflow's stream (its entries are
deleted as steps end), stats and consumers, and the run index (``runs``: one id per run, trimmed by
the reconciler ``2 x retention + 1 h`` after the run started).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from conftest import eventually, standalone_redis
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import (
    WorkflowKeys,
    instances,
    reconcile_lock,
    workflow_registry,
)
from plait.workflows import StepContext, Workflow, WorkflowConsumer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis_only,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

RUNS = 10_000
WARM_UP = 200
RETENTION = timedelta(seconds=2)
PREFIX = "mem"


class Order(BaseModel):
    order_id: str
    amount_cents: int


checkout = Workflow("checkout", input=Order).step("charge").step("ship")
checkouts: WorkflowConsumer[Order, Any] = WorkflowConsumer(checkout)


@checkouts.step("charge")
async def charge(ctx: StepContext[Order]) -> dict[str, Any]:
    return {"charge_id": f"ch_{ctx.input.order_id}", "amount_cents": ctx.input.amount_cents}


@checkouts.step("ship")
async def ship(ctx: StepContext[Order]) -> str:
    return f"parcel-{ctx.input.order_id}"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server with no persistence, shut down afterwards."""
    with standalone_redis(tmp_path) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def used_memory(client: Any) -> tuple[int, int]:
    """``used_memory`` and ``used_memory_dataset`` (without client buffers and other overhead).

    Client buffers move by a megabyte or two with the provider's connection use, so the
    assertions compare the dataset; both are printed.
    """
    info = await client.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


async def run_many(provider: RedisWorkflowProvider, client: Any, first: int, count: int) -> None:
    """Execute ``count`` runs (each with an idempotency key) and wait until all completed."""
    stats = WorkflowKeys(PREFIX, checkout.name).stats
    limiter = anyio.Semaphore(64)
    before = int(await client.hget(stats, "COMPLETED") or 0)

    async def one(n: int) -> None:
        async with limiter:
            order = Order(order_id=f"o-{n}", amount_cents=n)
            await provider.execute(checkout, order, idempotency_key=f"order-{n}")

    async with anyio.create_task_group() as tg:
        for n in range(first, first + count):
            tg.start_soon(one, n)

    async def finished() -> bool:
        return int(await client.hget(stats, "COMPLETED") or 0) - before == count

    await eventually(finished, timeout=120, what=f"{count} runs complete")


async def run_keys(client: Any) -> int:
    """Keys of single runs left (records, results, event streams, idempotency keys)."""
    base = WorkflowKeys(PREFIX, checkout.name).base
    found = 0
    for pattern in (f"{base}run:*", f"{base}idem:*"):
        found += len([key async for key in client.scan_iter(match=pattern, count=5000)])
    return found


async def test_memory_returns_near_its_start_after_retention(client: Any, redis_url: str) -> None:
    provider = RedisWorkflowProvider.from_url(
        redis_url,
        prefix=PREFIX,
        concurrency=64,
        retention=RETENTION,
        reconcile_interval=timedelta(hours=1),
    )
    provider.register(checkouts)
    keys = WorkflowKeys(PREFIX, checkout.name)
    async with provider:
        await run_many(provider, client, 0, WARM_UP)
        await eventually(lambda: _none_left(client), timeout=30, what="warm-up runs expire")
        await provider.reconcile()
        start = await used_memory(client)

        began = time.monotonic()
        await run_many(provider, client, WARM_UP, RUNS)
        took = time.monotonic() - began
        peak = await used_memory(client)
        kept = await bytes_per_run(client)

        await eventually(lambda: _none_left(client), timeout=60, what="runs expire")
        await provider.reconcile()
        end = await used_memory(client)
        # the run indexes: by creation time, and by status
        index = int(await client.memory_usage(keys.runs) or 0)
        index += int(await client.memory_usage(keys.status) or 0)
        left = [key.decode() async for key in client.scan_iter(match=f"{PREFIX}:*")]

    ids = WARM_UP + RUNS
    print(
        f"\n{RUNS} runs in {took:.1f}s ({RUNS / took:.0f}/s)\n"
        f"used_memory: start {start[0]:,} B, after the runs {peak[0]:,} B, "
        f"after retention + reconcile {end[0]:,} B\n"
        f"dataset: start {start[1]:,} B, after the runs {peak[1]:,} B (runs older than the "
        f"retention already gone), "
        f"after retention + reconcile {end[1]:,} B ({(end[1] - start[1]) / RUNS:,.1f} B per run)\n"
        f"run index: {index:,} B for {WARM_UP + RUNS} ids ({index / ids:,.0f} B each)\n"
        f"a finished run during its retention: {sum(kept.values()):,.0f} B "
        + ", ".join(f"{what} {size:,.0f} B" for what, size in kept.items())
    )
    expected = [keys.jobs, keys.runs, keys.status, keys.stats, keys.consumers, instances(PREFIX)]
    expected += [f"{PREFIX}:schema", workflow_registry(PREFIX)]
    assert sorted(set(left) - {reconcile_lock(PREFIX)}) == sorted(expected)
    assert await client.zcard(keys.runs) == WARM_UP + RUNS
    # All that grows is the run indexes (until the reconciler trims them), plus allocator noise
    # (measured up to ~300 KiB on a loaded machine: the stream's and the index's encodings).
    assert end[1] - start[1] <= index + 512 * 1024
    assert end[1] - start[1] < sum(kept.values()) * RUNS / 10


async def bytes_per_run(client: Any, sample: int = 100) -> dict[str, float]:
    """Mean ``MEMORY USAGE`` of each key of the newest finished runs (kept for retention)."""
    keys = WorkflowKeys(PREFIX, checkout.name)
    totals = {"record": 0, "results": 0, "events": 0, "idempotency key": 0}
    seen = 0
    for raw in await client.zrevrange(keys.runs, 0, sample - 1):
        run_id = raw.decode()
        ikey = await client.hget(keys.run(run_id), "ikey")
        if ikey is None:
            continue  # expired already
        seen += 1
        for what, key in zip(
            totals,
            (keys.run(run_id), keys.results(run_id), keys.events(run_id),
             keys.idempotency(ikey.decode())),
            strict=True,
        ):  # fmt: skip
            totals[what] += int(await client.memory_usage(key, samples=0) or 0)
    assert seen, "no finished run left to measure"
    return {what: total / seen for what, total in totals.items()}


async def _none_left(client: Any) -> bool:
    return await run_keys(client) == 0
