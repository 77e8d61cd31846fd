"""Time in Redis: promote due retries and expire run deadlines.

One loop per provider ticks the workflows this instance looks after: each when the earliest due
time its last tick found in Redis comes, and at the latest :data:`SWEEP` s after its last tick
(more slowly with many workflows: at most :data:`SWEEP_RATE` of these fallback ticks a second),
so a workflow with nothing due costs nothing between sweeps. A retry scheduled by this instance
wakes its workflow at once, and so does a run whose deadline became the workflow's earliest:
the instance executing it is told by the execute call, every other one on the workflow's
``deadline`` channel, which also carries a retry that became the workflow's earliest. So a
deadline or retry fires within a few ms on every live instance. A channel subscribed again
after pub/sub reconnected (messages may have been lost meanwhile) ticks its workflow at once.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .._core.errors import CONNECTION_ERRORS
from .._core.keys import WorkflowKeys
from .._core.notify import Notifications
from .scripts import RunScripts

logger = logging.getLogger("plait.timers")

SWEEP = 10.0
"""Longest time between two ticks of a workflow (with few workflows): bounds how late a timer
fires when its notification was lost."""
SWEEP_RATE = 20.0
"""Most fallback ticks a second (more workflows stretch :data:`SWEEP`)."""
_RETRY = 1.0
"""Seconds before a tick that failed is tried again."""
_TICKS = 8
"""Most ticks in flight at once."""


class Timers:
    """The timers of the workflows this instance looks after."""

    def __init__(self, scripts: RunScripts, prefix: str, notifications: Notifications) -> None:
        self._scripts = scripts
        self._prefix = prefix
        self._notifications = notifications
        self._due: dict[str, float] = {}
        """Workflow -> when (monotonic) it is ticked next."""
        self._queue: list[tuple[float, str]] = []
        """(when, workflow), a heap; an entry whose time is no longer the workflow's is stale."""
        self._kick = anyio.Event()
        self._limiter = anyio.CapacityLimiter(_TICKS)
        self._tg: TaskGroup | None = None

    def watch(self, workflow: str) -> None:
        """Look after ``workflow``'s retries and deadlines from now on (idempotent)."""
        if workflow in self._due:
            return
        self._schedule(workflow, 0.0)
        if self._tg is not None:
            self._subscribe(self._tg, workflow)

    def wake(self, workflow: str) -> None:
        """Something is due soon in ``workflow``: tick now."""
        if workflow in self._due:
            self._schedule(workflow, 0.0)

    async def catch_up(self) -> None:
        """Tick every workflow now and return when all ticks are done (a test moved the
        ``memory://`` clock: what came due is applied before the test goes on)."""
        async with anyio.create_task_group() as tg:
            for workflow in list(self._due):
                self._due[workflow] = float("inf")  # being ticked: the loop's entry is stale
                tg.start_soon(self._tick, workflow)

    def sweep(self) -> float:
        """Longest time between two ticks of a workflow now."""
        return max(SWEEP, len(self._due) / SWEEP_RATE)

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the loop until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for workflow in self._due:
                self._subscribe(tg, workflow)
            task_status.started()
            await self._loop(tg)

    def _schedule(self, workflow: str, at: float) -> None:
        earlier = not self._queue or at < self._queue[0][0]
        self._due[workflow] = at
        heapq.heappush(self._queue, (at, workflow))
        if earlier:  # than the loop sleeps until
            self._kick.set()

    def _subscribe(self, tg: TaskGroup, workflow: str) -> None:
        channel = WorkflowKeys(self._prefix, workflow).deadline_channel

        def woken(_message: str = "") -> None:
            self.wake(workflow)

        tg.start_soon(lambda: self._notifications.listen(channel, woken, subscribed=woken))

    async def _loop(self, tg: TaskGroup) -> None:
        while True:
            self._kick = anyio.Event()
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                at, workflow = heapq.heappop(self._queue)
                if self._due.get(workflow) == at:
                    self._due[workflow] = float("inf")  # being ticked
                    tg.start_soon(self._tick, workflow)
            sleep = self._queue[0][0] - now if self._queue else SWEEP
            with anyio.move_on_after(max(sleep, 0.0)):
                await self._kick.wait()

    async def _tick(self, workflow: str) -> None:
        keys = WorkflowKeys(self._prefix, workflow)
        after = min(self.sweep(), _RETRY)
        try:
            async with self._limiter:
                _, _, next_due, now = await self._scripts.tick(keys)
            after = self.sweep() * random.uniform(0.5, 1.0)  # spread: not all at once
            if next_due >= 0:
                after = min(max((next_due - now) / 1000, 0.0), after)
        except CONNECTION_ERRORS as error:
            logger.warning("%s: tick failed (%s); retrying", workflow, error)
        except Exception:  # an error reply (a key of another type), a reply that does not
            # decode: logged and tried again (a tick that failed on a due retry or deadline
            # removed it from its set first, so the next tick gets past it)
            logger.exception("%s: tick failed; retrying", workflow)
        if self._due.get(workflow) == float("inf"):  # else woken meanwhile: due again now
            self._schedule(workflow, time.monotonic() + after)
