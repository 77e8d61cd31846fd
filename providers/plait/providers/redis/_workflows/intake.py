"""Where a provider's idle workflows wait for jobs: one wake-up for all of them.

A workflow whose reads found nothing for a second stops reading its stream (see ``worker``): it
sets the ``idle`` field of its ``stats`` hash, reads once more without blocking and, when that
finds nothing, parks here. A script that adds an entry to the stream while the field is there
deletes it and publishes on the workflow's ``wake`` channel; the provider's one pub/sub
connection carries the wake-ups of every workflow, and the parked worker reads again. So an
idle workflow holds no connection and sends no command, whatever the number of workflows, on a
single Redis as on a Cluster (where one blocking read cannot cover streams of several slots).
On ``memory://`` the scripts' in-process wake-ups (:class:`~.._core.memory.WakeUps`) take the
place of the channel.

What a lost message would miss is found by a sweep: every :data:`SWEEP` s, or every
``stall_timeout / 2`` when that is shorter (more slowly with many parked workflows: at most
:data:`SWEEP_RATE` of them a second), one pipelined ``XINFO GROUPS`` per parked workflow
(split per node on a Cluster) measures its depth and wakes
the workflows whose group has entries not delivered yet (lag) or pending ones (a reclaim pass
takes over those of a dead instance). The same check runs at once for the workflows whose
channel was just subscribed (at start, and again after pub/sub reconnected, when messages may
have been lost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from .._core.connection import Connection
from .._core.errors import BACKGROUND_ERRORS
from .._core.keys import GROUP, WorkflowKeys
from .._core.notify import Notifications
from .._core.wire import lenient_text

logger = logging.getLogger("plait.worker")

SWEEP = 5.0
"""Most seconds between two sweeps of the parked workflows (the pickup delay of a lost wake-up);
``stall_timeout / 2`` when shorter, as often as a busy workflow's reclaim passes."""
SWEEP_RATE = 250
"""Most parked workflows one instance sweeps a second (more stretch the sweep's period)."""
_BATCH = 250
_GATHER = 0.05
"""Seconds a check of just-subscribed channels waits for more confirmations to come."""
"""Commands per pipeline of a sweep."""
_STARTING = 8
"""Most idle-path calls (preparing a group, parking) in flight at once: thousands of workflows
starting together must not take a pooled connection each."""

Entries = list[tuple[bytes, Any]]


class Parker(Protocol):
    """What a worker shows the intake while it is parked."""

    keys: WorkflowKeys
    depth: int
    announcement: str
    """What this instance announces it can run of the workflow (without its time)."""
    armed: bool
    """Whether the ``idle`` field is set already (by :meth:`Intake.prepare`)."""
    prepared: bool
    """Whether its group and announcement were made (by :meth:`Intake.prepare`)."""

    @property
    def owner(self) -> str:
        """The instance's consumer name."""
        ...


@dataclass
class _Parked:
    worker: Parker
    woken: anyio.Event = field(default_factory=anyio.Event)
    reason: str = ""

    def wake(self, reason: str) -> None:
        if not self.woken.is_set():
            self.reason = reason
            self.woken.set()


