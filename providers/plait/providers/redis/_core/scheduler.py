"""The loop that fires schedules: every instance looks, none leads, each tick fires once.

Every started provider runs one loop per kind of schedule it fires (workflows, events): a due
call (``lua/schedule_due.lua``) tells it, by Redis's clock, which schedules have a tick due and
when the next one comes; it sleeps until then (at most a second, and it is woken when a
schedule is made on this instance). For a due schedule it picks the ticks to fire (catch-up
policy, :func:`~.schedules.plan_ticks`), looks at the previous tick's run (overlap policy),
fires each tick through its engine's ordinary path (``execute``, ``emit``) with the idempotency
key ``schedule:<id>:<tick ms>``, and then moves the schedule on in one call that only the first
instance gets through (``lua/schedule_advance.lua``). Several instances that see the same tick
all fire it and attach to one run; an instance that dies between firing and moving on leaves
the tick due, and the next instance attaches to the same run. A tick is never moved past
before its run exists, and never makes two runs.
"""

from __future__ import annotations

import logging
from typing import Protocol

import anyio

from .errors import CONNECTION_ERRORS
from .schedules import Due, ScheduleState, ScheduleStore, StoredSchedule, plan_ticks

logger = logging.getLogger("plait.schedules")

MAX_SLEEP = 1.0
"""Longest sleep between two looks: bounds how late a tick fires after a missed wake-up."""
BUFFER_RECHECK = 0.25
"""Seconds between two looks at the previous run of a ``buffer_one`` schedule that waits."""


class Firing(Protocol):
    """How an engine fires one tick of its kind of schedule, and looks at what a tick made."""

    async def fire(
        self, schedule_id: str, spec: StoredSchedule, tick_ms: int, *, catch_up: bool
    ) -> str:
        """Fire the tick (idempotently: the key is the schedule id and tick); returns the id of
        the run or event it made (or found)."""
        ...

    async def live(self, spec: StoredSchedule, made: str) -> bool:
        """Whether what a previous tick made is still going."""
        ...

    async def cancel(self, spec: StoredSchedule, made: str) -> None:
        """Cancel what a previous tick made (``cancel_previous``)."""
        ...


class Scheduler:
    """The loop that fires the schedules of one store through one engine."""

    def __init__(self, store: ScheduleStore, firing: Firing) -> None:
        self._store = store
        self._firing = firing
        self._wake = anyio.Event()
        self._held: dict[str, float] = {}

    def wake(self) -> None:
        """A schedule changed: look now."""
        self._wake.set()

    async def serve(self) -> None:
        """Fire due ticks until cancelled."""
        while True:
            self._wake = anyio.Event()
            sleep = MAX_SLEEP
            try:
                sleep = await self.fire_due()
            except CONNECTION_ERRORS as error:
                logger.warning("schedules: a pass failed (%s); retrying", error)
            except Exception:  # an error reply, a reply that does not decode: logged, and the
                # next pass tries again
                logger.exception("schedules: a pass failed; retrying")
            if sleep > 0:
                with anyio.move_on_after(sleep):
                    await self._wake.wait()

    async def fire_due(self) -> float:
        """One pass: fire what is due; returns how long to sleep before the next pass."""
        now_ms, later_ms, found = await self._store.due()
        sleep = MAX_SLEEP if later_ms < 0 else min(max(later_ms - now_ms, 0) / 1000, MAX_SLEEP)
        clock = anyio.current_time()
        for due in found:
            held = self._held.get(due.schedule_id)
            if held is not None and held > clock:
                sleep = min(sleep, held - clock)
                continue
            self._held.pop(due.schedule_id, None)
            try:
                if not await self._fire(due, now_ms):
                    self._held[due.schedule_id] = clock + BUFFER_RECHECK
                    sleep = min(sleep, BUFFER_RECHECK)
            except CONNECTION_ERRORS:
                raise
            except Exception:  # one schedule's failure (its target refused the call) does not
                # hold back the others; it is tried again a second later
                logger.exception("schedule %s: firing failed; trying again", due.schedule_id)
                self._held[due.schedule_id] = clock + MAX_SLEEP
        return sleep

    async def _fire(self, due: Due, now_ms: int) -> bool:
        """Fire ``due``'s ticks and move it on; False when it waits (``buffer_one``)."""
        spec = due.spec
        if spec is None or spec.paused:  # deleted, paused or unreadable since: leave it
            if due.raw_spec and spec is None:
                logger.error("schedule %s: its spec does not parse; skipped", due.schedule_id)
            return True
        ticks, next_ms = plan_ticks(spec, due.due_ms, now_ms)
        previous = due.state.run if due.state is not None else ""
        going = ticks and previous and spec.overlap != "allow"
        if going and await self._firing.live(spec, previous):
            if spec.overlap == "skip":
                ticks = []
            elif spec.overlap == "buffer_one":
                return False
            else:
                await self._firing.cancel(spec, previous)
        if spec.overlap == "buffer_one":
            ticks = ticks[-1:]
        state = due.state
        for tick, catch_up in ticks:
            made = await self._firing.fire(due.schedule_id, spec, tick, catch_up=catch_up)
            state = ScheduleState(tick=tick, run=made)
        if not ticks and due.state is not None:
            state = None  # skipped: the last run stays the one to compare with
        await self._store.advance(due, next_ms, state)
        return True
