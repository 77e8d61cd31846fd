"""plait as an adapter of the shared peer harness (``../shared/bench/peers/run_peers.py``).

The worker is started the usual way, ``plait worker peer_ours:worker_provider`` (through
``python -m plait.providers.redis`` of the harness's interpreter), one process with
``concurrency=10``. The producer is a started :class:`RedisWorkflowProvider` in the measuring
process that only calls ``execute`` (an emitter-only instance).

single   = a one-step workflow (the step RPUSHes the done marker).
chain3   = a workflow of three sequential steps (the third RPUSHes the done marker).
fanout10 = ten parallel steps, then a ``parent`` step (fan-in is an atomic counter in Lua).

Everything is native: each unit is a run record with idempotency, retries, fencing tokens,
leases, a run events stream and the default ``retention`` (one day), as in production.
Completion markers use a plain redis-py client inside the step, like every other peer.

Run it from the project root (database 8 is the harness's slot for ``ours``)::

    PYTHONPATH=$PWD/benchmarks /tmp/peers-venv/bin/python ../shared/bench/peers/run_peers.py \\
        --peers raw,bullmq,saq,arq,celery,ours --repeats 3 --out benchmarks/results/peers.json
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, WorkflowConsumer

if __package__ in (None, ""):  # loaded by the harness: make ``benchmarks.workload`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import WORKFLOWS, Unit, chain3, fanout10, single

NAME = "plait"
SUPPORTS = {
    "single": "native one-step workflow (run record, idempotency, fencing, events)",
    "chain3": "native workflow of 3 sequential steps",
    "fanout10": "native parallel group of 10 steps, then a parent step",
}
DONE_KEY = "bench:done"  # the harness's run_peers.DONE_KEY
PREFIX = "bench"
CONCURRENCY = 10


def _url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")


# -- worker side ------------------------------------------------------------------------------


class DoneMarker:
    """``RPUSH bench:done <tag>`` from the last step of a unit, on a plain redis-py client."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._client: aioredis.Redis | None = None

    async def __call__(self, ctx: StepContext[Unit]) -> None:
        if self._client is None:  # created inside the worker's event loop
            self._client = aioredis.Redis.from_url(self._url)
        await self._client.rpush(DONE_KEY, ctx.input.tag)


async def noop(ctx: StepContext[Unit]) -> None:
    """A step that does nothing (its ``None`` result is still recorded)."""


def consumers(url: str) -> list[WorkflowConsumer[Unit, Any]]:
    """The consumers of the three benchmark workflows; last steps mark the unit done."""
    done = DoneMarker(url)
    one: WorkflowConsumer[Unit, Any] = WorkflowConsumer(single)
    one.step("only")(done)
    chain: WorkflowConsumer[Unit, Any] = WorkflowConsumer(chain3)
    chain.step("s1")(noop)
    chain.step("s2")(noop)
    chain.step("s3")(done)
    fan: WorkflowConsumer[Unit, Any] = WorkflowConsumer(fanout10)
    for i in range(10):
        fan.step(f"c{i}")(noop)
    fan.step("parent")(done)
    return [one, chain, fan]


def worker_provider() -> RedisWorkflowProvider:
    """The provider ``plait worker peer_ours:worker_provider`` starts (SIGTERM stops it)."""
    provider = RedisWorkflowProvider.from_url(_url(), prefix=PREFIX, concurrency=CONCURRENCY)
    for consumer in consumers(_url()):
        provider.register(consumer)
    return provider


# -- harness interface ------------------------------------------------------------------------


def version() -> str:
    return _dist_version("plait")


def worker_cmd() -> list[str]:
    """One ``plait worker`` process; the harness puts this folder on ``PYTHONPATH``."""
    return [
        sys.executable,
        "-m",
        "plait.providers.redis",
        "--log-level",
        "WARNING",
        "worker",
        "peer_ours:worker_provider",
    ]


_producer: RedisWorkflowProvider | None = None


async def setup(url: str) -> None:
    global _producer  # noqa: PLW0603 - the harness's adapter interface is module-level
    _producer = RedisWorkflowProvider.from_url(url, prefix=PREFIX)
    await _producer.start()


async def submit(kind: str, tag: str) -> None:
    assert _producer is not None, "setup() was not called"
    await _producer.execute(WORKFLOWS[kind], Unit(tag=tag))


async def teardown() -> None:
    global _producer  # noqa: PLW0603
    if _producer is not None:
        await _producer.stop()
        _producer = None
