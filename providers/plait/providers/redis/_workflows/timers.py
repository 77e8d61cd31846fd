"""Time in Redis: promote due retries and expire run deadlines.

Each workflow this instance looks after has one loop that runs the tick script, then sleeps
until the earliest due time in Redis (at most one second: the fallback for a notification
missed while pub/sub reconnects). A retry scheduled by this instance wakes the loop at once, and
so does a run whose deadline became the workflow's earliest: the instance executing it is told
by the execute call, every other one on the workflow's ``deadline`` channel, so a deadline
fires within a few ms on every live instance without ticking any faster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._core.errors import CONNECTION_ERRORS
from .._core.keys import WorkflowKeys
from .._core.notify import Notifications
from .scripts import RunScripts

logger = logging.getLogger("plait.timers")

#: Longest sleep between two ticks: bounds how late a timer fires when its notification was lost.
MAX_SLEEP = 1.0


class Timers:
    """The timer loops of the workflows this instance looks after."""

    def __init__(self, scripts: RunScripts, prefix: str, notifications: Notifications) -> None:
        self._scripts = scripts
        self._prefix = prefix
        self._notifications = notifications
        self._wake: dict[str, anyio.Event] = {}
        self._tg: TaskGroup | None = None

    def watch(self, workflow: str) -> None:
        """Look after ``workflow``'s retries and deadlines from now on (idempotent)."""
        if workflow in self._wake:
            return
        self._wake[workflow] = anyio.Event()
        if self._tg is not None:
            self._start(self._tg, workflow)

    def wake(self, workflow: str) -> None:
        """Something is due soon in ``workflow``: tick now."""
        event = self._wake.get(workflow)
        if event is not None:
            event.set()

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the loops until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for workflow in self._wake:
                self._start(tg, workflow)
            task_status.started()
            await anyio.sleep_forever()

    def _start(self, tg: TaskGroup, workflow: str) -> None:
        keys = WorkflowKeys(self._prefix, workflow)
        tg.start_soon(self._loop, keys)
        tg.start_soon(self._notifications.listen, keys.deadline_channel, self._waker(workflow))

    def _waker(self, workflow: str) -> Callable[[str], None]:
        return lambda _deadline: self.wake(workflow)

    async def _loop(self, keys: WorkflowKeys) -> None:
        workflow = keys.workflow
        while True:
            wake = self._wake[workflow] = anyio.Event()
            sleep = MAX_SLEEP
            try:
                _, _, next_due, now = await self._scripts.tick(keys)
                if next_due >= 0:
                    sleep = min(max((next_due - now) / 1000, 0.0), MAX_SLEEP)
            except CONNECTION_ERRORS as error:
                logger.warning("%s: tick failed (%s); retrying", workflow, error)
            except Exception:  # an error reply (a key of another type), a reply that does not
                # decode: logged and tried again next round (a tick that failed on a due retry
                # or deadline removed it from its set first, so the next tick gets past it)
                logger.exception("%s: tick failed; retrying", workflow)
            if sleep > 0:
                with anyio.move_on_after(sleep):
                    await wake.wait()
