"""10,000 parked runs: what waiting costs, and signalling them all completes them all.

    python benchmarks/parked_runs.py --n 10000 --idle 10

On a Redis server of its own (``redis-server`` on a free port, in a temp dir), one
``plait worker`` process runs two workflows: ``parked-wait`` (``a``, then a wait ``go`` with a
one-hour timeout, then ``b``) and ``parked-sleep`` (``a``, then a sleep until a time the input
names, then ``b``). Half the runs are of each. The script measures:

- how fast runs are executed and parked (all of them in the workflow's delayed set);
- Redis bytes per parked run (``MEMORY USAGE`` of every key of the prefix, by kind of key);
- the idle worker's CPU and the commands Redis served while everything is parked;
- signalling every wait (32 signals in flight): until every waiting run completed, and the
  sleeping runs waking at their time: all of them complete.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: benchmarks.* imports from the project root
    sys.path.insert(0, str(ROOT))

from benchmarks.redis_memory import footprint  # noqa: E402
from benchmarks.workload import cpu_seconds, machine, stop_workers  # noqa: E402

PREFIX = "bench-parked"
IN_FLIGHT = 32


class Parked(BaseModel):
    tag: str
    wake_at: datetime | None = None


waiting = (
    Workflow("parked-wait", input=Parked).step("a").wait("go", timeout=timedelta(hours=1)).step("b")
)
sleeping = (
    Workflow("parked-sleep", input=Parked)
    .step("a")
    .sleep("nap", until=lambda ctx: ctx.input.wake_at or datetime.now(tz=UTC))
    .step("b")
)


def done_key() -> str:
    return f"{PREFIX}-done"


def worker_provider() -> RedisWorkflowProvider:
    """The worker process's provider (``plait worker benchmarks.parked_runs:worker_provider``)."""
    url = os.environ["PLAIT_BENCH_URL"]
    reconcile = timedelta(seconds=float(os.environ.get("PLAIT_BENCH_RECONCILE", "30")))
    provider = RedisWorkflowProvider.from_url(
        url, prefix=PREFIX, concurrency=10, reconcile_interval=reconcile
    )
    marker: list[aioredis.Redis] = []

    async def noop(ctx: StepContext[Parked]) -> None:
        return None

    async def mark(ctx: StepContext[Parked]) -> None:
        if not marker:
            marker.append(aioredis.Redis.from_url(url))
        await marker[0].rpush(done_key(), f"{ctx.workflow} {time.time():.6f}")

    for definition in (waiting, sleeping):
        consumer: WorkflowConsumer[Parked, Any] = WorkflowConsumer(definition)
        consumer.step("a")(noop)
        consumer.step("b")(mark)
        provider.register(consumer)
    return provider


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, f"redis://127.0.0.1:{port}/0"


def start_worker(url: str, reconcile: float) -> subprocess.Popen[bytes]:
    """The ``plait worker`` process running both workflows (cwd: the project root)."""
    env = dict(os.environ, PLAIT_BENCH_URL=url, PLAIT_BENCH_RECONCILE=str(reconcile))
    command = [sys.executable, "-m", "plait.providers.redis", "--log-level", "WARNING"]
    command += ["worker", "benchmarks.parked_runs:worker_provider"]
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)


async def until(condition: Any, timeout: float, what: str) -> float:
    end = time.perf_counter() + timeout
    while not await condition():
        if time.perf_counter() > end:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def lanes(count: int, items: list[Any], work: Any) -> None:
    pending = iter(items)

    async def lane() -> None:
        for item in pending:
            await work(item)

    await asyncio.gather(*(lane() for _ in range(count)))