class Intake:
    """The wake-ups and the sweep of one provider's parked workflows."""

    def __init__(
        self, connection: Connection, notifications: Notifications, *, stall: float
    ) -> None:
        self._connection = connection
        self._every = min(SWEEP, stall / 2)  # a reclaim pass of a parked workflow is due so often
        self._client: Any = connection.client
        self._notifications = notifications
        self._parked: dict[str, _Parked] = {}
        self._recheck: set[str] = set()
        """Streams whose wake channel was (re)subscribed since the last check."""
        self._rechecking = anyio.Event()
        self.limiter = anyio.CapacityLimiter(_STARTING)
        """Bounds the idle-path calls in flight (shared by every worker of the provider)."""

    @property
    def parked(self) -> int:
        """Workflows waiting here now."""
        return len(self._parked)

    async def prepare(self, workers: Sequence[Parker]) -> None:
        """Create the consumer groups of ``workers``, announce what they can run and arm their
        wake-ups, a few pipelines for all of them (those this fails for prepare on their own).
        """
        seconds, micros = await self._client.time()  # announcements carry Redis' time
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        for start in range(0, len(workers), _BATCH):
            batch = workers[start : start + _BATCH]
            pipe = self._client.pipeline(transaction=False)
            for worker in batch:
                pipe.xgroup_create(worker.keys.jobs, GROUP, id="0", mkstream=True)
                pipe.hset(worker.keys.consumers, worker.owner, f"{now_ms}|{worker.announcement}")
                if self._connection.wakeups is None:
                    pipe.hset(worker.keys.stats, "idle", "1")
            try:
                replies = await pipe.execute(raise_on_error=False)
            except BACKGROUND_ERRORS as error:
                logger.warning("preparing %d workflows failed (%s)", len(batch), error)
                return
            width = len(replies) // len(batch)
            for i, worker in enumerate(batch):
                created, *rest = replies[i * width : (i + 1) * width]
                if any(isinstance(reply, Exception) for reply in rest) or (
                    isinstance(created, Exception) and "BUSYGROUP" not in str(created)
                ):
                    continue
                worker.armed = self._connection.wakeups is None
                worker.prepared = True

    async def listen(self, keys: WorkflowKeys) -> None:
        """Subscribe to the ``wake`` channel of ``keys``' workflow (before it first parks)."""
        if self._connection.wakeups is not None:
            return

        def woken(_message: str = "") -> None:
            self.wake(keys.jobs, "entries")

        def subscribed() -> None:  # a wake-up may have been missed until now: checked
            self._recheck.add(keys.jobs)
            self._rechecking.set()

        await self._notifications.listen(keys.wake_channel, woken, subscribed=subscribed)

    def wake(self, jobs: str, reason: str) -> None:
        """Wake the worker parked on ``jobs`` (if any): ``entries`` or ``reclaim``."""
        parked = self._parked.get(jobs)
        if parked is not None:
            parked.wake(reason)

    async def park(
        self, worker: Parker, read: Callable[[], Awaitable[Entries]]
    ) -> tuple[Entries, str]:
        """Arm the wake-up, ``read()`` once more, and wait until woken when it found nothing.

        Returns the entries that read found (reason ``entries``), or none and why the worker
        was woken: ``entries`` (some were added), ``reclaim`` (the group has pending entries),
        ``error`` (arming failed; the worker reads again after a pause).
        """
        jobs = worker.keys.jobs
        parked = self._parked[jobs] = _Parked(worker)
        try:
            wakeups = self._connection.wakeups
            if wakeups is not None:
                with wakeups.telling(jobs, parked.woken):
                    async with self.limiter:
                        entries = await read()
                    if entries:
                        return entries, "entries"
                    await parked.woken.wait()
            else:
                try:
                    async with self.limiter:
                        if not worker.armed:
                            await self._client.hset(worker.keys.stats, "idle", "1")
                        worker.armed = False
                        entries = await read()
                except BACKGROUND_ERRORS as error:
                    logger.warning("%s: waiting for jobs failed (%s); retrying", jobs, error)
                    await anyio.sleep(0.5)
                    return [], "error"
                if entries:
                    return entries, "entries"
                await parked.woken.wait()
        finally:
            if self._parked.get(jobs) is parked:
                del self._parked[jobs]
        return [], parked.reason

    def period(self) -> float:
        """Seconds until the next sweep."""
        return max(self._every, len(self._parked) / SWEEP_RATE)

    async def serve(self) -> None:
        """Sweep the parked workflows until cancelled, and those whose channel was just
        subscribed (again) at once: one pipelined check instead of a read each."""
        next_sweep = time.monotonic() + self.period()
        while True:
            with anyio.move_on_after(max(next_sweep - time.monotonic(), 0.0)):
                await self._rechecking.wait()
            only: set[str] | None = None
            if self._rechecking.is_set():
                await anyio.sleep(_GATHER)  # confirmations come in bursts
                self._rechecking = anyio.Event()
                only, self._recheck = self._recheck, set()
            else:
                next_sweep = time.monotonic() + self.period()
            try:
                await self.sweep(only)
            except Exception:  # a reply that does not decode: logged, the next sweep goes on
                logger.exception("sweeping idle workflows failed")

    async def sweep(self, only: set[str] | None = None) -> None:
        """Measure every parked workflow's group (or those of ``only``); wake those with
        entries to read or reclaim."""
        parked = [(jobs, p) for jobs, p in self._parked.items() if only is None or jobs in only]
        for start in range(0, len(parked), _BATCH):
            batch = parked[start : start + _BATCH]
            pipe = self._client.pipeline(transaction=False)
            for jobs, _ in batch:
                pipe.xinfo_groups(jobs)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except BACKGROUND_ERRORS as error:
                logger.warning("sweeping idle workflows failed (%s)", error)
                return
            for (_, waiting), reply in zip(batch, replies, strict=True):
                reason = _verdict(waiting.worker, reply)
                if reason:
                    waiting.wake(reason)


def _verdict(worker: Parker, reply: Any) -> str:
    """Why a parked worker must wake after the sweep read ``reply`` ("" when it need not)."""
    if isinstance(reply, Exception):
        return "entries"  # the stream or group is gone: its read recreates them
    for group in reply:
        if lenient_text(group.get("name")) == GROUP:
            pending = int(group.get("pending") or 0)
            lag = group.get("lag")
            worker.depth = pending + int(lag or 0)
            if pending:
                return "reclaim"
            return "entries" if lag is None or int(lag) > 0 else ""
    return "entries"
