"""Schedules as stored: their specs, their ticks, and the calls that change them.

A schedule is a spec in Redis (``ScheduleKeys.specs``), not in process memory: any instance of
the provider of its kind fires it, none is special. Its ticks are the instants of a cron
expression in a timezone (computed by the ``cronsim`` library, which follows cron's rules
across DST changes: a time skipped by the clock going forward fires at the first minute after
the jump, a time seen twice when it goes back fires once), or multiples of a fixed period
since the Unix epoch (``every=``, no library needed). Whether a tick is due is decided by
Redis's clock (``TIME``), never the local one.

This module holds what both engines share: :class:`StoredSchedule` (the spec),
:func:`next_tick` and :func:`plan_ticks` (which ticks a pass fires), :class:`ScheduleInfo` (what
callers see) and :class:`Schedules` (list, get, pause, resume, delete).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ValidationError
from redis.commands.core import AsyncScript

from .connection import Connection
from .errors import ErrorKinds, translated
from .keys import ScheduleKeys
from .lua import register
from .wire import text

Overlap = Literal["skip", "allow", "buffer_one", "cancel_previous"]
"""What a tick does while the run of the previous tick is still going: ``skip`` fires nothing,
``allow`` fires anyway, ``buffer_one`` fires once the previous run ended (one run for the ticks
that came meanwhile), ``cancel_previous`` cancels the previous run (its completed steps are
compensated) and fires."""
CatchUp = Literal["latest_once", "all", "none"]
"""What happens to ticks no instance fired in time (every instance was down): ``latest_once``
fires the latest of them once, ``all`` fires each of them within ``catchup_window``, ``none``
fires none of them."""

ON_TIME = 2.0
"""Seconds a tick may be late and still fire as an on-time tick; a later one is *missed* and
its schedule's catch-up policy decides."""
NEXT_SHOWN = 3
"""Next fire times in a :class:`ScheduleInfo`."""
MOST_TICKS = 10_000
"""Most ticks one pass looks at (a cron of every minute: a week)."""
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class StoredSchedule(BaseModel):
    """A schedule's spec as stored in Redis (one JSON value per schedule id)."""

    version: int = 1
    target: str
    """The workflow or event name a tick fires."""
    data: str
    """The canonical JSON of the run's input (or the event's data)."""
    cron: str | None = None
    timezone: str = "UTC"
    every_ms: int | None = None
    overlap: Overlap = "skip"
    catchup: CatchUp = "latest_once"
    window_ms: int = 3_600_000
    paused: bool = False
    meta: dict[str, str] = {}
    timeout_ms: int = 0
    """The run's timeout (0: the firing provider's ``default_timeout``)."""
    fire: dict[str, str] = {}
    """What the engine needs to fire a tick without the definition (plan, limits, input hash)."""


class ScheduleState(BaseModel):
    """The last tick a schedule fired and the run (or event) it made."""

    version: int = 1
    tick: int
    run: str = ""


@dataclass(frozen=True, kw_only=True)
class ScheduleInfo:
    """A schedule as any instance sees it.

    Attributes:
        schedule_id: its name, unique per kind (workflows, events) and prefix.
        target: the workflow or event a tick fires.
        cron: its cron expression, or None for ``every``.
        every: its period, or None for ``cron``.
        timezone: the IANA timezone its cron expression is read in.
        overlap: what a tick does while the previous run is still going (:data:`Overlap`).
        catchup: what happens to ticks missed while every instance was down (:data:`CatchUp`).
        catchup_window: how far back ``catchup="all"`` fires missed ticks.
        paused: whether it fires nothing until resumed.
        next_fire_times: its next ticks (none while paused).
        last_tick: the last tick it fired (or skipped under its overlap policy), if any.
        last_run: the run id (or event id) that tick made, if any.
    """

    schedule_id: str
    target: str
    cron: str | None
    every: timedelta | None
    timezone: str
    overlap: Overlap
    catchup: CatchUp
    catchup_window: timedelta
    paused: bool
    next_fire_times: tuple[datetime, ...]
    last_tick: datetime | None
    last_run: str | None


