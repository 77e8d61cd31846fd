"""Time in Redis: promote due retries and expire run deadlines.

Each workflow this instance looks after has one loop that runs the tick script, then sleeps
until the earliest due time in Redis (at most one second, so timers scheduled by other
instances are seen). A retry scheduled by this instance wakes the loop at once.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._core.errors import CONNECTION_ERRORS
from .._core.keys import WorkflowKeys
from .scripts import RunScripts

logger = logging.getLogger("plait.timers")

#: Longest sleep between two ticks: bounds how late a timer set by another instance fires.
MAX_SLEEP = 1.0


class Timers:
    """The timer loops of the workflows this instance looks after."""

    def __init__(self, scripts: RunScripts, prefix: str) -> None:
        self._scripts = scripts
        self._prefix = prefix
        self._wake: dict[str, anyio.Event] = {}
        self._tg: TaskGroup | None = None

    def watch(self, workflow: str) -> None:
        """Look after ``workflow``'s retries and deadlines from now on (idempotent)."""
        if workflow in self._wake:
            return
        self._wake[workflow] = anyio.Event()
        if self._tg is not None:
            self._tg.start_soon(self._loop, workflow)

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
                tg.start_soon(self._loop, workflow)
            task_status.started()
            await anyio.sleep_forever()

    async def _loop(self, workflow: str) -> None:
        keys = WorkflowKeys(self._prefix, workflow)
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
