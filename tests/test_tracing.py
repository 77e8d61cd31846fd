"""One trace from the caller through every step, rollback and event; metrics; log fields."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps.definitions import chain
from conftest import REDIS_URL, OpenProvider, Spawn, eventually, ready
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.workflows import (
    NonRetryableError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    order_id: str


class Shipped(BaseModel):
    order_id: str


shipped = Event("order.shipped", data=Shipped)

traced = Workflow("traced", input=Order).step("a").parallel("b", "c").step("d")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traced_consumer() -> WorkflowConsumer[Order, Any]:
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(traced)
    consumer.step("a")(lambda ctx: "A")
    consumer.step("c")(lambda ctx: "C")

    @consumer.step("b")
    async def b(ctx: StepContext[Order]) -> str:
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        return "B"

    @consumer.step("d")
    async def d(ctx: StepContext[Order]) -> None:
        raise NonRetryableError("refused")

    for step in ("a", "b"):
        consumer.rollback(step)(lambda ctx: None)
    return consumer


def _name_attempt(span: ReadableSpan) -> tuple[str, Any]:
    return span.name, (span.attributes or {}).get("plait.attempt")


async def test_a_run_is_one_trace_of_producer_and_consumer_spans(
    open_provider: OpenProvider, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = spans
    await open_provider(traced_consumer(), tracer_provider=tracer_provider)
    caller = await open_provider(tracer_provider=tracer_provider)
    with tracer_provider.get_tracer("test").start_as_current_span("POST /orders") as request:
        handle = await caller.execute(traced, Order(order_id="o-1"))
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)

    finished = exporter.get_finished_spans()
    [producer] = [s for s in finished if s.kind is SpanKind.PRODUCER]
    consumers = [s for s in finished if s.kind is SpanKind.CONSUMER]
    assert producer.name == "execute traced"
    assert producer.parent is not None
    assert producer.parent.span_id == request.get_span_context().span_id
    assert (producer.attributes or {})["messaging.message.id"] == handle.run_id
    assert sorted(_name_attempt(s) for s in consumers) == [
        ("process traced a", 1),
        ("process traced b", 1),
        ("process traced b", 2),
        ("process traced c", 1),
        ("process traced d", 1),
        ("process traced rollback:a", 1),
        ("process traced rollback:b", 1),
    ]
    trace_id = request.get_span_context().trace_id
    for span in consumers:
        assert span.context is not None
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id == producer.context.span_id
        attributes = span.attributes or {}
        assert attributes["messaging.system"] == "redis"
        assert attributes["plait.run_id"] == handle.run_id
    failed = {_name_attempt(s): s for s in consumers if s.status.status_code is StatusCode.ERROR}
    assert sorted(failed) == [("process traced b", 1), ("process traced d", 1)]
    assert failed[("process traced b", 1)].events[0].name == "exception"
    [retry] = [s for s in consumers if _name_attempt(s) == ("process traced b", 2)]
    assert [link.context.span_id for link in retry.links] == [
        failed[("process traced b", 1)].context.span_id
    ]


async def test_metrics_count_runs_steps_and_retries(open_provider: OpenProvider) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    workflows = await open_provider(traced_consumer(), meter_provider=meters)
    handle = await workflows.execute(traced, Order(order_id="o-1"))
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)

    points: dict[tuple[str, str], float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    labels = sorted((point.attributes or {}).items())
                    label = ",".join(f"{k}={v!s}" for k, v in labels)
                    value = getattr(point, "value", None)
                    points[(metric.name, label)] = value if value is not None else point.count  # type: ignore[union-attr]
    meters.shutdown()

    assert points[("plait.runs.started", "plait.workflow=traced")] == 1
    assert points[("plait.runs.finished", "plait.status=FAILED,plait.workflow=traced")] == 1
    assert points[("plait.steps.retried", "plait.workflow=traced")] == 1
    durations = {label: count for (name, label), count in points.items() if "duration" in name}
    assert sum(durations.values()) == 7  # a, b twice, c, d, two rollbacks
    assert ("plait.queue.depth", "plait.workflow=traced") in points


async def test_an_event_emitted_in_a_step_continues_the_runs_trace(
    url: str, prefix: str, open_provider: OpenProvider, spans: tuple[TracerProvider, Any]
) -> None:
    tracer_provider, exporter = spans
    flow = Workflow("shipping", input=Order).step("ship")
    seen: list[EventContext[Shipped]] = []
    async with (
        RedisEventProvider.from_url(
            url, group="shop", prefix=prefix, tracer_provider=tracer_provider
        ) as shop,
        RedisEventProvider.from_url(
            url, group="mail", prefix=prefix, tracer_provider=tracer_provider
        ) as mail,
    ):

        @mail.on(shipped)
        async def notify(ctx: EventContext[Shipped]) -> None:
            seen.append(ctx)

        await mail.ready()
        consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

        @consumer.step("ship")
        async def ship(ctx: StepContext[Order]) -> None:
            await shop.emit(shipped, Shipped(order_id=ctx.input.order_id))

        workflows = await open_provider(consumer, tracer_provider=tracer_provider)
        handle = await workflows.execute(flow, Order(order_id="o-7"))
        await handle.result(timeout=10)

        async def delivered() -> bool:
            return len(seen) == 1

        await eventually(delivered, what="the event reached the other group")

    run_trace = (await handle.describe()).meta["traceparent"].split("-")[1]
    assert seen[0].meta["traceparent"].split("-")[1] == run_trace
    assert seen[0].meta["correlation_id"] == handle.run_id
    finished = exporter.get_finished_spans()
    [step] = [s for s in finished if s.name == "process shipping ship"]
    [publish] = [s for s in finished if s.kind is SpanKind.PRODUCER and "order.shipped" in s.name]
    [handled] = [s for s in finished if s.kind is SpanKind.CONSUMER and "order.shipped" in s.name]
    assert publish.parent is not None
    assert publish.parent.span_id == step.context.span_id
    assert handled.parent is not None
    assert handled.parent.span_id == publish.context.span_id
    assert {s.context.trace_id for s in (step, publish, handled)} == {int(run_trace, 16)}


async def test_a_run_started_in_an_untraced_step_joins_the_steps_trace(
    open_provider: OpenProvider, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    tracer_provider, exporter = spans
    parent = Workflow("untraced-parent", input=Order).step("start-child")
    child = Workflow("traced-child", input=Order)
    traced = await open_provider(tracer_provider=tracer_provider)
    parents: WorkflowConsumer[Order, Any] = WorkflowConsumer(parent)

    @parents.step("start-child")
    async def start_child(ctx: StepContext[Order]) -> str:
        handle = await traced.execute(child, ctx.input)
        return handle.run_id

    untraced = await open_provider(parents)  # no SDK: its steps make no spans
    handle = await untraced.execute(parent, Order(order_id="o"))
    await handle.result(timeout=10)

    _, trace_id, span_id, _ = (await handle.describe()).meta["traceparent"].split("-")
    [producer] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert producer.name == "execute traced-child"
    assert producer.context is not None and producer.parent is not None
    assert (f"{producer.context.trace_id:032x}", f"{producer.parent.span_id:016x}") == (
        trace_id,
        span_id,
    )


async def test_ids_propagate_without_an_sdk(
    url: str, prefix: str, open_provider: OpenProvider
) -> None:
    parent = Workflow("parent", input=Order).step("start-child")
    child = Workflow("child", input=Order).step("work")
    seen: dict[str, dict[str, str]] = {}
    parents: WorkflowConsumer[Order, Any] = WorkflowConsumer(parent)
    children: WorkflowConsumer[Order, Any] = WorkflowConsumer(child)
    workflows = await open_provider()

    @parents.step("start-child")
    async def start_child(ctx: StepContext[Order]) -> str:
        seen["parent"] = dict(ctx.meta)
        handle = await workflows.execute(child, ctx.input)
        return handle.run_id

    @children.step("work")
    def work(ctx: StepContext[Order]) -> None:
        seen["child"] = dict(ctx.meta)

    workflows.register(parents)
    workflows.register(children)
    handle = await workflows.execute(parent, Order(order_id="o"), meta={"tenant": "acme"})
    await handle.result(timeout=10)

    async def child_ran() -> bool:
        return "child" in seen

    await eventually(child_ran, what="the child run's step ran")
    assert seen["parent"]["traceparent"].split("-")[1] == seen["child"]["traceparent"].split("-")[1]
    assert seen["parent"]["tenant"] == "acme"
    assert seen["child"]["correlation_id"] == handle.run_id
    assert seen["child"]["causation_id"] == handle.run_id


async def test_step_log_records_carry_run_step_attempt_and_trace(
    open_provider: OpenProvider, caplog: pytest.LogCaptureFixture
) -> None:
    flow = Workflow("logged", input=Order).step("say")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("say")
    async def say(ctx: StepContext[Order]) -> None:
        ctx.log.info("hello from %s", ctx.step)

    workflows = await open_provider(consumer)
    with caplog.at_level(logging.INFO, logger="plait.workflows.step"):
        handle = await workflows.execute(flow, Order(order_id="o"))
        await handle.result(timeout=10)

    [record] = [r for r in caplog.records if r.getMessage() == "hello from say"]
    trace_id = (await handle.describe()).meta["traceparent"].split("-")[1]
    fields = {k: getattr(record, k) for k in ("run_id", "step", "attempt", "trace_id")}
    assert fields == {"run_id": handle.run_id, "step": "say", "attempt": 1, "trace_id": trace_id}


@pytest.mark.redis_only
@pytest.mark.parametrize("backend", ["redis"])
async def test_a_run_executed_here_and_run_by_a_worker_process_is_one_trace(
    backend: str,
    spawn: Spawn,
    prefix: str,
    tmp_path: Path,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    trace_file = tmp_path / "worker-spans.jsonl"
    spawn("traced", PLAIT_TRACE_FILE=str(trace_file))
    await ready(tmp_path, "traced")
    tracer_provider, exporter = spans
    async with RedisWorkflowProvider.from_url(
        REDIS_URL, prefix=prefix, tracer_provider=tracer_provider
    ) as caller:
        handle = await caller.execute(chain, {"n": 1})
        await handle.result(timeout=20)

    def worker_spans() -> list[dict[str, Any]]:
        if not trace_file.exists():
            return []
        lines = trace_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    async def all_exported() -> bool:
        return len(worker_spans()) >= 4

    await eventually(all_exported, what="the worker exported its step spans")
    [producer] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert producer.context is not None
    exported = worker_spans()
    assert sorted(span["name"] for span in exported) == [
        "process chain on_complete",
        "process chain s1",
        "process chain s2",
        "process chain s3",
    ]
    for span in exported:
        assert span["context"]["trace_id"] == f"0x{producer.context.trace_id:032x}"
        assert span["parent_id"] == f"0x{producer.context.span_id:016x}"
        assert span["kind"] == "SpanKind.CONSUMER"


async def test_a_run_started_in_an_event_handler_records_the_event_as_its_cause(
    url: str, prefix: str, open_provider: OpenProvider
) -> None:
    flow = Workflow("fulfil", input=Order)
    workflows = await open_provider()
    started: dict[str, str] = {}
    async with RedisEventProvider.from_url(url, group="shop", prefix=prefix) as shop:

        @shop.on(shipped)
        async def fulfil(ctx: EventContext[Shipped]) -> None:
            handle = await workflows.execute(flow, Order(order_id=ctx.data.order_id))
            started[ctx.event_id] = handle.run_id

        await shop.ready()
        # a run_id in the event's own meta is the emitter's business, not the cause
        event_id = await shop.emit(shipped, Shipped(order_id="o-8"), meta={"run_id": "other.1"})

        async def handled() -> bool:
            return event_id in started

        await eventually(handled, what="the handler started its run")

    meta = (await (await workflows.get_handle(started[event_id])).describe()).meta
    assert meta["causation_id"] == event_id
    assert meta["correlation_id"] == event_id