def check_schedule(
    schedule_id: object,
    *,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    overlap: str,
    catchup: str,
    catchup_window: timedelta,
) -> str | None:
    """Why these arguments make no schedule (a sentence), or None when they do."""
    if not isinstance(schedule_id, str) or not _ID.match(schedule_id):
        return f"a schedule id matches {_ID.pattern}, not {schedule_id!r}"
    if (cron is None) == (every is None):
        return "give exactly one of cron= and every="
    if every is not None and (
        not isinstance(every, timedelta) or every < timedelta(seconds=1) or every % _MS
    ):
        return f"every must be a timedelta of at least 1 s in whole ms, not {every!r}"
    if overlap not in get_args(Overlap):
        return f"overlap must be one of {get_args(Overlap)}, not {overlap!r}"
    if catchup not in get_args(CatchUp):
        return f"catchup must be one of {get_args(CatchUp)}, not {catchup!r}"
    if not isinstance(catchup_window, timedelta) or catchup_window <= timedelta(0):
        return f"catchup_window must be a positive timedelta, not {catchup_window!r}"
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return f"unknown timezone {timezone!r}"
    if cron is not None:
        try:
            next(_cron_ticks(cron, zone, datetime.now(tz=zone)))
        except (ValueError, StopIteration) as error:  # CronSimError is a ValueError
            return f"bad cron expression {cron!r}: {error}"
    return None


_MS = timedelta(milliseconds=1)


