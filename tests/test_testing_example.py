"""The test kit's example (docs/testing.md includes this file): days pass in a blink."""

from datetime import timedelta

import pytest
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.testing import VirtualClock
from plait.workflows import (
    RetryPolicy,
    StepContext,
    WaitTimeoutError,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
)

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str


class Payment(BaseModel):
    charge_id: str


place_order = (
    Workflow("place-order", input=Order)
    .step("reserve", retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(minutes=10)))
    .wait("payment", data=Payment, timeout=timedelta(days=3))
    .step("ship")
)
orders = WorkflowConsumer(place_order)
released: list[str] = []
tries: list[int] = []


@orders.step("reserve")
async def reserve(ctx: StepContext[Order]) -> str:
    tries.append(ctx.attempt)
    if ctx.attempt == 1:
        raise ConnectionError("stock service down")  # retried 10 minutes later
    return f"R-{ctx.input.order_id}"


@orders.rollback("reserve")
async def release(ctx: StepContext[Order]) -> None:
    released.append(ctx.results["reserve"])


@orders.step("ship")
async def ship(ctx: StepContext[Order]) -> None:
    return None


async def test_an_unpaid_order_is_released_after_three_days(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    plait_workflows.register(orders)
    handle = await plait_workflows.execute(place_order, Order(order_id="7"))

    await plait_clock.advance(timedelta(minutes=10))  # the retry of reserve is due
    await plait_clock.advance(timedelta(days=3))  # no payment came: the wait times out

    with pytest.raises(WaitTimeoutError):
        await handle.result(timeout=5)
    assert tries == [1, 2]
    assert released == ["R-7"]
    assert await handle.status() == WorkflowStatus.FAILED
