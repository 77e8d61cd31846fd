"""Running one delivery: decode, call the group's handlers, record the outcome in Redis.

The outcome is one write: an acknowledgement (with the request's reply, kept and published),
a scheduled retry in the group's retry zset, or a dead letter. Writes are retried while Redis
is unreachable, never dropped; a delivery whose write could not be made stays pending and is
reclaimed later.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from plait.events import Event, EventContext, EventHandler, EventHandlerError
from plait.workflows import InvalidResultError, RetryPolicy

from .._core.calls import invoke
from .._core.codecs import PLAIN, Payloads
from .._core.keys import EventKeys
from .._core.retry import call_forever
from .._core.telemetry import Telemetry, record_failure
from .._core.tracing import current_meta, handler_meta
from .codec import (
    Decoded,
    Delivery,
    MalformedEntryError,
    check_result,
    decode_entry,
    failure_message,
    reply_message,
)
from .scripts import EventScripts

T = TypeVar("T")

logger = logging.getLogger("plait.redis.events")


@dataclass(eq=False)
class Subscription:
    """The handlers of one event in one group on this instance, and the entries it holds."""

    event: Event[Any, Any]
    group: str
    keys: EventKeys
    handlers: list[EventHandler] = field(default_factory=list)
    ready: anyio.Event = field(default_factory=anyio.Event)
    held: set[str] = field(default_factory=set)
    cursor: str = "0-0"


class DeliveryRunner:
    """Runs deliveries for one consumer and records their outcomes."""

    def __init__(
        self,
        scripts: EventScripts,
        telemetry: Telemetry,
        *,
        consumer: str,
        retry: RetryPolicy,
        emit: Callable[..., Awaitable[str]],
        retried: Callable[[], None],
        payloads: Payloads = PLAIN,
    ) -> None:
        self._payloads = payloads
        self._scripts = scripts
        self._consumer = consumer
        self._retry = retry
        self._emit = emit
        self._retried = retried
        self._telemetry = telemetry
        self.stopping = False

    async def run(self, sub: Subscription, delivery: Delivery) -> None:
        """Handle ``delivery`` of ``sub`` and record the outcome."""
        keys, group, consumer = sub.keys, sub.group, self._consumer
        try:
            decoded = decode_entry(sub.event, delivery.fields, self._payloads)
        except MalformedEntryError as error:
            logger.warning("dead-lettering entry %s of %s: %s", delivery.entry, keys.stream, error)
            reason = f"malformed entry: {error}"
            await self._write(
                lambda: self._scripts.dead(
                    keys, group, consumer, delivery, reason=reason, error=None
                ),
                "dead-letter",
            )
            self._count(sub, "dead_lettered")
            return
        context: EventContext[Any] = EventContext(
            event_id=decoded.event_id,
            event=sub.event.name,
            group=group,
            attempt=delivery.attempt,
            data=decoded.data,
            meta=decoded.meta,
            emit=self._emit,
        )
        value: Any = None
        failure: Exception | None = None
        token = current_meta.set(handler_meta(decoded.meta, decoded.event_id))
        try:
            with self._telemetry.consuming(lambda: _span_of(sub, context), decoded.meta) as span:
                try:
                    value = await _call(sub.handlers, context)
                    if value is not None:
                        value = check_result(sub.event, value)
                except Exception as raised:
                    record_failure(span, raised)
                    failure = raised
        finally:
            current_meta.reset(token)
        if failure is not None:
            await self._failed(sub, delivery, decoded, failure)
            return
        reply_to = decoded.reply_to
        if reply_to is not None and (value is not None or sub.event.result is None):
            message = reply_message(
                reply_to.request_id, group, result=value, payloads=self._payloads
            )
            await self._write(
                lambda: self._scripts.answer(keys, group, delivery, reply_to, message), "ack"
            )
        else:
            await self._write(lambda: self._scripts.ack(keys, group, delivery), "ack")
        self._count(sub, "handled")

    def _count(self, sub: Subscription, outcome: str) -> None:
        labels = {"plait.event": sub.event.name, "plait.group": sub.group}
        self._telemetry.events_handled.add(1, {**labels, "plait.outcome": outcome})
        if outcome == "dead_lettered":
            self._telemetry.dead_letters.add(1, labels)

    async def _failed(
        self, sub: Subscription, delivery: Delivery, decoded: Decoded, error: Exception
    ) -> None:
        keys, group, consumer = sub.keys, sub.group, self._consumer
        delay = self._retry.next_delay(delivery.attempt, error)
        if delay is not None:
            delay_ms = int(delay.total_seconds() * 1000)
            logger.info(
                "handler of %s (group %s) failed on attempt %d, retrying in %d ms: %r",
                sub.event.name, group, delivery.attempt, delay_ms, error,
            )  # fmt: skip
            await self._write(
                lambda: self._scripts.fail(keys, group, consumer, delivery, delay_ms), "retry"
            )
            self._retried()
            self._count(sub, "retried")
            return
        if isinstance(error, InvalidResultError):
            reason = "invalid result"
        else:
            retryable = self._retry.is_retryable(error)
            reason = "attempts exhausted" if retryable else "non-retryable error"
        logger.warning(
            "dead-lettering event %s of %s (group %s) after attempt %d: %s: %r",
            decoded.event_id, sub.event.name, group, delivery.attempt, reason, error,
        )  # fmt: skip
        wire = EventHandlerError.wire_of(error, delivery.attempt)
        await self._write(
            lambda: self._scripts.dead(keys, group, consumer, delivery, reason=reason, error=wire),
            "dead-letter",
        )
        self._count(sub, "dead_lettered")
        reply_to = decoded.reply_to
        if reply_to is not None:
            message = failure_message(
                reply_to.request_id, group, error=wire, payloads=self._payloads
            )
            await self._write(lambda: self._scripts.reply(keys, reply_to, message), "reply")

    async def _write(self, operation: Callable[[], Awaitable[T]], what: str) -> T | None:
        return await call_forever(operation, what=what, stopping=lambda: self.stopping)


def _span_of(sub: Subscription, context: EventContext[Any]) -> tuple[str, Mapping[str, Any]]:
    """The name and attributes of a delivery's CONSUMER span."""
    return f"{sub.event.name} process", {
        "messaging.operation.name": "process",
        "messaging.destination.name": sub.event.name,
        "messaging.consumer.group.name": sub.group,
        "messaging.message.id": context.event_id,
        "plait.attempt": context.attempt,
    }


async def _call(handlers: list[EventHandler], context: EventContext[Any]) -> Any:
    """Run the handlers of a group in order; the first non-None value is the reply."""
    result = None
    for handler in list(handlers):
        value = await invoke(handler, context)
        if result is None:
            result = value
    return result
