"""A cancel reaches a running step whenever its message comes, on every backend: between the
start reply and the attempt's registration in the worker, and when the message itself was lost
while the pub/sub connection reconnected."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.providers.redis._workflows.attempt import Attempts
from plait.providers.redis._workflows.scripts import Job as Entry
from plait.providers.redis._workflows.scripts import RunScripts, StartReply
from plait.providers.redis._workflows.worker import Worker
from plait.workflows import (
    StepContext,
    Workflow,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowTimeoutError,
)

pytestmark = pytest.mark.anyio


class Job(BaseModel):
    n: int = 0


flow = Workflow("cancel-delivery", input=Job).step("wait")


def hanging_consumer(log: list[str]) -> WorkflowConsumer[Job, Any]:
    """``wait`` hangs until cancelled and logs how it ended."""
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("wait")
    async def wait(ctx: StepContext[Job]) -> None:
        log.append("wait")
        try:
            await anyio.sleep_forever()
        finally:
            log.append("wait stopped")

    return consumer


async def _cancelled_soon(handle: WorkflowHandle[Any]) -> None:
    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=5)
    assert await handle.status() is WorkflowStatus.CANCELLED


async def test_a_cancel_between_the_start_reply_and_the_attempt_stops_the_step(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, heard, go_on = anyio.Event(), anyio.Event(), anyio.Event()
    process, cancel_run = Attempts.process, Attempts.cancel_run

    async def paused_process(self: Attempts, entry: str, job: Entry, reply: StartReply) -> Any:
        started.set()  # the start script replied: the attempt is running in Redis
        await go_on.wait()
        return await process(self, entry, job, reply)

    def hearing_cancel_run(self: Attempts, run_id: str) -> None:
        cancel_run(self, run_id)
        heard.set()

    monkeypatch.setattr(Attempts, "process", paused_process)
    monkeypatch.setattr(Attempts, "cancel_run", hearing_cancel_run)
    log: list[str] = []
    await open_provider(hanging_consumer(log))
    caller = await open_provider()
    handle = await caller.execute(flow, Job())
    with anyio.fail_after(10):
        await started.wait()

    assert await handle.cancel() is True
    with anyio.fail_after(10):
        await heard.wait()  # the message came before the attempt was registered
    go_on.set()

    await _cancelled_soon(handle)
    assert log == []  # stopped before its handler ran


async def test_a_cancel_lost_while_pub_sub_reconnects_stops_the_step(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    deaf = True
    lost: list[str] = []
    cancel_run = Worker.cancel_run

    def deaf_cancel_run(self: Worker, run_id: str) -> None:
        if deaf:
            lost.append(run_id)  # as if the connection dropped with the message
            return
        cancel_run(self, run_id)

    monkeypatch.setattr(Worker, "cancel_run", deaf_cancel_run)
    log: list[str] = []
    worker = await open_provider(hanging_consumer(log))
    caller = await open_provider()
    handle = await caller.execute(flow, Job())

    async def running() -> bool:
        return log == ["wait"]

    await eventually(running, what="wait running")
    assert await handle.cancel() is True

    async def dropped() -> bool:
        return lost == [handle.run_id]

    await eventually(dropped, what="the cancel message arrived and was dropped")
    deaf = False
    pubsub: Any = worker._notifications._pubsub
    await pubsub.connection.disconnect()  # the session fails and subscribes again

    await _cancelled_soon(handle)
    assert log == ["wait", "wait stopped"]


async def test_a_cancel_lost_while_the_start_reply_was_in_flight_stops_the_step(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, go_on, caught_up = anyio.Event(), anyio.Event(), anyio.Event()
    deaf = True
    lost: list[str] = []
    process, resubscribed = Attempts.process, Attempts.resubscribed
    cancel_run = Worker.cancel_run

    async def paused_process(self: Attempts, entry: str, job: Entry, reply: StartReply) -> Any:
        started.set()
        await go_on.wait()
        return await process(self, entry, job, reply)

    async def noted_resubscribed(self: Attempts) -> None:
        await resubscribed(self)
        if not deaf:
            caught_up.set()

    def deaf_cancel_run(self: Worker, run_id: str) -> None:
        if deaf:
            lost.append(run_id)
            return
        cancel_run(self, run_id)

    monkeypatch.setattr(Attempts, "process", paused_process)
    monkeypatch.setattr(Attempts, "resubscribed", noted_resubscribed)
    monkeypatch.setattr(Worker, "cancel_run", deaf_cancel_run)
    log: list[str] = []
    worker = await open_provider(hanging_consumer(log))
    caller = await open_provider()
    handle = await caller.execute(flow, Job())
    with anyio.fail_after(10):
        await started.wait()
    assert await handle.cancel() is True

    async def dropped() -> bool:
        return lost == [handle.run_id]

    await eventually(dropped, what="the cancel message arrived and was dropped")
    deaf = False
    pubsub: Any = worker._notifications._pubsub
    await pubsub.connection.disconnect()
    with anyio.fail_after(10):
        await caught_up.wait()  # the catch-up ran before the attempt was registered
    go_on.set()

    await _cancelled_soon(handle)
    assert log == []


async def test_a_run_retried_after_its_cancel_message_runs_its_steps(
    open_provider: OpenProvider,
) -> None:
    resumable = Workflow("cancel-delivery-retry", input=Job).step("first")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(resumable)
    calls: list[int] = []

    @consumer.step("first")
    async def first(ctx: StepContext[Job]) -> int:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            await anyio.sleep_forever()  # until the deadline stops it
        return len(calls)

    workflows = await open_provider(consumer)
    handle = await workflows.execute(resumable, Job(), timeout=timedelta(milliseconds=300))
    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)

    # the run's id was just heard on the cancel channel: its new attempt is not cancelled
    retried = await workflows.retry(handle.run_id)
    assert await retried.result(timeout=10) is None
    assert len(calls) == 2


async def test_a_cancel_while_the_start_call_is_in_flight_never_runs_the_step(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    starting, go_on = anyio.Event(), anyio.Event()
    start_many = RunScripts.start_many

    async def paused_start_many(self: RunScripts, *args: Any, **kwargs: Any) -> Any:
        starting.set()  # the entry was read and is held here, not started yet
        await go_on.wait()
        return await start_many(self, *args, **kwargs)

    monkeypatch.setattr(RunScripts, "start_many", paused_start_many)
    log: list[str] = []
    await open_provider(hanging_consumer(log))
    caller = await open_provider()
    handle = await caller.execute(flow, Job())
    with anyio.fail_after(10):
        await starting.wait()

    assert await handle.cancel() is True
    go_on.set()

    await _cancelled_soon(handle)
    assert log == []


class Order(BaseModel):
    customer: str
    n: int


async def test_cancel_running_stops_a_step_whose_cancel_came_before_its_registration(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace = Workflow(
        "cancel-delivery-pk",
        input=Order,
        concurrency_key=lambda order: order.customer,
        per_key_strategy="cancel_running",
    ).step("wait")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(replace)
    ran: list[int] = []

    @consumer.step("wait")
    async def wait(ctx: StepContext[Order]) -> int:
        ran.append(ctx.input.n)
        if ctx.input.n == 1:
            await anyio.sleep_forever()
        return ctx.input.n

    started, heard, go_on = anyio.Event(), anyio.Event(), anyio.Event()
    process, cancel_run = Attempts.process, Attempts.cancel_run

    async def paused_process(self: Attempts, entry: str, job: Entry, reply: StartReply) -> Any:
        if not started.is_set():  # the first run's step: started in Redis, not registered
            started.set()
            await go_on.wait()
        return await process(self, entry, job, reply)

    def hearing_cancel_run(self: Attempts, run_id: str) -> None:
        cancel_run(self, run_id)
        heard.set()

    monkeypatch.setattr(Attempts, "process", paused_process)
    monkeypatch.setattr(Attempts, "cancel_run", hearing_cancel_run)
    await open_provider(consumer)
    caller = await open_provider()
    first = await caller.execute(replace, Order(customer="c", n=1))
    with anyio.fail_after(10):
        await started.wait()

    second = await caller.execute(replace, Order(customer="c", n=2))  # cancels the first
    with anyio.fail_after(10):
        await heard.wait()
    go_on.set()

    await _cancelled_soon(first)
    assert await second.result(timeout=10) is None
    assert ran == [2]
