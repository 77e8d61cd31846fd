"""Compensation: rollbacks in reverse completion order, failing rollbacks, ``on_error`` once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.workflows import (
    RetryPolicy,
    Step,
    StepContext,
    Workflow,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowError,
    WorkflowHandle,
    WorkflowRollbackError,
    WorkflowStatus,
    WorkflowStepError,
    WorkflowTimeoutError,
)

pytestmark = pytest.mark.anyio


class Trip(BaseModel):
    trip_id: str


trip = (
    Workflow("trip", input=Trip)
    .step("flight")
    .parallel("hotel", "car")
    .step("pay", retry=RetryPolicy(max_attempts=1))
)


def trip_consumer(
    log: list[str], handles: list[WorkflowHandle[Any]], *, failing_rollback: str | None = None
) -> WorkflowConsumer[Trip, None]:
    consumer: WorkflowConsumer[Trip, None] = WorkflowConsumer(trip)

    @consumer.step("flight")
    async def flight(ctx: StepContext[Trip]) -> str:
        log.append("flight")
        return "FL-1"

    @consumer.step("car")
    async def car(ctx: StepContext[Trip]) -> str:
        log.append("car")
        return "CAR-1"

    @consumer.step("hotel")
    async def hotel(ctx: StepContext[Trip]) -> str:
        # Complete after "car", so the completion order inside the group is known.
        async def car_done() -> bool:
            return (await handles[0].describe()).steps["car"].state == "completed"

        await eventually(car_done, what="car completed")
        log.append("hotel")
        return "HT-1"

    @consumer.step("pay")
    async def pay(ctx: StepContext[Trip]) -> None:
        log.append("pay")
        raise RuntimeError("payment refused")

    for step in ("flight", "hotel", "car"):

        async def undo(ctx: StepContext[Trip], step: str = step) -> None:
            log.append(f"undo {step} {ctx.results[step]}")
            if step == failing_rollback:
                raise OSError(f"cannot undo {step}")

        consumer.rollback(step)(undo)

    @consumer.on_error
    async def failed(ctx: WorkflowContext[Trip], error: WorkflowError) -> None:
        log.append(f"on_error {type(error).__name__}")

    return consumer


async def _run_trip(
    open_provider: OpenProvider, log: list[str], failing_rollback: str | None = None
) -> WorkflowHandle[Any]:
    handles: list[WorkflowHandle[Any]] = []
    workflows = await open_provider(trip_consumer(log, handles, failing_rollback=failing_rollback))
    handles.append(await workflows.execute(trip, Trip(trip_id="t-1")))
    return handles[0]


async def test_rollbacks_run_in_reverse_completion_order(open_provider: OpenProvider) -> None:
    log: list[str] = []
    handle = await _run_trip(open_provider, log)

    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=15)

    assert caught.value.step == "pay"
    assert caught.value.cause_message == "payment refused"
    assert log[log.index("pay") :] == [
        "pay",
        "undo hotel HT-1",
        "undo car CAR-1",
        "undo flight FL-1",
        "on_error WorkflowStepError",
    ]
    info = await handle.describe()
    assert info.status is WorkflowStatus.FAILED
    assert info.completion_order == ("flight", "car", "hotel")
    assert info.steps["rollback:car"].state == "completed"


async def test_a_failing_rollback_does_not_stop_the_others(open_provider: OpenProvider) -> None:
    log: list[str] = []
    handle = await _run_trip(open_provider, log, failing_rollback="car")

    with pytest.raises(WorkflowRollbackError) as caught:
        await handle.result(timeout=15)

    error = caught.value
    assert isinstance(error.primary, WorkflowStepError)
    assert error.primary.step == "pay"
    assert [(e.step, e.cause_type, e.cause_message) for e in error.rollback_errors] == [
        ("car", "OSError", "cannot undo car")
    ]
    assert log.count("undo car CAR-1") == 3  # retried with the default policy, then given up
    assert log[-2:] == ["undo flight FL-1", "on_error WorkflowRollbackError"]
    assert "'car'" in str(error)


async def test_on_error_runs_once_after_the_rollbacks(open_provider: OpenProvider) -> None:
    log: list[str] = []
    handle = await _run_trip(open_provider, log)
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=15)

    assert [entry for entry in log if entry.startswith("on_error")] == [
        "on_error WorkflowStepError"
    ]
    assert (await handle.describe()).steps["on_error"].attempts == 1


async def test_a_failing_on_complete_compensates_the_run(open_provider: OpenProvider) -> None:
    flow = Workflow("book", input=Trip).step("reserve")
    consumer: WorkflowConsumer[Trip, None] = WorkflowConsumer(flow)
    undone: list[str] = []
    consumer.step("reserve")(lambda ctx: "R-1")
    consumer.rollback("reserve")(lambda ctx: undone.append(ctx.results["reserve"]))

    @consumer.on_complete
    async def done(ctx: WorkflowContext[Trip]) -> None:
        raise ValueError("cannot confirm")

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Trip(trip_id="t"))

    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=10)
    assert caught.value.step == "on_complete"
    assert undone == ["R-1"]


async def test_steps_without_rollback_are_skipped(open_provider: OpenProvider) -> None:
    flow = Workflow("partial", input=Trip).step("one").step("two").step("three")
    consumer: WorkflowConsumer[Trip, None] = WorkflowConsumer(flow)
    undone: list[str] = []
    consumer.step("one")(lambda ctx: 1)
    consumer.step("two")(lambda ctx: 2)

    @consumer.step("three")
    def three(ctx: StepContext[Trip]) -> None:
        raise ValueError("no")

    consumer.rollback("one")(lambda ctx: undone.append("one"))
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Trip(trip_id="t"))

    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)
    assert undone == ["one"]
    assert "rollback:two" not in (await handle.describe()).steps


# -- steps still running when the run stops ------------------------------------------------


async def _run_status_is(handle: WorkflowHandle[Any], expected: WorkflowStatus) -> None:
    async def reached() -> bool:
        return await handle.status() is expected

    await eventually(reached, what=f"status {expected}")


async def _signal(
    event: threading.Event, handle: WorkflowHandle[Any], status: WorkflowStatus
) -> None:
    """Set ``event`` (which a sync handler may wait on) once the run has ``status``."""
    try:
        await _run_status_is(handle, status)
    finally:
        event.set()  # also when the test fails: no thread is left waiting


def _straggler_consumer(
    flow: Workflow[Trip, Any],
    log: list[str],
    handles: list[WorkflowHandle[Any]],
    *,
    compensating: threading.Event,
    sync: bool,
) -> WorkflowConsumer[Trip, None]:
    """``x`` completes at once; ``y`` (when in the flow) fails once ``x`` completed; ``b`` goes
    on until its run is ``compensating``, then completes (sync: in its thread; async: shielded
    from the cancellation)."""
    consumer: WorkflowConsumer[Trip, None] = WorkflowConsumer(flow)
    # b's handler has begun: a step stopped before its handler ran never completes (a cancel
    # heard before the attempt registered stops it), so y fails only once b is under way
    began = threading.Event()

    @consumer.step("x")
    async def x(ctx: StepContext[Trip]) -> str:
        log.append("x")
        return "X"

    if "y" in [step.name for step in flow.steps]:

        @consumer.step("y")
        async def y(ctx: StepContext[Trip]) -> None:
            async def x_done_and_b_begun() -> bool:
                x_done = (await handles[0].describe()).steps["x"].state == "completed"
                return x_done and began.is_set()

            await eventually(x_done_and_b_begun, what="x completed and b began")
            raise RuntimeError("y refused")

    if sync:

        @consumer.step("b")
        def b_sync(ctx: StepContext[Trip]) -> str:
            began.set()
            compensating.wait(10)
            log.append("b")
            return "B"

    else:

        @consumer.step("b")
        async def b_async(ctx: StepContext[Trip]) -> str:
            began.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(compensating.wait, 10)
            log.append("b")
            return "B"

    for step in ("x", "b"):

        async def undo(ctx: StepContext[Trip], step: str = step) -> None:
            log.append(f"undo {step} {ctx.results[step]}")

        consumer.rollback(step)(undo)

    @consumer.on_error
    async def failed(ctx: WorkflowContext[Trip], error: WorkflowError) -> None:
        log.append(f"on_error {type(error).__name__}")

    return consumer


@pytest.mark.parametrize("stop", ["failure", "deadline"])
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_step_completing_after_its_run_stopped_is_rolled_back_first(
    open_provider: OpenProvider, stop: str, kind: str
) -> None:
    if stop == "failure":  # y fails for good after x completed, while b still runs
        flow = Workflow("late", input=Trip).parallel(
            "x", Step("y", retry=RetryPolicy(max_attempts=1)), "b"
        )
        timeout, outcome = None, "WorkflowStepError"
    else:  # the deadline passes after x completed, while b still runs
        flow = Workflow("late", input=Trip).parallel("x", "b")
        timeout, outcome = timedelta(milliseconds=300), "WorkflowTimeoutError"
    log: list[str] = []
    handles: list[WorkflowHandle[Any]] = []
    compensating = threading.Event()
    consumer = _straggler_consumer(
        flow, log, handles, compensating=compensating, sync=kind == "sync"
    )
    workflows = await open_provider(consumer)
    handles.append(await workflows.execute(flow, Trip(trip_id="t"), timeout=timeout))

    async with anyio.create_task_group() as tg:
        tg.start_soon(_signal, compensating, handles[0], WorkflowStatus.COMPENSATING)
        with pytest.raises(WorkflowError) as caught:
            await handles[0].result(timeout=15)

    assert type(caught.value).__name__ == outcome
    assert (await handles[0].describe()).completion_order == ("x", "b")
    assert log == ["x", "b", "undo b B", "undo x X", f"on_error {outcome}"]


def _charge_consumer(
    flow: Workflow[Trip, Any], log: list[str], *, work: Callable[[], object]
) -> WorkflowConsumer[Trip, None]:
    """``x`` completes at once; ``charge`` is a sync step doing ``work`` in its thread."""
    consumer: WorkflowConsumer[Trip, None] = WorkflowConsumer(flow)

    @consumer.step("x")
    async def x(ctx: StepContext[Trip]) -> str:
        return "X"

    @consumer.step("charge")
    def charge(ctx: StepContext[Trip]) -> str:
        log.append("charging")
        work()
        log.append("charged")
        return "C-1"

    consumer.rollback("x")(lambda ctx: log.append("undo x"))
    consumer.rollback("charge")(lambda ctx: log.append(f"refunded {ctx.results['charge']}"))
    return consumer


async def _stays(condition: Callable[[], bool], *, seconds: float) -> None:
    """Check that ``condition`` holds all along the next ``seconds``."""
    with anyio.move_on_after(seconds):
        while True:
            assert condition()
            await anyio.sleep(0.01)


async def _logged(log: list[str], entry: str) -> None:
    async def seen() -> bool:
        return entry in log

    await eventually(seen, what=f"{entry!r} logged")


async def test_a_sync_step_cut_by_a_cancel_is_rolled_back_after_its_side_effect(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("charge", input=Trip).step("x").step("charge")
    log: list[str] = []
    consumer = _charge_consumer(flow, log, work=lambda: time.sleep(1.0))
    fast = {"stall_timeout": timedelta(milliseconds=400)}
    workflows = await open_provider(consumer, **fast)
    await open_provider(_charge_consumer(flow, log, work=lambda: time.sleep(1.0)), **fast)
    handle = await workflows.execute(flow, Trip(trip_id="t"))
    await _logged(log, "charging")

    assert await handle.cancel() is True

    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=15)
    # the thread outlived the cancel (and the 0.5 s reclaim idle time): kept, recorded, undone
    assert log == ["charging", "charged", "refunded C-1", "undo x"]
    info = await handle.describe()
    assert (info.steps["charge"].state, info.steps["charge"].attempts) == ("completed", 1)
    assert info.completion_order == ("x", "charge")


async def test_a_sync_on_complete_outliving_the_deadline_is_not_overlapped_by_on_error(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("confirm", input=Trip)
    consumer: WorkflowConsumer[Trip, Any] = WorkflowConsumer(flow)
    log: list[str] = []

    compensating = threading.Event()

    @consumer.on_complete
    def confirm(ctx: WorkflowContext[Trip]) -> str:
        log.append("confirming")
        compensating.wait(10)
        time.sleep(0.3)  # still confirming, well after the deadline
        log.append("confirmed")
        return "confirmed"

    @consumer.on_error
    def failed(ctx: WorkflowContext[Trip], error: WorkflowError) -> None:
        log.append(f"on_error {type(error).__name__}")

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Trip(trip_id="t"), timeout=timedelta(milliseconds=100))

    # The deadline wins: on_complete's late result is recorded on its job, not as the run's.
    async with anyio.create_task_group() as tg:
        tg.start_soon(_signal, compensating, handle, WorkflowStatus.COMPENSATING)
        with pytest.raises(WorkflowTimeoutError):
            await handle.result(timeout=10)
    assert log == ["confirming", "confirmed", "on_error WorkflowTimeoutError"]
    info = await handle.describe()
    assert info.status is WorkflowStatus.TIMED_OUT
    assert info.steps["on_complete"].state == "completed"


async def test_a_stopped_sync_step_is_waited_for_at_most_its_timeout(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("charge", input=Trip).step("x").step("charge", timeout=timedelta(seconds=1))
    log: list[str] = []
    release = threading.Event()
    workflows = await open_provider(_charge_consumer(flow, log, work=lambda: release.wait(30)))
    handle = await workflows.execute(flow, Trip(trip_id="t"))
    await _logged(log, "charging")
    try:
        assert await handle.cancel() is True

        with pytest.raises(WorkflowCancelledError):
            await handle.result(timeout=15)
        assert log == ["charging", "undo x"]
        error = (await handle.describe()).steps["charge"].error
        assert error is not None and error.cause_type == "plait.StepTimeout"
    finally:
        release.set()
    await _logged(log, "charged")
    assert "refunded C-1" not in log  # abandoned past its timeout: its late result is discarded


async def test_a_stopped_step_that_never_returns_is_reclaimed_once_its_instance_stops(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("charge", input=Trip).parallel("x", "charge")
    log: list[str] = []
    release = threading.Event()
    fast = {"stall_timeout": timedelta(milliseconds=400), "shutdown_timeout": timedelta(0)}
    caller = await open_provider()
    first = await open_provider(_charge_consumer(flow, log, work=lambda: release.wait(30)), **fast)
    handle = await caller.execute(flow, Trip(trip_id="t"))
    try:
        await _logged(log, "charging")

        async def x_done() -> bool:
            return (await handle.describe()).steps["x"].state == "completed"

        await eventually(x_done, what="x completed")
        assert await handle.cancel() is True
        # While the thread runs, its attempt is not given up: nothing is rolled back yet.
        await _stays(lambda: log == ["charging"], seconds=0.5)

        await first.stop()  # the thread still runs: its attempt is left to be reclaimed
        await open_provider(_charge_consumer(flow, log, work=lambda: None), **fast)

        with pytest.raises(WorkflowCancelledError):
            await handle.result(timeout=15)
        assert log == ["charging", "undo x"]
        error = (await handle.describe()).steps["charge"].error
        assert error is not None and error.cause_type == "plait.WorkerLost"
    finally:
        release.set()
