"""OpenTelemetry spans and metrics of both providers, on injected or global providers.

``execute`` and ``emit`` make PRODUCER spans; each step attempt, rollback, hook and event
delivery runs in a CONSUMER span whose parent is read from the job's ``traceparent`` (see
:mod:`.tracing`), so a trace crosses processes. A retried step is a new span linked to the
attempt before it. Attributes follow the OpenTelemetry messaging conventions (system
``redis``). The library never sets a global provider; without an SDK no span is made and only
the ids travel in the meta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from importlib import metadata
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from plait.workflows._errors import describe_exception

from .tracing import parent_context, producer_context

try:
    VERSION = metadata.version("plait")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    VERSION = "0"

#: What the span helpers give when no SDK records spans: nothing is made, nothing is current.
_NO_SPAN: AbstractContextManager[Span] = nullcontext(trace.INVALID_SPAN)

#: Describes a CONSUMER span: its name and attributes (called only when spans are recorded).
Describe = Callable[[], tuple[str, Mapping[str, Any]]]


def span_link(traceparent: str | None) -> list[Link]:
    """A link to the span named by ``traceparent`` (a previous attempt), if it is valid."""
    if not traceparent:
        return []
    context = trace.get_current_span(parent_context({"traceparent": traceparent}))
    span_context = context.get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


class Telemetry:
    """Spans and instruments of one provider.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one).
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self._tracer_provider = tracer_provider
        self.tracer: trace.Tracer = trace.NoOpTracer()
        self.tracing = False
        """Whether spans are made (an SDK is configured); read once per job, nothing more."""
        self.find_tracer()
        meters = meter_provider or metrics.get_meter_provider()
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

    def find_tracer(self) -> None:
        """Take the tracer of the injected tracer provider, else of the global one as it is now.

        The providers call it when they start, so a provider built before the application set
        up OpenTelemetry traces all the same. Spans cost CPU even when nothing records them:
        without an SDK (the API's proxy or no-op provider), none is made.
        """
        tracers = self._tracer_provider or trace.get_tracer_provider()
        self.tracer = tracers.get_tracer("plait", VERSION)
        self.tracing = not isinstance(tracers, trace.ProxyTracerProvider | trace.NoOpTracerProvider)

    def watch_depth(self, source: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Report ``source()`` (workflow, depth) pairs through the queue depth gauge."""
        self._depth_sources.append(source)

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        for source in self._depth_sources:
            for workflow, depth in source():
                yield Observation(depth, {"plait.workflow": workflow})

    def producing(
        self, name: str, *, operation: str, destination: str, message_id: str
    ) -> AbstractContextManager[Span]:
        """A PRODUCER span, current while a run or event is written.

        Its parent is the active span, else the trace of the step or handler running here (see
        :func:`.tracing.producer_context`); an exception leaving it is recorded on it.

        Args:
            name: the span's name (``execute <workflow>``, ``<event> publish``).
            operation: ``messaging.operation.name`` (``execute``, ``publish``).
            destination: ``messaging.destination.name``, the workflow or event name.
            message_id: ``messaging.message.id``, the run or event id.
        """
        if not self.tracing:
            return _NO_SPAN
        return self.tracer.start_as_current_span(
            name,
            context=producer_context(),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "redis",
                "messaging.operation.type": "send",
                "messaging.operation.name": operation,
                "messaging.destination.name": destination,
                "messaging.message.id": message_id,
            },
        )

    def consuming(
        self, describe: Describe, meta: Mapping[str, str], *, previous: str | None = None
    ) -> AbstractContextManager[Span]:
        """A CONSUMER span parented to the job's producer, current while the handler runs.

        The caller records a failure on it with :func:`record_failure`.

        Args:
            describe: gives the span's name and its messaging and plait attributes (called
                only when spans are recorded).
            meta: the job's meta, carrying the producer's ``traceparent``.
            previous: the traceparent of the attempt this one retries, linked.
        """
        if not self.tracing:
            return _NO_SPAN
        name, attributes = describe()
        span = self.tracer.start_span(
            name,
            context=parent_context(meta),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "redis", "messaging.operation.type": "process"}
            | dict(attributes),
            links=span_link(previous),
        )
        return trace.use_span(span, end_on_exit=True, record_exception=False)


def record_failure(span: Span, error: BaseException) -> None:
    """Mark ``span`` failed by ``error`` (also when ``str(error)`` raises: the exception event
    is ``record_exception``'s, built from :func:`describe_exception`)."""
    if not span.is_recording():
        return
    cause_type, message, stack = describe_exception(error)
    span.add_event(
        "exception",
        {"exception.type": cause_type, "exception.message": message, "exception.stacktrace": stack},
    )
    span.set_status(Status(StatusCode.ERROR, f"{cause_type}: {message}"))
