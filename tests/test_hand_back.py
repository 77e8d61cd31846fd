"""A graceful stop hands its unfinished work back, on every backend.

Entries a stopping instance took and steps it interrupts at the end of ``shutdown_timeout`` are
queued again at once for another instance, without spending an attempt: with
``max_attempts=1`` an ordinary stop fails no run, and no one waits for the stall timeout.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.workflows import RetryPolicy, StepContext, Workflow, WorkflowConsumer, WorkflowStatus

pytestmark = pytest.mark.anyio

ONCE = RetryPolicy(max_attempts=1)


class Job(BaseModel):
    n: int = 0


parcel: Workflow[Job, Any] = Workflow("parcel", input=Job).step("pack", retry=ONCE)


def packer(seconds: float, log: list[str], name: str) -> WorkflowConsumer[Job, Any]:
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(parcel)

    @consumer.step("pack")
    async def pack(ctx: StepContext[Job]) -> str:
        log.append(f"{name}:{ctx.attempt}:{ctx.progress}")
        await ctx.save_progress("half")
        await anyio.sleep(seconds)
        return name

    return consumer


async def test_a_stopping_instance_hands_interrupted_steps_back_without_spending_attempts(
    open_provider: OpenProvider,
) -> None:
    stall = timedelta(seconds=30)
    log: list[str] = []
    leaving = await open_provider(
        packer(60, log, "leaving"), stall_timeout=stall, shutdown_timeout=timedelta(seconds=0.2)
    )
    handles = [await leaving.execute(parcel, {"n": n}) for n in range(3)]

    async def all_running() -> bool:
        infos = [await handle.describe() for handle in handles]
        return all(info.steps["pack"].state == "running" for info in infos)

    await eventually(all_running, what="every step runs on the leaving instance")
    staying = await open_provider(packer(0, log, "staying"), stall_timeout=stall)
    began = time.monotonic()
    await leaving.stop()
    for handle in handles:
        await (await staying.get_handle(handle.run_id)).result(timeout=15)
    took = time.monotonic() - began
    infos = [await (await staying.get_handle(h.run_id)).describe() for h in handles]

    assert {info.status for info in infos} == {WorkflowStatus.COMPLETED}
    assert {info.steps["pack"].attempts for info in infos} == {1}
    assert sorted(log) == ["leaving:1:None"] * 3 + ["staying:1:half"] * 3  # progress kept
    assert took < stall.total_seconds() / 2


async def test_entries_read_but_never_started_are_handed_back_by_the_stop(
    open_provider: OpenProvider, prefix: str
) -> None:
    stall = timedelta(seconds=30)
    log: list[str] = []
    caller = await open_provider()
    handles = [await caller.execute(parcel, {"n": n}) for n in range(3)]
    client: Any = caller._connection.client
    jobs = f"{prefix}:{{parcel}}:jobs"
    await client.xgroup_create(jobs, "plait", id="0", mkstream=True)
    # What a read cut off by the stop leaves: entries delivered to the instance, never started.
    read = await client.xreadgroup("plait", "leaving", {jobs: ">"}, count=10)
    leaving = await open_provider(packer(0, log, "leaving"), provider_id="leaving",
                                  stall_timeout=stall)  # fmt: skip
    began = time.monotonic()
    await leaving.stop()
    await open_provider(packer(0, log, "staying"), stall_timeout=stall)
    for handle in handles:
        await handle.result(timeout=15)
    took = time.monotonic() - began
    infos = [await handle.describe() for handle in handles]

    assert sum(len(entries) for _, entries in read) == 3
    assert sorted(log) == ["staying:1:None"] * 3
    assert {info.steps["pack"].attempts for info in infos} == {1}
    assert took < stall.total_seconds() / 2
