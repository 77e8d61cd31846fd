"""Firing workflow schedules: every instance looks, none leads, each tick runs once.

Every started provider runs one loop: a due call (``lua/schedule_due.lua``) tells it, by
Redis's clock, which schedules have a tick due and when the next one comes; it sleeps until
then (at most a second, and it is woken when a schedule is made on this instance). For a due
schedule it picks the ticks to fire (catch-up policy, :func:`plan_ticks`), looks at the previous
tick's run (overlap policy), fires each tick as an ordinary ``execute`` whose idempotency key
is the schedule id plus the tick's time, and then moves the schedule on in one call that only
the first instance gets through (``lua/schedule_advance.lua``). Several instances that see the
same tick all execute it, and attach to one run; an instance that dies between executing and
moving on leaves the tick due, and the next instance attaches to the same run. A tick is never
moved past before its run exists, and never makes two runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from plait.workflows import InvalidInputError, Workflow, WorkflowStatus

from .._core.errors import CONNECTION_ERRORS
from .._core.keys import ScheduleKeys, WorkflowKeys
from .._core.payload import UnstorableError, check_meta, stored_json
from .._core.schedules import (
    Due,
    ScheduleState,
    ScheduleStore,
    StoredSchedule,
    plan_ticks,
    schedule_meta,
    tick_key,
)
from .._core.tracing import outgoing_meta
from .codec import canonical_json, input_hash, limits_of, new_run_id, plan_of
from .scripts import RunScripts

logger = logging.getLogger("plait.schedules")

MAX_SLEEP = 1.0
"""Longest sleep between two looks: bounds how late a tick fires after a missed wake-up."""
BUFFER_RECHECK = 0.25
"""Seconds between two looks at the previous run of a ``buffer_one`` schedule that waits."""
_LIVE = {WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING}


class Scheduler:
    """The loop that fires the workflow schedules under one prefix."""

    def __init__(
        self,
        store: ScheduleStore,
        scripts: RunScripts,
        prefix: str,
        *,
        retention_ms: int,
        default_timeout_ms: int,
        on_execute: Callable[[str, bool], None],
    ) -> None:
        self._store = store
        self._scripts = scripts
        self._client: Any = store.client
        self._prefix = prefix
        self._retention_ms = retention_ms
        self._default_timeout_ms = default_timeout_ms
        self._on_execute = on_execute
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
                # next pass tries again (a spec that does not parse is skipped, not fatal)
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
            except Exception:
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
        if ticks and previous and spec.overlap != "allow" and await self._live(spec, previous):
            if spec.overlap == "skip":
                ticks = []
            elif spec.overlap == "buffer_one":
                return False
            else:
                await self._cancel(spec, previous)
        if spec.overlap == "buffer_one":
            ticks = ticks[-1:]
        state = due.state
        for tick, catch_up in ticks:
            run = await self._execute(due.schedule_id, spec, tick, catch_up=catch_up)
            state = ScheduleState(tick=tick, run=run)
        if not ticks and due.state is not None:
            state = None  # skipped: the last run stays the one to compare with
        await self._store.advance(due, next_ms, state)
        return True

    async def _live(self, spec: StoredSchedule, run_id: str) -> bool:
        keys = WorkflowKeys(self._prefix, spec.target)
        status = await self._client.hget(keys.run(run_id), "status")
        return status is not None and status.decode() in _LIVE

    async def _cancel(self, spec: StoredSchedule, run_id: str) -> None:
        keys = WorkflowKeys(self._prefix, spec.target)
        await self._scripts.cancel(keys, run_id, call=self._scripts.call_id())

    async def _execute(
        self, schedule_id: str, spec: StoredSchedule, tick: int, *, catch_up: bool
    ) -> str:
        name = spec.target
        run_id = new_run_id(name)
        meta = {**spec.meta, **schedule_meta(schedule_id, tick, catch_up=catch_up)}
        timeout_ms = spec.timeout_ms or self._default_timeout_ms
        outcome, found, earliest = await self._scripts.execute(
            WorkflowKeys(self._prefix, name),
            run_id,
            idempotency_key=tick_key(schedule_id, tick),
            input_hash=spec.fire.get("ihash", ""),
            input_json=spec.data,
            meta_json=canonical_json(outgoing_meta(meta, correlation_id=run_id)),
            plan_json=spec.fire.get("plan", "[]"),
            timeout_ms=timeout_ms,
            retention_ms=self._retention_ms,
            limits_json=spec.fire.get("limits", ""),
        )
        if outcome == "created":
            logger.info("schedule %s fired %s", schedule_id, found)
        self._on_execute(name, bool(timeout_ms) and earliest)
        return found


def workflow_spec(
    definition: Workflow[Any, Any],
    data: BaseModel | Mapping[str, Any],
    *,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    overlap: str,
    catchup: str,
    catchup_window: timedelta,
    timeout: timedelta | None,
    meta: Mapping[str, str] | None,
) -> StoredSchedule:
    """The stored spec of a schedule of ``definition`` (checked: a bad argument raises).

    Raises:
        InvalidInputError: ``data`` does not validate, or ``meta`` is not string pairs.
        InvalidDefinitionError: the schedule's own arguments make no schedule.
    """
    name = definition.name
    try:
        model = definition.input.model_validate(data)
        canonical = stored_json(lambda: canonical_json(model.model_dump(mode="json")), "the input")
        user_meta = {} if meta is None else check_meta(meta)
    except (ValidationError, UnstorableError) as error:
        raise InvalidInputError(name, str(error)) from None
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise InvalidInputError(name, f"timeout must be a positive timedelta, not {timeout!r}")
    return StoredSchedule(
        target=name,
        data=canonical,
        cron=cron,
        timezone=timezone,
        every_ms=None if every is None else every // timedelta(milliseconds=1),
        overlap=overlap,  # type: ignore[arg-type]  # checked by check_schedule
        catchup=catchup,  # type: ignore[arg-type]
        window_ms=catchup_window // timedelta(milliseconds=1),
        meta=user_meta,
        timeout_ms=0 if timeout is None else timeout // timedelta(milliseconds=1),
        fire={
            "plan": plan_of(definition),
            "limits": limits_of(definition),
            "ihash": input_hash(canonical),
        },
    )


def workflow_schedules(prefix: str) -> ScheduleKeys:
    """The keys of the workflow schedules under ``prefix``."""
    return ScheduleKeys(prefix, "workflows")
