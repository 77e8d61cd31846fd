"""Trace context: the W3C and correlation ids every run, step job and event carries in its meta.

Each run and event carries ``traceparent`` (W3C) and ``correlation_id`` in its meta, whether or
not an OpenTelemetry SDK records spans. Inside a step or handler, :data:`current_meta` holds the
meta of the job being run, so runs started and events emitted from there continue its trace and
correlation. The spans made from these ids are in :mod:`.telemetry`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()

current_meta: ContextVar[Mapping[str, str] | None] = ContextVar("plait_meta", default=None)
"""The meta of the step or handler running in this context, if any."""


def new_traceparent() -> str:
    """A fresh W3C traceparent (sampled)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of ``span``, or None for a non-recording, invalid span."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_context(meta: Mapping[str, str]) -> Context:
    """The trace context carried by a job's meta (``traceparent``, ``tracestate``)."""
    carrier = {key: meta[key] for key in ("traceparent", "tracestate") if meta.get(key)}
    return _PROPAGATOR.extract(carrier)


def producer_context() -> Context | None:
    """The context a new run or event is produced in.

    The active span when there is one (None: the current context), else the trace of the step
    or handler running here, so a run or event started in a job that no span records still
    joins that job's trace.
    """
    if trace.get_current_span().get_span_context().is_valid:
        return None
    parent = current_meta.get() or {}
    return parent_context(parent) if parent.get("traceparent") else None


def outgoing_meta(user_meta: Mapping[str, str] | None, *, correlation_id: str) -> dict[str, str]:
    """The meta of a new run or event: the caller's meta plus trace and correlation ids.

    The trace continues the active OpenTelemetry span, else the running step's trace, else
    starts a new one; the correlation id is the caller's, else the running step's, else
    ``correlation_id``. The causation id (unless the caller gives one) is what runs here:
    inside a step the run id, inside an event handler the event id.
    """
    parent = current_meta.get() or {}
    meta = {str(k): str(v) for k, v in (user_meta or {}).items()}
    meta["traceparent"] = (
        traceparent_of(trace.get_current_span())
        or parent.get("traceparent")
        or meta.get("traceparent")
        or ""
    ) or new_traceparent()
    meta["correlation_id"] = (
        meta.get("correlation_id") or parent.get("correlation_id") or correlation_id
    )
    cause = parent.get("run_id") or parent.get("event_id")
    if cause:
        meta.setdefault("causation_id", cause)
    return meta


def handler_meta(meta: Mapping[str, str], event_id: str) -> dict[str, str]:
    """What :data:`current_meta` holds while a handler of event ``event_id`` runs.

    The event's meta and its id, without a ``run_id`` the emitter may have put in its meta:
    that must not pass for a running step (see :func:`outgoing_meta`).
    """
    running = {**meta, "event_id": event_id}
    running.pop("run_id", None)
    return running
