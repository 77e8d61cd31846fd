"""The key schema of ``_core/keys.py`` is complete: its tables, its data and what Redis holds agree.

The scenarios sample every key under the test's prefix while they run (keys such as
``running`` or ``retry:<group>`` live for a few hundred milliseconds only), then check that each
key matches a documented pattern with its documented type, and that each pattern the scenario
should produce was seen.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider
from plait.providers.redis._core import keys
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import (
    SCHEMA,
    EventKeys,
    KeyPattern,
    ScheduleKeys,
    WorkflowKeys,
    event_registry,
    instances,
    pattern_of,
    reconcile_lock,
    schema_version,
    workflow_registry,
)
from plait.workflows import (
    NonRetryableError,
    RetryPolicy,
    Step,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowError,
    WorkflowStepError,
    WorkflowTimeoutError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SLOW_RETRY = RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=300))
"""A backoff long enough for the sampler to see the keys that hold a retry."""
ROW = re.compile(r"^    (<prefix>\S*)\s+(\S+)", re.MULTILINE)
"""A row of the docstring's tables: the key pattern and its type."""


class Item(BaseModel):
    n: int


class Price(BaseModel):
    cents: int


def documented(*starts: str) -> dict[str, set[str]]:
    """The documented keys (not channels) whose pattern starts with one of ``starts`` -> type."""
    return {
        row.template: {row.type}
        for row in SCHEMA
        if row.type != "channel" and row.template.startswith(starts)
    }


def classify(seen: dict[str, str], prefix: str) -> dict[str, set[str]]:
    """The documented pattern of each key seen -> the types its keys had (or the key itself,
    when no pattern documents it)."""
    found: dict[str, set[str]] = {}
    for key, kind in seen.items():
        pattern = pattern_of(key, prefix)
        name = pattern.template if pattern is not None else f"undocumented: {key}"
        found.setdefault(name, set()).add(kind)
    return found


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    """A plain client on the test's store; it keeps an embedded server alive for the test."""
    connection = connect(url, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


@asynccontextmanager
async def sampled_keys(store: Any, prefix: str) -> AsyncIterator[dict[str, str]]:
    """Every key that exists under ``prefix`` at some moment of the block -> its Redis type
    (sampled every 10 ms, and once more at the end)."""
    seen: dict[str, str] = {}

    async def sample() -> None:
        async for raw in store.scan_iter(match=f"{prefix}:*", count=1000):
            key = raw.decode()
            if key not in seen:
                kind = (await store.type(key)).decode()
                if kind != "none":  # gone since the scan
                    seen[key] = kind

    async def sample_forever() -> None:
        while True:
            await sample()
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample_forever)
        yield seen
        tg.cancel_scope.cancel()
    await sample()


def test_the_docstring_tables_list_exactly_the_schema_data() -> None:
    documented = [KeyPattern(template, kind) for template, kind in ROW.findall(keys.__doc__ or "")]

    assert documented == list(SCHEMA)
    assert {row.type for row in SCHEMA} == {"stream", "zset", "hash", "string", "channel"}


def test_the_key_builders_build_every_documented_key_and_channel() -> None:
    built: dict[str, str] = {
        instances("p"): "instances",
        reconcile_lock("p"): "reconcile_lock",
        schema_version("p"): "schema_version",
        workflow_registry("p"): "workflow_registry",
        event_registry("p"): "event_registry",
    }
    for names in (WorkflowKeys("p", "wf"), EventKeys("p", "ev"), ScheduleKeys("p", "workflows")):
        for name, member in inspect.getmembers(type(names)):
            if name.startswith("_") or name in ("base", "prefix", "workflow", "event", "kind"):
                continue
            if isinstance(member, property):
                key = getattr(names, name)
            else:  # as many "x" as the builder takes names
                key = member(names, *["x"] * (len(inspect.signature(member).parameters) - 1))
            built[key] = name

    patterns = {key: pattern_of(key, "p") for key in built}

    assert {key: pattern is not None for key, pattern in patterns.items()} == dict.fromkeys(
        built, True
    )
    channels = {
        built[key] for key, pattern in patterns.items() if pattern and pattern.type == "channel"
    }
    assert channels == {name for name in built.values() if name.endswith("_channel")}
    assert {pattern.template for pattern in patterns.values() if pattern} == {
        row.template for row in SCHEMA
    }


def test_a_key_belongs_to_its_most_specific_pattern() -> None:
    workflow, event = WorkflowKeys("p", "wf"), EventKeys("p", "ev")
    expected = {
        workflow.run("wf.1"): "<prefix>:{<wf>}:run:<id>",
        workflow.results("wf.1"): "<prefix>:{<wf>}:run:<id>:results",
        workflow.events("wf.1"): "<prefix>:{<wf>}:run:<id>:events",
        workflow.idempotency("run:x"): "<prefix>:{<wf>}:idem:<key>",
        event.delayed_data: "<prefix>:ev:{<event>}:delayed:data",
        event.retry("g"): "<prefix>:ev:{<event>}:retry:<group>",
        "p:{wf}:unknown": None,
        "q:{wf}:jobs": None,
    }
    found = {key: getattr(pattern_of(key, "p"), "template", None) for key in expected}
    assert found == expected


saga = (
    Workflow("keys-saga", input=Item, concurrency=1)
    .step("reserve")
    .step(Step("charge", rate_limit=(10, timedelta(seconds=5)), retry=SLOW_RETRY))
)
late = Workflow("keys-late", input=Item, indexed_meta=("customer",)).step("wait")


