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
from plait.workflows import (
    InvalidDefinitionError,
    InvalidInputError,
    Step,
    StepContext,
    Workflow,
    WorkflowConsumer,
)

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


class Order(BaseModel):
    customer: str
    n: int = 0


async def test_a_per_key_step_rate_limit_caps_each_key_alone(open_provider: OpenProvider) -> None:
    period = timedelta(seconds=1)
    flow = Workflow("rated-per-key", input=Order).step(
        "call", rate_limit=(2, period), rate_key=lambda order: order.customer
    )
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    consumer.step("call")(lambda ctx: None)
    workflows = await open_provider(consumer, concurrency=10)

    busy = [await workflows.execute(flow, Order(customer="busy", n=n)) for n in range(4)]
    quiet = [await workflows.execute(flow, Order(customer="quiet", n=n)) for n in range(2)]
    for handle in busy + quiet:
        await handle.result(timeout=30)

    async def started(handles: list[Any]) -> list[float]:
        times = [(await h.describe()).steps["call"].started_at for h in handles]
        return sorted(t.timestamp() for t in times if t is not None)

    busy_starts, quiet_starts = await started(busy), await started(quiet)
    slack = 0.002  # recorded times are in whole milliseconds
    # each key has its own window: "busy"'s third and fourth starts wait a period...
    assert busy_starts[2] - busy_starts[0] >= period.total_seconds() - slack
    assert busy_starts[3] - busy_starts[1] >= period.total_seconds() - slack
    # ... while "quiet" starts at once, as if "busy" were not there
    assert quiet_starts[1] - busy_starts[0] < period.total_seconds() / 2


def test_a_rate_key_needs_a_rate_limit() -> None:
    with pytest.raises(InvalidDefinitionError, match="rate_key"):
        Workflow("no-limit", input=Order).step("call", rate_key=lambda order: order.customer)


async def test_a_rate_key_that_is_not_text_is_refused_before_anything_is_written(
    open_provider: OpenProvider,
) -> None:
    not_text: Any = lambda order: order.n  # noqa: E731 - what a type checker would refuse
    flow = Workflow("bad-rate-key", input=Order).step(
        "call", rate_limit=(1, timedelta(seconds=1)), rate_key=not_text
    )
    workflows = await open_provider()

    with pytest.raises(InvalidInputError, match="rate_key"):
        await workflows.execute(flow, Order(customer="c"))


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
