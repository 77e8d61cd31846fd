"""Throughput on the embedded ``memory://`` server: one process, one provider, its own consumers.

The provider both executes runs (32 ``execute`` calls in flight) and runs their steps
(``concurrency`` 10); the last step of a run counts it in-process. Prints runs/s and steps/s of
``chain3`` and ``single`` (median of the repeats)::

    /tmp/pv/bin/python benchmarks/memory_throughput.py --n 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks.workload`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import (
    STEPS_PER_RUN,
    CountingMarker,
    machine,
    provider,
    submit_all,
)


async def measure(kind: str, n: int, url: str) -> tuple[float, float]:
    """(runs/s, process CPU ms per step) of ``n`` runs of ``kind`` on a fresh embedded server."""
    mark = CountingMarker()
    workflows = provider(url, "mem", mark=mark, kinds=[kind])
    async with workflows:
        await submit_all(workflows, kind, (f"w{i}" for i in range(20)))  # warm-up
        while mark.count < 20:
            mark.changed.clear()
            await mark.changed.wait()
        mark.started.clear()
        cpu0, started = time.process_time(), time.perf_counter()
        await submit_all(workflows, kind, (f"m{i}" for i in range(n)))
        while mark.count < n:
            mark.changed.clear()
            await asyncio.wait_for(mark.changed.wait(), timeout=60)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    return n / elapsed, cpu * 1000 / (n * STEPS_PER_RUN[kind])


async def main(args: argparse.Namespace) -> None:
    print(f"memory:// throughput, concurrency 10, {args.n} runs, machine {machine()}")
    for kind in args.kinds.split(","):
        rates: list[float] = []
        cpus: list[float] = []
        for repeat in range(args.repeats):
            rate, cpu = await measure(kind, args.n, f"memory://bench-{kind}-{repeat}")
            rates.append(rate)
            cpus.append(cpu)
            print(f"  {kind:8} run {repeat + 1}: {rate:8.1f} runs/s  CPU {cpu:.2f} ms/step")
        rate = statistics.median(rates)
        steps = rate * STEPS_PER_RUN[kind]
        print(
            f"{kind:8} median {rate:8.1f} runs/s = {steps:8.1f} steps/s, "
            f"CPU {statistics.median(cpus):.2f} ms/step (producer + worker in one process)"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="runs per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per kind")
    parser.add_argument("--kinds", default="chain3,single", help="comma-separated workflows")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
