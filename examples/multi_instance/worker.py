"""The worker service: runs the steps of ``place-order``; two of them run side by side.

    plait worker --url redis://127.0.0.1:6379/0 --prefix multi-instance worker:providers

Its last step emits ``order.confirmed`` for the notifier service; the event carries the run's
trace id, as every step does.
"""

from __future__ import annotations

import os

from shared import PREFIX, URL, Order, OrderConfirmed, order_confirmed, place_order

from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.workflows import StepContext, WorkflowConsumer

NAME = os.environ.get("PLAIT_ID", f"worker-{os.getpid()}")
orders: WorkflowConsumer[Order, None] = WorkflowConsumer(place_order)
events = RedisEventProvider.from_url(URL, prefix=PREFIX, group="orders")  # emits only


def trace_of(ctx: StepContext[Order]) -> str:
    return ctx.meta.get("traceparent", "").split("-")[1]


@orders.step("reserve")
async def reserve(ctx: StepContext[Order]) -> str:
    print(f"{NAME} reserve {ctx.input.order_id} trace {trace_of(ctx)}", flush=True)
    return f"R-{ctx.input.order_id}"


@orders.rollback("reserve")
async def release(ctx: StepContext[Order]) -> None:
    print(f"{NAME} rollback:reserve {ctx.input.order_id} trace {trace_of(ctx)}", flush=True)


@orders.step("charge")
async def charge(ctx: StepContext[Order]) -> str:
    if ctx.input.amount_cents > 10_000:
        raise ValueError("card declined")
    return f"C-{ctx.input.order_id}"


@orders.step("confirm")
async def confirm(ctx: StepContext[Order]) -> None:
    charge_id = ctx.results["charge"]
    await events.emit(
        order_confirmed, OrderConfirmed(order_id=ctx.input.order_id, charge_id=charge_id)
    )


workflows = RedisWorkflowProvider.from_url(URL, prefix=PREFIX, provider_id=NAME)
workflows.register(orders)
providers = [events, workflows]
