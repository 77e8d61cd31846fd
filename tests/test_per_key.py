"""Per-key concurrency: at most N live runs per concurrency key across every instance."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import anyio
import pytest
from apps.definitions import Keyed, keyed
from conftest import REDIS_URL, OpenProvider, Spawn, ready
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import (
    ConcurrencyKeyBusyError,
    InvalidDefinitionError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Order(BaseModel):
    customer: str
    n: int


def per_customer(name: str, **options: Any) -> Workflow[Order, Any]:
    return Workflow(
        name, input=Order, concurrency_key=lambda order: order.customer, **options
    ).step("work")


Span = tuple[str, int, float, float]
"""(customer, n, start, end) of one run's step."""


def timed(
    definition: Workflow[Order, Any], spans: list[Span], *, hold: float = 0.02
) -> WorkflowConsumer[Order, Any]:
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(definition)

    @consumer.step("work")
    async def work(ctx: StepContext[Order]) -> int:
        start = anyio.current_time()
        await anyio.sleep(hold)
        spans.append((ctx.input.customer, ctx.input.n, start, anyio.current_time()))
        return ctx.input.n

    return consumer


def overlapping(spans: list[Span]) -> list[tuple[Span, Span]]:
    """Pairs of runs of one customer whose steps ran at the same time."""
    found = []
    for _, runs in itertools.groupby(sorted(spans), key=lambda span: span[0]):
        ordered = sorted(runs, key=lambda span: span[2])
        found += [(a, b) for a, b in itertools.pairwise(ordered) if b[2] < a[3]]
    return found


async def test_at_most_one_run_per_key_runs_at_once_across_two_instances(
    open_provider: OpenProvider,
) -> None:
    flow = per_customer("pk-one")
    spans: list[Span] = []
    one = await open_provider(timed(flow, spans))
    two = await open_provider(timed(flow, spans))

    handles = [
        await (one if n % 2 else two).execute(flow, Order(customer=f"c{n % 4}", n=n))
        for n in range(24)
    ]
    for handle in handles:
        await handle.result(timeout=30)

    assert len(spans) == 24
    assert overlapping(spans) == []


async def test_runs_of_one_key_start_in_the_order_they_were_executed(
    open_provider: OpenProvider,
) -> None:
    flow = per_customer("pk-order")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans))

    handles = [await workflows.execute(flow, Order(customer="c", n=n)) for n in range(8)]
    for handle in handles:
        await handle.result(timeout=30)

    assert [span[1] for span in sorted(spans, key=lambda span: span[2])] == list(range(8))


async def test_a_busy_key_does_not_hold_back_the_runs_of_another_key(
    open_provider: OpenProvider,
) -> None:
    flow = per_customer("pk-fair")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans, hold=0.2))

    busy = [await workflows.execute(flow, Order(customer="busy", n=n)) for n in range(6)]
    other = await workflows.execute(flow, Order(customer="other", n=99))
    await other.result(timeout=10)

    # "other" finished while "busy" still has most of its runs waiting
    assert sum(1 for span in spans if span[0] == "busy") <= 2
    for handle in busy:
        await handle.result(timeout=30)


async def test_per_key_limit_lets_that_many_runs_of_a_key_run_at_once(
    open_provider: OpenProvider,
) -> None:
    flow = per_customer("pk-two", per_key_limit=2)
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans, hold=0.1))

    handles = [await workflows.execute(flow, Order(customer="c", n=n)) for n in range(6)]
    for handle in handles:
        await handle.result(timeout=30)
    moments = sorted([(span[2], 1) for span in spans] + [(span[3], -1) for span in spans])
    running = list(itertools.accumulate(step for _, step in moments))

    assert max(running) == 2


async def test_reject_new_raises_a_typed_error_and_writes_nothing(
    open_provider: OpenProvider, prefix: str
) -> None:
    flow = per_customer("pk-reject", per_key_strategy="reject_new")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans, hold=0.3))
    first = await workflows.execute(flow, Order(customer="c", n=1))

    with pytest.raises(ConcurrencyKeyBusyError) as raised:
        await workflows.execute(flow, Order(customer="c", n=2))
    other_key = await workflows.execute(flow, Order(customer="d", n=3))
    runs = await workflows._connection.client.zcard(WorkflowKeys(prefix, flow.name).runs)
    await first.result(timeout=10)
    after = await workflows.execute(flow, Order(customer="c", n=4))

    assert (raised.value.key, raised.value.workflow) == ("c", "pk-reject")
    assert runs == 2
    await other_key.result(timeout=10)
    await after.result(timeout=10)
    assert sorted(span[1] for span in spans) == [1, 3, 4]


