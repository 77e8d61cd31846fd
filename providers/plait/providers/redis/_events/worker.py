"""Delivering events to this instance's handlers: reading, retries, leases, reclaim, timers.

One reader per (event, group) takes new entries with ``XREADGROUP`` (``BLOCK`` on Redis; on
``memory://`` an in-process wake-up with a slow fallback poll, since fakeredis does not block).
A failed delivery stays pending in its group and waits in the group's retry zset; the timer
claims it back when due, so a retry reaches only the failing group. Live deliveries renew
their lease; entries of a stalled consumer are reclaimed after ``stall_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from redis import exceptions as redis_errors

from plait.events import Event, EventHandler
from plait.workflows import RetryPolicy

from .._core.codecs import PLAIN, Payloads
from .._core.connection import Connection
from .._core.errors import BACKGROUND_ERRORS, CONNECTION_ERRORS
from .._core.keys import EventKeys
from .._core.telemetry import Telemetry
from .._ops.catalog import enroll_events
from .codec import Delivery
from .delivery import DeliveryRunner, Subscription
from .scripts import EventScripts

logger = logging.getLogger("plait.redis.events")

BLOCK_MS = 1000
"""How long a reader blocks in ``XREADGROUP`` on Redis."""
POLL = 1.0
"""Longest sleep of the timer, and the fallback poll of readers on ``memory://``."""
RECLAIM_BATCH = 100


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """What the worker needs to know of its provider's options."""

    prefix: str
    consumer: str
    retry: RetryPolicy
    stall_timeout: float
    concurrency: int
    retention: float
    shutdown_timeout: float
    payloads: Payloads = PLAIN
    """The provider's payload codec."""


