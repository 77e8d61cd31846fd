"""Idempotency keys: one run per key and workflow, on every backend and across instances."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from conftest import OpenProvider
from pydantic import BaseModel

from plait.workflows import (
    IdempotencyConflictError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio


class Payment(BaseModel):
    order_id: str
    amount_cents: int


pay = Workflow("pay", input=Payment).step("charge")


def pay_consumer(charges: list[str], *, fail: bool = False) -> WorkflowConsumer[Payment, None]:
    consumer: WorkflowConsumer[Payment, None] = WorkflowConsumer(pay)

    @consumer.step("charge")
    async def charge(ctx: StepContext[Payment]) -> str:
        charges.append(ctx.input.order_id)
        if fail:
            raise ValueError("card declined")
        return "ch_1"

    return consumer


async def test_the_same_key_and_input_attach_to_the_same_run(open_provider: OpenProvider) -> None:
    charges: list[str] = []
    workflows = await open_provider(pay_consumer(charges))

    first = await workflows.execute(pay, Payment(order_id="o", amount_cents=5), idempotency_key="k")
    second = await workflows.execute(pay, {"amount_cents": 5, "order_id": "o"}, idempotency_key="k")

    assert (first.created, second.created) == (True, False)
    assert first.run_id == second.run_id
    await second.result(timeout=10)
    assert charges == ["o"]


async def test_the_same_key_with_other_input_conflicts(open_provider: OpenProvider) -> None:
    workflows = await open_provider()
    first = await workflows.execute(pay, Payment(order_id="o", amount_cents=5), idempotency_key="k")

    with pytest.raises(IdempotencyConflictError) as caught:
        await workflows.execute(pay, Payment(order_id="o", amount_cents=6), idempotency_key="k")

    assert caught.value.idempotency_key == "k"
    assert caught.value.run_id == first.run_id
    assert "'k'" in str(caught.value)


async def test_keys_are_scoped_per_workflow(open_provider: OpenProvider) -> None:
    other = Workflow("refund", input=Payment).step("charge")
    workflows = await open_provider()
    data = Payment(order_id="o", amount_cents=5)

    first = await workflows.execute(pay, data, idempotency_key="k")
    second = await workflows.execute(other, data, idempotency_key="k")

    assert second.created
    assert first.run_id != second.run_id


async def test_a_key_after_completion_returns_the_completed_run(
    open_provider: OpenProvider,
) -> None:
    charges: list[str] = []
    workflows = await open_provider(pay_consumer(charges))
    data = Payment(order_id="o", amount_cents=5)
    first = await workflows.execute(pay, data, idempotency_key="k")
    await first.result(timeout=10)

    again = await workflows.execute(pay, data, idempotency_key="k")

    assert not again.created
    assert again.run_id == first.run_id
    assert await again.result(timeout=10) is None
    assert charges == ["o"]


async def test_a_key_after_failure_returns_the_failed_run(open_provider: OpenProvider) -> None:
    charges: list[str] = []
    workflows = await open_provider(pay_consumer(charges, fail=True))
    data = Payment(order_id="o", amount_cents=5)
    first = await workflows.execute(pay, data, idempotency_key="k")
    with pytest.raises(WorkflowStepError):
        await first.result(timeout=10)

    again = await workflows.execute(pay, data, idempotency_key="k")

    assert not again.created
    assert again.run_id == first.run_id
    with pytest.raises(WorkflowStepError, match="card declined"):
        await again.result(timeout=10)
    assert charges == ["o", "o", "o"]  # three attempts of the one run, none for the second call


async def test_concurrent_executes_with_one_key_make_exactly_one_run(
    open_provider: OpenProvider,
) -> None:
    charges: list[str] = []
    await open_provider(pay_consumer(charges))
    callers = [await open_provider() for _ in range(3)]
    handles: list[WorkflowHandle[Any]] = []
    data = Payment(order_id="o", amount_cents=5)

    async def call(index: int) -> None:
        caller = callers[index % len(callers)]
        handles.append(await caller.execute(pay, data, idempotency_key="one-key"))

    async with anyio.create_task_group() as tg:
        for index in range(1_000):
            tg.start_soon(call, index)

    assert len({handle.run_id for handle in handles}) == 1
    assert sum(handle.created for handle in handles) == 1
    await handles[0].result(timeout=10)
    assert charges == ["o"]
