"""What an event handler sees of the event it runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from ._definition import Event

__all__ = ["EventContext"]

DataT = TypeVar("DataT", bound=BaseModel)
OtherT = TypeVar("OtherT", bound=BaseModel)

_logger = logging.getLogger("plait.events.handler")

EmitFunction = Callable[..., Awaitable[str]]
"""``emit(event, data, *, idempotency_key, delay, meta)`` of the provider running the handler."""


class EventContext(Generic[DataT]):
    """One delivery of an event to a handler.

    Attributes:
        event_id: the event's id (the same for every group and every attempt).
        event: the event's name.
        group: the group this delivery belongs to.
        attempt: the delivery attempt in this group (1-based).
        data: the event's validated data.
        meta: read-only ``correlation_id``, ``traceparent``, ``causation_id`` (the run or
            event that emitted this one, when there is one) and the emitter's meta.
        log: a logger adapter that adds event, group, attempt and trace fields to each record.
    """

    __slots__ = ("_emit", "attempt", "data", "event", "event_id", "group", "log", "meta")

    def __init__(
        self,
        *,
        event_id: str,
        event: str,
        group: str,
        attempt: int,
        data: DataT,
        meta: Mapping[str, str],
        emit: EmitFunction,
    ) -> None:
        self.event_id = event_id
        self.event = event
        self.group = group
        self.attempt = attempt
        self.data = data
        self.meta: Mapping[str, str] = MappingProxyType(dict(meta))
        self._emit = emit
        fields = {
            "event_id": event_id,
            "event": event,
            "group": group,
            "attempt": attempt,
            "trace_id": _trace_id(self.meta.get("traceparent", "")),
        }
        self.log = logging.LoggerAdapter(_logger, fields)

    def __repr__(self) -> str:
        return (
            f"EventContext(event={self.event!r}, event_id={self.event_id!r}, "
            f"group={self.group!r}, attempt={self.attempt})"
        )

    async def emit(
        self,
        event: Event[OtherT, Any],
        data: OtherT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        delay: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Emit another event caused by this one: same correlation id and trace.

        The new event's ``meta["causation_id"]`` is this event's id. Arguments and errors are
        those of the provider's ``emit``.

        Returns:
            The new event's id.
        """
        carried = dict(meta or {})
        carried["causation_id"] = self.event_id
        for name in ("correlation_id", "traceparent"):
            if name in self.meta:
                carried.setdefault(name, self.meta[name])
        return await self._emit(
            event, data, idempotency_key=idempotency_key, delay=delay, meta=carried
        )


def _trace_id(traceparent: str) -> str | None:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None
