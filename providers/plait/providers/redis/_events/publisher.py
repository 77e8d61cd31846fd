"""Emitting events and waiting for request replies: validation, meta, spans, one Lua call.

An emit is one atomic script call (idempotency key, then XADD or the delayed zset). A request
listens on its provider's reply channel for the event, then emits with a reply address; the
first group to answer (result or failure) completes it. The answering group also keeps its
reply in a key of the request (for the request's timeout + :data:`REPLY_MARGIN`), which the
requester reads whenever its reply channel is subscribed again and every :data:`REPLY_POLL`:
a reply published while the requester's pub/sub connection was down still reaches it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from plait.events import (
    Event,
    EventHandlerError,
    EventPayloadDecodeError,
    EventTimeoutError,
    InvalidEventError,
)
from plait.workflows import InvalidResultError

from .._core import payload
from .._core.codecs import PLAIN, Payloads, UndecodableError
from .._core.errors import CONNECTION_ERRORS, EVENT_KINDS, translated
from .._core.keys import EventKeys
from .._core.notify import Notifications
from .._core.retry import call_until
from .._core.telemetry import Telemetry
from .._core.tracing import outgoing_meta
from .codec import ReplyTo, encode_json, new_event_id, opened_reply
from .scripts import EventScripts

REPLY_POLL = 1.0
"""Seconds between two reads of a pending request's kept reply (besides those on resubscribe)."""
REPLY_MARGIN = 1.0
"""Seconds a kept reply outlives the request's timeout (counted from the reply)."""
LONGEST_KEPT_REPLY = 10**8
"""Seconds a reply is kept at most, whatever the timeout (about three years)."""


@dataclass(eq=False)
class Reply:
    """The first answer to one request: a reply message, or the error that ends the wait."""

    channel: str
    """The reply channel the request listens on."""
    message: dict[str, Any] | None = None
    error: BaseException | None = None
    _wake: anyio.Event = field(default_factory=anyio.Event)

    @property
    def answered(self) -> bool:
        """Whether a reply or an error ended the wait."""
        return self.message is not None or self.error is not None

    def give(self, message: dict[str, Any]) -> None:
        """Answer with ``message``, unless answered already."""
        if not self.answered:
            self.message = message
            self._wake.set()

    def fail(self, error: BaseException) -> None:
        """Make the request raise ``error``, unless answered already."""
        if not self.answered:
            self.error = error
            self._wake.set()

    def recheck(self) -> None:
        """Make the waiter read the kept reply now (a reply may have been missed)."""
        self._wake.set()

    async def woken(self, timeout: float) -> None:
        """Wait until answered, told to recheck, or ``timeout`` seconds passed."""
        with anyio.move_on_after(timeout):
            await self._wake.wait()
        if self._wake.is_set():  # anyio events are not cleared: replaced once set
            self._wake = anyio.Event()

    def outcome(self) -> dict[str, Any]:
        """The reply message (raises the error that ended the wait instead)."""
        if self.error is not None:
            raise self.error
        assert self.message is not None
        return self.message


