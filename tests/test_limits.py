"""Global limits enforced in Redis: a workflow's running cap and a step's start rate."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from apps.definitions import capped
from conftest import REDIS_URL, OpenProvider, Spawn, ready
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import Step, StepContext, Workflow, WorkflowConsumer

pytestmark = pytest.mark.anyio


class Job(BaseModel):
    n: int


async def test_workflow_concurrency_caps_running_steps_across_instances(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("capped", input=Job, concurrency=2).step("work").step("more")
    load = {"now": 0, "peak": 0}

    async def work(ctx: StepContext[Job]) -> None:
        load["now"] += 1
        load["peak"] = max(load["peak"], load["now"])
        await anyio.sleep(0.02)
        load["now"] -= 1

    for _ in range(3):
        consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
        consumer.step("work")(work)
        consumer.step("more")(work)
        await open_provider(consumer, concurrency=10)
    caller = await open_provider()

    handles = [await caller.execute(flow, Job(n=n)) for n in range(15)]
    for handle in handles:
        await handle.result(timeout=30)

    assert load["peak"] == 2


async def test_a_step_rate_limit_caps_starts_per_period(open_provider: OpenProvider) -> None:
    period = timedelta(milliseconds=400)
    flow = Workflow("rated", input=Job).step(Step("call", rate_limit=(3, period)))
    starts: list[float] = []
    consumers = []
    for _ in range(2):
        consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
        consumer.step("call")(lambda ctx: starts.append(time.monotonic()))
        consumers.append(consumer)
    await open_provider(*consumers[:1], concurrency=10)
    caller = await open_provider(*consumers[1:], concurrency=10)

    handles = [await caller.execute(flow, Job(n=n)) for n in range(9)]
    for handle in handles:
        await handle.result(timeout=30)

    # The window is kept by Redis: judge it by the start times Redis recorded.
    recorded = sorted(
        [
            started.timestamp()
            for handle in handles
            if (started := (await handle.describe()).steps["call"].started_at) is not None
        ]
    )
    assert len(starts) == len(recorded) == 9
    slack = 0.002  # recorded times are in whole milliseconds
    for first, fourth in zip(recorded, recorded[3:], strict=False):
        assert fourth - first >= period.total_seconds() - slack
    assert recorded[-1] - recorded[0] >= 2 * period.total_seconds() - slack


@pytest.mark.redis_only
@pytest.mark.parametrize("backend", ["redis"])
async def test_workflow_concurrency_holds_across_processes(
    backend: str, spawn: Spawn, prefix: str, tmp_path: Path
) -> None:
    spawn("w1")
    spawn("w2")
    await ready(tmp_path, "w1", "w2")
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        handles = [await caller.execute(capped, {"n": n}) for n in range(30)]
        for handle in handles:
            await handle.result(timeout=60)
        client: Any = caller._connection.client
        peak = int(await client.get(f"{prefix}:test:peak"))
        workers = {v for v in (await client.hgetall(f"{prefix}:test:ran")).values()}

    assert peak == 2
    assert workers == {b"1"}  # every step ran once
