"""Profile a ``plait worker`` process under load with py-spy: where does its CPU go?

1. Starts one worker process (concurrency 10, dedicated database and prefix) and warms it up.
2. Runs ``--n`` units unprofiled and reports worker CPU ms per step and RSS.
3. Samples the worker with ``py-spy record --pid`` for ``--seconds`` while this process keeps
   it busy, writes the raw stacks (``results/<kind>.txt``) and, with ``--svg``, a flame graph
   (``results/<kind>.svg``, a second sampling pass), and prints the functions with the most
   own and cumulative samples, and own samples by library. Only samples holding the GIL are
   kept (``--gil``), and stacks ending in a wait (``epoll``, a thread waiting on a condition)
   are dropped, so percentages are shares of the worker's busy Python time::

    /tmp/pv/bin/python benchmarks/profile_worker.py --kind chain3 --seconds 15 --svg

py-spy must be installed beside the interpreter (``/tmp/pv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

if __package__ in (None, ""):  # run as a script: make ``benchmarks.workload`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import (
    REDIS_URL,
    RESULTS,
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
from plait.providers.redis import RedisWorkflowProvider

FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")
WAITS = ("select (", "Condition.wait (", "Event.wait (")
AREAS = (
    ("plait", "/plait/"),
    ("redis-py", "/redis/"),
    ("anyio", "/anyio/"),
    ("asyncio", "/asyncio/"),
    ("pydantic", "/pydantic"),
    ("json", "/json/"),
    ("opentelemetry", "/opentelemetry/"),
)


def short(path: str) -> str:
    """A path from the package down (``plait/providers/redis/_worker.py``)."""
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/", "/tmp/plait-snap/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    for root in ("providers/", "workflows/", "events/"):
        if path.startswith(root + "plait/"):
            path = path[len(root) :]
    return path


def area(path: str) -> str:
    for name, marker in AREAS:
        if marker in path:
            return name
    return "python stdlib/other" if path else "native/unknown"


def parse_frame(frame: str) -> tuple[str, str]:
    """(``function (short path)``, full path) of one py-spy frame."""
    found = FRAME.match(frame)
    if found is None:
        return frame, ""
    return f"{found['function']} ({short(found['path'])})", found["path"]


def analyse(raw: str, top: int) -> str:
    """Top functions by own and by cumulative samples, and own samples by library."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f[0].startswith("thread ")]
        if not frames or frames[-1][0].startswith(WAITS):
            continue
        total += count
        own[frames[-1][0]] += count
        by_area[area(frames[-1][1])] += count
        for name in {name for name, _ in frames}:
            cumulative[name] += count
    if not total:
        return "no samples"

    def table(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{title} (% of {total} CPU samples):"]
        rows += [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]
        return rows

    lines = table("own time by library", by_area)
    lines += table("own time by function", own)
    lines += table("cumulative time by function", cumulative)
    return "\n".join(lines)


async def keep_busy(
    producer: RedisWorkflowProvider,
    client: aioredis.Redis,
    prefix: str,
    kind: str,
    sampler: asyncio.subprocess.Process,
    *,
    in_flight: int,
) -> int:
    """Run batches of 200 units until ``sampler`` exits; returns the units run."""
    done = 0
    waiting = asyncio.ensure_future(sampler.wait())
    while not waiting.done():
        await run_batch(
            producer, client, prefix, kind, n=200, label=f"b{done}-", in_flight=in_flight
        )
        done += 200
    return done


def find_py_spy(given: str | None) -> str:
    """``--py-spy``, else py-spy beside this interpreter, else on ``PATH``."""
    found = given or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    found = found or shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy, or pass --py-spy PATH")
    return found


async def sample(
    spy: str, pid: int, seconds: float, fmt: str, out: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        spy,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--duration",
        str(int(seconds)),
        "--full-filenames",
        "--gil",
        "--format",
        fmt,
        "-o",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def main(args: argparse.Namespace) -> None:
    url = f"{REDIS_URL}/{args.db}"
    spy = find_py_spy(args.py_spy)
    RESULTS.mkdir(parents=True, exist_ok=True)
    client = aioredis.Redis.from_url(url)
    await delete_prefix(client, args.prefix)
    workers = start_workers(1, url, args.prefix)
    pid = workers[0].pid
    producer = provider(url, args.prefix, mark=None)
    steps = STEPS_PER_RUN[args.kind]
    try:
        await producer.start()
        await run_batch(producer, client, args.prefix, args.kind, n=50, label="w")
        cpu0 = cpu_seconds(pid)
        elapsed = await run_batch(
            producer, client, args.prefix, args.kind, n=args.n, label="m", in_flight=args.in_flight
        )
        cpu = cpu_seconds(pid) - cpu0
        print(
            f"{args.kind} on one worker process (concurrency 10), {args.in_flight} "
            f"execute calls in flight, {url}; {machine()}"
        )
        print(
            f"unprofiled: {args.n / elapsed:.1f} runs/s; worker CPU "
            f"{cpu * 1000 / args.n:.2f} ms/run = {cpu * 1000 / (args.n * steps):.3f} ms/step; "
            f"worker RSS {rss_mb(pid):.1f} MB"
        )
        raw = RESULTS / f"{args.kind}{'' if args.in_flight > 1 else '-seq'}.txt"
        passes = [("raw", raw)] + ([("flamegraph", raw.with_suffix(".svg"))] if args.svg else [])
        for fmt, out in passes:
            sampler = await sample(spy, pid, args.seconds, fmt, out)
            units = await keep_busy(
                producer, client, args.prefix, args.kind, sampler, in_flight=args.in_flight
            )
            error = (await sampler.stderr.read()).decode() if sampler.stderr else ""
            if sampler.returncode:
                raise RuntimeError(f"py-spy failed: {error[-500:]}")
            print(f"py-spy {fmt}: {units} {args.kind} runs sampled, wrote {out}")
        print(analyse(raw.read_text(), args.top))
    finally:
        await producer.stop()
        stop_workers(workers)
        await delete_prefix(client, args.prefix)
        await client.aclose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", default="chain3", choices=["single", "chain3", "fanout10"])
    parser.add_argument("--n", type=int, default=2000, help="unprofiled runs for CPU/step")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=32,
        help="execute calls outstanding (1: one run at a time, the latency path)",
    )
    parser.add_argument("--seconds", type=float, default=15, help="sampling time")
    parser.add_argument("--svg", action="store_true", help="also write a flame graph")
    parser.add_argument("--py-spy", help="path of the py-spy executable")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--db", type=int, default=14, help="Redis database (default 14)")
    parser.add_argument("--prefix", default="plait-bench-prof", help="key prefix")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
