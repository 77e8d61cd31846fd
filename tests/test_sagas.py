"""Compensation: rollbacks in reverse completion order, failing rollbacks, ``on_error`` once."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.workflows import (
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowError,
    WorkflowHandle,
    WorkflowRollbackError,
    WorkflowStatus,
    WorkflowStepError,
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
