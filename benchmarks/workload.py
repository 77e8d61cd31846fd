"""The workload shared by the benchmark scripts: no-op workflows, worker processes, a driver.

The workflows are those of the peer harness adapter (``peer_ours.py``): ``single`` (one step),
``chain3`` (three sequential steps) and ``fanout10`` (ten parallel steps, then ``parent``).
Every step is a no-op except the last one of a run, which calls a *marker*: by default it
``RPUSH``es ``"<tag> <unix time when the step started>"`` to the done list of the prefix.

Worker processes run the ordinary entry point,
``python -m plait.providers.redis worker benchmarks.workload:worker_provider``, configured
by the environment variables ``PLAIT_BENCH_URL``, ``PLAIT_BENCH_PREFIX`` and
``PLAIT_BENCH_CONCURRENCY``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REDIS_URL = "redis://127.0.0.1:6379"
IN_FLIGHT = 32
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Marker = Callable[[StepContext[Any]], Awaitable[None]]


class Unit(BaseModel):
    """The input of every benchmark run: the tag the last step reports."""

    tag: str


single = Workflow("single", input=Unit).step("only")
chain3 = Workflow("chain3", input=Unit).step("s1").step("s2").step("s3")
fanout10 = Workflow("fanout10", input=Unit).parallel(*(f"c{i}" for i in range(10))).step("parent")
WORKFLOWS: dict[str, Workflow[Unit, Any]] = {
    "single": single,
    "chain3": chain3,
    "fanout10": fanout10,
}
STEPS_PER_RUN = {"single": 1, "chain3": 3, "fanout10": 11}


def done_key(prefix: str) -> str:
    """The list last steps push to (outside ``<prefix>:*``, so not counted as plait's keys)."""
    return f"{prefix}-done"


class DoneMarker:
    """``RPUSH <prefix>-done "<tag> <start time>"`` on a plain redis-py client."""

    def __init__(self, url: str, prefix: str) -> None:
        self._url = url
        self._key = done_key(prefix)
        self._client: aioredis.Redis | None = None

    async def __call__(self, ctx: StepContext[Any]) -> None:
        started = time.time()
        if self._client is None:  # created inside the worker's event loop
            self._client = aioredis.Redis.from_url(self._url)
        await self._client.rpush(self._key, f"{ctx.input.tag} {started:.6f}")


class CountingMarker:
    """An in-process marker: counts finished runs and keeps each one's start time by tag."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.changed = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self.started)

    async def __call__(self, ctx: StepContext[Any]) -> None:
        self.started[ctx.input.tag] = time.time()
        self.changed.set()


async def noop(ctx: StepContext[Unit]) -> None:
    """A step that does nothing (its ``None`` result is still recorded)."""


def consumers(mark: Marker, kinds: Iterable[str] = WORKFLOWS) -> list[WorkflowConsumer[Unit, Any]]:
    """Consumers of the benchmark workflows: no-op steps, the last one of a run calls ``mark``."""
    made: list[WorkflowConsumer[Unit, Any]] = []
    for kind in kinds:
        definition = WORKFLOWS[kind]
        consumer: WorkflowConsumer[Unit, Any] = WorkflowConsumer(definition)
        last = definition.steps[-1].name
        for step in definition.steps:
            consumer.step(step.name)(mark if step.name == last else noop)
        made.append(consumer)
    return made


def provider(
    url: str,
    prefix: str,
    *,
    mark: Marker | None,
    concurrency: int = 10,
    retention: timedelta = timedelta(days=1),
    reconcile_interval: timedelta = timedelta(seconds=30),
    kinds: Iterable[str] = WORKFLOWS,
) -> RedisWorkflowProvider:
    """A provider on ``url``; with a ``mark``, it also runs the benchmark workflows."""
    made = RedisWorkflowProvider.from_url(
        url,
        prefix=prefix,
        concurrency=concurrency,
        retention=retention,
        reconcile_interval=reconcile_interval,
    )
    if mark is not None:
        for consumer in consumers(mark, kinds):
            made.register(consumer)
    return made


def worker_provider() -> RedisWorkflowProvider:
    """The provider of a worker process (``plait worker benchmarks.workload:worker_provider``)."""
    url = os.environ["PLAIT_BENCH_URL"]
    prefix = os.environ["PLAIT_BENCH_PREFIX"]
    concurrency = int(os.environ.get("PLAIT_BENCH_CONCURRENCY", "10"))
    return provider(url, prefix, mark=DoneMarker(url, prefix), concurrency=concurrency)


# -- worker processes -------------------------------------------------------------------------


def worker_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "plait.providers.redis",
        "--log-level",
        "WARNING",
        "worker",
        "benchmarks.workload:worker_provider",
    ]


def start_workers(
    count: int, url: str, prefix: str, concurrency: int = 10
) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes (cwd = project root, so ``benchmarks.workload`` imports)."""
    env = dict(
        os.environ,
        PLAIT_BENCH_URL=url,
        PLAIT_BENCH_PREFIX=prefix,
        PLAIT_BENCH_CONCURRENCY=str(concurrency),
    )
    return [
        subprocess.Popen(worker_command(), cwd=ROOT, env=env, start_new_session=True)
        for _ in range(count)
    ]


def stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after 10 s."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- driving ----------------------------------------------------------------------------------


async def submit_all(
    producer: RedisWorkflowProvider, kind: str, tags: Iterable[str], in_flight: int = IN_FLIGHT
) -> None:
    """``execute`` one run per tag, keeping ``in_flight`` calls outstanding (as the harness)."""
    definition = WORKFLOWS[kind]
    pending = iter(tags)

    async def lane() -> None:
        for tag in pending:
            await producer.execute(definition, Unit(tag=tag))

    await asyncio.gather(*(lane() for _ in range(in_flight)))


async def wait_list(client: aioredis.Redis, key: str, n: int, timeout: float) -> float:
    """Poll ``LLEN key`` every 5 ms until it reaches ``n``; returns ``perf_counter()`` then."""
    end = time.perf_counter() + timeout
    while (got := await client.llen(key)) < n:
        if time.perf_counter() > end:
            raise TimeoutError(f"only {got}/{n} runs finished within {timeout:.0f}s")
        await asyncio.sleep(0.005)
    return time.perf_counter()


async def run_batch(
    producer: RedisWorkflowProvider,
    client: aioredis.Redis,
    prefix: str,
    kind: str,
    *,
    n: int,
    label: str,
    in_flight: int = IN_FLIGHT,
) -> float:
    """Run ``n`` units of ``kind`` through worker processes; returns the elapsed seconds."""
    key = done_key(prefix)
    await client.delete(key)
    started = time.perf_counter()
    await submit_all(producer, kind, (f"{label}{i}" for i in range(n)), in_flight)
    ended = await wait_list(client, key, n, timeout=max(120.0, n / 20))
    return ended - started


async def delete_prefix(client: aioredis.Redis, prefix: str) -> int:
    """Delete every key of ``prefix`` (and its done list); returns how many were deleted."""
    deleted = 0
    batch: list[Any] = [done_key(prefix)]
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await client.delete(*batch)
            batch = []
    if batch:
        deleted += await client.delete(*batch)
    return deleted


def machine() -> dict[str, Any]:
    """nproc and load averages, to print beside figures."""
    return {"nproc": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
