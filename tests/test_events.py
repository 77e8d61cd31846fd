"""The event provider's contract, on ``memory://`` and on the real Redis."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import only_provider_keys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from plait.events import (
    Event,
    EventContext,
    EventHandlerError,
    EventTimeoutError,
    InvalidEventError,
)
from plait.providers.redis import RedisEventProvider
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import EventKeys
from plait.providers.redis._core.tracing import current_meta
from plait.workflows import NonRetryableError, ProviderUnavailableError, RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAST_RETRY = RetryPolicy(
    max_attempts=3, initial_interval=timedelta(milliseconds=20), max_interval=timedelta(seconds=1)
)


class OrderPlaced(BaseModel):
    order_id: str
    amount_cents: int = 0


class QuoteRequest(BaseModel):
    sku: str


class Quote(BaseModel):
    sku: str
    price_cents: int


order_placed = Event("order.placed", data=OrderPlaced)
invoice_sent = Event("invoice.sent", data=OrderPlaced)
quote = Event("price.quote", data=QuoteRequest, result=Quote)


def provider(url: str, prefix: str, group: str, **options: Any) -> RedisEventProvider:
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("shutdown_timeout", timedelta(seconds=1))
    return RedisEventProvider.from_url(url, group=group, prefix=prefix, **options)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    """A plain client on the test's store; it keeps an embedded server alive for the test."""
    connection = connect(url, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
) -> None:
    """Poll ``condition`` (sync or async) until it holds; fail after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.01)


async def _at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum


async def _none_pending(store: Any, stream: str, group: str) -> bool:
    return int((await store.xpending(stream, group))["pending"]) == 0


async def dead_letters(store: Any, event: Event[Any, Any], prefix: str) -> list[dict[str, str]]:
    entries = await store.xrange(EventKeys(prefix, event.name).dead)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def test_every_group_receives_every_event(url: str, prefix: str) -> None:
    seen: dict[str, list[str]] = {"billing": [], "shipping": []}
    async with (
        provider(url, prefix, "billing") as billing,
        provider(url, prefix, "shipping") as shipping,
    ):

        @billing.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            seen["billing"].append(ctx.data.order_id)

        @shipping.on(order_placed)
        async def ship(ctx: EventContext[OrderPlaced]) -> None:
            seen["shipping"].append(ctx.data.order_id)

        await billing.ready()
        await shipping.ready()
        for n in range(5):
            await billing.emit(order_placed, OrderPlaced(order_id=str(n)))
        await wait_until(lambda: len(seen["billing"]) == 5 and len(seen["shipping"]) == 5)
    assert sorted(seen["billing"]) == sorted(seen["shipping"]) == [str(n) for n in range(5)]


async def test_instances_of_one_group_share_its_events(url: str, prefix: str, store: Any) -> None:
    handled: list[tuple[str, str]] = []
    first, second = provider(url, prefix, "billing"), provider(url, prefix, "billing")
    for instance in (first, second):

        async def bill(ctx: EventContext[OrderPlaced], name: str = instance.provider_id) -> None:
            await anyio.sleep(0.002)
            handled.append((name, ctx.data.order_id))

        instance.on(order_placed, bill)
    async with first, second:
        for n in range(40):
            await first.emit(order_placed, {"order_id": str(n)})
        await wait_until(lambda: len(handled) >= 40)
        pending = await store.xpending(EventKeys(prefix, order_placed.name).stream, "billing")
    assert pending["pending"] == 0
    assert sorted(order for _, order in handled) == sorted(str(n) for n in range(40))


async def test_a_failing_handler_is_retried_until_it_succeeds(
    url: str, prefix: str, store: Any
) -> None:
    attempts: list[int] = []
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def flaky(ctx: EventContext[OrderPlaced]) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise RuntimeError("try again")

        await events.ready()
        await events.emit(order_placed, {"order_id": "1"})
        await wait_until(lambda: attempts == [1, 2, 3])
        keys = EventKeys(prefix, order_placed.name)

        async def settled() -> bool:
            pending = await store.xpending(keys.stream, "billing")
            return pending["pending"] == 0 and not await store.exists(keys.attempts("billing"))

        await wait_until(settled)
    assert await dead_letters(store, order_placed, prefix) == []


async def test_exhausted_retries_dead_letter_only_in_the_failing_group(
    url: str, prefix: str, store: Any
) -> None:
    failing: list[int] = []
    healthy: list[int] = []
    retry = RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=20))
    async with (
        provider(url, prefix, "billing", retry=retry) as billing,
        provider(url, prefix, "shipping", retry=retry) as shipping,
    ):

        @billing.on(order_placed)
        async def broken(ctx: EventContext[OrderPlaced]) -> None:
            failing.append(ctx.attempt)
            raise RuntimeError("card declined")

        @shipping.on(order_placed)
        async def ship(ctx: EventContext[OrderPlaced]) -> None:
            healthy.append(ctx.attempt)

        await billing.ready()
        await shipping.ready()
        event_id = await billing.emit(order_placed, {"order_id": "7"})
        keys = EventKeys(prefix, order_placed.name)
        await wait_until(lambda: _at_least(store.xlen(keys.dead), 1))
        billing_pending = await store.xpending(keys.stream, "billing")
        shipping_pending = await store.xpending(keys.stream, "shipping")
        shipping_retries = await store.zcard(keys.retry("shipping"))
    [dead] = await dead_letters(store, order_placed, prefix)
    assert failing == [1, 2]
    assert healthy == [1]
    assert (billing_pending["pending"], shipping_pending["pending"], shipping_retries) == (0, 0, 0)
    assert dead["group"] == "billing"
    assert dead["reason"] == "attempts exhausted"
    assert dead["attempts"] == "2"
    error = json.loads(dead["error"])
    assert (error["type"], error["message"]) == ("RuntimeError", "card declined")
    assert json.loads(json.loads(dead["fields"])["data"]) == {"order_id": "7", "amount_cents": 0}
    assert json.loads(dead["fields"])["id"] == event_id


async def test_a_non_retryable_error_dead_letters_at_once(
    url: str, prefix: str, store: Any
) -> None:
    attempts: list[int] = []
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def refuse(ctx: EventContext[OrderPlaced]) -> None:
            attempts.append(ctx.attempt)
            raise NonRetryableError("unknown customer")

        await events.ready()
        await events.emit(order_placed, {"order_id": "1"})
        keys = EventKeys(prefix, order_placed.name)
        await wait_until(lambda: _at_least(store.xlen(keys.dead), 1))
    [dead] = await dead_letters(store, order_placed, prefix)
    assert attempts == [1]
    assert dead["reason"] == "non-retryable error"


async def test_malformed_entries_are_dead_lettered_and_the_consumer_goes_on(
    url: str, prefix: str, store: Any
) -> None:
    handled: list[str] = []
    keys = EventKeys(prefix, order_placed.name)
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            handled.append(ctx.data.order_id)

        await events.ready()
        await store.xadd(keys.stream, {"garbage": "yes"})
        await store.xadd(keys.stream, {"id": "x", "data": "{not json", "meta": "{}"})
        await store.xadd(keys.stream, {"id": "y", "data": '{"order_id": 5}', "meta": "{}"})
        await store.xadd(keys.stream, {"id": "z", "data": b"\xff\xfe", "meta": "{}"})
        await events.emit(order_placed, {"order_id": "after"})
        await wait_until(lambda: handled == ["after"])
        await wait_until(lambda: _at_least(store.xlen(keys.dead), 4))
    reasons = [entry["reason"] for entry in await dead_letters(store, order_placed, prefix)]
    assert len(reasons) == 4
    assert all(reason.startswith("malformed entry: ") for reason in reasons)
    expected = ["lacks field(s) id, data, meta", "undecodable payload", "does not match", "UTF-8"]
    assert sorted(next(i for i, x in enumerate(expected) if x in r) for r in reasons) == [
        0,
        1,
        2,
        3,
    ]


async def test_invalid_data_raises_and_writes_nothing(url: str, prefix: str, store: Any) -> None:
    async with provider(url, prefix, "billing") as events:
        with pytest.raises(InvalidEventError, match=r"order\.placed"):
            await events.emit(order_placed, {"amount_cents": "lots"})
        with pytest.raises(InvalidEventError):
            await events.emit("order.placed", {"order_id": "1"})  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError):
            await events.request(quote, {"nope": 1}, timeout=timedelta(seconds=1))
        keys = [key async for key in store.scan_iter(match=f"{prefix}:*")]
    assert only_provider_keys(keys, prefix)


def test_event_definitions_are_validated_and_immutable() -> None:
    with pytest.raises(InvalidEventError):
        Event("bad name{x}", data=OrderPlaced)
    with pytest.raises(InvalidEventError):
        Event("ok", data=dict)  # type: ignore[type-var]
    with pytest.raises(AttributeError):
        order_placed.name = "other"
    assert repr(quote) == "Event('price.quote', data=QuoteRequest, result=Quote)"


async def test_an_idempotency_key_suppresses_duplicate_emits(
    url: str, prefix: str, store: Any
) -> None:
    handled: list[str] = []
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            handled.append(ctx.event_id)

        await events.ready()
        first = await events.emit(order_placed, {"order_id": "1"}, idempotency_key="o-1")
        second = await events.emit(order_placed, {"order_id": "1"}, idempotency_key="o-1")
        other = await events.emit(order_placed, {"order_id": "2"}, idempotency_key="o-2")
        await wait_until(lambda: len(handled) >= 2)
        length = await store.xlen(EventKeys(prefix, order_placed.name).stream)
    assert first == second != other
    assert sorted(handled) == sorted([first, other])
    assert length == 2


async def test_a_delayed_event_is_delivered_after_its_delay(url: str, prefix: str) -> None:
    handled: list[float] = []
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            handled.append(time.monotonic())

        await events.ready()
        emitted = time.monotonic()
        await events.emit(order_placed, {"order_id": "1"}, delay=timedelta(milliseconds=300))
        await wait_until(lambda: bool(handled))
    assert 0.29 <= handled[0] - emitted < 2.0


async def test_an_idempotency_key_outlives_the_delay_of_its_delayed_event(
    url: str, prefix: str, store: Any
) -> None:
    handled: list[tuple[str, str]] = []
    async with provider(url, prefix, "billing", retention=timedelta(milliseconds=200)) as events:

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            handled.append((ctx.event_id, ctx.data.order_id))

        await events.ready()
        delay = timedelta(milliseconds=600)
        emitted = time.monotonic()
        first = await events.emit(order_placed, {"order_id": "1"}, idempotency_key="k", delay=delay)
        await anyio.sleep(max(0.0, emitted + 0.4 - time.monotonic()))  # past the retention
        second = await events.emit(
            order_placed, {"order_id": "2"}, idempotency_key="k", delay=delay
        )
        await wait_until(lambda: bool(handled))
        waiting = await store.zcard(EventKeys(prefix, order_placed.name).delayed)
    assert second == first
    assert handled == [(first, "1")]
    assert waiting == 0  # nothing left to deliver


async def test_a_cancelled_delayed_event_is_never_delivered(
    url: str, prefix: str, store: Any
) -> None:
    handled: list[str] = []
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            handled.append(ctx.data.order_id)

        await events.ready()
        delay = timedelta(milliseconds=200)
        await events.emit(order_placed, {"order_id": "cancelled"}, idempotency_key="k", delay=delay)
        assert await events.cancel(order_placed, "k") is True
        assert await events.cancel(order_placed, "k") is False
        await events.emit(order_placed, {"order_id": "later"}, idempotency_key="k2", delay=delay)
        await wait_until(lambda: "later" in handled)
        waiting = await store.zcard(EventKeys(prefix, order_placed.name).delayed)
    assert handled == ["later"]
    assert waiting == 0


async def test_request_returns_the_first_groups_result(url: str, prefix: str) -> None:
    async with provider(url, prefix, "pricing") as pricing, provider(url, prefix, "api") as api:

        @pricing.on(quote)
        async def price(ctx: EventContext[QuoteRequest]) -> Quote:
            return Quote(sku=ctx.data.sku, price_cents=990)

        await pricing.ready()
        result = await api.request(quote, QuoteRequest(sku="A-1"), timeout=timedelta(seconds=5))
    assert result == Quote(sku="A-1", price_cents=990)


async def test_request_without_responder_times_out(url: str, prefix: str) -> None:
    async with provider(url, prefix, "api") as api:
        started = time.monotonic()
        with pytest.raises(EventTimeoutError) as caught:
            await api.request(quote, {"sku": "A-1"}, timeout=timedelta(milliseconds=300))
    assert 0.29 <= time.monotonic() - started < 3.0
    assert caught.value.event == "price.quote"


async def test_request_reports_a_handler_failure_after_its_retries(url: str, prefix: str) -> None:
    attempts: list[int] = []
    async with provider(url, prefix, "pricing") as pricing:

        @pricing.on(quote)
        async def price(ctx: EventContext[QuoteRequest]) -> Quote:
            attempts.append(ctx.attempt)
            raise LookupError(f"no price for {ctx.data.sku}")

        await pricing.ready()
        with pytest.raises(EventHandlerError) as caught:
            await pricing.request(quote, {"sku": "A-1"}, timeout=timedelta(seconds=5))
    assert attempts == [1, 2, 3]
    error = caught.value
    assert (error.group, error.attempt, error.cause_type) == ("pricing", 3, "LookupError")
    assert error.cause_message == "no price for A-1"
    assert "LookupError" in error.cause_traceback


async def test_a_result_that_does_not_match_fails_the_delivery(
    url: str, prefix: str, store: Any
) -> None:
    async with provider(url, prefix, "pricing") as pricing:

        @pricing.on(quote)
        async def price(ctx: EventContext[QuoteRequest]) -> dict[str, str]:
            return {"sku": ctx.data.sku}

        await pricing.ready()
        with pytest.raises(EventHandlerError) as caught:
            await pricing.request(quote, {"sku": "A-1"}, timeout=timedelta(seconds=5))
    assert caught.value.cause_type == "plait.InvalidResult"
    assert "does not validate as Quote" in caught.value.cause_message
    [dead] = await dead_letters(store, quote, prefix)
    assert dead["reason"] == "invalid result"


async def test_handlers_see_meta_and_emits_inside_them_carry_causation(
    url: str, prefix: str
) -> None:
    seen: dict[str, EventContext[OrderPlaced]] = {}
    async with provider(url, prefix, "billing") as events:

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            seen["placed"] = ctx
            await ctx.emit(invoice_sent, ctx.data)

        @events.on(invoice_sent)
        async def archive(ctx: EventContext[OrderPlaced]) -> None:
            seen["invoiced"] = ctx

        await events.ready()
        event_id = await events.emit(order_placed, {"order_id": "1"}, meta={"request_id": "r-1"})
        await wait_until(lambda: "invoiced" in seen)
    placed, invoiced = seen["placed"], seen["invoiced"]
    assert placed.event_id == event_id
    assert (placed.event, placed.group, placed.attempt) == ("order.placed", "billing", 1)
    assert placed.meta["request_id"] == "r-1"
    assert placed.meta["correlation_id"] == event_id
    assert "causation_id" not in placed.meta
    assert invoiced.meta["correlation_id"] == event_id
    assert invoiced.meta["causation_id"] == event_id
    assert invoiced.meta["traceparent"].split("-")[1] == placed.meta["traceparent"].split("-")[1]
    with pytest.raises(TypeError):
        placed.meta["x"] = "y"  # type: ignore[index]


async def test_an_emit_inside_a_workflow_step_carries_its_run(url: str, prefix: str) -> None:
    seen: list[EventContext[OrderPlaced]] = []
    traceparent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    async with provider(url, prefix, "billing") as events:
        events.on(order_placed, seen.append)
        await events.ready()
        token = current_meta.set(
            {"run_id": "place-order.1", "correlation_id": "c-9", "traceparent": traceparent}
        )
        try:
            await events.emit(order_placed, {"order_id": "1"})
        finally:
            current_meta.reset(token)
        await wait_until(lambda: bool(seen))
    meta = seen[0].meta
    assert (meta["correlation_id"], meta["causation_id"]) == ("c-9", "place-order.1")
    assert meta["traceparent"].split("-")[1] == "ab" * 16


async def test_sync_handlers_run_in_a_worker_thread(url: str, prefix: str) -> None:
    threads: list[int] = []
    metas: list[str | None] = []

    def bill(ctx: EventContext[OrderPlaced]) -> None:
        threads.append(threading.get_ident())
        current = current_meta.get()
        metas.append(current.get("event_id") if current else None)

    async with provider(url, prefix, "billing") as events:
        events.on(order_placed, bill)
        await events.ready()
        event_id = await events.emit(order_placed, {"order_id": "1"})
        await wait_until(lambda: bool(threads))
    assert threads[0] != threading.get_ident()
    assert metas == [event_id]


class Biller:
    """An event handler that is an object with an async ``__call__``."""

    def __init__(self, billed: list[str]) -> None:
        self.billed = billed

    async def __call__(self, ctx: EventContext[OrderPlaced]) -> None:
        self.billed.append(ctx.data.order_id)


async def bill_into(billed: list[str], ctx: EventContext[OrderPlaced]) -> None:
    billed.append(ctx.data.order_id)


@pytest.mark.parametrize("kind", ["partial of an async function", "object with async __call__"])
async def test_async_callables_are_awaited_on_the_event_loop(
    url: str, prefix: str, kind: str
) -> None:
    # Every worker thread is busy: only a handler awaited on the event loop can run.
    billed: list[str] = []
    handler = functools.partial(bill_into, billed) if kind.startswith("partial") else Biller(billed)
    limiter = anyio.to_thread.current_default_thread_limiter()
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    async with provider(url, prefix, "billing") as events:
        events.on(order_placed, handler)
        await events.ready()
        for borrower in borrowers:
            await limiter.acquire_on_behalf_of(borrower)
        try:
            await events.emit(order_placed, {"order_id": "1"})
            await wait_until(lambda: billed == ["1"], timeout=3)
        finally:
            for borrower in borrowers:
                limiter.release_on_behalf_of(borrower)
    assert billed == ["1"]


async def test_handlers_registered_after_start_get_events_once_ready(url: str, prefix: str) -> None:
    handled: list[str] = []
    async with provider(url, prefix, "billing") as events:
        await events.emit(order_placed, {"order_id": "before"})

        @events.on(order_placed)
        async def bill(ctx: EventContext[OrderPlaced]) -> None:
            handled.append(ctx.data.order_id)

        await events.ready()
        await events.emit(order_placed, {"order_id": "after"})
        await wait_until(lambda: bool(handled))
    assert handled == ["after"]


async def test_trimming_keeps_what_a_lagging_group_has_not_read(
    url: str, prefix: str, store: Any
) -> None:
    retention = timedelta(milliseconds=50)
    handled: list[str] = []
    keys = EventKeys(prefix, order_placed.name)
    lagging = provider(url, prefix, "audit", retention=retention)
    lagging.on(order_placed, lambda ctx: handled.append("audit"))
    async with lagging:
        pass  # creates the group, then the group lags
    async with provider(url, prefix, "billing", retention=retention) as events:
        events.on(order_placed, lambda ctx: handled.append("billing"))
        await events.ready()
        for n in range(5):
            await events.emit(order_placed, {"order_id": str(n)})
        await wait_until(lambda: handled.count("billing") == 5)
        await anyio.sleep(0.1)  # let the entries age past the retention
        assert await events.trim(order_placed) == 0
        assert await store.xlen(keys.stream) == 5
        async with provider(url, prefix, "audit", retention=retention) as audit:
            audit.on(order_placed, lambda ctx: handled.append("audit"))
            await wait_until(lambda: handled.count("audit") == 5)
            await wait_until(lambda: _none_pending(store, keys.stream, "audit"))
            removed = await events.trim(order_placed)
        left = await store.xlen(keys.stream)
    assert removed >= 4
    assert left <= 1


async def test_a_stalled_delivery_is_reclaimed_by_another_instance(
    url: str, prefix: str, store: Any
) -> None:
    attempts: list[tuple[str, int]] = []
    stall = timedelta(milliseconds=600)
    stuck = provider(url, prefix, "billing", stall_timeout=stall, shutdown_timeout=timedelta(0))

    @stuck.on(order_placed)
    async def hang(ctx: EventContext[OrderPlaced]) -> None:
        attempts.append(("stuck", ctx.attempt))
        await anyio.sleep_forever()

    async with stuck:
        await stuck.emit(order_placed, {"order_id": "1"})
        await wait_until(lambda: bool(attempts))
    async with provider(url, prefix, "billing", stall_timeout=stall) as rescuer:
        rescuer.on(order_placed, lambda ctx: attempts.append(("rescuer", ctx.attempt)))
        await wait_until(lambda: len(attempts) == 2)
    assert attempts == [("stuck", 1), ("rescuer", 2)]


async def test_an_idle_consumer_uses_almost_no_cpu(prefix: str) -> None:
    async with provider(f"memory://{prefix}", prefix, "billing") as events:
        events.on(order_placed, lambda ctx: None)
        events.on(quote, lambda ctx: None)
        await events.ready()
        await anyio.sleep(0.2)
        before = time.process_time()
        await anyio.sleep(1.0)
        spent = time.process_time() - before
    assert spent < 0.1


async def test_calls_fail_with_provider_unavailable_when_redis_is_down(prefix: str) -> None:
    events = RedisEventProvider.from_url(
        "redis://127.0.0.1:1/0",
        group="billing",
        prefix=prefix,
        connect_timeout=timedelta(milliseconds=300),
    )
    with pytest.raises(ProviderUnavailableError):
        await events.start()


async def test_emit_and_handler_spans_share_a_trace_with_an_sdk(url: str, prefix: str) -> None:
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[EventContext[OrderPlaced]] = []
    async with provider(url, prefix, "billing", tracer_provider=tracing) as events:
        events.on(order_placed, seen.append)
        await events.ready()
        await events.emit(order_placed, {"order_id": "1"})
        await wait_until(lambda: len(exporter.get_finished_spans()) == 2)
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    producer, consumer = spans[SpanKind.PRODUCER], spans[SpanKind.CONSUMER]
    assert (producer.name, consumer.name) == ("order.placed publish", "order.placed process")
    assert producer.context is not None and consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert seen[0].meta["traceparent"].split("-")[1] == f"{producer.context.trace_id:032x}"
