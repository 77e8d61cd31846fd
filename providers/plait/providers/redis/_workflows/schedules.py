"""Workflow schedules: their stored spec, and firing a tick as an ordinary ``execute``.

The loop that decides which ticks fire is :mod:`.._core.scheduler`; here is what a workflow
schedule stores (plan, limits and input hash, so any instance fires it without the definition),
how its tick runs, and :class:`WorkflowSchedules`, a provider's schedules and their scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from plait.workflows import InvalidDefinitionError, InvalidInputError, Workflow, WorkflowStatus

from .._core.codecs import PLAIN, Payloads
from .._core.keys import ScheduleKeys, WorkflowKeys
from .._core.payload import UnstorableError, check_meta, stored_json
from .._core.scheduler import Scheduler
from .._core.schedules import (
    CatchUp,
    Overlap,
    ScheduleInfo,
    Schedules,
    ScheduleStore,
    StoredSchedule,
    check_schedule,
    schedule_meta,
    tick_key,
)
from .._core.tracing import outgoing_meta
from .codec import canonical_json, input_hash, limits_for, new_run_id, plan_of
from .scripts import RunScripts
from .timers import Timers

logger = logging.getLogger("plait.schedules")

_LIVE = {WorkflowStatus.PENDING, WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING}


class WorkflowFiring:
    """Fires a tick of a workflow schedule as an ``execute`` (see :mod:`.._core.scheduler`)."""

    def __init__(
        self,
        scripts: RunScripts,
        client: Any,
        prefix: str,
        *,
        retention_ms: int,
        default_timeout_ms: int,
        on_execute: Callable[[str, bool], None],
    ) -> None:
        self._scripts = scripts
        self._client = client
        self._prefix = prefix
        self._retention_ms = retention_ms
        self._default_timeout_ms = default_timeout_ms
        self._on_execute = on_execute

    async def live(self, spec: StoredSchedule, made: str) -> bool:
        """Whether the run is still going."""
        status = await self._client.hget(
            WorkflowKeys(self._prefix, spec.target).run(made), "status"
        )
        return status is not None and status.decode() in _LIVE

    async def cancel(self, spec: StoredSchedule, made: str) -> None:
        """Cancel the run (its completed steps are compensated)."""
        keys = WorkflowKeys(self._prefix, spec.target)
        await self._scripts.cancel(keys, made, call=self._scripts.call_id())

    async def fire(
        self, schedule_id: str, spec: StoredSchedule, tick_ms: int, *, catch_up: bool
    ) -> str:
        """Execute the tick's run (or attach to it); returns its run id."""
        name = spec.target
        run_id = new_run_id(name)
        meta = {**spec.meta, **schedule_meta(schedule_id, tick_ms, catch_up=catch_up)}
        timeout_ms = spec.timeout_ms or self._default_timeout_ms
        outcome, found, earliest = await self._scripts.execute(
            WorkflowKeys(self._prefix, name),
            run_id,
            idempotency_key=tick_key(schedule_id, tick_ms),
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
    schedule_id: str,
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
    limit: int,
    payloads: Payloads = PLAIN,
) -> StoredSchedule:
    """The stored spec of a schedule of ``definition`` (checked: a bad argument raises; the
    input is at most ``limit`` bytes of JSON, stored through ``payloads``).

    Raises:
        InvalidInputError: ``data`` does not validate, or ``meta`` is not string pairs.
        InvalidDefinitionError: the schedule's own arguments make no schedule.
        TypeError: ``definition`` is not a Workflow.
    """
    if not isinstance(definition, Workflow):
        raise TypeError(f"expected a Workflow, got {type(definition).__name__}")
    problem = check_schedule(
        schedule_id,
        cron=cron,
        every=every,
        timezone=timezone,
        overlap=overlap,
        catchup=catchup,
        catchup_window=catchup_window,
    )
    if problem is not None:
        raise InvalidDefinitionError(f"schedule {schedule_id!r}: {problem}")
    name = definition.name
    try:
        model = definition.input.model_validate(data)
        canonical = stored_json(
            lambda: canonical_json(model.model_dump(mode="json")), "the input", limit=limit
        )
        user_meta = {} if meta is None else check_meta(meta)
        limits = limits_for(definition, model)
        sealed = payloads.seal(canonical, "the input")
    except (ValidationError, UnstorableError) as error:
        raise InvalidInputError(name, str(error)) from None
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise InvalidInputError(name, f"timeout must be a positive timedelta, not {timeout!r}")
    return StoredSchedule(
        target=name,
        data=sealed,
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
            "limits": limits,
            "ihash": input_hash(canonical),
        },
    )


def workflow_schedules(prefix: str) -> ScheduleKeys:
    """The keys of the workflow schedules under ``prefix``."""
    return ScheduleKeys(prefix, "workflows")


class WorkflowSchedules:
    """A provider's workflow schedules (``schedules``, in ``store``): made by :meth:`put`, fired
    by :attr:`scheduler`."""

    def __init__(
        self,
        schedules: Schedules,
        store: ScheduleStore,
        scripts: RunScripts,
        *,
        client: Any,
        prefix: str,
        timers: Timers,
        definitions: dict[str, Workflow[Any, Any]],
        retention_ms: int,
        default_timeout_ms: int,
        max_payload: int,
        payloads: Payloads,
    ) -> None:
        self._timers = timers
        self._definitions = definitions
        self._max_payload = max_payload
        self._payloads = payloads
        self._schedules = schedules
        firing = WorkflowFiring(
            scripts,
            client,
            prefix,
            retention_ms=retention_ms,
            default_timeout_ms=default_timeout_ms,
            on_execute=self._scheduled,
        )
        self.scheduler = Scheduler(store, firing)
        """The loop that fires due ticks (run by the started provider)."""

    async def put(
        self,
        schedule_id: str,
        definition: Workflow[Any, Any],
        data: BaseModel | Mapping[str, Any],
        *,
        cron: str | None,
        every: timedelta | None,
        timezone: str,
        overlap: Overlap,
        catchup: CatchUp,
        catchup_window: timedelta,
        timeout: timedelta | None,
        meta: Mapping[str, str] | None,
    ) -> ScheduleInfo:
        """Create or replace schedule ``schedule_id`` (see ``RedisWorkflowProvider.schedule``)."""
        spec = workflow_spec(
            schedule_id,
            definition,
            data,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap=overlap,
            catchup=catchup,
            catchup_window=catchup_window,
            timeout=timeout,
            meta=meta,
            limit=self._max_payload,
            payloads=self._payloads,
        )
        self._definitions.setdefault(definition.name, definition)
        info = await self._schedules.put(schedule_id, spec)
        self.scheduler.wake()
        return info

    def _scheduled(self, workflow: str, earliest: bool) -> None:
        """A schedule executed a run of ``workflow``: its timers must look after it."""
        self._timers.watch(workflow)
        if earliest:
            self._timers.wake(workflow)
