"""A run record whose fields do not parse fails its run with the reason, on every backend.

Transitions read and check what they compute with before their first write, so a corrupt
``plan`` or ``tok`` never leaves a half-applied transition (an acknowledged entry, a step
marked done, and a run stuck RUNNING that the reconciler fails on at every pass).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import (
    InvalidRunStateError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio

CORRUPT = {"plan": "[[", "tok": "seven"}


class Job(BaseModel):
    n: int = 0


flow = Workflow("mangled", input=Job).step("first").step("second")


def gated_consumer(gate: anyio.Event, ran: list[str]) -> WorkflowConsumer[Job, Any]:
    """``first`` waits for ``gate``; ``second`` records that it ran."""
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("first")
    async def first(ctx: StepContext[Job]) -> str:
        await gate.wait()
        return "one"

    @consumer.step("second")
    async def second(ctx: StepContext[Job]) -> str:
        ran.append("second")
        return "two"

    return consumer


async def _running(handle: WorkflowHandle[Any], step: str) -> None:
    async def running() -> bool:
        info = (await handle.describe()).steps.get(step)
        return info is not None and info.state == "running"

    await eventually(running, what=f"{step} running")


@pytest.mark.parametrize("field", sorted(CORRUPT))
async def test_a_step_completing_on_a_corrupt_run_fails_the_run_with_the_reason(
    open_provider: OpenProvider, prefix: str, field: str
) -> None:
    gate, ran = anyio.Event(), list[str]()
    workflows = await open_provider(gated_consumer(gate, ran))
    handle = await workflows.execute(flow, Job())
    await _running(handle, "first")
    client: Any = workflows._connection.client
    await client.hset(WorkflowKeys(prefix, flow.name).run(handle.run_id), field, CORRUPT[field])

    gate.set()

    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=10)
    assert caught.value.cause_type == "plait.CorruptRun"
    assert f"'{field}'" in caught.value.cause_message
    assert await handle.status() is WorkflowStatus.FAILED
    assert ran == []
    stats = await workflows.reconcile()
    assert (stats.scanned, stats.failed) == (0, 0)


@pytest.mark.parametrize("field", sorted(CORRUPT))
async def test_the_reconciler_fails_a_corrupt_run_that_cannot_move_instead_of_failing_on_it(
    open_provider: OpenProvider, prefix: str, field: str
) -> None:
    keys = WorkflowKeys(prefix, flow.name)
    caller = await open_provider(stall_timeout=timedelta(milliseconds=100))
    handle = await caller.execute(flow, Job())
    client: Any = caller._connection.client
    for entry, _ in await client.xrange(keys.jobs):
        await client.xdel(keys.jobs, entry)  # the run cannot move by itself
    await client.hset(keys.run(handle.run_id), field, CORRUPT[field])
    await anyio.sleep(0.15)  # the reconciler leaves runs younger than the stall timeout alone

    first = await caller.reconcile()

    assert (first.scanned, first.failed) == (1, 0)
    assert await handle.status() is WorkflowStatus.FAILED
    error = (await handle.describe()).error
    assert error is not None
    assert error.cause_type == "plait.CorruptRun"
    assert (await caller.reconcile()).scanned == 0  # a failed run leaves the active set


async def test_a_run_with_a_corrupt_plan_cannot_be_resumed(
    open_provider: OpenProvider, prefix: str
) -> None:
    gate, ran = anyio.Event(), list[str]()
    workflows = await open_provider(gated_consumer(gate, ran))
    handle = await workflows.execute(flow, Job())
    await _running(handle, "first")
    client: Any = workflows._connection.client
    await client.hset(WorkflowKeys(prefix, flow.name).run(handle.run_id), "plan", "[[")
    gate.set()
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)

    with pytest.raises(InvalidRunStateError):
        await workflows.retry(handle.run_id)

    assert await handle.status() is WorkflowStatus.FAILED