class Publisher:
    """Emits the events of one provider and completes its requests."""

    def __init__(
        self,
        scripts: EventScripts,
        notifications: Notifications,
        telemetry: Telemetry,
        *,
        prefix: str,
        provider_id: str,
        retention: timedelta,
        connect_timeout: timedelta,
        published: Callable[[EventKeys, bool], None],
        max_payload: int,
        payloads: Payloads = PLAIN,
    ) -> None:
        self._max_payload = max_payload
        self._payloads = payloads
        self._scripts = scripts
        self._notifications = notifications
        self._telemetry = telemetry
        self._prefix = prefix
        self._provider_id = provider_id
        self._retention_ms = max(int(retention.total_seconds() * 1000), 1)
        self._timeout = connect_timeout.total_seconds()
        self._published = published
        self._reply_channels: set[str] = set()
        self._waiting: dict[str, Reply] = {}

    async def request(
        self,
        event: Event[Any, Any],
        model: BaseModel,
        *,
        timeout: float,
        meta: Mapping[str, str] | None,
    ) -> Any:
        """Emit ``event`` with a reply address and return the first group's validated reply."""
        data = stored_data(event, model, self._max_payload, self._payloads)
        user_meta = checked_meta(event, meta)
        keys = EventKeys(self._prefix, event.name)
        channel = keys.reply_channel(self._provider_id)
        event_id = new_event_id()
        waiting = self._waiting[event_id] = Reply(channel)
        lifetime_ms = int(min(max(timeout, 0.0) + REPLY_MARGIN, LONGEST_KEPT_REPLY) * 1000)
        reply = ReplyTo(channel, event_id, lifetime_ms).address()
        try:
            with anyio.fail_after(timeout):
                if channel not in self._reply_channels:
                    with translated(EVENT_KINDS, f"request {event.name}"):
                        await self._notifications.listen(
                            channel, self._on_reply, subscribed=lambda: self._recheck(channel)
                        )
                    self._reply_channels.add(channel)
                await self._write(event, data, None, meta=user_meta, event_id=event_id, reply=reply)
                message = await self._reply_of(keys, event_id, waiting)
        except TimeoutError:
            raise EventTimeoutError(event.name, event_id, timedelta(seconds=timeout)) from None
        finally:
            self._waiting.pop(event_id, None)
        try:
            message = opened_reply(message, self._payloads)
        except UndecodableError as error:
            raise EventPayloadDecodeError(f"request {event.name} {event_id}: {error}") from None
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

    async def _reply_of(self, keys: EventKeys, request_id: str, waiting: Reply) -> dict[str, Any]:
        """The reply to ``request_id``: published to us, or kept by the group that answered."""
        while not waiting.answered:
            await waiting.woken(REPLY_POLL)
            if waiting.answered:
                break
            with translated(EVENT_KINDS, f"request {keys.event}"):
                try:
                    kept = await self._scripts.kept_reply(keys, request_id)
                except CONNECTION_ERRORS:
                    continue  # read again once the channel is subscribed again, or on the poll
            if kept is not None:
                self._on_reply(kept)
        return waiting.outcome()

    def _recheck(self, channel: str) -> None:
        for waiting in self._waiting.values():
            if waiting.channel == channel:
                waiting.recheck()

    def fail_waiting(self, error: BaseException) -> None:
        """Make every pending request raise ``error``."""
        for waiting in self._waiting.values():
            waiting.fail(error)

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
        data = stored_data(event, model, self._max_payload, self._payloads)
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
        with self._telemetry.producing(
            f"{event.name} publish",
            operation="publish",
            destination=event.name,
            message_id=event_id,
        ):
            out_meta = outgoing_meta(meta, correlation_id=event_id)
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

    def _on_reply(self, text: str) -> None:
        try:
            message = json.loads(text)
            waiting = self._waiting.get(str(message["request"]))
        except (ValueError, KeyError, TypeError):
            return
        if waiting is not None:
            waiting.give(message)


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


def stored_data(
    event: Event[Any, Any], model: BaseModel, limit: int, payloads: Payloads = PLAIN
) -> str:
    """The event's data as stored: JSON checked to be readable back by its consumers and at
    most ``limit`` bytes, then through the payload codec."""
    try:
        text = payload.stored_json(lambda: encode_json(model), "the data", limit=limit)
        return payloads.seal(text, "the data")
    except payload.UnstorableError as error:
        raise InvalidEventError(event.name, str(error)) from None


def checked_meta(event: Event[Any, Any], meta: Mapping[str, str] | None) -> dict[str, str]:
    if meta is None:
        return {}
    try:
        return payload.check_meta(meta)
    except payload.UnstorableError as error:
        raise InvalidEventError(event.name, str(error)) from None
