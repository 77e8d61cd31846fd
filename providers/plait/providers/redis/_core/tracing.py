"""Trace and correlation ids carried by every run, step job and event.

Each run and event carries ``traceparent`` (W3C) and ``correlation_id`` in its meta. Inside a
step or handler, :data:`current_meta` holds the meta of the job being run, so runs started and
events emitted from there continue its trace and correlation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar

from opentelemetry import trace

current_meta: ContextVar[Mapping[str, str] | None] = ContextVar("plait_meta", default=None)
"""The meta of the step or handler running in this context, if any."""


def new_traceparent() -> str:
    """A fresh W3C traceparent (sampled)."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def _active_traceparent() -> str | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    flags = int(context.trace_flags)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"


def outgoing_meta(user_meta: Mapping[str, str] | None, *, correlation_id: str) -> dict[str, str]:
    """The meta of a new run or event: the caller's meta plus trace and correlation ids.

    The trace continues the active OpenTelemetry span, else the running step's trace, else
    starts a new one; the correlation id is the caller's, else the running step's, else
    ``correlation_id``.
    """
    parent = current_meta.get() or {}
    meta = {str(k): str(v) for k, v in (user_meta or {}).items()}
    meta["traceparent"] = (
        _active_traceparent() or parent.get("traceparent") or meta.get("traceparent") or ""
    ) or new_traceparent()
    meta["correlation_id"] = (
        meta.get("correlation_id") or parent.get("correlation_id") or correlation_id
    )
    if "run_id" in parent:
        meta.setdefault("causation_id", parent["run_id"])
    return meta
