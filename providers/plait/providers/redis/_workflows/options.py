"""The options of a workflow provider: one frozen record, read by everything the provider owns.

``RedisWorkflowProvider(redis, **options)`` and ``RedisWorkflowProvider.from_url(url, **options)``
take the fields of :class:`WorkflowProviderOptions` as keywords (typed by
:class:`WorkflowProviderKeywords`); the provider keeps the record as ``provider.options``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict

from plait.workflows import RetryPolicy

from .._core.codecs import PayloadCodec
from .._core.payload import DEFAULT_MAX_PAYLOAD


@dataclass(frozen=True, kw_only=True)
class WorkflowProviderOptions:
    """How a workflow provider runs; every field has a default."""

    prefix: str = "plait"
    """The first part of every key, so several applications can share a Redis."""
    provider_id: str | None = None
    """This instance's name in consumer groups and errors (default: host-pid-random)."""
    default_timeout: timedelta | None = None
    """The deadline of runs executed without ``timeout=`` (None: no deadline)."""
    stall_timeout: timedelta = timedelta(seconds=15)
    """How long a running step may go without a lease renewal before another instance
    reclaims it."""
    concurrency: int = 10
    """How many steps of each registered workflow run at once on this instance."""
    retention: timedelta = timedelta(days=1)
    """How long finished runs, their results and idempotency keys are kept."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """The retry policy of steps, hooks and rollbacks that declare none."""
    shutdown_timeout: timedelta = timedelta(seconds=10)
    """How long ``stop()`` waits for running steps."""
    connect_timeout: timedelta = timedelta(seconds=5)
    """How long callers wait for an unreachable Redis before ``ProviderUnavailableError``."""
    reconcile_interval: timedelta = timedelta(seconds=30)
    """How often the reconciler looks for runs that cannot advance by themselves (one
    instance at a time does a pass)."""
    missing_handler_grace: timedelta = timedelta(minutes=10)
    """How long a job whose step, rollback or hook no live instance has announced waits for
    one before it is dead-lettered and fails (``plait.UnknownJob``). Meanwhile an instance
    without the handler puts the job back (no attempt spent) and health reports "waiting for a
    consumer that can run" it: a rolling deploy that adds a step never fails a run."""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    """The largest payload stored, in bytes of its JSON before any ``codec`` (default 2 MiB):
    a larger input is refused
    with ``InvalidInputError`` before anything is written; a larger step or on_complete result
    or progress fails the attempt as ``plait.ResultNotSerializable``."""
    tracer_provider: Any = None
    """The OpenTelemetry tracer provider (default: the global one)."""
    meter_provider: Any = None
    """The OpenTelemetry meter provider (default: the global one)."""
    events: Any = None
    """An event provider (``RedisEventProvider``) that steps and hooks emit through with
    ``await ctx.emit(event, data)`` (None: ``ctx.emit`` raises ``RuntimeError``)."""
    codec: PayloadCodec | None = None
    """Encodes every payload before it reaches Redis and decodes it when read: encryption
    (``FernetCodec``), compression (``ZlibCodec``) or both (``CodecChain``); handlers and
    callers see the same values. Every instance of a prefix needs a codec that decodes what
    the others write (see docs/encryption.md). None: payloads are stored as JSON."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.max_payload_bytes < 1:
            raise ValueError("max_payload_bytes must be >= 1")
        if self.retry is None:  # an explicit ``retry=None`` means the default policy
            object.__setattr__(self, "retry", RetryPolicy())


class WorkflowProviderKeywords(TypedDict, total=False):
    """The keyword form of :class:`WorkflowProviderOptions` (``**options`` of the provider)."""

    prefix: str
    provider_id: str | None
    default_timeout: timedelta | None
    stall_timeout: timedelta
    concurrency: int
    retention: timedelta
    retry: RetryPolicy
    shutdown_timeout: timedelta
    connect_timeout: timedelta
    reconcile_interval: timedelta
    missing_handler_grace: timedelta
    max_payload_bytes: int
    tracer_provider: Any
    meter_provider: Any
    events: Any
    codec: PayloadCodec | None
