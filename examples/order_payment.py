"""An order that waits for its payment, on the embedded ``memory://`` server.

    python examples/order_payment.py

The run reserves the stock, then parks on the ``payment`` wait: no worker slot, no task, no
polling. Order 42's payment webhook arrives (by the order's idempotency key, as a webhook knows
the order and not the run) and the order ships. Order 43's payment never comes: the wait times
out, the run fails with ``WaitTimeoutError`` and the reservation is released; the payment that
turns up afterwards is refused, and changes nothing.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import (
    SignalRefusedError,
    StepContext,
    WaitTimeoutError,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
)


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Payment(BaseModel):
    charge_id: str
    amount_cents: int


checkout = (
    Workflow("checkout", input=Order)
    .step("reserve")
    .wait("payment", data=Payment, timeout=timedelta(seconds=1))
    .step("ship")
)

orders = WorkflowConsumer(checkout)


@orders.step("reserve")
async def reserve(ctx: StepContext[Order]) -> str:
    print(f"  order {ctx.input.order_id}: stock reserved, waiting for the payment")
    return f"R-{ctx.input.order_id}"


@orders.rollback("reserve")
async def release(ctx: StepContext[Order]) -> None:
    print(f"  order {ctx.input.order_id}: rollback: released {ctx.results['reserve']}")


@orders.step("ship")
async def ship(ctx: StepContext[Order]) -> str:
    payment: Payment = ctx.results["payment"]
    print(f"  order {ctx.input.order_id}: paid by {payment.charge_id}, shipped")
    return "shipped"


@orders.on_complete
async def done(ctx: WorkflowContext[Order]) -> str:
    return f"order {ctx.input.order_id} {ctx.results['ship']}"


async def main() -> None:
    async with RedisWorkflowProvider.from_url("memory://") as workflows:
        workflows.register(orders)

        print("order 42 (its payment comes):")
        paid = await workflows.execute(
            checkout, Order(order_id="42", amount_cents=990), idempotency_key="order-42"
        )
        unpaid = await workflows.execute(
            checkout, Order(order_id="43", amount_cents=1500), idempotency_key="order-43"
        )
        async for event in paid.watch():  # until the run parks on its wait
            if event.kind == "wait.waiting":
                print(f"  watch(): {event.kind} on {event.step!r}")
                break
        wait = (await paid.describe()).waits["payment"]
        print(f"  describe(): wait {wait.name!r} is {wait.state}, due {wait.due:%H:%M:%S}")
        # the payment provider's webhook, which knows the order, not the run:
        await workflows.signal(
            checkout,
            "payment",
            Payment(charge_id="ch_42", amount_cents=990),
            idempotency_key="order-42",
            signal_id="evt_1001",  # the webhook's own event id: a redelivery is a no-op
        )
        print(f"  result: {await paid.result(timeout=10)}")

        print("order 43 (its payment never comes):")
        try:
            await unpaid.result(timeout=10)
        except WaitTimeoutError as error:
            print(f"  caller got WaitTimeoutError for wait {error.wait!r}: {error.cause_message}")
        try:
            await workflows.signal(
                checkout,
                "payment",
                Payment(charge_id="ch_43", amount_cents=1500),
                idempotency_key="order-43",
            )
        except SignalRefusedError as error:
            print(f"  the late payment is refused: {error.reason}")
        print(f"  status: {await unpaid.status()}")


if __name__ == "__main__":
    asyncio.run(main())
