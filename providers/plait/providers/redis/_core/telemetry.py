"""OpenTelemetry spans and metrics of the providers, on injected or global providers.

``execute`` and ``emit`` make PRODUCER spans; each step attempt, rollback, hook and event
handler runs in a CONSUMER span whose parent is read from the job's ``traceparent``, so a trace
crosses processes. A retry is a new span linked to the attempt before it. Attributes follow the
OpenTelemetry messaging conventions (system ``redis``). The library never sets a global
provider; without an SDK every call here is a cheap no-op and ids still travel in the meta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()

try:
    VERSION = metadata.version("plait")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0"


def parent_context(meta: Mapping[str, str]) -> Context:
    """The trace context carried by a job's meta (``traceparent``, ``tracestate``)."""
    carrier = {key: meta[key] for key in ("traceparent", "tracestate") if meta.get(key)}
    return _PROPAGATOR.extract(carrier)


def span_link(traceparent: str | None) -> list[Link]:
    """A link to the span named by ``traceparent`` (a previous attempt), if it is valid."""
    if not traceparent:
        return []
    context = trace.get_current_span(parent_context({"traceparent": traceparent}))
    span_context = context.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of ``span``, or None for a non-recording, invalid span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


class Telemetry:
    """Spans and instruments of one provider.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one).
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        tracers = tracer_provider or trace.get_tracer_provider()
        meters = meter_provider or metrics.get_meter_provider()
        self.tracer = tracers.get_tracer("plait", VERSION)
        # Spans cost CPU even when nothing records them: without an SDK only ids travel.
        self.tracing = not isinstance(tracers, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        meter = meters.get_meter("plait", VERSION)
        self.runs_started = meter.create_counter(
            "plait.runs.started", unit="{run}", description="Runs created by execute()"
        )
        self.runs_finished = meter.create_counter(
            "plait.runs.finished",
            unit="{run}",
            description="Runs that ended, by status (COMPLETED, FAILED, TIMED_OUT, CANCELLED)",
        )
        self.step_duration = meter.create_histogram(
            "plait.step.duration", unit="s", description="Duration of step attempts, by outcome"
        )
        self.steps_retried = meter.create_counter(
            "plait.steps.retried", unit="{attempt}", description="Failed attempts retried"
        )
        self.steps_reclaimed = meter.create_counter(
            "plait.steps.reclaimed",
            unit="{attempt}",
            description="Attempts taken over from an instance that stopped renewing its lease",
        )
        self.fencing_rejections = meter.create_counter(
            "plait.fencing.rejections",
            unit="{write}",
            description="Writes refused because their attempt was superseded",
        )
        self.dead_letters = meter.create_counter(
            "plait.dead_letters",
            unit="{entry}",
            description="Entries moved to a dead-letter stream",
        )
        self.events_emitted = meter.create_counter(
            "plait.events.emitted", unit="{event}", description="Events emitted"
        )
        self.events_handled = meter.create_counter(
            "plait.events.handled", unit="{delivery}", description="Event deliveries, by outcome"
        )
        self._depth_sources: list[Callable[[], Iterable[tuple[str, int]]]] = []
        meter.create_observable_gauge(
            "plait.queue.depth",
            callbacks=[self._observe_depth],
            unit="{job}",
            description="Jobs waiting or running per workflow stream (lag + pending)",
        )

    def watch_depth(self, source: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Report ``source()`` (workflow, depth) pairs through the queue depth gauge."""
        self._depth_sources.append(source)

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        for source in self._depth_sources:
            for workflow, depth in source():
                yield Observation(depth, {"plait.workflow": workflow})

    @contextmanager
    def producing(self, operation: str, destination: str) -> Iterator[Span]:
        """A PRODUCER span, current while the message is written (its id set by the caller)."""
        if not self.tracing:
            yield trace.INVALID_SPAN
            return
        with self.tracer.start_as_current_span(
            f"{operation} {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.operation.name": operation,
                "messaging.destination.name": destination,
            },
        ) as span:
            yield span

    @contextmanager
    def consuming(
        self,
        describe: Callable[[], tuple[str, Mapping[str, Any]]],
        meta: Mapping[str, str],
        *,
        previous: str | None = None,
    ) -> Iterator[Span]:
        """A CONSUMER span parented to the job's producer, current while the handler runs.

        Args:
            describe: gives the span's name and its messaging and plait attributes (called
                only when spans are recorded).
            meta: the job's meta, carrying the producer's ``traceparent``.
            previous: the traceparent of the attempt this one retries, linked.
        """
        if not self.tracing:
            yield trace.INVALID_SPAN
            return
        name, attributes = describe()
        span = self.tracer.start_span(
            name,
            context=parent_context(meta),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "redis", "messaging.operation.type": "process"}
            | dict(attributes),
            links=span_link(previous),
        )
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            yield span


def record_failure(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed by ``error``."""
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
