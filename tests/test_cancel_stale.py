"""A cancel message that names a run still running its attempt (a late message of an earlier
attempt of a retried run) must not stop that attempt."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from conftest import OpenProvider
from pydantic import BaseModel

from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import StepContext, Workflow, WorkflowConsumer, WorkflowStatus

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Job(BaseModel):
    n: int


flow = Workflow("stale-cancel", input=Job).step("a")


async def test_a_stale_cancel_message_does_not_stop_a_live_attempt(
    open_provider: OpenProvider, prefix: str
) -> None:
    started, release, stopped = anyio.Event(), anyio.Event(), anyio.Event()
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("a")
    async def a(ctx: StepContext[Job]) -> int:
        started.set()
        try:
            await release.wait()
        except anyio.get_cancelled_exc_class():
            stopped.set()
            raise
        return ctx.input.n

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job(n=1))
    with anyio.fail_after(20):
        await started.wait()
    client: Any = workflows._connection.client
    await client.publish(WorkflowKeys(prefix, flow.name).base + "cancel", handle.run_id)

    with anyio.move_on_after(2):  # a stop comes within ms; none must come
        await stopped.wait()
    release.set()

    assert not stopped.is_set()

    await handle.result(timeout=20)
    assert await handle.status() is WorkflowStatus.COMPLETED