def saga_consumer(log: list[str]) -> WorkflowConsumer[Item, None]:
    consumer: WorkflowConsumer[Item, None] = WorkflowConsumer(saga)

    @consumer.step("reserve")
    async def reserve(ctx: StepContext[Item]) -> str:
        await ctx.save_progress("holding")
        await anyio.sleep(0.3)  # holds the only running slot: the other run waits
        return f"R-{ctx.input.n}"

    @consumer.rollback("reserve")
    async def release(ctx: StepContext[Item]) -> None:
        log.append(f"release {ctx.input.n}")

    @consumer.step("charge")
    async def charge(ctx: StepContext[Item]) -> None:
        raise RuntimeError(f"card declined ({ctx.attempt})")

    @consumer.on_error
    async def failed(ctx: WorkflowContext[Item], error: WorkflowError) -> None:
        log.append(f"on_error {ctx.input.n}")

    return consumer


def late_consumer() -> WorkflowConsumer[Item, None]:
    consumer: WorkflowConsumer[Item, None] = WorkflowConsumer(late)

    @consumer.step("wait")
    async def wait(ctx: StepContext[Item]) -> None:
        await anyio.sleep(5)

    return consumer


async def test_every_key_a_workflow_writes_is_documented(
    open_provider: OpenProvider, prefix: str, store: Any
) -> None:
    log: list[str] = []
    async with sampled_keys(store, prefix) as seen:
        workflows = await open_provider(
            saga_consumer(log), late_consumer(), reconcile_interval=timedelta(milliseconds=200)
        )
        await store.xadd(WorkflowKeys(prefix, saga.name).jobs, {"garbage": "yes"})
        first = await workflows.execute(
            saga, Item(n=1), idempotency_key="order-1", timeout=timedelta(seconds=30)
        )
        second = await workflows.execute(saga, Item(n=2))
        timed_out = await workflows.execute(
            late, Item(n=3), timeout=timedelta(milliseconds=300), meta={"customer": "c-3"}
        )
        # two runs of one concurrency key: the second waits for the first's slot
        keyed = [
            await workflows.execute(
                late, Item(n=n), concurrency_key="k", timeout=timedelta(seconds=1)
            )
            for n in (4, 5)
        ]
        for handle in (first, second):
            with pytest.raises(WorkflowStepError):
                await handle.result(timeout=20)
        # a debounced execute: its burst's key lives while the run waits
        debounced = await workflows.execute(
            late,
            Item(n=6),
            debounce=timedelta(milliseconds=100),
            debounce_key="d",
            timeout=timedelta(seconds=1),
        )
        for handle in (timed_out, *keyed, debounced):
            with pytest.raises(WorkflowTimeoutError):
                await handle.result(timeout=20)
        watched = [event.kind async for event in first.watch()]
        attached = await workflows.execute(saga, Item(n=1), idempotency_key="order-1")

        async def locked_once() -> bool:  # the lock lives 180 ms: wait until a sample saw it
            return reconcile_lock(prefix) in seen

        await eventually(locked_once, what="the reconciler lock sampled")

    assert classify(seen, prefix) == documented(
        "<prefix>:{",
        "<prefix>:instances",
        "<prefix>:reconcile:lock",
        "<prefix>:schema",
        "<prefix>:workflows",
    )
    assert sorted(log) == ["on_error 1", "on_error 2", "release 1", "release 2"]
    assert (watched[0], watched[-1]) == ("run.started", "finished")
    assert (attached.run_id, attached.created) == (first.run_id, False)


notice = Event("keys.notice", data=Item)
quote = Event("keys.quote", data=Item, result=Price)


async def test_every_key_an_event_provider_writes_is_documented(
    url: str, prefix: str, store: Any
) -> None:
    handled: list[tuple[int, int]] = []
    options: dict[str, Any] = {"prefix": prefix, "retry": SLOW_RETRY}
    options["shutdown_timeout"] = timedelta(seconds=1)
    async with (
        sampled_keys(store, prefix) as seen,
        RedisEventProvider.from_url(url, group="billing", **options) as billing,
        RedisEventProvider.from_url(url, group="api", **options) as api,
    ):

        @billing.on(notice)
        async def note(ctx: EventContext[Item]) -> None:
            if ctx.data.n == 1 and ctx.attempt == 1:
                raise RuntimeError("not yet")
            if ctx.data.n == 2:
                raise NonRetryableError("never")
            handled.append((ctx.data.n, ctx.attempt))

        @billing.on(quote)
        async def price(ctx: EventContext[Item]) -> Price:
            return Price(cents=ctx.data.n * 100)

        await billing.ready()
        dead = EventKeys(prefix, notice.name).dead
        await api.emit(notice, Item(n=1))
        await api.emit(notice, Item(n=2))
        await api.emit(notice, Item(n=3), idempotency_key="once")
        await api.emit(notice, Item(n=3), idempotency_key="once")
        await api.emit(notice, Item(n=4), delay=timedelta(seconds=1))
        # The delayed event's data lives until it is promoted: look at it now rather than
        # count on a sample to fall inside that second on a loaded machine.
        delayed = EventKeys(prefix, notice.name).delayed_data
        seen.setdefault(delayed, (await store.type(delayed)).decode())
        answer = await api.request(quote, Item(n=5), timeout=timedelta(seconds=10))

        async def settled() -> bool:
            return len(handled) >= 3 and bool(await store.xlen(dead))

        await eventually(settled, timeout=20, what="events handled and one dead-lettered")

    assert classify(seen, prefix) == documented(
        "<prefix>:ev:{", "<prefix>:instances", "<prefix>:schema", "<prefix>:events"
    )
    assert sorted(handled) == [(1, 2), (3, 1), (4, 1)]
    assert answer == Price(cents=500)
