"""An order saga on the embedded ``memory://`` server: one run succeeds, one is compensated.

    python examples/order_saga.py

The second order's card is declined: ``charge`` is retried, then the completed steps are
undone in reverse order and the caller gets a typed error naming the step and the cause.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import (
    RetryPolicy,
    RunInfo,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowError,
)


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Receipt(BaseModel):
    order_id: str
    charge_id: str


place_order = (
    Workflow("place-order", input=Order, output=Receipt)
    .step("reserve")
    .parallel("charge", "notify")
    .step("ship")
)

orders = WorkflowConsumer(place_order)


@orders.step("reserve")
async def reserve(ctx: StepContext[Order]) -> dict[str, str]:
    return {"reservation": f"R-{ctx.input.order_id}"}


@orders.rollback("reserve")
async def release(ctx: StepContext[Order]) -> None:
    print(f"    rollback: released {ctx.results['reserve']['reservation']}")


@orders.step("charge")
async def charge(ctx: StepContext[Order]) -> dict[str, str]:
    if ctx.input.amount_cents > 10_000:
        raise ValueError(f"card declined for {ctx.input.amount_cents} cents")
    return {"id": f"ch_{ctx.input.order_id}"}


@orders.step("notify")
def notify(ctx: StepContext[Order]) -> None:  # plain functions run in a worker thread
    ctx.log.info("customer notified")


@orders.rollback("notify")
def apologise(ctx: StepContext[Order]) -> None:
    print(f"    rollback: sent an apology for order {ctx.input.order_id}")


@orders.step("ship")
async def ship(ctx: StepContext[Order]) -> str:
    return "shipped"


@orders.on_complete
async def done(ctx: WorkflowContext[Order]) -> Receipt:
    return Receipt(order_id=ctx.input.order_id, charge_id=ctx.results["charge"]["id"])


@orders.on_error
async def failed(ctx: WorkflowContext[Order], error: WorkflowError) -> None:
    print(f"    on_error: order {ctx.input.order_id} failed: {error}")


def timeline(info: RunInfo) -> None:
    print(f"  run {info.run_id}: {info.status}  trace id {info.meta['traceparent'][3:35]}")
    for step in info.steps.values():
        print(f"    {step.name:<18} {step.state:<10} attempts={step.attempts}")


async def main() -> None:
    async with RedisWorkflowProvider.from_url(
        "memory://",
        retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=50)),
    ) as workflows:
        workflows.register(orders)

        print("order 42 (succeeds):")
        handle = await workflows.execute(
            place_order, Order(order_id="42", amount_cents=990), idempotency_key="order-42"
        )
        receipt = await handle.result(timeout=10)
        print(f"  result: {receipt!r}")
        timeline(await handle.describe())

        print("order 43 (card declined: retried, then compensated):")
        handle = await workflows.execute(
            place_order, Order(order_id="43", amount_cents=99_000), idempotency_key="order-43"
        )
        try:
            await handle.result(timeout=10)
        except WorkflowError as error:
            print(f"  caller got {type(error).__name__}: {error}")
        timeline(await handle.describe())

        again = await workflows.execute(
            place_order, Order(order_id="42", amount_cents=990), idempotency_key="order-42"
        )
        print(f"order 42 again with the same key: created={again.created}, same run")


if __name__ == "__main__":
    asyncio.run(main())
