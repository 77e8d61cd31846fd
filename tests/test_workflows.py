"""The workflow contract, on ``memory://`` and on a real Redis: order, results, errors, input."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually, keys_under, only_provider_keys
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import (
    InvalidDefinitionError,
    InvalidInputError,
    NonRetryableError,
    ProviderUnavailableError,
    RetryPolicy,
    RunNotFoundError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str
    amount_cents: int = 100


class Receipt(BaseModel):
    order_id: str
    total: int


diamond = Workflow("diamond", input=Order, output=Receipt).step("a").parallel("b", "c").step("d")


def diamond_consumer(log: list[str], *, fail_d: bool = False) -> WorkflowConsumer[Order, Receipt]:
    consumer: WorkflowConsumer[Order, Receipt] = WorkflowConsumer(diamond)

    @consumer.step("a")
    async def a(ctx: StepContext[Order]) -> dict[str, int]:
        log.append("a")
        return {"amount": ctx.input.amount_cents}

    @consumer.step("b")
    def b(ctx: StepContext[Order]) -> None:  # sync: runs in a thread
        log.append("b")

    @consumer.step("c")
    async def c(ctx: StepContext[Order]) -> int:
        log.append("c")
        return int(ctx.results["a"]["amount"]) * 2

    @consumer.step("d")
    async def d(ctx: StepContext[Order]) -> dict[str, Any]:
        log.append("d")
        if fail_d:
            raise ValueError(f"d cannot handle {ctx.input.order_id}")
        return {"seen": dict(ctx.results)}

    @consumer.on_complete
    async def done(ctx: WorkflowContext[Order]) -> Receipt:
        return Receipt(order_id=ctx.input.order_id, total=ctx.results["c"])

    return consumer


async def test_steps_run_in_order_with_parallel_groups(open_provider: OpenProvider) -> None:
    log: list[str] = []
    workflows = await open_provider(diamond_consumer(log))
    handle = await workflows.execute(diamond, Order(order_id="o-1", amount_cents=21))

    receipt = await handle.result(timeout=10)

    assert receipt == Receipt(order_id="o-1", total=42)
    assert log[0] == "a"
    assert sorted(log[1:3]) == ["b", "c"]
    assert log[3] == "d"
    info = await handle.describe()
    assert info.status is WorkflowStatus.COMPLETED
    assert info.completion_order[0] == "a"
    assert info.completion_order[-1] == "d"
    assert [name for name in info.steps] == ["a", "b", "c", "d", "on_complete"]


async def test_results_pass_between_steps_including_none(open_provider: OpenProvider) -> None:
    seen: dict[str, Any] = {}
    consumer = diamond_consumer([])

    @consumer.on_complete
    async def done(ctx: WorkflowContext[Order]) -> Receipt:
        seen.update(ctx.results)
        return Receipt(order_id=ctx.input.order_id, total=0)

    workflows = await open_provider(consumer)
    handle = await workflows.execute(diamond, {"order_id": "o-2", "amount_cents": 5})
    await handle.result(timeout=10)

    assert seen == {
        "a": {"amount": 5},
        "b": None,
        "c": 10,
        "d": {"seen": {"a": {"amount": 5}, "b": None, "c": 10}},
    }


async def test_a_workflow_without_on_complete_returns_none(open_provider: OpenProvider) -> None:
    flow = Workflow("plain", input=Order).step("only")
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)
    consumer.step("only")(lambda ctx: "ignored")
    workflows = await open_provider(consumer)

    handle = await workflows.execute(flow, Order(order_id="o"))

    assert await handle.result(timeout=10) is None
    assert await handle.status() is WorkflowStatus.COMPLETED


async def test_a_workflow_without_steps_runs_its_on_complete(open_provider: OpenProvider) -> None:
    flow = Workflow("hook-only", input=Order, output=Receipt)
    consumer: WorkflowConsumer[Order, Receipt] = WorkflowConsumer(flow)

    @consumer.on_complete
    def done(ctx: WorkflowContext[Order]) -> dict[str, Any]:
        return {"order_id": ctx.input.order_id, "total": 7}

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o"))

    assert await handle.result(timeout=10) == Receipt(order_id="o", total=7)


async def test_register_rejects_a_consumer_missing_handlers(open_provider: OpenProvider) -> None:
    workflows = await open_provider()
    incomplete: WorkflowConsumer[Order, Receipt] = WorkflowConsumer(diamond)
    incomplete.step("a")(lambda ctx: None)

    with pytest.raises(InvalidDefinitionError, match="no handler"):
        workflows.register(incomplete)
    with pytest.raises(InvalidDefinitionError, match="no on_complete"):
        workflows.register(WorkflowConsumer(Workflow("empty", input=Order)))


async def test_a_retried_step_succeeds_and_no_rollback_runs(open_provider: OpenProvider) -> None:
    flow = Workflow("flaky", input=Order).step("charge")
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)
    attempts: list[int] = []
    rollbacks: list[str] = []

    @consumer.step("charge")
    async def charge(ctx: StepContext[Order]) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("gateway busy")
        return "charged"

    consumer.rollback("charge")(lambda ctx: rollbacks.append("charge"))
    workflows = await open_provider(consumer)

    handle = await workflows.execute(flow, Order(order_id="o"))
    await handle.result(timeout=10)

    assert attempts == [1, 2, 3]
    assert rollbacks == []
    info = await handle.describe()
    assert info.steps["charge"].attempts == 3
    assert info.steps["charge"].state == "completed"


@pytest.mark.parametrize(
    "error", [NonRetryableError("card declined"), KeyError("listed as non-retryable")]
)
async def test_non_retryable_errors_fail_at_once(
    open_provider: OpenProvider, error: Exception
) -> None:
    policy = RetryPolicy(max_attempts=5, non_retryable=("builtins.KeyError",))
    flow = Workflow("declined", input=Order).step("charge", retry=policy)
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)
    attempts: list[int] = []

    @consumer.step("charge")
    async def charge(ctx: StepContext[Order]) -> None:
        attempts.append(ctx.attempt)
        raise error

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o"))

    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=10)
    assert attempts == [1]
    assert caught.value.step == "charge"
    assert caught.value.attempt == 1
    assert await handle.status() is WorkflowStatus.FAILED


async def test_a_remote_caller_gets_the_typed_step_error(open_provider: OpenProvider) -> None:
    await open_provider(diamond_consumer([], fail_d=True))
    emitter = await open_provider()  # registers nothing: emitter-only

    handle = await emitter.execute(diamond, Order(order_id="o-9"))

    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=10)
    error = caught.value
    assert (error.step, error.attempt, error.cause_type) == ("d", 3, "ValueError")
    assert error.cause_message == "d cannot handle o-9"
    assert "ValueError" in error.cause_traceback
    assert "d cannot handle o-9" in str(error)


async def test_result_wakes_on_another_instance_when_the_run_ends(
    open_provider: OpenProvider,
) -> None:
    gate = anyio.Event()
    flow = Workflow("gated", input=Order).step("wait")
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)

    @consumer.step("wait")
    async def wait(ctx: StepContext[Order]) -> None:
        await gate.wait()

    await open_provider(consumer)
    caller = await open_provider()
    handle = await caller.execute(flow, Order(order_id="o"))
    await eventually(lambda: _is(handle.status(), WorkflowStatus.RUNNING), what="the step started")

    async def release() -> None:
        gate.set()

    async with anyio.create_task_group() as tg:
        released = time.monotonic()
        tg.start_soon(release)
        await handle.result(timeout=10)
        woke_after = time.monotonic() - released
    # The fallback re-check runs every 5 s: waking well before it proves the notification.
    assert woke_after < 1.0


async def _is(status: Any, expected: WorkflowStatus) -> bool:
    return bool(await status == expected)


async def test_invalid_input_raises_and_writes_nothing(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider()

    with pytest.raises(InvalidInputError, match="amount_cents"):
        await workflows.execute(diamond, {"order_id": "o", "amount_cents": "lots"})
    with pytest.raises(InvalidInputError):
        await workflows.execute(diamond, {"order_id": "o"}, meta={"n": 1})  # type: ignore[dict-item]

    assert only_provider_keys(await keys_under(workflows, prefix), prefix)


async def test_a_result_that_is_not_json_fails_the_step_for_good(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("opaque", input=Order).step("make")
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)
    attempts: list[int] = []

    @consumer.step("make")
    async def make(ctx: StepContext[Order]) -> object:
        attempts.append(ctx.attempt)
        return object()

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o"))

    with pytest.raises(WorkflowStepError, match="not JSON-able") as caught:
        await handle.result(timeout=10)
    assert attempts == [1]
    assert caught.value.cause_type == "plait.ResultNotSerializable"


async def test_unknown_run_ids_raise_run_not_found(open_provider: OpenProvider) -> None:
    workflows = await open_provider()

    with pytest.raises(RunNotFoundError) as caught:
        await workflows.get_handle("diamond.0000000000000000000000000000")
    assert caught.value.run_id == "diamond.0000000000000000000000000000"
    with pytest.raises(RunNotFoundError):
        await workflows.get_handle("no-such-run")


async def test_get_handle_follows_a_run_from_another_instance(
    open_provider: OpenProvider,
) -> None:
    await open_provider(diamond_consumer([]))
    caller = await open_provider()
    other = await open_provider()
    handle = await caller.execute(diamond, Order(order_id="o-5", amount_cents=1))

    rebuilt = await other.get_handle(handle.run_id, diamond)

    assert rebuilt.created is False
    assert await rebuilt.result(timeout=10) == Receipt(order_id="o-5", total=2)
    untyped: WorkflowHandle[Any] = await other.get_handle(handle.run_id)
    assert await untyped.result(timeout=10) == {"order_id": "o-5", "total": 2}


async def test_a_malformed_entry_is_dead_lettered_and_work_goes_on(
    open_provider: OpenProvider, prefix: str
) -> None:
    log: list[str] = []
    workflows = await open_provider(diamond_consumer(log))
    client: Any = workflows._connection.client
    await client.xadd(f"{prefix}:{{diamond}}:jobs", {"garbage": "yes"})
    await client.xadd(f"{prefix}:{{diamond}}:jobs", {"r": "x", "j": "a", "t": "not-a-number"})

    handle = await workflows.execute(diamond, Order(order_id="o"))
    await handle.result(timeout=10)

    async def reasons() -> list[str]:  # dead-lettering runs beside the run's own work
        dead = await client.xrange(f"{prefix}:{{diamond}}:dead")
        return sorted(fields[b"reason"].decode() for _, fields in dead)

    async def both_dead_lettered() -> bool:
        return len(await reasons()) >= 2

    await eventually(both_dead_lettered, what="both entries dead-lettered")
    assert await reasons() == [
        "malformed entry: field b'r' missing",
        "malformed entry: token 'not-a-number' is not a number",
    ]


async def test_a_job_for_an_unknown_step_is_dead_lettered_and_fails_its_run(
    open_provider: OpenProvider, prefix: str
) -> None:
    old = Workflow("versioned", input=Order).step("legacy")
    new = Workflow("versioned", input=Order).step("current")
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(new)
    consumer.step("current")(lambda ctx: None)
    workflows = await open_provider(consumer)

    handle = await workflows.execute(old, Order(order_id="o"))

    with pytest.raises(WorkflowStepError, match="no handler for job 'legacy'"):
        await handle.result(timeout=10)
    client: Any = workflows._connection.client
    dead = await client.xrange(f"{prefix}:{{versioned}}:dead")
    assert [fields[b"reason"] for _, fields in dead] == [
        b"no handler for job 'legacy' of workflow 'versioned'"
    ]


async def test_two_instances_share_the_steps_of_many_runs(open_provider: OpenProvider) -> None:
    flow = Workflow("shared", input=Order).step("one").step("two")
    ran: dict[str, list[str]] = {"left": [], "right": []}

    def consumer_for(name: str) -> WorkflowConsumer[Order, None]:
        consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)

        async def step(ctx: StepContext[Order]) -> None:
            ran[name].append(f"{ctx.input.order_id}:{ctx.step}")
            await anyio.sleep(0.005)  # a little work so both instances get some

        consumer.step("one")(step)
        consumer.step("two")(step)
        return consumer

    await open_provider(consumer_for("left"), concurrency=4)
    await open_provider(consumer_for("right"), concurrency=4)
    caller = await open_provider()

    handles = [await caller.execute(flow, Order(order_id=str(i))) for i in range(60)]
    for handle in handles:
        await handle.result(timeout=20)

    everything = ran["left"] + ran["right"]
    assert sorted(everything) == sorted(f"{i}:{s}" for i in range(60) for s in ("one", "two"))
    assert ran["left"] and ran["right"]


async def test_sync_handlers_and_meta_reach_the_step(open_provider: OpenProvider) -> None:
    flow = Workflow("meta", input=Order).step("look")
    consumer: WorkflowConsumer[Order, None] = WorkflowConsumer(flow)
    seen: dict[str, Any] = {}

    @consumer.step("look")
    def look(ctx: StepContext[Order]) -> None:
        seen.update(meta=dict(ctx.meta), key=ctx.idempotency_key, token=ctx.fencing_token)

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Order(order_id="o"), meta={"request_id": "r-1"})
    await handle.result(timeout=10)

    meta = seen["meta"]
    assert meta["request_id"] == "r-1"
    assert meta["correlation_id"] == handle.run_id
    assert len(meta["traceparent"].split("-")) == 4
    assert seen["key"] == f"{handle.run_id}:look"
    assert seen["token"] >= 1


async def test_an_unreachable_redis_raises_provider_unavailable() -> None:
    provider = RedisWorkflowProvider.from_url(
        "redis://127.0.0.1:1/0", connect_timeout=timedelta(milliseconds=300)
    )
    with pytest.raises(ProviderUnavailableError):
        await provider.start()
    await provider.stop()
