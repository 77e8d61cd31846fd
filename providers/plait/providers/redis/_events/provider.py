"""The public face of the event engine: :class:`RedisEventProvider`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack, overload

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from plait.events import (
    Event,
    EventHandler,
    EventProviderClosedError,
    EventProviderUnavailableError,
    InvalidEventError,
)

from .._core.codecs import Payloads
from .._core.connection import Connection, connect, wrap
from .._core.errors import EVENT_KINDS, translated
from .._core.keys import EventKeys
from .._core.notify import Notifications
from .._core.retry import call_until
from .._core.scheduler import Scheduler
from .._core.schedules import (
    CatchUp,
    ScheduleInfo,
    Schedules,
    ScheduleStore,
    check_schedule,
)
from .._core.supervisor import Supervisor
from .._core.telemetry import Telemetry
from .._core.wire import default_provider_id
from .._ops.health import Health, Readiness, check_health, check_readiness, with_liveness
from .._ops.heartbeat import Heartbeat
from .options import EventProviderKeywords, EventProviderOptions
from .publisher import Publisher, request_seconds, validated
from .schedules import EventFiring, event_schedules, event_spec
from .scripts import EventScripts
from .worker import EventWorker, WorkerOptions

__all__ = ["RedisEventProvider"]

DataT = TypeVar("DataT", bound=BaseModel)
ResultT = TypeVar("ResultT")

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class RedisEventProvider:
    """Durable events on Redis streams: fan-out to groups, competing instances within a group.

    Every group subscribed to an event receives each emitted event; the instances of one group
    (providers with the same ``group``) share its deliveries. Delivery is at-least-once:
    a failed handler is retried with backoff per ``retry`` in its own group only, then the
    event is dead-lettered for that group; the deliveries of an instance that died are
    reclaimed after ``stall_timeout``::

        async with RedisEventProvider.from_url(url, group="billing") as events:
            @events.on(order_placed)
            async def bill(ctx: EventContext[OrderPlaced]) -> None: ...

            await events.emit(order_placed, OrderPlaced(order_id="42"), idempotency_key="o-42")

    Args:
        redis: an existing ``redis.asyncio.Redis`` or ``RedisCluster`` client (never closed by
            the provider).
        group: the default group of handlers registered with :meth:`on`.
        **options: the other fields of :class:`EventProviderOptions` (``prefix``,
            ``provider_id``, ``retention``, ``retry``, ``stall_timeout``, ``concurrency``,
            ``shutdown_timeout``, ``connect_timeout``, ``max_payload_bytes``,
            ``tracer_provider``, ``meter_provider``, ``codec``: a payload codec for event data
            and replies); the provider keeps them as :attr:`options`.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        *,
        group: str,
        _connection: Connection | None = None,
        **options: Unpack[EventProviderKeywords],
    ) -> None:
        _check_group(group)
        chosen = EventProviderOptions(group=group, **options)
        self.options = replace(chosen, provider_id=chosen.provider_id or default_provider_id())
        """The provider's options (``provider_id`` resolved)."""
        opts = self.options
        self._payloads = Payloads(opts.codec)
        self._connection = _connection or wrap(redis)
        self._telemetry = Telemetry(opts.tracer_provider, opts.meter_provider)
        self._scripts = EventScripts(self._connection)
        self._notifications = Notifications(self._connection)
        self._worker = self._new_worker()
        self._publisher = Publisher(
            self._scripts,
            self._notifications,
            self._telemetry,
            prefix=opts.prefix,
            provider_id=self.provider_id,
            retention=opts.retention,
            connect_timeout=opts.connect_timeout,
            published=self._published,
            max_payload=opts.max_payload_bytes,
            payloads=self._payloads,
        )
        self._supervisor = Supervisor(
            self._connection,
            prefix=opts.prefix,
            connect_timeout=opts.connect_timeout.total_seconds(),
            kinds=EVENT_KINDS,
        )
        self._heartbeat = Heartbeat(self._connection.client, opts.prefix, self.provider_id)
        self._schedule_store = ScheduleStore(self._connection, event_schedules(opts.prefix))
        self.schedules = Schedules(self._schedule_store, EVENT_KINDS)
        """The event schedules under this prefix: ``list``, ``get``, ``pause``, ``resume``,
        ``delete`` (made and changed by :meth:`schedule`)."""
        firing = EventFiring(
            self._scripts,
            opts.prefix,
            retention_ms=int(opts.retention.total_seconds() * 1000),
            on_emit=lambda keys: self._published(keys, False),
        )
        self._scheduler = Scheduler(self._schedule_store, firing)

    @classmethod
    def from_url(cls, url: str, *, group: str, **options: Unpack[EventProviderKeywords]) -> Self:
        """A provider on ``redis://``, ``rediss://``, ``unix://`` or ``memory://[NAME]``.

        ``memory://`` is an embedded in-process server shared by every provider of the process
        that opens the same URL. The provider closes the connection it opened here.

        Args:
            url: where Redis is (``redis+cluster://`` for a Redis Cluster).
            group: the default group of handlers registered with :meth:`on`.
            **options: the other fields of :class:`EventProviderOptions`.
        """
        timeout = options.get("connect_timeout") or EventProviderOptions.connect_timeout
        connection = connect(url, connect_timeout=timeout.total_seconds())
        return cls(connection.client, group=group, _connection=connection, **options)

    @property
    def group(self) -> str:
        """The default group of handlers registered with :meth:`on`."""
        return self.options.group

    @property
    def prefix(self) -> str:
        """The start of every key of this provider."""
        return self.options.prefix

    @property
    def provider_id(self) -> str:
        """This instance's consumer name in every group."""
        assert self.options.provider_id is not None  # resolved in __init__
        return self.options.provider_id

    @property
    def concurrency(self) -> int:
        """Handlers running at once on this instance."""
        return self.options.concurrency

    @property
    def subscriptions(self) -> tuple[tuple[str, str], ...]:
        """``(event, group)`` of every handler registered here, in registration order."""
        return tuple(self._worker.subscriptions)

    def _new_worker(self) -> EventWorker:
        options = WorkerOptions(
            prefix=self.prefix,
            consumer=self.provider_id,
            retry=self.options.retry,
            stall_timeout=self.options.stall_timeout.total_seconds(),
            concurrency=self.concurrency,
            retention=self.options.retention.total_seconds(),
            shutdown_timeout=self.options.shutdown_timeout.total_seconds(),
            payloads=self._payloads,
        )
        return EventWorker(
            self._connection, self._scripts, self._telemetry, options=options, emit=self.emit
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Check Redis, start the readers and timers, and create the groups of registered handlers.

        The provider runs in a task of its own until :meth:`stop`; callers that own a task
        group can use :meth:`serve` instead.

        Raises:
            EventProviderUnavailableError: Redis did not answer within ``connect_timeout``.
            EventCommandError: Redis refused a command.
        """
        await self._supervisor.start(self._work)

    async def stop(self) -> None:
        """Stop taking events, wait up to ``shutdown_timeout`` for running handlers, release Redis.

        Handlers still running after the timeout are left to be reclaimed by other instances;
        pending :meth:`request` calls raise :class:`~plait.events.EventProviderClosedError`.
        Also ends a running :meth:`serve`.
        """
        await self._supervisor.stop()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the provider inside the caller's task group until the surrounding scope is cancelled.

        ``await tg.start(events.serve)`` returns once the provider is started (the groups of
        registered handlers exist), as :meth:`start` does; cancelling the scope then stops it
        as :meth:`stop` does (running handlers get up to ``shutdown_timeout`` to finish,
        shielded from the cancellation), and this returns once it is stopped::

            async with anyio.create_task_group() as tg:
                await tg.start(events.serve)
                ...  # emit, handle
                tg.cancel_scope.cancel()

        Raises:
            EventProviderUnavailableError: Redis did not answer, or the groups were not created,
                within ``connect_timeout`` (raised by ``tg.start``).
        """
        await self._supervisor.serve(self._work, task_status=task_status)

    async def _clock_moved(self) -> None:
        """A test moved the ``memory://`` clock: apply what came due now (plait.testing)."""
        await self._worker.due()
        await self._scheduler.fire_due()

    async def _work(
        self, stopping: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self._telemetry.find_tracer()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._notifications.run)
            tg.start_soon(self._heartbeat.serve)
            tg.start_soon(self._scheduler.serve)
            async with anyio.create_task_group() as work:
                await work.start(self._worker.serve)
                with anyio.move_on_after(self.options.connect_timeout.total_seconds()) as waiting:
                    await self._worker.ready()
                try:
                    if not waiting.cancelled_caught:
                        task_status.started()
                        with self._connection.on_clock(self._clock_moved, self._worker.busy):
                            await stopping.wait()
                finally:
                    self._publisher.fail_waiting(
                        EventProviderClosedError("the event provider was stopped")
                    )
                self._worker.stop()
            tg.cancel_scope.cancel()
        if waiting.cancelled_caught:
            raise EventProviderUnavailableError("start: consumer groups not created in time")

    def _published(self, keys: EventKeys, delayed: bool) -> None:
        self._telemetry.events_emitted.add(1, {"plait.event": keys.event})
        self._worker.know(keys)
        if delayed:
            self._worker.wake_timer()

    def _check_open(self) -> None:
        if not self._supervisor.running:
            failure = self._supervisor.failure
            if failure is not None:
                raise EventProviderClosedError(f"the event provider stopped: it died of {failure}")
            raise EventProviderClosedError("the event provider is not started")

    # -- subscribing -------------------------------------------------------------------------

    @overload
    def on(
        self, event: Event[Any, Any], handler: None = None, *, group: str | None = None
    ) -> Callable[[EventHandler], EventHandler]: ...

    @overload
    def on(
        self, event: Event[Any, Any], handler: EventHandler, *, group: str | None = None
    ) -> EventHandler: ...

    def on(
        self,
        event: Event[Any, Any],
        handler: EventHandler | None = None,
        *,
        group: str | None = None,
    ) -> EventHandler | Callable[[EventHandler], EventHandler]:
        """Run ``handler`` for every ``event`` delivered to ``group`` (default: the provider's).

        Usable as ``events.on(event, handler)`` or as the decorator ``@events.on(event)``,
        before or after :meth:`start` (then :meth:`ready` waits for the new group). Handlers
        may be async or sync (run in a worker thread). Several handlers of one group run in
        registration order for each delivery, and a failure of any of them fails the delivery;
        the first non-None return value is the reply to a :meth:`request`.

        Raises:
            InvalidEventError: ``event`` is not an :class:`~plait.events.Event`, or the group
                name is invalid.
        """
        if not isinstance(event, Event):
            raise InvalidEventError("", f"{event!r} is not an Event")
        chosen = self.group if group is None else group
        _check_group(chosen)

        def register(function: EventHandler) -> EventHandler:
            if not callable(function):
                raise InvalidEventError(event.name, f"handler {function!r} is not callable")
            self._worker.subscribe(event, chosen, function)
            return function

        return register if handler is None else register(handler)

    async def ready(self) -> None:
        """Wait until the groups of every registered handler exist in Redis.

        Raises:
            EventProviderClosedError: the provider is not started.
        """
        self._check_open()
        await self._worker.ready()

    # -- emitting ----------------------------------------------------------------------------

    async def emit(
        self,
        event: Event[DataT, Any],
        data: DataT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        delay: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Emit ``event`` to every group subscribed to it.

        Args:
            event: the event definition.
            data: an instance of ``event.data`` or a mapping validated into it.
            idempotency_key: emits with the same key within ``retention`` return the first
                emit's event id and write nothing.
            delay: deliver no earlier than this from now (durable: kept in Redis, delivered by
                any live instance subscribed to the event); cancel it with :meth:`cancel`.
            meta: string meta for handlers (``ctx.meta``); ``correlation_id``, ``traceparent``
                and, inside a handler or a workflow step, ``causation_id`` are added.

        Returns:
            The event id.

        Raises:
            InvalidEventError: ``event`` is not an Event or ``data`` does not validate (nothing
                is written).
            EventProviderUnavailableError: Redis stayed unreachable for ``connect_timeout``.
            EventCommandError: Redis refused the command (e.g. a key of the wrong type).
            EventProviderClosedError: the provider is not started.
        """
        model = validated(event, data)
        self._check_open()
        return await self._publisher.publish(event, model, idempotency_key, delay=delay, meta=meta)

    async def schedule(
        self,
        schedule_id: str,
        event: Event[DataT, Any],
        data: DataT | Mapping[str, Any],
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str = "UTC",
        catchup: CatchUp = "latest_once",
        catchup_window: timedelta = timedelta(hours=1),
        meta: Mapping[str, str] | None = None,
    ) -> ScheduleInfo:
        """Emit ``event`` with ``data`` at each tick of a schedule (create or replace it).

        The same schedules as ``RedisWorkflowProvider.schedule`` (stored in Redis, fired by
        any started event provider of the prefix, each tick one event whose idempotency key
        is ``schedule:<id>:<tick ms>``), without an overlap policy: an emitted event is never
        still going. See :attr:`schedules` to list, pause, resume and delete.

        Args:
            schedule_id: the schedule's name (letters, digits, ``_.:-``; 128 at most).
            event: the event each tick emits.
            data: its data, validated now.
            cron: a cron expression read in ``timezone`` (needs ``plait[schedules]``).
            every: a fixed period instead (at least 1 s), ticking at its multiples since
                the Unix epoch.
            timezone: an IANA name.
            catchup: ticks missed while every instance was down: ``latest_once``, ``all``
                (within ``catchup_window``) or ``none``.
            catchup_window: how far back ``catchup="all"`` goes.
            meta: string pairs added to each event's meta.

        Raises:
            InvalidEventError: the schedule's arguments make no schedule, or ``data`` does not
                validate (nothing is written).
        """
        self._check_open()
        name = getattr(event, "name", "")
        problem = check_schedule(
            schedule_id,
            cron=cron,
            every=every,
            timezone=timezone,
            overlap="allow",
            catchup=catchup,
            catchup_window=catchup_window,
        )
        if problem is not None:
            raise InvalidEventError(name, f"schedule {schedule_id!r}: {problem}")
        spec = event_spec(
            event,
            data,
            cron=cron,
            every=every,
            timezone=timezone,
            catchup=catchup,
            catchup_window=catchup_window,
            meta=meta,
            limit=self.options.max_payload_bytes,
            payloads=self._payloads,
        )
        info = await self.schedules.put(schedule_id, spec)
        self._scheduler.wake()
        return info

    async def request(
        self,
        event: Event[DataT, ResultT],
        data: DataT | Mapping[str, Any],
        *,
        timeout: timedelta | float,
        meta: Mapping[str, str] | None = None,
    ) -> ResultT:
        """Emit ``event`` and wait for the first group's reply (its handler's return value).

        A handler failure is reported once its retries are exhausted (or at once for a
        non-retryable error or an invalid result), so a retry that succeeds within the
        timeout still answers.

        Returns:
            The reply, validated into ``event.result`` (plain JSON when it has none).

        Raises:
            EventTimeoutError: no group replied within ``timeout``.
            EventHandlerError: the first group to answer reported a handler failure.
            InvalidEventError: ``data`` does not validate, or ``timeout`` is not positive
                (nothing is written).
        """
        model = validated(event, data)
        seconds = request_seconds(event, timeout)
        self._check_open()
        result: ResultT = await self._publisher.request(event, model, timeout=seconds, meta=meta)
        return result

    async def cancel(self, event: Event[Any, Any], idempotency_key: str) -> bool:
        """Cancel the delayed emit of ``event`` made with ``idempotency_key``.

        Returns:
            True when it was still waiting (it will never be delivered, and the key may be
            used again); False when it was delivered already, cancelled, or never emitted.
        """
        if not isinstance(event, Event):
            raise InvalidEventError("", f"{event!r} is not an Event")
        self._check_open()
        keys = EventKeys(self.prefix, event.name)
        return await call_until(
            lambda: self._scripts.cancel(keys, idempotency_key),
            timeout=self.options.connect_timeout.total_seconds(),
            what=f"cancel {event.name}",
            kinds=EVENT_KINDS,
        )

    async def health(self) -> Health:
        """The backlog report: Redis reachability and latency, the queues and dead letters of
        every workflow and event of the registry, and the live instances.

        For alerting, not for probes (see :meth:`readiness`); read within ``connect_timeout``,
        with this instance's own liveness (``alive``, see :attr:`alive`: a report of an
        instance that is not alive is not ok). An unreachable Redis gives a report with
        ``ok=False`` rather than an error.

        Raises:
            EventCommandError: Redis refused a command (a key of the wrong type under the
                prefix).
        """
        with translated(EVENT_KINDS, "health"):
            report = await check_health(
                self._connection.client,
                self.prefix,
                stalled_after=2 * self.options.stall_timeout.total_seconds(),
                timeout=self.options.connect_timeout.total_seconds(),
            )
        return with_liveness(report, self._supervisor.problem)

    async def readiness(self) -> Readiness:
        """Whether this instance may take traffic: it is :attr:`alive` and Redis answers a
        ``PING`` within ``connect_timeout``.

        One round trip and no read under the prefix, so no backlog (see :meth:`health`) and no
        size of the keyspace changes the answer: the readiness probe of an API pod that only
        emits. Never raises.
        """
        timeout = self.options.connect_timeout.total_seconds()
        report = await check_readiness(self._connection.client, timeout=timeout)
        return with_liveness(report, self._supervisor.problem)

    @property
    def alive(self) -> bool:
        """Whether this instance runs: started, not stopped, and none of its background work
        (readers, timers, leases, notifications, heartbeat) has died.

        A local flag, no Redis call: cheap enough for a liveness probe. Work that dies is
        logged with its traceback, and the provider stops (``emit`` raises
        :class:`~plait.events.EventProviderClosedError` saying why, ``stop()`` raises the
        error).
        """
        return self._supervisor.problem is None

    async def trim(self, event: Event[Any, Any]) -> int:
        """Trim ``event``'s stream now (instances also do it in the background).

        Entries older than ``retention`` go, except those a group has not read or
        acknowledged yet: a lagging group keeps its events.

        Returns:
            The number of entries removed.
        """
        self._check_open()
        with translated(EVENT_KINDS, f"trim {event.name}"):
            return await self._worker.trim(EventKeys(self.prefix, event.name))


def _check_group(group: str) -> None:
    if not isinstance(group, str) or not GROUP_NAME.match(group):
        raise InvalidEventError(
            "", f"invalid group name {group!r}: must match {GROUP_NAME.pattern}"
        )
