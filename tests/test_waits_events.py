"""Events and runs together: steps emit through ``ctx.emit``, and an event resumes a wait."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str


class Shipped(BaseModel):
    order_id: str


class PaymentReceived(BaseModel):
    order_id: str
    charge_id: str


shipped = Event("order.shipped", data=Shipped)
payment_received = Event("payment.received", data=PaymentReceived)


async def test_ctx_emit_from_a_step_reaches_another_group_with_the_steps_trace(
    url: str, prefix: str, open_provider: OpenProvider
) -> None:
    flow = Workflow("emitting", input=Order).step("ship")
    seen: list[EventContext[Shipped]] = []
    steps: list[StepContext[Order]] = []
    emitted: list[str] = []
    async with (
        RedisEventProvider.from_url(url, group="shop", prefix=prefix) as shop,
        RedisEventProvider.from_url(url, group="mail", prefix=prefix) as mail,
    ):

        @mail.on(shipped)
        async def notify(ctx: EventContext[Shipped]) -> None:
            seen.append(ctx)

        await mail.ready()
        consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

        @consumer.step("ship")
        async def ship(ctx: StepContext[Order]) -> str:
            steps.append(ctx)
            emitted.append(await ctx.emit(shipped, Shipped(order_id=ctx.input.order_id)))
            return emitted[-1]

        workflows = await open_provider(consumer, events=shop)
        handle = await workflows.execute(flow, Order(order_id="o-1"))
        await handle.result(timeout=10)

        async def delivered() -> bool:
            return len(seen) == 1

        await eventually(delivered, what="the event reached the other group")

    step_trace = steps[0].meta["traceparent"].split("-")[1]
    assert [seen[0].event_id] == emitted
    assert seen[0].data == Shipped(order_id="o-1")
    assert seen[0].meta["traceparent"].split("-")[1] == step_trace
    assert seen[0].meta["correlation_id"] == handle.run_id
    assert handle.run_id in seen[0].meta["causation_id"]


async def test_ctx_emit_without_an_event_provider_fails_the_step_with_a_clear_cause(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("no-events", input=Order).step("ship")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("ship")
    async def ship(ctx: StepContext[Order]) -> str:
        return await ctx.emit(shipped, Shipped(order_id="o"))

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-2"))
    with pytest.raises(Exception, match="events="):
        await handle.result(timeout=10)


async def test_an_event_handler_resumes_a_wait(
    url: str, prefix: str, open_provider: OpenProvider
) -> None:
    flow = Workflow("paid-by-event", input=Order).wait("payment", data=PaymentReceived)
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.on_complete
    async def done(ctx: Any) -> str:
        return str(ctx.results["payment"].charge_id)

    workflows: RedisWorkflowProvider = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-3"), idempotency_key="o-3")
    async with RedisEventProvider.from_url(url, group="payments", prefix=prefix) as events:

        @events.on(payment_received)
        async def resume(ctx: EventContext[PaymentReceived]) -> None:
            # the one-liner: the event's id names the signal, so a redelivery is a no-op
            await workflows.signal(
                flow, "payment", ctx.data, idempotency_key=ctx.data.order_id, signal_id=ctx.event_id
            )

        await events.ready()
        await events.emit(payment_received, PaymentReceived(order_id="o-3", charge_id="ch-3"))
        assert await handle.result(timeout=10) == "ch-3"
