"""Scaling with worker processes: chain3 workflows/s with 1, 2 and 4 ``plait worker`` processes.

Each worker process runs ``concurrency`` 10 against the real Redis under a dedicated key prefix
(``--prefix``, default ``plait-bench-scaling``; its keys are deleted before and after). This
process is the producer (32 ``execute`` calls in flight); the third step of each run pushes a
done marker, polled every 5 ms. Prints runs/s, steps/s and worker CPU per step::

    /tmp/pv/bin/python benchmarks/scaling.py --workers 1,2,4 --n 2000 --repeats 2

On a 2-vCPU machine that also hosts Redis and the producer, more than two processes mostly
measure contention: read the figures with the machine's core count in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import redis.asyncio as aioredis

if __package__ in (None, ""):  # run as a script: make ``benchmarks.workload`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import (
    REDIS_URL,
    STEPS_PER_RUN,
    cpu_seconds,
    delete_prefix,
    machine,
    provider,
    rss_mb,
    run_batch,
    start_workers,
    stop_workers,
)


async def measure(url: str, prefix: str, processes: int, n: int, kind: str) -> dict[str, float]:
    """Start ``processes`` workers, warm up, run ``n`` units, stop them; the figures."""
    client = aioredis.Redis.from_url(url)
    await delete_prefix(client, prefix)
    workers = start_workers(processes, url, prefix)
    producer = provider(url, prefix, mark=None)
    try:
        await producer.start()
        await run_batch(producer, client, prefix, kind, n=20 * processes, label="w")  # warm-up
        cpu0 = sum(cpu_seconds(w.pid) for w in workers)
        elapsed = await run_batch(producer, client, prefix, kind, n=n, label="m")
        cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu0
        rss = max(rss_mb(w.pid) for w in workers)
    finally:
        await producer.stop()
        stop_workers(workers)
        await delete_prefix(client, prefix)
        await client.aclose()
    return {
        "runs_s": n / elapsed,
        "cpu_ms_step": cpu * 1000 / (n * STEPS_PER_RUN[kind]),
        "rss_mb": rss,
    }


async def main(args: argparse.Namespace) -> None:
    url = f"{REDIS_URL}/{args.db}"
    print(f"{args.kind} with N worker processes (concurrency 10 each), {url} prefix {args.prefix}")
    print(f"{args.n} runs per measurement, median of {args.repeats}; machine {machine()}")
    base: float | None = None
    for processes in (int(x) for x in args.workers.split(",")):
        runs = [
            await measure(url, args.prefix, processes, args.n, args.kind)
            for _ in range(args.repeats)
        ]
        rate = statistics.median(r["runs_s"] for r in runs)
        base = base or rate
        cpu = statistics.median(r["cpu_ms_step"] for r in runs)
        rss = max(r["rss_mb"] for r in runs)
        spread = ", ".join(f"{r['runs_s']:.0f}" for r in runs)
        print(
            f"{processes} worker(s): {rate:7.1f} runs/s ({spread}) = "
            f"{rate * STEPS_PER_RUN[args.kind]:7.1f} steps/s, x{rate / base:.2f}; "
            f"worker CPU {cpu:.2f} ms/step; RSS {rss:.0f} MB per worker"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="process counts to try")
    parser.add_argument("--n", type=int, default=2000, help="runs per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per count")
    parser.add_argument("--kind", default="chain3", choices=["single", "chain3", "fanout10"])
    parser.add_argument("--db", type=int, default=11, help="Redis database (default 11)")
    parser.add_argument("--prefix", default="plait-bench-scaling", help="key prefix")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