def _cron_ticks(cron: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    try:
        from cronsim import CronSim, CronSimError  # noqa: PLC0415 - only cron schedules need it
    except ImportError:
        raise ImportError(
            "cron schedules need the cronsim package: pip install 'plait[schedules]'"
        ) from None
    try:
        return iter(CronSim(cron, after.astimezone(zone)))
    except CronSimError as error:  # not a ValueError in every cronsim version
        raise ValueError(str(error)) from None


def ticks_after(spec: StoredSchedule, after_ms: int) -> Iterator[int]:
    """The schedule's ticks (epoch ms) strictly after ``after_ms``, in order."""
    if spec.every_ms is not None:
        tick = (after_ms // spec.every_ms + 1) * spec.every_ms
        while True:
            yield tick
            tick += spec.every_ms
    assert spec.cron is not None
    zone = ZoneInfo(spec.timezone)
    after = datetime.fromtimestamp(after_ms / 1000, tz=UTC)
    for moment in _cron_ticks(spec.cron, zone, after):
        yield int(moment.timestamp() * 1000)


def next_tick(spec: StoredSchedule, after_ms: int) -> int:
    """The schedule's first tick strictly after ``after_ms``."""
    return next(ticks_after(spec, after_ms))


def plan_ticks(
    spec: StoredSchedule, due_ms: int, now_ms: int
) -> tuple[list[tuple[int, bool]], int]:
    """Which ticks a pass fires when the schedule's earliest unfired tick is ``due_ms``.

    Ticks late by at most :data:`ON_TIME` fire; older ones are missed and the catch-up policy
    picks among them. Returns the ticks to fire, in order, each with whether it is a catch-up,
    and the schedule's next due time (its first tick after ``now_ms``).
    """
    horizon = now_ms - int(ON_TIME * 1000)
    if spec.catchup == "all":
        horizon = min(horizon, now_ms - spec.window_ms)
    elif spec.catchup == "latest_once":
        horizon = min(horizon, now_ms - 7 * 86_400_000)
    due: list[int] = [due_ms] if due_ms >= horizon else []
    for tick in ticks_after(spec, max(due_ms, horizon - 1)):
        if tick > now_ms or len(due) >= MOST_TICKS:
            break
        due.append(tick)
    on_time = [(tick, False) for tick in due if now_ms - tick <= ON_TIME * 1000]
    missed = [tick for tick in due if now_ms - tick > ON_TIME * 1000]
    if spec.catchup == "none":
        caught: list[int] = []
    elif spec.catchup == "latest_once":
        caught = missed[-1:]
    else:
        caught = [tick for tick in missed if now_ms - tick <= spec.window_ms]
    return [(tick, True) for tick in caught] + on_time, next_tick(spec, now_ms)


def moment(ms: int) -> datetime:
    """Epoch ms as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def info_of(schedule_id: str, spec: StoredSchedule, state: ScheduleState | None) -> ScheduleInfo:
    """What callers see of a stored schedule (next fire times computed from the local clock)."""
    now_ms = int(datetime.now(tz=UTC).timestamp() * 1000)
    upcoming: list[datetime] = []
    if not spec.paused:
        for tick in ticks_after(spec, now_ms):
            upcoming.append(moment(tick))
            if len(upcoming) == NEXT_SHOWN:
                break
    return ScheduleInfo(
        schedule_id=schedule_id,
        target=spec.target,
        cron=spec.cron,
        every=None if spec.every_ms is None else timedelta(milliseconds=spec.every_ms),
        timezone=spec.timezone,
        overlap=spec.overlap,
        catchup=spec.catchup,
        catchup_window=timedelta(milliseconds=spec.window_ms),
        paused=spec.paused,
        next_fire_times=tuple(upcoming),
        last_tick=None if state is None else moment(state.tick),
        last_run=(state.run or None) if state is not None else None,
    )


def spec_of(raw: str | bytes | None) -> StoredSchedule | None:
    """A stored spec, or None when there is none or it does not parse."""
    if not raw:
        return None
    try:
        return StoredSchedule.model_validate_json(raw)
    except ValidationError:
        return None


def state_of(raw: str | bytes | None) -> ScheduleState | None:
    """A stored state, or None when there is none or it does not parse."""
    if not raw:
        return None
    try:
        return ScheduleState.model_validate_json(raw)
    except ValidationError:
        return None


@dataclass(frozen=True, slots=True)
class Due:
    """A schedule whose earliest unfired tick has come, as the due script read it."""

    schedule_id: str
    due_ms: int
    raw_spec: str
    spec: StoredSchedule | None
    state: ScheduleState | None


class ScheduleStore:
    """The scripts that read and change one kind's schedules."""

    def __init__(self, connection: Connection, keys: ScheduleKeys) -> None:
        self._connection = connection
        self.keys = keys
        client = connection.client
        self._due: AsyncScript = register(client, "schedule_due")
        self._advance: AsyncScript = register(client, "schedule_advance")
        self._set: AsyncScript = register(client, "schedule_set")
        self._declared = (keys.due, keys.specs, keys.state)

    @property
    def client(self) -> Any:
        """The client the store talks through."""
        return self._connection.client

    async def now_ms(self) -> int:
        """Redis's clock, in epoch ms."""
        seconds, micros = await self._connection.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def due(self, limit: int = 100) -> tuple[int, int, list[Due]]:
        """(Redis now ms, earliest tick not due yet or -1, the schedules due now)."""
        reply = await self._connection.run(self._due, keys=self._declared, args=[limit])
        found: list[Due] = []
        for at in range(2, len(reply), 4):
            raw = text(reply[at + 2])
            found.append(
                Due(
                    schedule_id=text(reply[at]),
                    due_ms=int(float(reply[at + 1])),
                    raw_spec=raw,
                    spec=spec_of(raw),
                    state=state_of(reply[at + 3]),
                )
            )
        return int(reply[0]), int(reply[1]), found

    async def advance(self, due: Due, next_ms: int, state: ScheduleState | None) -> bool:
        """Move ``due``'s schedule on to ``next_ms`` unless another instance did first."""
        args = [due.schedule_id, due.due_ms, due.raw_spec, next_ms]
        args.append("" if state is None else state.model_dump_json())
        return int(await self._connection.run(self._advance, keys=self._declared, args=args)) == 1

    async def read(
        self, schedule_id: str
    ) -> tuple[str, StoredSchedule | None, ScheduleState | None]:
        """A schedule's raw spec, spec and state."""
        client = self._connection.client
        raw = await client.hget(self.keys.specs, schedule_id)
        state = await client.hget(self.keys.state, schedule_id)
        return ("" if raw is None else text(raw)), spec_of(raw), state_of(state)

    async def write(
        self, schedule_id: str, spec: StoredSchedule | None, next_ms: int, *, read: str
    ) -> int:
        """Store ``spec`` (None: delete) if the stored one is still ``read``; 1 when the
        schedule existed, 0 when not, -1 when it changed since it was read."""
        body = "" if spec is None else spec.model_dump_json()
        args = [schedule_id, body, next_ms, read]
        return int(await self._connection.run(self._set, keys=self._declared, args=args))

    async def all(self) -> list[tuple[str, StoredSchedule, ScheduleState | None]]:
        """Every stored schedule of this kind that parses, by id."""
        client = self._connection.client
        specs = await client.hgetall(self.keys.specs)
        states = await client.hgetall(self.keys.state)
        found = []
        for raw_id, raw in sorted(specs.items()):
            spec = spec_of(raw)
            if spec is not None:
                found.append((text(raw_id), spec, state_of(states.get(raw_id))))
        return found


class Schedules:
    """The schedules of one provider's kind under its prefix: list, get, pause, resume, delete.

    Reached as ``workflows.schedules`` (or ``events.schedules``); schedules are created and
    changed by ``workflows.schedule(...)`` (``events.schedule(...)``).
    """

    def __init__(self, store: ScheduleStore, kinds: ErrorKinds) -> None:
        self._store = store
        self._kinds = kinds

    async def list(self) -> list[ScheduleInfo]:
        """Every schedule, by id.

        Raises:
            ProviderUnavailableError: Redis did not answer (``EventProviderError`` kinds for
                event schedules); the same for every method.
        """
        with translated(self._kinds, "list schedules"):
            found = await self._store.all()
        return [info_of(i, spec, state) for i, spec, state in found]

    async def get(self, schedule_id: str) -> ScheduleInfo | None:
        """The schedule named ``schedule_id`` with its next fire times, or None."""
        with translated(self._kinds, f"read schedule {schedule_id}"):
            _, spec, state = await self._store.read(schedule_id)
        return None if spec is None else info_of(schedule_id, spec, state)

    async def put(self, schedule_id: str, spec: StoredSchedule) -> ScheduleInfo:
        """Store ``spec`` under ``schedule_id`` (the providers' ``schedule()`` checked it): a
        schedule that exists keeps being paused when it was, and keeps its state; it fires
        from its next tick on."""
        store = self._store
        with translated(self._kinds, f"schedule {schedule_id}"):
            while True:
                raw, old, state = await store.read(schedule_id)
                spec = spec.model_copy(update={"paused": old is not None and old.paused})
                next_ms = -1 if spec.paused else next_tick(spec, await store.now_ms())
                if await store.write(schedule_id, spec, next_ms, read=raw) >= 0:
                    return info_of(schedule_id, spec, state)

    async def pause(self, schedule_id: str) -> bool:
        """Fire nothing until :meth:`resume`; False when there is no such schedule."""
        return await self._change(schedule_id, paused=True)

    async def resume(self, schedule_id: str) -> bool:
        """Fire again from the next tick on (ticks of the pause are not caught up); False when
        there is no such schedule."""
        return await self._change(schedule_id, paused=False)

    async def delete(self, schedule_id: str) -> bool:
        """Forget the schedule (runs it fired go on); False when there was none."""
        with translated(self._kinds, f"delete schedule {schedule_id}"):
            return await self._store.write(schedule_id, None, -1, read="*") == 1

    async def _change(self, schedule_id: str, *, paused: bool) -> bool:
        with translated(self._kinds, f"change schedule {schedule_id}"):
            return await change(self._store, schedule_id, paused=paused)


async def change(store: ScheduleStore, schedule_id: str, *, paused: bool) -> bool:
    """Pause or resume a schedule; False when there is none."""
    while True:
        raw, spec, _ = await store.read(schedule_id)
        if spec is None:
            return False
        if spec.paused == paused:
            return True
        changed = spec.model_copy(update={"paused": paused})
        next_ms = -1 if paused else next_tick(spec, await store.now_ms())
        if await store.write(schedule_id, changed, next_ms, read=raw) >= 0:
            return True


def schedule_meta(schedule_id: str, tick_ms: int, *, catch_up: bool) -> dict[str, str]:
    """The meta a tick adds to its run or event."""
    return {
        "schedule_id": schedule_id,
        "scheduled_at": moment(tick_ms).isoformat(),
        "catch_up": "1" if catch_up else "0",
    }


def tick_key(schedule_id: str, tick_ms: int) -> str:
    """The idempotency key of a tick's run: every instance firing the tick uses the same."""
    return f"schedule:{schedule_id}:{tick_ms}"
