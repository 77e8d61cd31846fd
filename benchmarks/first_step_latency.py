"""Time from ``execute`` returning to the first step starting, on Redis and on ``memory://``.

One run at a time of the one-step workflow ``single``: the step notes the wall-clock time at
which its handler is entered; the figure is that time minus the time ``execute`` returned (so
it excludes ``execute`` itself, which is reported separately). On Redis the step runs in a
``plait worker`` process (concurrency 10, dedicated database and prefix); on ``memory://`` in
the same process as the caller::

    /tmp/pv/bin/python benchmarks/first_step_latency.py --n 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

if __package__ in (None, ""):  # run as a script: make ``benchmarks.workload`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import (
    REDIS_URL,
    CountingMarker,
    Unit,
    delete_prefix,
    done_key,
    machine,
    provider,
    run_batch,
    single,
    start_workers,
    stop_workers,
)


def summary(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"{name} p50 {q[49]:.2f} ms, p95 {q[94]:.2f} ms, max {max(values):.2f} ms"


async def on_redis(url: str, prefix: str, n: int) -> tuple[list[float], list[float]]:
    """(execute ms, execute-returned -> step-started ms) for ``n`` sequential runs."""
    client = aioredis.Redis.from_url(url)
    await delete_prefix(client, prefix)
    workers = start_workers(1, url, prefix)
    producer = provider(url, prefix, mark=None)
    calls: list[float] = []
    waits: list[float] = []
    try:
        await producer.start()
        await run_batch(
            producer, client, prefix, "single", n=20, label="w"
        )  # warm-up, worker ready
        await client.delete(done_key(prefix))
        for i in range(n):
            called = time.time()
            await producer.execute(single, Unit(tag=f"l{i}"))
            returned = time.time()
            reply = await client.blpop([done_key(prefix)], timeout=30)
            if reply is None:
                raise TimeoutError(f"sample {i}: the step did not start within 30 s")
            started = float(reply[1].split()[1])
            calls.append((returned - called) * 1000)
            waits.append((started - returned) * 1000)
    finally:
        await producer.stop()
        stop_workers(workers)
        await delete_prefix(client, prefix)
        await client.aclose()
    return calls, waits


async def in_memory(n: int) -> tuple[list[float], list[float]]:
    """The same on ``memory://``, with the consumer in this process."""
    mark = CountingMarker()
    calls: list[float] = []
    waits: list[float] = []
    async with provider("memory://first-step", "mem", mark=mark, kinds=["single"]) as workflows:
        for i in range(-20, n):  # the first 20 are a warm-up
            tag = f"l{i}"
            called = time.time()
            await workflows.execute(single, Unit(tag=tag))
            returned = time.time()
            while tag not in mark.started:
                mark.changed.clear()
                await asyncio.wait_for(mark.changed.wait(), timeout=30)
            if i >= 0:
                calls.append((returned - called) * 1000)
                waits.append((mark.started[tag] - returned) * 1000)
    return calls, waits


async def main(args: argparse.Namespace) -> None:
    print(f"first step latency, {args.n} sequential one-step runs; machine {machine()}")
    url = f"{REDIS_URL}/{args.db}"
    backends: list[tuple[str, Callable[[], Awaitable[tuple[list[float], list[float]]]]]] = [
        (f"redis ({url}, worker process)", lambda: on_redis(url, args.prefix, args.n)),
        ("memory:// (same process)", lambda: in_memory(args.n)),
    ]
    for name, measure in backends:
        calls, waits = await measure()
        print(f"{name}:")
        print(f"  {summary('execute() call  ', calls)}")
        print(f"  {summary('returned -> step', waits)}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="samples per backend")
    parser.add_argument("--db", type=int, default=13, help="Redis database (default 13)")
    parser.add_argument("--prefix", default="plait-bench-first", help="key prefix")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
