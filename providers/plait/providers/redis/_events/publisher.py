"""Emitting events and waiting for request replies: validation, meta, spans, one Lua call.

An emit is one atomic script call (idempotency key, then XADD or the delayed zset). A request
listens on its provider's reply channel for the event, then emits with a reply address; the
first group to answer (result or failure) completes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

import anyio
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ValidationError

from plait.events import Event, EventHandlerError, EventTimeoutError, InvalidEventError
from plait.workflows import InvalidResultError

from .._core import payload
from .._core.errors import EVENT_KINDS, translated
from .._core.keys import EventKeys
from .._core.notify import Notifications
from .._core.retry import call_until
from .._core.tracing import current_meta, outgoing_meta
from .codec import encode_json, new_event_id
from .scripts import EventScripts


class Publisher:
    """Emits the events of one provider and completes its requests."""

    def __init__(
        self,
        scripts: EventScripts,
        notifications: Notifications,
        *,
        prefix: str,
        provider_id: str,
        retention: timedelta,
        connect_timeout: timedelta,
        published: Callable[[EventKeys, bool], None],
    ) -> None:
        self._scripts = scripts
        self._notifications = notifications
        self._prefix = prefix
        self._provider_id = provider_id
        self._retention_ms = max(int(retention.total_seconds() * 1000), 1)
        self._timeout = connect_timeout.total_seconds()
        self._published = published
        self._reply_channels: set[str] = set()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.tracer: trace.Tracer | None = None

    async def request(
        self,
        event: Event[Any, Any],
        model: BaseModel,
        *,
        timeout: float,
        meta: Mapping[str, str] | None,
    ) -> Any:
        """Emit ``event`` with a reply address and return the first group's validated reply."""
        data = stored_data(event, model)
        user_meta = checked_meta(event, meta)
        keys = EventKeys(self._prefix, event.name)
        channel = keys.reply_channel(self._provider_id)
        event_id = new_event_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[event_id] = future
        try:
            with anyio.fail_after(timeout):
                if channel not in self._reply_channels:
                    with translated(EVENT_KINDS, f"request {event.name}"):
                        await self._notifications.listen(channel, self._on_reply)
                    self._reply_channels.add(channel)
                reply = f"{channel}|{event_id}"
                await self._write(event, data, None, meta=user_meta, event_id=event_id, reply=reply)
                message = await future
        except TimeoutError:
            raise EventTimeoutError(event.name, event_id, timedelta(seconds=timeout)) from None
        finally:
            self._waiting.pop(event_id, None)
        group = str(message.get("group", ""))
        if not message.get("ok"):
            raise EventHandlerError.from_wire(event.name, group, message.get("error") or {})
        try:
            return event.validate_result(message.get("result"))
        except ValidationError as error:
            raise EventHandlerError(
                event.name,
                group,
                attempt=0,
                cause_type=InvalidResultError.wire_name,
                cause_message=f"the reply does not validate: {error}",
            ) from error

    def fail_waiting(self, error: BaseException) -> None:
        """Make every pending request raise ``error``."""
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    async def publish(
        self,
        event: Event[Any, Any],
        model: BaseModel,
        idempotency_key: str | None,
        *,
        delay: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Validate the options, add meta, and write the event (or find its key's owner)."""
        wait_ms = delay_ms(event, delay)
        if idempotency_key is not None:
            check_key(event, idempotency_key)
        data = stored_data(event, model)
        user_meta = checked_meta(event, meta)
        return await self._write(event, data, idempotency_key, wait_ms=wait_ms, meta=user_meta)

    async def _write(
        self,
        event: Event[Any, Any],
        data: str,
        idempotency_key: str | None,
        *,
        meta: dict[str, str],
        wait_ms: int = 0,
        event_id: str | None = None,
        reply: str = "",
    ) -> str:
        keys = EventKeys(self._prefix, event.name)
        event_id = event_id or new_event_id()
        with self._producer_span(event, event_id):
            out_meta = outgoing_meta(meta, correlation_id=event_id)
            parent = current_meta.get() or {}
            if "event_id" in parent and "run_id" not in parent:
                out_meta.setdefault("causation_id", parent["event_id"])
            created, owner = await call_until(
                lambda: self._scripts.emit(
                    keys,
                    event_id,
                    idempotency_key=idempotency_key or "",
                    retention_ms=self._retention_ms,
                    delay_ms=wait_ms,
                    data=data,
                    meta=json.dumps(out_meta),
                    reply=reply,
                ),
                timeout=self._timeout,
                what=f"emit {event.name}",
                kinds=EVENT_KINDS,
            )
        self._published(keys, bool(wait_ms and created))
        return owner

    def _producer_span(self, event: Event[Any, Any], event_id: str) -> AbstractContextManager[Any]:
        if self.tracer is None:
            return nullcontext()
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            traceparent = (current_meta.get() or {}).get("traceparent", "")
            if traceparent:
                parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        return self.tracer.start_as_current_span(
            f"{event.name} publish",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": event.name,
                "messaging.message.id": event_id,
            },
        )

    def _on_reply(self, text: str) -> None:
        try:
            message = json.loads(text)
            future = self._waiting.get(str(message["request"]))
        except (ValueError, KeyError, TypeError):
            return
        if future is not None and not future.done():
            future.set_result(message)


def validated(event: Event[Any, Any], data: Any) -> BaseModel:
    if not isinstance(event, Event):
        raise InvalidEventError("", f"{event!r} is not an Event")
    model: BaseModel = event.validate(data)
    return model


def delay_ms(event: Event[Any, Any], delay: timedelta | None) -> int:
    if delay is None:
        return 0
    if not isinstance(delay, timedelta) or delay < timedelta(0):
        raise InvalidEventError(event.name, f"delay must be a non-negative timedelta: {delay!r}")
    return int(delay.total_seconds() * 1000)


def request_seconds(event: Event[Any, Any], timeout: object) -> float:
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        seconds = 0.0
    if not seconds > 0:
        raise InvalidEventError(event.name, f"timeout must be a positive timedelta: {timeout!r}")
    return seconds


def check_key(event: Event[Any, Any], key: object) -> None:
    if key == "":
        raise InvalidEventError(event.name, "idempotency_key must be a non-empty string")
    try:
        payload.check_key(key)
    except payload.UnstorableError as error:
        raise InvalidEventError(event.name, str(error)) from None


def stored_data(event: Event[Any, Any], model: BaseModel) -> str:
    """The event's data as stored JSON, checked to be readable back by its consumers."""
    try:
        return payload.stored_json(lambda: encode_json(model), "the data")
    except payload.UnstorableError as error:
        raise InvalidEventError(event.name, str(error)) from None


def checked_meta(event: Event[Any, Any], meta: Mapping[str, str] | None) -> dict[str, str]:
    if meta is None:
        return {}
    try:
        return payload.check_meta(meta)
    except payload.UnstorableError as error:
        raise InvalidEventError(event.name, str(error)) from None


def tracer_of(tracer_provider: Any) -> trace.Tracer | None:
    # Spans cost CPU even when nothing records them: without an SDK, only ids are propagated.
    provider = tracer_provider or trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    tracer: trace.Tracer = provider.get_tracer("plait")
    return tracer
