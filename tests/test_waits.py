"""Runs that wait: signal waits, their timeouts, durable sleeps and delayed starts.

A wait parks its run (no worker slot, no task) until a signal of its name comes; a signal that
comes first is kept; a late one is refused and changes nothing; a timeout fails the run and
compensates it like a failed step, unless the wait continues.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from conftest import Clock, OpenProvider, eventually
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import (
    InvalidDefinitionError,
    InvalidInputError,
    NonRetryableError,
    RunNotFoundError,
    SignalRefusedError,
    StepContext,
    WaitTimeoutError,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str
    ship_at: datetime | None = None


class Payment(BaseModel):
    charge_id: str
    amount_cents: int


def order_flow(
    name: str, *, timeout: timedelta | None = timedelta(seconds=30), on_timeout: Any = "fail"
) -> tuple[Workflow[Order, Any], WorkflowConsumer[Order, Any], list[str]]:
    """reserve -> notify -> wait "payment" -> ship, recording what ran (rollbacks too)."""
    flow = (
        Workflow(name, input=Order)
        .step("reserve")
        .step("notify")
        .wait("payment", data=Payment, timeout=timeout, on_timeout=on_timeout)
        .step("ship")
    )
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    ran: list[str] = []

    @consumer.step("reserve")
    async def reserve(ctx: StepContext[Order]) -> str:
        ran.append("reserve")
        return "r-1"

    @consumer.step("notify")
    async def notify(ctx: StepContext[Order]) -> str:
        ran.append("notify")
        return "n-1"

    @consumer.step("ship")
    async def ship(ctx: StepContext[Order]) -> Any:
        ran.append("ship")
        payment = ctx.results["payment"]
        return payment.charge_id if payment is not None else None

    @consumer.rollback("reserve")
    async def release(ctx: StepContext[Order]) -> None:
        ran.append("rollback:reserve")

    @consumer.rollback("notify")
    async def unnotify(ctx: StepContext[Order]) -> None:
        ran.append("rollback:notify")

    @consumer.on_complete
    async def done(ctx: Any) -> Any:
        return ctx.results["ship"]

    return flow, consumer, ran


async def parked(handle: WorkflowHandle[Any], wait: str = "payment") -> None:
    async def waiting() -> bool:
        info = await handle.describe()
        return wait in info.waits and info.waits[wait].state == "waiting"

    await eventually(waiting, what=f"the run waits on {wait}")


async def test_a_signal_to_a_parked_wait_becomes_its_result_and_the_run_goes_on(
    open_provider: OpenProvider,
) -> None:
    flow, consumer, ran = order_flow("pay-after")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-1"))
    await parked(handle)
    assert await handle.status() is WorkflowStatus.RUNNING
    assert ran == ["reserve", "notify"]
    delivered = await workflows.signal(
        handle.run_id, "payment", Payment(charge_id="c-9", amount_cents=5)
    )
    assert delivered is True
    assert await handle.result(timeout=10) == "c-9"
    info = await handle.describe()
    assert info.waits["payment"].state == "signalled"
    assert info.waits["payment"].signal_id is not None


async def test_a_signal_before_the_wait_is_reached_is_kept_and_taken_by_the_wait(
    open_provider: OpenProvider,
) -> None:
    flow, consumer, ran = order_flow("pay-before")
    emitter = await open_provider()
    handle = await emitter.execute(flow, Order(order_id="o-2"))
    # no consumer yet: the run has not reached its wait
    assert await emitter.signal(handle.run_id, "payment", {"charge_id": "c-1", "amount_cents": 1})
    await open_provider(consumer)
    assert await handle.result(timeout=10) == "c-1"
    assert ran == ["reserve", "notify", "ship"]


async def test_the_same_signal_id_twice_is_delivered_once(open_provider: OpenProvider) -> None:
    flow, consumer, _ = order_flow("pay-twice")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-3"))
    await parked(handle)
    payment = Payment(charge_id="c-2", amount_cents=2)
    assert await workflows.signal(handle.run_id, "payment", payment, signal_id="hook-1")
    assert not await workflows.signal(handle.run_id, "payment", payment, signal_id="hook-1")
    assert await handle.result(timeout=10) == "c-2"
    # the run is over: the same id is still a no-op, not an error; another id is refused
    assert not await workflows.signal(handle.run_id, "payment", payment, signal_id="hook-1")
    with pytest.raises(SignalRefusedError):
        await workflows.signal(handle.run_id, "payment", payment, signal_id="hook-2")
    events = [event.kind async for event in handle.watch()]
    assert events.count("wait.signalled") == 1


async def test_a_signal_with_bad_data_raises_invalid_input_and_writes_nothing(
    open_provider: OpenProvider,
) -> None:
    flow, consumer, _ = order_flow("pay-bad")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-4"))
    await parked(handle)
    before = await workflows._connection.client.hgetall(
        workflows._runs.keys(flow.name).run(handle.run_id)
    )
    with pytest.raises(InvalidInputError):
        await workflows.signal(handle.run_id, "payment", {"charge_id": "c", "amount_cents": "many"})
    with pytest.raises(InvalidInputError):
        await workflows.signal(handle.run_id, "no-such-wait", {})
    after = await workflows._connection.client.hgetall(
        workflows._runs.keys(flow.name).run(handle.run_id)
    )
    assert after == before
    assert (await handle.describe()).waits["payment"].state == "waiting"


async def test_a_wait_timeout_fails_the_run_and_compensates_in_reverse_order(
    open_provider: OpenProvider, clock: Clock
) -> None:
    flow, consumer, ran = order_flow("pay-late", timeout=timedelta(milliseconds=300))
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-5"))
    await clock.advance(timedelta(milliseconds=300))
    with pytest.raises(WaitTimeoutError) as caught:
        await handle.result(timeout=10)
    assert caught.value.wait == "payment"
    assert isinstance(caught.value, WorkflowStepError)
    assert caught.value.cause_type == "plait.WaitTimeout"
    assert ran == ["reserve", "notify", "rollback:notify", "rollback:reserve"]
    assert (await handle.describe()).waits["payment"].state == "timed_out"


async def test_a_late_signal_after_the_timeout_is_refused_and_changes_nothing(
    open_provider: OpenProvider, clock: Clock
) -> None:
    flow, consumer, ran = order_flow("pay-refused", timeout=timedelta(milliseconds=200))
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-6"))
    await clock.advance(timedelta(milliseconds=200))
    with pytest.raises(WaitTimeoutError):
        await handle.result(timeout=10)
    key = workflows._runs.keys(flow.name).run(handle.run_id)
    before = await workflows._connection.client.hgetall(key)
    with pytest.raises(SignalRefusedError) as caught:
        await workflows.signal(handle.run_id, "payment", Payment(charge_id="c", amount_cents=1))
    assert caught.value.wait == "payment"
    assert await workflows._connection.client.hgetall(key) == before
    assert ran == ["reserve", "notify", "rollback:notify", "rollback:reserve"]
    assert await handle.status() is WorkflowStatus.FAILED


async def test_on_timeout_continue_gives_the_wait_a_none_result(
    open_provider: OpenProvider, clock: Clock
) -> None:
    flow, consumer, ran = order_flow(
        "pay-optional", timeout=timedelta(milliseconds=200), on_timeout="continue"
    )
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-7"))
    await clock.advance(timedelta(milliseconds=200))
    assert await handle.result(timeout=10) is None
    assert ran == ["reserve", "notify", "ship"]


async def test_the_run_deadline_still_bounds_a_wait(
    open_provider: OpenProvider, clock: Clock
) -> None:
    flow, consumer, ran = order_flow("pay-deadline", timeout=None)
    workflows = await open_provider(consumer)
    handle = await workflows.execute(
        flow, Order(order_id="o-8"), timeout=timedelta(milliseconds=500)
    )
    await clock.advance(timedelta(milliseconds=500))
    with pytest.raises(Exception) as caught:
        await handle.result(timeout=10)
    assert "timed out" in str(caught.value)
    assert await handle.status() is WorkflowStatus.TIMED_OUT
    assert ran == ["reserve", "notify", "rollback:notify", "rollback:reserve"]
    with pytest.raises(SignalRefusedError):
        await workflows.signal(handle.run_id, "payment", Payment(charge_id="c", amount_cents=1))


async def test_a_signal_by_idempotency_key_from_an_emitter_only_instance(
    open_provider: OpenProvider,
) -> None:
    flow, consumer, _ = order_flow("pay-by-key")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-9"), idempotency_key="order-9")
    await parked(handle)
    webhook = await open_provider()  # never executed nor registered this workflow
    payment = {"charge_id": "c-key", "amount_cents": 3}
    assert await webhook.signal(flow, "payment", payment, idempotency_key="order-9")
    assert await handle.result(timeout=10) == "c-key"
    with pytest.raises(RunNotFoundError):
        await webhook.signal(flow, "payment", payment, idempotency_key="order-unknown")


async def test_retry_of_a_run_failed_by_a_wait_timeout_waits_again(
    open_provider: OpenProvider, clock: Clock
) -> None:
    flow, consumer, _ = order_flow("pay-retry", timeout=timedelta(milliseconds=300))
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-10"))
    await clock.advance(timedelta(milliseconds=300))
    with pytest.raises(WaitTimeoutError):
        await handle.result(timeout=10)
    again = await workflows.retry(handle.run_id)
    await parked(again)
    await workflows.signal(handle.run_id, "payment", Payment(charge_id="c-10", amount_cents=1))
    assert await again.result(timeout=10) == "c-10"


async def test_watch_shows_waiting_and_signalled(open_provider: OpenProvider) -> None:
    flow, consumer, _ = order_flow("pay-watch")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o-11"))
    await parked(handle)
    await workflows.signal(handle.run_id, "payment", Payment(charge_id="c", amount_cents=1))
    kinds = [event.kind async for event in handle.watch()]
    assert kinds.index("wait.waiting") < kinds.index("wait.signalled") < kinds.index("finished")


async def test_a_parked_run_holds_no_worker_slot(open_provider: OpenProvider) -> None:
    flow, consumer, _ = order_flow("pay-slots")
    workflows = await open_provider(consumer, concurrency=1)
    handles = [await workflows.execute(flow, Order(order_id=f"s-{i}")) for i in range(5)]
    for handle in handles:
        await parked(handle)  # five runs parked past a worker running one step at a time
    for handle in handles:
        await workflows.signal(handle.run_id, "payment", Payment(charge_id="c", amount_cents=1))
    for handle in handles:
        assert await handle.result(timeout=10) == "c"


# -- durable sleeps and delayed starts ------------------------------------------------------


def sleepy(name: str, **sleep: Any) -> tuple[Workflow[Order, Any], WorkflowConsumer[Order, Any]]:
    flow = Workflow(name, input=Order).step("first").sleep("cool-off", **sleep).step("last")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("first")
    async def first(ctx: StepContext[Order]) -> float:
        return anyio.current_time()

    @consumer.step("last")
    async def last(ctx: StepContext[Order]) -> float:
        return anyio.current_time() - float(ctx.results["first"])

    @consumer.on_complete
    async def done(ctx: Any) -> float:
        return float(ctx.results["last"])

    return flow, consumer


async def test_a_sleep_parks_the_run_for_its_duration(open_provider: OpenProvider) -> None:
    flow, consumer = sleepy("nap", duration=timedelta(milliseconds=400))
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="n-1"))
    slept = await handle.result(timeout=10)
    assert slept >= 0.35
    info = await handle.describe()
    assert info.waits["cool-off"].state == "woke"
    kinds = [event.kind async for event in handle.watch()]
    assert "wait.woke" in kinds


async def test_a_sleep_until_a_time_taken_from_the_input(open_provider: OpenProvider) -> None:
    flow, consumer = sleepy("nap-until", until=lambda ctx: ctx.input.ship_at)
    workflows = await open_provider(consumer)
    at = datetime.now(tz=UTC) + timedelta(milliseconds=500)
    handle = await workflows.execute(flow, Order(order_id="n-2", ship_at=at))
    await handle.result(timeout=10)
    info = await handle.describe()
    finished = info.steps["last"].started_at
    assert finished is not None and finished >= at - timedelta(milliseconds=20)


async def test_a_delayed_start_is_created_now_and_deduplicated_before_it_starts(
    open_provider: OpenProvider, clock: Clock
) -> None:
    flow, consumer, ran = order_flow("later", timeout=None, on_timeout="fail")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(
        flow, Order(order_id="d-1"), idempotency_key="d-1", delay=timedelta(milliseconds=600)
    )
    assert handle.created
    again = await workflows.execute(
        flow, Order(order_id="d-1"), idempotency_key="d-1", delay=timedelta(milliseconds=600)
    )
    assert not again.created and again.run_id == handle.run_id
    assert await handle.status() is WorkflowStatus.PENDING
    assert ran == []
    await clock.advance(timedelta(milliseconds=600))
    await parked(handle)
    assert ran == ["reserve", "notify"]
    started = (await handle.describe()).steps["reserve"].started_at
    assert started is not None and started >= (await handle.describe()).created_at + timedelta(
        milliseconds=550
    )


async def test_a_delayed_start_at_a_time(open_provider: OpenProvider, clock: Clock) -> None:
    flow, consumer = sleepy("at-time", duration=timedelta(0))
    workflows = await open_provider(consumer)
    at = datetime.now(tz=UTC) + timedelta(milliseconds=400)
    handle = await workflows.execute(flow, Order(order_id="a-1"), start_at=at)
    await clock.advance(timedelta(milliseconds=400))
    await handle.result(timeout=10)
    started = (await handle.describe()).steps["first"].started_at
    assert started is not None and started >= at - timedelta(milliseconds=20)


async def test_cancelling_a_parked_run_compensates_it(open_provider: OpenProvider) -> None:
    flow, consumer, ran = order_flow("pay-cancel")
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="c-1"))
    await parked(handle)
    assert await handle.cancel()
    await eventually(
        lambda: _is(handle, WorkflowStatus.CANCELLED), what="the parked run is cancelled"
    )
    assert ran == ["reserve", "notify", "rollback:notify", "rollback:reserve"]
    with pytest.raises(SignalRefusedError):
        await workflows.signal(handle.run_id, "payment", Payment(charge_id="c", amount_cents=1))


async def _is(handle: WorkflowHandle[Any], status: WorkflowStatus) -> bool:
    return await handle.status() is status


def test_a_wait_takes_no_handler() -> None:
    _, consumer, _ = order_flow("pay-handler")
    with pytest.raises(InvalidDefinitionError):
        consumer.step("payment")
    with pytest.raises(InvalidDefinitionError):
        Workflow("x", input=Order).parallel("a", "b").wait("a")
    assert isinstance(RedisWorkflowProvider, type)


async def test_a_signal_kept_for_a_wait_the_run_never_reached_survives_retry(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("pay-kept-retry", input=Order).step("check").wait("payment", data=Payment)
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    refuse = [True]

    @consumer.step("check")
    async def check(ctx: StepContext[Order]) -> None:
        if refuse[0]:
            raise NonRetryableError("not yet")

    @consumer.on_complete
    async def done(ctx: Any) -> str:
        return str(ctx.results["payment"].charge_id)

    emitter = await open_provider()
    handle = await emitter.execute(flow, Order(order_id="k-1"))
    assert await emitter.signal(handle.run_id, "payment", Payment(charge_id="c-k", amount_cents=1))
    assert (await handle.describe()).waits["payment"].state == "pending"
    await open_provider(consumer)
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)
    refuse[0] = False
    again = await emitter.retry(handle.run_id)
    assert await again.result(timeout=10) == "c-k"


async def test_the_reconciler_leaves_parked_runs_and_delayed_starts_parked(
    open_provider: OpenProvider,
) -> None:
    flow, consumer, ran = order_flow("pay-reconcile")
    workflows = await open_provider(consumer)  # stall_timeout 2 s: older runs are reconciled
    waiting = await workflows.execute(flow, Order(order_id="r-1"))
    later = await workflows.execute(flow, Order(order_id="r-2"), delay=timedelta(seconds=4))
    await parked(waiting)
    created = (await later.describe()).created_at

    async def old_enough() -> bool:
        return datetime.now(tz=UTC) > created + timedelta(seconds=2.2)

    await eventually(old_enough, what="both runs are older than the stall timeout")
    stats = await workflows.reconcile()
    assert stats.scanned >= 2
    assert stats.reconciled == 0
    assert await later.status() is WorkflowStatus.PENDING
    assert (await later.describe()).starts_at is not None
    assert (await waiting.describe()).waits["payment"].state == "waiting"
    assert ran == ["reserve", "notify"]
    assert await later.cancel()
    await eventually(
        lambda: _is(later, WorkflowStatus.CANCELLED), what="cancelled before it started"
    )
