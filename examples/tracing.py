"""One trace for a run that fails and is compensated, on the embedded ``memory://`` server.

    python examples/tracing.py

Spans go to the OpenTelemetry console exporter (one line each here) and, at the end, the
script prints them as a tree: the caller's request span, the PRODUCER span of ``execute``, and
a CONSUMER span for every step attempt and rollback, all in one trace. To send them to a
collector instead, use an OTLP exporter (see the README).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import RetryPolicy, StepContext, Workflow, WorkflowConsumer, WorkflowError


class Booking(BaseModel):
    trip_id: str


book_trip = Workflow("book-trip", input=Booking).step("flight").parallel("hotel", "car")

trips = WorkflowConsumer(book_trip)


@trips.step("flight")
async def flight(ctx: StepContext[Booking]) -> str:
    return "FL-1"


@trips.rollback("flight")
async def cancel_flight(ctx: StepContext[Booking]) -> None:
    ctx.log.info("flight %s cancelled", ctx.results["flight"])


@trips.step("hotel")
async def hotel(ctx: StepContext[Booking]) -> str:
    if ctx.attempt < 2:
        raise ConnectionError("hotel API timed out")  # retried once, then succeeds
    return "HT-1"


@trips.rollback("hotel")
async def cancel_hotel(ctx: StepContext[Booking]) -> None:
    pass


@trips.step("car")
async def car(ctx: StepContext[Booking]) -> str:
    raise ValueError("no cars left")  # fails for good: the run is compensated


def one_line(span: ReadableSpan) -> str:
    context = span.get_span_context()
    trace_id = f"{context.trace_id:032x}" if context else "?"
    return f"exported {span.kind.name:<8} {span.name:<32} trace {trace_id}\n"


def print_tree(spans: tuple[ReadableSpan, ...]) -> None:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent else None
        children.setdefault(parent, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        status = span.status.status_code.name
        attempt = int(str((span.attributes or {}).get("plait.attempt", 0)))
        links = f" (linked to attempt {attempt - 1})" if span.links and attempt else ""
        suffix = f" attempt {attempt}" if attempt else ""
        print(f"  {'    ' * depth}{span.name}{suffix}  [{span.kind.name} {status}]{links}")
        context = span.get_span_context()
        for child in children.get(context.span_id if context else None, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


async def main() -> None:
    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))

    async with RedisWorkflowProvider.from_url(
        "memory://",
        tracer_provider=tracer_provider,
        retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=20)),
    ) as workflows:
        workflows.register(trips)
        with tracer_provider.get_tracer("shop").start_as_current_span("POST /trips"):
            handle = await workflows.execute(book_trip, Booking(trip_id="t-1"))
        try:
            await handle.result(timeout=10)
        except WorkflowError as error:
            print(f"\nrun {handle.run_id} failed: {error}")
        info = await handle.describe()
        print(f"status {info.status}, trace id {info.meta['traceparent'].split('-')[1]}\n")

    print("span tree:")
    print_tree(memory.get_finished_spans())
    tracer_provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
