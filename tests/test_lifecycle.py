"""Time, cancellation, resume, progress, watch, shutdown and repair, on every backend."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.providers.redis._workflows import worker as worker_module
from plait.providers.redis._workflows.scripts import RunScripts
from plait.workflows import (
    InvalidRunStateError,
    ProviderClosedError,
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowStepError,
    WorkflowTimeoutError,
)

pytestmark = pytest.mark.anyio


class Job(BaseModel):
    n: int = 0


async def _status_is(handle: WorkflowHandle[Any], expected: WorkflowStatus) -> None:
    async def reached() -> bool:
        return await handle.status() is expected

    await eventually(reached, what=f"status {expected}")


async def _step_running(handle: WorkflowHandle[Any], step: str) -> None:
    async def running() -> bool:
        info = (await handle.describe()).steps.get(step)
        return info is not None and info.state == "running"

    await eventually(running, what=f"{step} running")


def booking_consumer(log: list[str], flow: Workflow[Job, Any]) -> WorkflowConsumer[Job, Any]:
    """``book`` completes at once (rollback ``unbook``); ``wait`` hangs until cancelled."""
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("book")
    async def book(ctx: StepContext[Job]) -> str:
        log.append("book")
        return "B-1"

    @consumer.rollback("book")
    async def unbook(ctx: StepContext[Job]) -> None:
        log.append(f"unbook {ctx.results['book']}")

    @consumer.step("wait")
    async def wait(ctx: StepContext[Job]) -> None:
        log.append("wait")
        try:
            await anyio.sleep_forever()
        finally:
            log.append("wait stopped")

    return consumer


booking = Workflow("booking", input=Job).step("book").step("wait")


async def test_a_step_timeout_fails_the_attempt_and_retries(open_provider: OpenProvider) -> None:
    flow = Workflow("slow", input=Job).step("nap", timeout=timedelta(milliseconds=100))
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    attempts: list[int] = []

    @consumer.step("nap")
    async def nap(ctx: StepContext[Job]) -> None:
        attempts.append(ctx.attempt)
        await anyio.sleep(30)

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job())

    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=10)
    assert attempts == [1, 2, 3]
    assert caught.value.cause_type == "plait.StepTimeout"
    assert "timed out after 0.1s" in caught.value.cause_message


async def test_a_run_deadline_cancels_and_compensates(open_provider: OpenProvider) -> None:
    log: list[str] = []
    workflows = await open_provider(booking_consumer(log, booking))
    caller = await open_provider()

    handle = await caller.execute(booking, Job(), timeout=timedelta(milliseconds=300))

    with pytest.raises(WorkflowTimeoutError) as caught:
        await handle.result(timeout=10)
    assert caught.value.run_id == handle.run_id
    assert caught.value.timeout == timedelta(milliseconds=300)
    assert log == ["book", "wait", "wait stopped", "unbook B-1"]
    assert await handle.status() is WorkflowStatus.TIMED_OUT
    assert workflows is not caller


async def test_default_timeout_applies_to_runs_without_one(open_provider: OpenProvider) -> None:
    log: list[str] = []
    workflows = await open_provider(
        booking_consumer(log, booking), default_timeout=timedelta(milliseconds=200)
    )
    handle = await workflows.execute(booking, Job())

    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)
    assert "unbook B-1" in log


async def test_cancel_stops_running_steps_and_compensates(open_provider: OpenProvider) -> None:
    log: list[str] = []
    await open_provider(booking_consumer(log, booking))
    caller = await open_provider()
    handle = await caller.execute(booking, Job())
    await _step_running(handle, "wait")

    assert await handle.cancel() is True

    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=10)
    assert log == ["book", "wait", "wait stopped", "unbook B-1"]
    assert await handle.status() is WorkflowStatus.CANCELLED
    assert await handle.cancel() is False


async def test_a_cancelled_pending_run_never_runs_its_steps(open_provider: OpenProvider) -> None:
    caller = await open_provider()  # no consumer yet: the first job waits on the stream
    handle = await caller.execute(booking, Job())
    assert await handle.cancel() is True
    log: list[str] = []
    await open_provider(booking_consumer(log, booking))

    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=10)
    assert log == []


async def test_retry_resumes_a_failed_run_without_rerunning_kept_steps(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("resumable", input=Job).step("fetch").step("reserve").step("charge")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    log: list[str] = []
    gateway = {"up": False}

    @consumer.step("fetch")
    async def fetch(ctx: StepContext[Job]) -> str:
        log.append("fetch")
        return "data"

    @consumer.step("reserve")
    async def reserve(ctx: StepContext[Job]) -> str:
        log.append("reserve")
        return "R-1"

    @consumer.rollback("reserve")
    async def release(ctx: StepContext[Job]) -> None:
        log.append("release")

    @consumer.step("charge")
    async def charge(ctx: StepContext[Job]) -> str:
        log.append(f"charge {ctx.attempt}")
        if not gateway["up"]:
            raise ConnectionError("gateway down")
        return f"charged with {ctx.results['fetch']}"

    workflows = await open_provider(consumer, retry=RetryPolicy(max_attempts=1))
    handle = await workflows.execute(flow, Job())
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)
    assert log == ["fetch", "reserve", "charge 1", "release"]

    gateway["up"] = True
    resumed = await workflows.retry(handle.run_id)

    assert resumed.run_id == handle.run_id
    assert await resumed.result(timeout=10) is None
    assert log[4:] == ["reserve", "charge 1"]  # fetch kept; reserve ran again (it was undone)
    info = await resumed.describe()
    assert info.status is WorkflowStatus.COMPLETED
    assert info.completion_order == ("fetch", "reserve", "charge")
    with pytest.raises(InvalidRunStateError) as caught:
        await workflows.retry(handle.run_id)
    assert caught.value.status == "COMPLETED"


async def test_progress_survives_a_reclaim(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = Workflow("long", input=Job).step("copy")
    seen: list[Any] = []
    saved = anyio.Event()

    def consumer_for(block: bool) -> WorkflowConsumer[Job, Any]:
        consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

        @consumer.step("copy")
        async def copy(ctx: StepContext[Job]) -> str:
            seen.append((ctx.attempt, ctx.progress))
            if block:
                await ctx.save_progress({"copied": 40})
                saved.set()
                await anyio.sleep_forever()
            return "done"

        return consumer

    fast = {"stall_timeout": timedelta(milliseconds=300), "shutdown_timeout": timedelta(0)}
    caller = await open_provider()
    # No time to hand the attempt back: the stop abandons it, as a crashed instance would.
    monkeypatch.setattr(worker_module, "HAND_BACK", 0.0)
    doomed = await open_provider(consumer_for(block=True), **fast)
    monkeypatch.undo()
    handle = await caller.execute(flow, Job())
    await saved.wait()
    await doomed.stop()

    await open_provider(consumer_for(block=False), **fast)

    assert await handle.result(timeout=10) is None
    assert seen == [(1, None), (2, {"copied": 40})]
    error = (await handle.describe()).steps["copy"].error
    assert error is not None
    assert error.cause_type == "plait.WorkerLost"


async def test_watch_streams_the_run_events_in_order(open_provider: OpenProvider) -> None:
    flow = Workflow("watched", input=Job).step("one").step("two")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("one")
    async def one(ctx: StepContext[Job]) -> None:
        await ctx.save_progress(50)
        if ctx.attempt == 1:
            raise ValueError("once")

    consumer.step("two")(lambda ctx: None)
    await open_provider(consumer)
    watcher = await open_provider()
    handle = await watcher.execute(flow, Job())

    events = [(e.kind, e.step, e.attempt) async for e in handle.watch()]

    assert events == [
        ("run.started", None, None),
        ("step.started", "one", 1),
        ("step.progress", "one", 1),
        ("step.retrying", "one", 1),
        ("step.started", "one", 2),
        ("step.progress", "one", 2),
        ("step.completed", "one", 2),
        ("step.started", "two", 1),
        ("step.completed", "two", 1),
        ("finished", None, None),  # no on_complete handler: the last step completes the run
    ]


async def test_stop_makes_pending_results_raise_provider_closed(
    open_provider: OpenProvider,
) -> None:
    log: list[str] = []
    await open_provider(booking_consumer(log, booking))
    caller = await open_provider()
    handle = await caller.execute(booking, Job())
    await _step_running(handle, "wait")
    outcomes: list[BaseException] = []

    async def wait_result() -> None:
        try:
            await handle.result()
        except ProviderClosedError as error:
            outcomes.append(error)

    async def wait_watch() -> None:
        try:
            async for _ in handle.watch():
                pass
        except ProviderClosedError as error:
            outcomes.append(error)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_result)
            tg.start_soon(wait_watch)

            async def waiting() -> bool:
                return handle.run_id in caller._runs._waiters

            await eventually(waiting, what="result() is waiting")
            await caller.stop()

    assert len(outcomes) == 2
    with pytest.raises(ProviderClosedError):
        await caller.execute(booking, Job())


async def test_the_reconciler_repairs_a_run_whose_job_was_removed(
    open_provider: OpenProvider, prefix: str
) -> None:
    flow = Workflow("repaired", input=Job).step("only")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    consumer.step("only")(lambda ctx: "ok")
    caller = await open_provider(stall_timeout=timedelta(milliseconds=100))
    handle = await caller.execute(flow, Job())
    client: Any = caller._connection.client
    for entry, _ in await client.xrange(f"{prefix}:{{repaired}}:jobs"):
        await client.xdel(f"{prefix}:{{repaired}}:jobs", entry)  # the advance is lost
    await open_provider(consumer)
    await anyio.sleep(0.15)  # the reconciler leaves runs younger than the stall timeout alone

    stats = await caller.reconcile()

    assert (stats.scanned, stats.stalled, stats.reconciled, stats.failed) == (1, 1, 1, 0)
    assert await handle.result(timeout=10) is None
    assert await handle.status() is WorkflowStatus.COMPLETED
    assert (await caller.reconcile()).scanned == 0  # finished runs leave the active set


async def test_stop_during_a_start_call_runs_what_it_took_instead_of_abandoning_it(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = Workflow("taken-at-stop", input=Job).step("only")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[int] = []
    consumer.step("only")(lambda ctx: ran.append(ctx.input.n))
    starting, release = anyio.Event(), anyio.Event()
    start_many = RunScripts.start_many

    async def slow_start_many(self: RunScripts, *args: Any, **kwargs: Any) -> Any:
        starting.set()
        await release.wait()
        return await start_many(self, *args, **kwargs)

    monkeypatch.setattr(RunScripts, "start_many", slow_start_many)
    worker = await open_provider(consumer, shutdown_timeout=timedelta(seconds=20))
    caller = await open_provider()
    handle = await caller.execute(flow, Job(n=7))
    with anyio.fail_after(10):
        await starting.wait()

    with anyio.fail_after(10):  # well inside shutdown_timeout: nothing is left held
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.stop)
            # the stop cancels the intake while the start call is in flight
            await anyio.lowlevel.checkpoint()
            release.set()

    assert ran == [7]
    assert await handle.result(timeout=10) is None


async def test_a_provider_builds_one_set_of_run_scripts_for_all_its_parts(
    open_provider: OpenProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[RunScripts] = []
    init = RunScripts.__init__

    def counting_init(self: RunScripts, connection: Any) -> None:
        built.append(self)
        init(self, connection)

    monkeypatch.setattr(RunScripts, "__init__", counting_init)
    flows = [Workflow(f"shared-scripts-{n}", input=Job).step("only") for n in range(2)]
    consumers: list[WorkflowConsumer[Job, Any]] = []
    for flow in flows:
        consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
        consumer.step("only")(lambda ctx: ctx.input.n)
        consumer.on_complete(lambda ctx: ctx.results["only"])
        consumers.append(consumer)
    workflows = await open_provider(*consumers)

    handles = [await workflows.execute(flow, Job(n=n)) for n, flow in enumerate(flows)]

    assert [await handle.result(timeout=10) for handle in handles] == [0, 1]
    assert len(built) == 1
