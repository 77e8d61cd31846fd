"""Event schedules: their stored spec, and firing a tick as an ordinary emit.

The loop that decides which ticks fire is :mod:`.._core.scheduler`; an event tick is emitted
with the idempotency key ``schedule:<id>:<tick ms>`` (so instances firing the same tick make
one event), its meta carrying ``schedule_id``, ``scheduled_at`` and ``catch_up``. An event is
not "still going" once emitted, so every overlap policy fires each tick.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from plait.events import Event

from .._core.codecs import PLAIN, Payloads
from .._core.keys import EventKeys, ScheduleKeys
from .._core.schedules import StoredSchedule, schedule_meta, tick_key
from .._core.tracing import outgoing_meta
from .codec import new_event_id
from .publisher import checked_meta, stored_data, validated
from .scripts import EventScripts


class EventFiring:
    """Fires a tick of an event schedule as an emit (see :mod:`.._core.scheduler`)."""

    def __init__(
        self,
        scripts: EventScripts,
        prefix: str,
        *,
        retention_ms: int,
        on_emit: Callable[[EventKeys], None],
    ) -> None:
        self._scripts = scripts
        self._prefix = prefix
        self._retention_ms = retention_ms
        self._on_emit = on_emit

    async def live(self, spec: StoredSchedule, made: str) -> bool:
        """An emitted event is never still going."""
        return False

    async def cancel(self, spec: StoredSchedule, made: str) -> None:
        """Nothing to cancel: the event was delivered."""

    async def fire(
        self, schedule_id: str, spec: StoredSchedule, tick_ms: int, *, catch_up: bool
    ) -> str:
        """Emit the tick's event (or find it); returns its event id."""
        keys = EventKeys(self._prefix, spec.target)
        event_id = new_event_id()
        meta = {**spec.meta, **schedule_meta(schedule_id, tick_ms, catch_up=catch_up)}
        _, owner = await self._scripts.emit(
            keys,
            event_id,
            idempotency_key=tick_key(schedule_id, tick_ms),
            retention_ms=self._retention_ms,
            delay_ms=0,
            data=spec.data,
            meta=json.dumps(outgoing_meta(meta, correlation_id=event_id)),
            reply="",
        )
        self._on_emit(keys)
        return owner


def event_spec(
    event: Event[Any, Any],
    data: BaseModel | Mapping[str, Any],
    *,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    catchup: str,
    catchup_window: timedelta,
    meta: Mapping[str, str] | None,
    limit: int,
    payloads: Payloads = PLAIN,
) -> StoredSchedule:
    """The stored spec of a schedule of ``event`` (checked: bad data raises; the data is at most
    ``limit`` bytes of JSON, stored through ``payloads``).

    Raises:
        InvalidEventError: ``event`` is not an Event, ``data`` does not validate, or ``meta``
            is not string pairs.
    """
    model = validated(event, data)
    return StoredSchedule(
        target=event.name,
        data=stored_data(event, model, limit, payloads),
        cron=cron,
        timezone=timezone,
        every_ms=None if every is None else every // timedelta(milliseconds=1),
        overlap="allow",
        catchup=catchup,  # type: ignore[arg-type]  # checked by check_schedule
        window_ms=catchup_window // timedelta(milliseconds=1),
        meta=checked_meta(event, meta),
    )


def event_schedules(prefix: str) -> ScheduleKeys:
    """The keys of the event schedules under ``prefix``."""
    return ScheduleKeys(prefix, "events")
