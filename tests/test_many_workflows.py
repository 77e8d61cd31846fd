"""Thousands of workflows on one provider: idle cost does not grow with their number.

A workflow with nothing to do parks in the provider's intake (``_workflows/intake.py``): no
blocking read, no connection and no command of its own while idle; an entry added to its
stream wakes it through the workflow's ``wake`` channel (memory://: the in-process wake-ups),
and a wake-up lost on the way is made good by the intake's sweep within ``SWEEP`` s.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
from conftest import standalone_redis
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import StepContext, Workflow, WorkflowConsumer

pytestmark = [pytest.mark.anyio]

MANY = {"memory": 100, "redis": 600, "cluster": 400}
"""Workflows registered on one provider per backend (fakeredis runs every command in Python)."""
LOST_WAKE_UP = 5.0
"""The pickup delay the README states for an entry whose wake-up was lost (the intake's sweep
period, ``SWEEP``, with fewer than 1,250 parked workflows)."""
HANDFUL = 60
"""Most connections the idle provider may hold: its pub/sub, heartbeat and lease, and the few
its bounded start-up burst opened (8 idle-path calls and 8 ticks at a time, per node); not one
per workflow."""


class Unit(BaseModel):
    n: int = 0


@pytest.fixture
def many_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The backend's URL; ``redis`` is a server of the test's own (its clients are counted)."""
    if backend == "memory":
        yield f"memory://{uuid.uuid4().hex}"
        return
    if backend == "cluster":
        yield str(request.getfixturevalue("cluster_url"))
        return
    with standalone_redis(tmp_path) as port:
        yield f"redis://127.0.0.1:{port}"


def _connections(url: str) -> int | None:
    """Clients connected to the backend now (None on memory://)."""
    if url.startswith("memory://"):
        return None
    if url.startswith("redis+cluster://"):
        cluster = sync_redis.RedisCluster.from_url(url.replace("+cluster", ""))
        try:
            nodes = cluster.get_primaries()  # type: ignore[no-untyped-call]
            return sum(len(cluster.client_list(target_nodes=node)) - 1 for node in nodes)
        finally:
            cluster.close()
    client = sync_redis.Redis.from_url(url)
    try:
        return len(client.client_list()) - 1
    finally:
        client.close()


def _many(
    count: int, url: str, prefix: str
) -> tuple[RedisWorkflowProvider, list[Workflow[Unit, Any]], dict[str, anyio.Event]]:
    provider = RedisWorkflowProvider.from_url(url, prefix=prefix)
    flows: list[Workflow[Unit, Any]] = []
    ran: dict[str, anyio.Event] = {}
    for i in range(count):
        flow = Workflow(f"w{i}", input=Unit).step("only")
        consumer: WorkflowConsumer[Unit, None] = WorkflowConsumer(flow)
        ran[flow.name] = anyio.Event()

        @consumer.step("only")
        async def only(ctx: StepContext[Unit], name: str = flow.name) -> None:
            ran[name].set()

        provider.register(consumer)
        flows.append(flow)
    return provider, flows, ran


async def _runs_within(
    caller: RedisWorkflowProvider, flow: Workflow[Unit, Any], ran: anyio.Event, bound: float
) -> float:
    start = time.monotonic()
    await caller.execute(flow, Unit())
    with anyio.fail_after(bound):
        await ran.wait()
    return time.monotonic() - start


@pytest.mark.timeout(180)
async def test_a_provider_with_many_workflows_starts_fast_and_idles_on_a_handful_of_connections(
    backend: str, many_url: str, prefix: str
) -> None:
    before = _connections(many_url)
    provider, flows, ran = _many(MANY[backend], many_url, prefix)
    start = time.monotonic()
    with anyio.fail_after(60):
        await provider.start()
    started = time.monotonic() - start
    try:
        assert started < 20, f"{len(flows)} workflows took {started:.1f} s to start"
        await anyio.sleep(2.5)  # every workflow has had a second without entries: idle now
        if before is not None:
            held = (_connections(many_url) or 0) - before
            assert held <= HANDFUL, f"{held} connections for {len(flows)} idle workflows"
        for flow in (flows[-1], flows[len(flows) // 2]):
            await _runs_within(provider, flow, ran[flow.name], bound=2.0)
    finally:
        await provider.stop()


@pytest.mark.timeout(120)
async def test_entries_added_while_the_instance_idles_are_picked_up_within_the_bound(
    backend: str, many_url: str, prefix: str
) -> None:
    provider, flows, ran = _many(20, many_url, prefix)
    caller = RedisWorkflowProvider.from_url(many_url, prefix=prefix)
    await provider.start()
    await caller.start()
    try:
        await anyio.sleep(2.0)  # the workers are parked
        took = await _runs_within(caller, flows[10], ran[flows[10].name], bound=1.0)
        assert took < 1.0
        if backend == "memory":
            return  # the in-process wake-up cannot be lost
        # A wake-up lost on the way (as while pub/sub reconnects): the sweep finds the entry.
        await anyio.sleep(2.0)
        keys = WorkflowKeys(prefix, flows[3].name)
        client: Any = caller._connection.client
        await client.hdel(keys.stats, "idle")  # no instance told: as if the message were lost
        took = await _runs_within(caller, flows[3], ran[flows[3].name], bound=LOST_WAKE_UP + 2.0)
        assert took < LOST_WAKE_UP + 2.0
    finally:
        await caller.stop()
        await provider.stop()