async def commands_served(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("stats")
    return int(info["total_commands_processed"])


async def measure(url: str, n: int, idle: float, reconcile: float) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    while True:
        try:
            await client.ping()
            break
        except Exception:  # the server is starting
            await asyncio.sleep(0.05)
    worker = start_worker(url, reconcile)
    out: dict[str, Any] = {"n": n, "idle_window_s": idle, "reconcile_interval_s": reconcile}
    interval = timedelta(seconds=reconcile)
    try:
        async with RedisWorkflowProvider.from_url(
            url, prefix=PREFIX, reconcile_interval=interval
        ) as caller:
            half = n // 2
            # the sleeps wake after parking (at >= 300 runs/s), the idle window and 10 s more;
            # the idle window measures what the timers (and the reconciler's passes) do
            wake_at = datetime.now(tz=UTC) + timedelta(seconds=n / 300 + idle + 10)
            began = time.perf_counter()
            handles: list[Any] = []

            async def execute(i: int) -> None:
                if i < half:
                    handles.append(await caller.execute(waiting, Parked(tag=f"w{i}")))
                else:
                    await caller.execute(sleeping, Parked(tag=f"s{i}", wake_at=wake_at))

            await lanes(IN_FLIGHT, list(range(n)), execute)
            executed = time.perf_counter()
            delayed = [f"{PREFIX}:{{{wf.name}}}:delayed" for wf in (waiting, sleeping)]

            async def all_parked() -> bool:
                counts = [await client.zcard(key) for key in delayed]
                return sum(counts) >= n

            parked = await until(all_parked, max(120.0, n / 20), "runs did not all park")
            out["execute_per_s"] = round(n / (executed - began), 1)
            out["parked_all_after_s"] = round(parked - began, 2)
            total, by_bytes, by_count = await footprint(client, PREFIX)
            out["redis_bytes_per_parked_run"] = round(total / n, 1)
            out["bytes_per_run_by_key"] = {k: round(v / n, 1) for k, v in by_bytes.most_common()}
            out["keys_by_kind"] = dict(by_count)
            info: dict[str, Any] = await client.info("memory")
            out["redis_used_memory_mb"] = round(int(info["used_memory"]) / 2**20, 1)

            # idle: everything parked; what does the worker (and Redis) do?
            cpu0, cmd0, t0 = cpu_seconds(worker.pid), await commands_served(client), time.time()
            await asyncio.sleep(idle)
            cpu1, cmd1, t1 = cpu_seconds(worker.pid), await commands_served(client), time.time()
            out["idle_worker_cpu_percent"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
            out["idle_redis_commands_per_s"] = round((cmd1 - cmd0 - 2) / (t1 - t0), 1)
            woke_early = await client.llen(done_key())
            out["finished_before_signals"] = woke_early

            # signal every wait
            signalled_at = time.perf_counter()
            await lanes(
                IN_FLIGHT,
                handles,
                lambda handle: caller.signal(handle.run_id, "go", {"ok": True}),
            )
            sent = time.perf_counter()

            async def waits_done() -> bool:
                done = await client.hget(f"{PREFIX}:{{{waiting.name}}}:stats", "COMPLETED")
                return int(done or 0) >= half

            finished = await until(waits_done, max(120.0, n / 20), "signalled runs not done")
            out["signal_per_s"] = round(half / (sent - signalled_at), 1)
            out["signalled_all_completed_after_s"] = round(finished - signalled_at, 2)

            async def sleeps_done() -> bool:
                done = await client.hget(f"{PREFIX}:{{{sleeping.name}}}:stats", "COMPLETED")
                return int(done or 0) >= n - half

            remaining = (wake_at - datetime.now(tz=UTC)).total_seconds()
            await until(sleeps_done, max(remaining, 0) + max(120.0, n / 20), "sleeps not done")
            lateness = (datetime.now(tz=UTC) - wake_at).total_seconds()
            out["sleeps_all_completed_after_wake_s"] = round(lateness, 2)
            out["completed"] = await client.llen(done_key())
    finally:
        stop_workers([worker])
        await client.aclose()
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    folder = tempfile.mkdtemp(prefix="plait-parked-")
    server, url = start_redis(folder)
    try:
        result = await measure(url, args.n, args.idle, args.reconcile_interval)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    result["machine"] = machine()
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="parked runs (half wait, half sleep)")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument(
        "--reconcile-interval",
        type=float,
        default=30.0,
        help="the providers' reconcile_interval, seconds (its passes read every live run)",
    )
    parser.add_argument("--out", help="also write the figures as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    figures = asyncio.run(main(arguments))
    print(json.dumps(figures, indent=2))
    if arguments.out:
        Path(arguments.out).write_text(json.dumps(figures, indent=2) + "\n")
