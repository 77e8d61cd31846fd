"""The options of an event provider: one frozen record, read by everything the provider owns.

``RedisEventProvider(redis, group=..., **options)`` and ``RedisEventProvider.from_url(url,
group=..., **options)`` take the fields of :class:`EventProviderOptions` as keywords (typed by
:class:`EventProviderKeywords`); the provider keeps the record as ``provider.options``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict

from plait.workflows import RetryPolicy

from .._core.codecs import PayloadCodec
from .._core.payload import DEFAULT_MAX_PAYLOAD


@dataclass(frozen=True, kw_only=True)
class EventProviderOptions:
    """How an event provider runs; every field but ``group`` has a default."""

    group: str
    """The default group of handlers registered with ``on()``."""
    prefix: str = "plait"
    """The start of every key."""
    provider_id: str | None = None
    """This instance's consumer name (default: host, pid and a random suffix)."""
    retention: timedelta = timedelta(days=1)
    """How long acknowledged events stay in a stream, and how long an idempotency key
    suppresses duplicate emits."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """The retry policy of handlers."""
    stall_timeout: timedelta = timedelta(seconds=15)
    """After this long without a lease renewal, another instance of the group takes over a
    delivery."""
    concurrency: int = 10
    """Handlers running at once on this instance."""
    shutdown_timeout: timedelta = timedelta(seconds=10)
    """How long ``stop()`` waits for running handlers."""
    connect_timeout: timedelta = timedelta(seconds=5)
    """How long calls wait for an unreachable Redis before ``EventProviderUnavailableError``."""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    """The largest event data stored, in bytes of its JSON before any ``codec`` (default
    2 MiB): larger data is
    refused with ``InvalidEventError`` before anything is written."""
    tracer_provider: Any = None
    """An OpenTelemetry tracer provider (default: the global one)."""
    meter_provider: Any = None
    """An OpenTelemetry meter provider (default: the global one)."""
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


class EventProviderKeywords(TypedDict, total=False):
    """The keyword form of :class:`EventProviderOptions` minus ``group`` (``**options``)."""

    prefix: str
    provider_id: str | None
    retention: timedelta
    retry: RetryPolicy
    stall_timeout: timedelta
    concurrency: int
    shutdown_timeout: timedelta
    connect_timeout: timedelta
    max_payload_bytes: int
    tracer_provider: Any
    meter_provider: Any
    codec: PayloadCodec | None
