"""How fast the dashboard's pages answer with 100,000 runs of one workflow in Redis.

Writes the runs with ``execute`` (no consumer: they stay PENDING; every 100th is cancelled and
stays COMPENSATING), one compensated saga run beside them, then serves the dashboard with
uvicorn and asks each page ``--repeats`` times, printing the median and the slowest answer.
Uses database 10 of the Redis at ``--url`` and the prefix ``bench-dash``; deletes its keys at
the end unless ``--keep``.

    python benchmarks/dashboard_pages.py                 # 100,000 runs
    python benchmarks/dashboard_pages.py --runs 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import redis as sync_redis
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.connection import connect
from plait.providers.redis._dashboard.app import Catalog, DashboardOptions
from plait.workflows import RetryPolicy, Workflow, WorkflowConsumer, WorkflowStepError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dashboard_server import request, serve

PREFIX = "bench-dash"
IN_FLIGHT = 256


class Order(BaseModel):
    order_id: str


orders = (
    Workflow("bench-orders", input=Order, indexed_meta=("shard",)).step("reserve").step("charge")
)
saga = Workflow("bench-saga", input=Order).step("reserve").step("charge")


def saga_consumer() -> WorkflowConsumer[Order, Any]:
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(saga)
    consumer.step("reserve")(lambda ctx: {"held": True})
    consumer.rollback("reserve")(lambda ctx: None)

    def charge(ctx: Any) -> None:
        raise ValueError("card declined")

    consumer.step("charge")(charge)
    return consumer


async def write(url: str, runs: int) -> tuple[str, float]:
    """``runs`` runs of ``bench-orders`` and one failed saga; returns the saga run and the
    seconds the runs took to write."""
    provider = RedisWorkflowProvider.from_url(
        url, prefix=PREFIX, retry=RetryPolicy(max_attempts=1), stall_timeout=timedelta(minutes=5)
    )
    provider.register(saga_consumer())
    async with provider:
        began = time.perf_counter()
        numbers = iter(range(runs))

        async def writer() -> None:
            for number in numbers:
                handle = await provider.execute(
                    orders,
                    Order(order_id=str(number)),
                    idempotency_key=f"order-{number}",
                    meta={"shard": str(number % 16)},
                )
                if number % 100 == 0:
                    await handle.cancel()

        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(writer)
        took = time.perf_counter() - began
        handle = await provider.execute(saga, Order(order_id="s1"))
        with contextlib.suppress(WorkflowStepError):  # it fails, compensated: as it should
            await handle.result(timeout=timedelta(seconds=30))
    return handle.run_id, took


async def catalog_refresh(url: str) -> tuple[float, float]:
    """Seconds the background refreshes take: the names, the health report."""
    connection = connect(url, connect_timeout=5.0)
    try:
        catalog = Catalog(connection.client, PREFIX)
        began = time.perf_counter()
        await catalog.refresh_names()
        names = time.perf_counter() - began
        await catalog.refresh()
        return names, time.perf_counter() - began - names
    finally:
        await connection.aclose()


def pages(saga_run: str, total: int, middle: datetime) -> list[tuple[str, str]]:
    stamp = f"{middle:%Y-%m-%dT%H:%M:%S.%f}"
    runs = "/workflows/bench-orders"
    return [
        ("workflows", "/"),
        ("runs, first page", runs),
        ("runs, page at 50,000", f"{runs}?offset={total // 2}"),
        ("runs, last page", f"{runs}?offset={max(total - 50, 0)}"),
        ("runs, status PENDING (active index)", f"{runs}?status=PENDING"),
        ("runs, status COMPENSATING (active index)", f"{runs}?status=COMPENSATING"),
        ("runs, status COMPLETED (none)", f"{runs}?status=COMPLETED"),
        ("runs, meta shard=3 (meta index)", f"{runs}?meta=shard%3D3"),
        ("runs, meta shard=3 + COMPENSATING", f"{runs}?meta=shard%3D3&status=COMPENSATING"),
        ("runs, meta shard=3 + COMPLETED (none)", f"{runs}?meta=shard%3D3&status=COMPLETED"),
        ("runs, status PENDING before the middle run", f"{runs}?status=PENDING&until={stamp}"),
        ("runs, idempotency key", f"{runs}?key=order-{total // 3}"),
        ("runs, created before the middle run", f"{runs}?until={stamp}"),
        ("run (compensated saga)", f"/runs/{urllib.parse.quote(saga_run)}"),
        ("event groups", "/events"),
        ("dead letters", "/dead-letters"),
        ("health", "/health"),
        ("health.json", "/health.json"),
    ]


def next_page(base: str, path: str) -> str:
    """The path of the page after ``path`` (its "next page" link)."""
    page = request(base + path)
    marker = page.text.partition('<a id="next" href="')[2].partition('"')[0]
    return marker.replace("&amp;", "&")


def middle_run(client: sync_redis.Redis, total: int) -> datetime:
    """When the run in the middle of the index was created."""
    index = f"{PREFIX}:{{bench-orders}}:runs"
    found: Any = client.zrange(index, total // 2, total // 2, withscores=True)
    score = found[0][1]
    return datetime.fromtimestamp(float(score) / 1000, tz=UTC)


def wait_for_health(base: str) -> None:
    """Until the first health report (made in the background) is there."""
    deadline = time.monotonic() + 120
    while request(base + "/health.json").status != 200:
        if time.monotonic() > deadline:
            raise SystemExit("no health report after 120 s")
        time.sleep(0.5)


def measure(base: str, path: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        reply = request(base + path)
        times.append((time.perf_counter() - began) * 1000)
        if reply.status != 200:
            raise SystemExit(f"{path}: {reply.status}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/10")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="leave the runs in Redis")
    args = parser.parse_args()
    client = sync_redis.Redis.from_url(args.url)
    try:
        saga_run, took = anyio.run(write, args.url, args.runs)
        stored = client.zcard(f"{PREFIX}:{{bench-orders}}:runs")
        print(f"wrote {args.runs:,} runs in {took:.1f} s ({args.runs / took:,.0f}/s); "
              f"{stored:,} in the index; {client.dbsize():,} keys in the database")  # fmt: skip
        names, report = anyio.run(catalog_refresh, args.url)
        print(f"background refreshes: names {names * 1000:.0f} ms, health report "
              f"{report * 1000:.0f} ms")  # fmt: skip
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"load average {load} on {os.cpu_count()} CPUs")
        print(f"\n{'page':48} {'median ms':>10} {'max ms':>8}")
        options = DashboardOptions(prefix=PREFIX, catalog_interval=60)
        with serve(args.url, options, startup=120) as base:
            wait_for_health(base)
            listed = pages(saga_run, args.runs, middle_run(client, args.runs))
            following = next_page(base, "/workflows/bench-orders?status=PENDING")
            listed.insert(6, ("runs, status PENDING, second page (cursor)", following))
            for name, path in listed:
                times = measure(base, path, args.repeats)
                print(f"{name:48} {statistics.median(times):10.1f} {max(times):8.1f}")
    finally:
        if not args.keep:
            keys = list(client.scan_iter(match=f"{PREFIX}:*", count=5000))
            for start in range(0, len(keys), 5000):
                client.delete(*keys[start : start + 5000])
        client.close()


if __name__ == "__main__":
    main()