async def test_cancel_running_cancels_and_compensates_the_running_run(
    open_provider: OpenProvider,
) -> None:
    flow = (
        Workflow(
            "pk-replace",
            input=Order,
            concurrency_key=lambda order: order.customer,
            per_key_strategy="cancel_running",
        )
        .step("book")
        .step("wait")
    )
    undone: list[int] = []
    waiting = anyio.Event()
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("book")
    async def book(ctx: StepContext[Order]) -> int:
        return ctx.input.n

    @consumer.rollback("book")
    async def unbook(ctx: StepContext[Order]) -> None:
        undone.append(ctx.input.n)

    @consumer.step("wait")
    async def wait(ctx: StepContext[Order]) -> int:
        if ctx.input.n == 1:
            waiting.set()
            await anyio.sleep(3600)
        return ctx.input.n

    workflows = await open_provider(consumer)
    first = await workflows.execute(flow, Order(customer="c", n=1))
    with anyio.fail_after(10):
        await waiting.wait()  # the run holds its key, running its second step
    second = await workflows.execute(flow, Order(customer="c", n=2))

    assert await second.result(timeout=20) is None
    assert await first.status() is WorkflowStatus.CANCELLED
    assert undone == [1]


async def test_a_key_given_to_execute_limits_runs_of_a_workflow_without_one(
    open_provider: OpenProvider,
) -> None:
    flow = Workflow("pk-explicit", input=Order).step("work")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans))

    handles = [
        await workflows.execute(flow, Order(customer="any", n=n), concurrency_key="shared")
        for n in range(6)
    ]
    for handle in handles:
        await handle.result(timeout=30)
    ordered = sorted(spans, key=lambda span: span[2])

    assert [b[2] >= a[3] for a, b in itertools.pairwise(ordered)] == [True] * 5


async def test_a_waiting_run_cancelled_leaves_no_slot_taken(
    open_provider: OpenProvider, prefix: str
) -> None:
    flow = per_customer("pk-cancel-waiting")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans, hold=0.3))
    first = await workflows.execute(flow, Order(customer="c", n=1))
    waiting = await workflows.execute(flow, Order(customer="c", n=2))
    third = await workflows.execute(flow, Order(customer="c", n=3))

    assert await waiting.status() is WorkflowStatus.PENDING
    assert await waiting.cancel()
    await first.result(timeout=10)
    await third.result(timeout=10)
    keys = WorkflowKeys(prefix, flow.name)
    client = workflows._connection.client
    assert await client.zcard(keys.key_running("c")) == 0
    assert [span[1] for span in spans] == [1, 3]


def test_a_bad_per_key_option_is_refused_at_definition_time() -> None:
    for options in ({"per_key_limit": 0}, {"per_key_strategy": "sometimes"}):
        with pytest.raises(InvalidDefinitionError):
            per_customer("pk-bad", **options)


# -- three worker processes on the real Redis -----------------------------------------------


@pytest.mark.redis_only
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_hundred_runs_over_ten_keys_on_three_instances_never_overlap_per_key(
    spawn: Spawn, tmp_path: Path, prefix: str, client: Any
) -> None:
    names = ("k1", "k2", "k3")
    for name in names:
        spawn(name, app="apps.per_key_app:provider")
    await ready(tmp_path, *names)
    try:
        async with (
            RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as one,
            RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as two,
            RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as three,
        ):
            callers = (one, two, three)
            handles = [
                await callers[n % 3].execute(keyed, Keyed(key=f"key-{n % 10}", n=n))
                for n in range(200)
            ]
            for handle in handles:
                await handle.result(timeout=60)
                assert await handle.status() is WorkflowStatus.COMPLETED
        raw = await client.hgetall(f"{prefix}:test:spans")
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
    spans: list[Span] = []
    for field, value in raw.items():
        _, key, _ = field.decode().split("|")
        start, end = (int(part) / 1e6 for part in value.decode().split(","))
        spans.append((key, 0, start, end))
    began = min(span[2] for span in spans)
    ended = max(span[3] for span in spans)
    first_start = {key: min(s[2] for s in spans if s[0] == key) for key in {s[0] for s in spans}}

    assert len(spans) == 200
    assert overlapping(spans) == []
    # every key got its first run going early: none waited behind the others
    assert max(first_start.values()) - began < (ended - began) / 4


async def test_a_slot_kept_by_a_run_that_ended_unseen_is_freed_by_the_next_execute(
    open_provider: OpenProvider, prefix: str
) -> None:
    flow = per_customer("pk-heal")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans))
    running = WorkflowKeys(prefix, flow.name).key_running("c")
    await workflows._connection.client.zadd(running, {f"{flow.name}.gone": 1})

    handle = await workflows.execute(flow, Order(customer="c", n=1))

    await handle.result(timeout=10)
    assert [span[1] for span in spans] == [1]


async def test_the_reconciler_leaves_a_run_waiting_for_its_key_waiting(
    open_provider: OpenProvider,
) -> None:
    flow = per_customer("pk-reconcile")
    spans: list[Span] = []
    workflows = await open_provider(timed(flow, spans, hold=1.0))
    first = await workflows.execute(flow, Order(customer="c", n=1))
    second = await workflows.execute(flow, Order(customer="c", n=2))

    workflows._reconciler._min_age_ms = -1000  # look at runs however young
    await workflows.reconcile()

    assert await second.status() is WorkflowStatus.PENDING
    await first.result(timeout=10)
    await second.result(timeout=10)
    assert overlapping(spans) == []
