"""A first workflow: two steps and a rollback, run on the embedded ``memory://`` server.

python examples/quickstart.py
"""

import asyncio

from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer, WorkflowError


class Order(BaseModel):
    order_id: str
    amount_cents: int


place_order = Workflow("place-order", input=Order).step("reserve").step("charge")
orders = WorkflowConsumer(place_order)


@orders.step("reserve")
async def reserve(ctx: StepContext[Order]) -> str:
    return f"R-{ctx.input.order_id}"


@orders.rollback("reserve")
async def release(ctx: StepContext[Order]) -> None:
    print(f"released {ctx.results['reserve']}")


@orders.step("charge")
async def charge(ctx: StepContext[Order]) -> str:
    if ctx.input.amount_cents > 10_000:
        raise ValueError("card declined")
    return f"C-{ctx.input.order_id}"


async def main() -> None:
    workflows = RedisWorkflowProvider.from_url("memory://")  # or "redis://localhost:6379/0"
    workflows.register(orders)  # only on instances that run the steps
    async with workflows:
        for order in [
            Order(order_id="42", amount_cents=990),
            Order(order_id="43", amount_cents=10**5),
        ]:
            handle = await workflows.execute(place_order, order, idempotency_key=order.order_id)
            try:
                await handle.result(timeout=10)
                print(f"order {order.order_id}: {await handle.status()}")
            except WorkflowError as error:
                print(f"order {order.order_id}: {await handle.status()} ({error})")


asyncio.run(main())