class EventWorker:
    """Runs the handlers of one provider; :meth:`serve` owns every background task."""

    def __init__(
        self,
        connection: Connection,
        scripts: EventScripts,
        telemetry: Telemetry,
        *,
        options: WorkerOptions,
        emit: Callable[..., Awaitable[str]],
    ) -> None:
        self._connection = connection
        self._scripts = scripts
        self._options = options
        self._runner = DeliveryRunner(
            scripts,
            telemetry,
            consumer=options.consumer,
            retry=options.retry,
            emit=emit,
            retried=self.wake_timer,
            payloads=options.payloads,
        )
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.streams: dict[str, EventKeys] = {}
        self._limiter = anyio.CapacityLimiter(options.concurrency)
        self._in_flight = 0
        self._slot_freed = anyio.Event()
        self._timer_wake = anyio.Event()
        self._timer_starved = False
        self._loops: TaskGroup | None = None
        self._deliveries: TaskGroup | None = None
        self._stop = anyio.Event()

    def wake_timer(self) -> None:
        """Make the timer look at delayed events and retries now (a new due time is near)."""
        self._timer_wake.set()

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, event: Event[Any, Any], group: str, handler: EventHandler) -> None:
        """Add ``handler`` for ``event`` in ``group``; starts its reader when serving."""
        key = (event.name, group)
        subscription = self.subscriptions.get(key)
        if subscription is None:
            keys = self.streams.setdefault(event.name, EventKeys(self._options.prefix, event.name))
            subscription = self.subscriptions[key] = Subscription(event, group, keys)
            if self._loops is not None:
                self._loops.start_soon(self._read, subscription)
        subscription.handlers.append(handler)

    def know(self, keys: EventKeys) -> None:
        """Remember a stream this instance emitted to (for delayed events and trimming)."""
        self.streams.setdefault(keys.event, keys)

    async def ready(self) -> None:
        """Wait until every subscription's group exists."""
        for subscription in list(self.subscriptions.values()):
            await subscription.ready.wait()

    # -- lifecycle --------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read, run and time deliveries until :meth:`stop`; then drain running ones."""
        self._stop = anyio.Event()
        self._runner.stopping = False
        async with anyio.create_task_group() as deliveries:
            self._deliveries = deliveries
            deliveries.start_soon(self._lease)
            async with anyio.create_task_group() as loops:
                self._loops = loops
                loops.start_soon(self._timer)
                for subscription in list(self.subscriptions.values()):
                    loops.start_soon(self._read, subscription)
                task_status.started()
                await self._stop.wait()
                self._loops = None
                loops.cancel_scope.cancel()
            with anyio.move_on_after(self._options.shutdown_timeout, shield=True):
                while self._in_flight:
                    await self._any_slot_freed()
            if self._in_flight:
                logger.warning("%d deliveries left to be reclaimed", self._in_flight)
            self._runner.stopping = True
            deliveries.cancel_scope.cancel()
        self._deliveries = None

    def stop(self) -> None:
        """Ask :meth:`serve` to stop taking work and drain."""
        self._stop.set()

    # -- reading ----------------------------------------------------------------------------

    async def _read(self, sub: Subscription) -> None:
        """Enroll the event (``_ops/catalog.py``), create ``sub``'s group, then read its new
        entries until cancelled.

        Whatever fails here (Redis unreachable, a key of another type, a bug) is logged and
        tried again with backoff, by this reader alone; a group that vanished is created again.
        """
        create_at: str | None = "$"  # a new group starts at the end of the stream
        delay = 0.05
        while True:
            try:
                if create_at is not None:
                    await enroll_events(self._connection.client, sub.keys.prefix, [sub.keys.event])
                    await self._scripts.create_group(sub.keys, sub.group, create_at)
                    create_at = None
                    sub.ready.set()
                await self._wait_for_slot()
                found = await self._read_new(sub)
            except Exception as error:
                if isinstance(error, redis_errors.ResponseError) and "UNBLOCKED" in str(error):
                    continue  # the stream moved to another node while the read waited
                if isinstance(error, redis_errors.ResponseError) and "NOGROUP" in str(error):
                    logger.warning(
                        "group %s of %s vanished; recreating", sub.group, sub.keys.stream
                    )
                    create_at = "0"
                    continue
                if isinstance(error, CONNECTION_ERRORS):
                    logger.warning("reader of %s: Redis unreachable (%s)", sub.keys.stream, error)
                else:
                    logger.exception("reader of %s failed", sub.keys.stream)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            self._spawn(sub, found)

    async def _read_new(self, sub: Subscription) -> list[Delivery]:
        """New entries of ``sub``'s stream; waits a while for some when there are none."""
        consumer, count = self._options.consumer, self._free()
        wakeups = self._connection.wakeups
        if wakeups is None:
            return await self._scripts.read(
                sub.keys, sub.group, consumer, count=count, block_ms=BLOCK_MS
            )
        # listening before the read: an emit between the read and the wait still wakes it
        async with wakeups.listening(sub.keys.stream) as kicked:
            found = await self._scripts.read(
                sub.keys, sub.group, consumer, count=count, block_ms=None
            )
            if not found:
                with anyio.move_on_after(POLL):
                    await kicked.wait()
            return found

    def _free(self) -> int:
        return max(0, self._options.concurrency - self._in_flight)

    async def _wait_for_slot(self) -> None:
        while self._in_flight >= self._options.concurrency:
            await self._any_slot_freed()

    async def _any_slot_freed(self) -> None:
        """Wait until the next delivery ends (several readers may wait: each wakes)."""
        if self._slot_freed.is_set():  # anyio events are not cleared: replaced once set
            self._slot_freed = anyio.Event()
        await self._slot_freed.wait()

    def _spawn(self, sub: Subscription, found: list[Delivery]) -> None:
        assert self._deliveries is not None
        for delivery in found:
            if delivery.entry in sub.held:
                continue
            sub.held.add(delivery.entry)
            self._in_flight += 1
            self._deliveries.start_soon(self._deliver, sub, delivery)

    # -- running ----------------------------------------------------------------------------

    async def _deliver(self, sub: Subscription, delivery: Delivery) -> None:
        try:
            async with self._limiter:
                await self._runner.run(sub, delivery)
        except Exception:
            logger.exception("delivery %s of %s failed unexpectedly", delivery.entry, sub.keys)
        finally:
            sub.held.discard(delivery.entry)
            self._in_flight -= 1
            self._slot_freed.set()
            if self._timer_starved:
                self._timer_wake.set()

    # -- timers -----------------------------------------------------------------------------

    async def _timer(self) -> None:
        """Promote due delayed events, claim due retries, trim; sleep until the next due time."""
        trim_every = min(max(self._options.retention / 10, 1.0), 60.0)
        trim_at = time.monotonic() + trim_every
        while True:
            self._timer_wake = anyio.Event()
            wait = POLL
            try:
                wait = await self.due()
                if time.monotonic() >= trim_at:
                    trim_at = time.monotonic() + trim_every
                    for keys in list(self.streams.values()):
                        await self.trim(keys)
            except Exception:  # a bug, a reply that does not decode: the next round goes on
                logger.exception("event timer round failed")
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._timer_wake.wait()

    async def busy(self) -> bool:
        """Whether a delivery runs here or a subscribed group has entries not read yet
        (plait.testing: a virtual clock moves only once the work before is done)."""
        if self._in_flight:
            return True
        client = self._connection.client
        for sub in list(self.subscriptions.values()):
            if not sub.ready.is_set():
                continue
            for group in await client.xinfo_groups(sub.keys.stream):
                if group["name"].decode() == sub.group and group["lag"]:
                    return True
        return False

    async def due(self) -> float:
        """Promote due delayed events and claim due retries; returns seconds to the next (the
        timer's pass, also run at once when a test moves the ``memory://`` clock)."""
        wait = POLL
        for keys in list(self.streams.values()):
            wait = min(wait, await self._promote(keys))
        self._timer_starved = False
        for sub in list(self.subscriptions.values()):
            if sub.ready.is_set():
                wait = min(wait, await self._claim(sub))
        return wait

    async def _promote(self, keys: EventKeys) -> float:
        limit = 200
        try:
            moved, next_due, now = await self._scripts.promote(keys, limit)
        except BACKGROUND_ERRORS as error:
            logger.warning("promoting delayed events of %s failed: %s", keys.stream, error)
            return POLL
        if moved >= limit:
            return 0.0
        return POLL if next_due < 0 else max(0.0, (next_due - now) / 1000)

    async def _claim(self, sub: Subscription) -> float:
        free = self._free()
        if free <= 0:
            self._timer_starved = True
            return POLL
        try:
            next_due, now, found = await self._scripts.claim(
                sub.keys, sub.group, self._options.consumer, free
            )
        except BACKGROUND_ERRORS as error:
            logger.warning("claiming retries of %s failed: %s", sub.keys.stream, error)
            return POLL
        self._spawn(sub, found)
        return POLL if next_due < 0 else max(0.0, (next_due - now) / 1000)

    async def trim(self, keys: EventKeys) -> int:
        """Trim ``keys``' stream (see ``event_trim.lua``); returns the entries removed."""
        cutoff = int((time.time() - self._options.retention) * 1000)
        try:
            return await self._scripts.trim(keys, cutoff)
        except BACKGROUND_ERRORS as error:
            logger.warning("trimming %s failed: %s", keys.stream, error)
            return 0

    async def _lease(self) -> None:
        """Renew the entries held here and reclaim those of stalled consumers."""
        options = self._options
        while True:
            await anyio.sleep(options.stall_timeout / 3)
            for sub in list(self.subscriptions.values()):
                if not sub.ready.is_set():
                    continue
                try:
                    if sub.held:
                        held = sorted(sub.held)
                        await self._scripts.renew(sub.keys, sub.group, options.consumer, held)
                    if self._free() > 0 and self._loops is not None:
                        cursor, found, dead = await self._scripts.reclaim(
                            sub.keys,
                            sub.group,
                            options.consumer,
                            min_idle_ms=int(options.stall_timeout * 1000),
                            cursor=sub.cursor,
                            limit=min(self._free(), RECLAIM_BATCH),
                            max_attempts=options.retry.max_attempts,
                        )
                        sub.cursor = cursor
                        if found or dead:
                            logger.warning(
                                "reclaimed %d stalled entries of %s (group %s), %d dead-lettered",
                                len(found), sub.event.name, sub.group, dead,
                            )  # fmt: skip
                        self._spawn(sub, found)
                except BACKGROUND_ERRORS as error:
                    logger.warning("lease of %s failed: %s", sub.keys.stream, error)
                except Exception:  # a bug, a reply that does not decode: the other streams go on
                    logger.exception("lease of %s failed", sub.keys.stream)
