"""``RedisWorkflowProvider``: the public face of the workflow engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack, overload

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster

from plait.workflows import (
    ConcurrencyKeyBusyError,
    IdempotencyConflictError,
    InvalidDefinitionError,
    ProviderClosedError,
    RunPage,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
)

from .._core.codecs import Payloads
from .._core.connection import Connection, connect, wrap
from .._core.errors import WORKFLOW_KINDS, translated
from .._core.notify import Notifications
from .._core.retry import call_until
from .._core.schedules import CatchUp, Overlap, ScheduleInfo, Schedules, ScheduleStore
from .._core.supervisor import Supervisor
from .._core.telemetry import Telemetry
from .._core.wire import default_provider_id
from .._ops.catalog import Enrollment
from .._ops.health import Health, Readiness, check_health, check_readiness, with_liveness
from .._ops.heartbeat import Heartbeat
from .capabilities import Pins, announcement, pins_of
from .codec import new_run_id
from .directory import RunDirectory
from .handlers import Handlers
from .intake import Intake
from .lease import Leases
from .lifecycle import Lifecycle
from .options import WorkflowProviderKeywords, WorkflowProviderOptions
from .reconciler import Reconciler, ReconcileStats
from .runs import Runs
from .schedules import WorkflowSchedules, workflow_schedules
from .scripts import RunScripts
from .submission import script_call, seconds, submission_of
from .timers import Timers
from .waits import Signals
from .worker import Worker

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT")


class RedisWorkflowProvider:
    """Runs workflows on Redis (or the embedded ``memory://`` server).

    Any instance can ``execute`` runs; instances that ``register`` a consumer also run steps.
    Use it as an async context manager, or call :meth:`start` and :meth:`stop`::

        async with RedisWorkflowProvider.from_url("redis://localhost:6379/0") as workflows:
            workflows.register(orders)
            handle = await workflows.execute(place_order, order, idempotency_key="order-42")
            receipt = await handle.result()

    Args:
        redis: an existing ``redis.asyncio.Redis`` or ``RedisCluster`` (never closed by the
            provider).
        **options: the fields of :class:`WorkflowProviderOptions` (``prefix``,
            ``provider_id``, ``default_timeout``, ``stall_timeout``, ``concurrency``,
            ``retention``, ``retry``, ``shutdown_timeout``, ``connect_timeout``,
            ``reconcile_interval``, ``missing_handler_grace``, ``max_payload_bytes``,
            ``tracer_provider``, ``meter_provider``, ``events``: an event provider for
            ``ctx.emit``, ``codec``: a payload codec for inputs, results, progress and
            signals); the provider keeps them as :attr:`options`.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        *,
        _connection: Connection | None = None,
        **options: Unpack[WorkflowProviderKeywords],
    ) -> None:
        chosen = WorkflowProviderOptions(**options)
        self.options = replace(chosen, provider_id=chosen.provider_id or default_provider_id())
        """The provider's options (``provider_id`` resolved)."""
        opts = self.options
        self._payloads = Payloads(opts.codec)
        self._connection = _connection or wrap(redis)
        self._scripts = RunScripts(self._connection)
        self._telemetry = Telemetry(opts.tracer_provider, opts.meter_provider)
        self._telemetry.watch_depth(self._depths)
        self._notifications = Notifications(self._connection)
        self._runs = Runs(
            self._connection,
            self._scripts,
            self._notifications,
            prefix=opts.prefix,
            connect_timeout=opts.connect_timeout.total_seconds(),
            payloads=self._payloads,
        )
        self._runs.close()
        self._timers = Timers(self._scripts, opts.prefix, self._notifications)
        self._intake = Intake(
            self._connection, self._notifications, stall=opts.stall_timeout.total_seconds()
        )
        self._reconciler = Reconciler(
            self._connection,
            self._scripts,
            opts.prefix,
            owner=self.provider_id,
            min_age=opts.stall_timeout.total_seconds(),
            retention=opts.retention.total_seconds(),
        )
        self._workers: dict[str, Worker] = {}
        self._leases = Leases(
            self._connection, owner=self.provider_id, period=opts.stall_timeout.total_seconds() / 4
        )
        self._definitions: dict[str, Workflow[Any, Any]] = {}
        self._signals = Signals(
            self._connection,
            self._scripts,
            self._definitions,
            prefix=opts.prefix,
            connect_timeout=opts.connect_timeout.total_seconds(),
            max_payload=opts.max_payload_bytes,
            payloads=self._payloads,
        )
        self._supervisor = Supervisor(
            self._connection,
            prefix=opts.prefix,
            connect_timeout=opts.connect_timeout.total_seconds(),
            kinds=WORKFLOW_KINDS,
        )
        self._schedule_store = ScheduleStore(self._connection, workflow_schedules(opts.prefix))
        self.schedules = Schedules(self._schedule_store, WORKFLOW_KINDS)
        """The workflow schedules under this prefix: ``list``, ``get``, ``pause``, ``resume``,
        ``delete`` (made and changed by :meth:`schedule`)."""
        self._scheduling = WorkflowSchedules(
            self.schedules,
            self._schedule_store,
            self._scripts,
            client=self._connection.client,
            prefix=opts.prefix,
            timers=self._timers,
            definitions=self._definitions,
            retention_ms=int(opts.retention.total_seconds() * 1000),
            default_timeout_ms=int(seconds(opts.default_timeout) or 0) * 1000,
            max_payload=opts.max_payload_bytes,
            payloads=self._payloads,
        )
        self._heartbeat = Heartbeat(
            self._connection.client, opts.prefix, self.provider_id, announcements=self._announced
        )
        self._pins: dict[Workflow[Any, Any], Pins] = {}
        """What runs of each definition executed here record (computed once per definition)."""
        self._enrollment = Enrollment(self._connection.client, opts.prefix)
        self._lifecycle = Lifecycle(
            self._connection,
            self._workers,
            options=opts,
            runs=self._runs,
            telemetry=self._telemetry,
            leases=self._leases,
            notifications=self._notifications,
            heartbeat=self._heartbeat,
            timers=self._timers,
            reconciler=self._reconciler,
            scheduler=self._scheduling.scheduler,
            intake=self._intake,
            enrollment=self._enrollment,
        )
        self._directory = RunDirectory(
            self._connection,
            self._scripts,
            self._runs,
            timers=self._timers,
            definitions=self._definitions,
            connect_timeout=opts.connect_timeout.total_seconds(),
            check_started=self._check_started,
        )

    @classmethod
    def from_url(cls, url: str, **options: Unpack[WorkflowProviderKeywords]) -> Self:
        """A provider on ``redis://``, ``rediss://``, ``unix://`` or ``memory://[NAME]``.

        ``memory://`` is an embedded in-process server shared by every provider of the process
        that opens the same URL. The provider closes the connection it opened here.

        Args:
            url: where Redis is (``redis+cluster://`` for a Redis Cluster).
            **options: the fields of :class:`WorkflowProviderOptions`.
        """
        timeout = options.get("connect_timeout") or WorkflowProviderOptions.connect_timeout
        connection = connect(url, connect_timeout=timeout.total_seconds())
        return cls(connection.client, _connection=connection, **options)

    @property
    def prefix(self) -> str:
        """The first part of every key of this provider."""
        return self.options.prefix

    @property
    def provider_id(self) -> str:
        """This instance's name in consumer groups, heartbeats and errors."""
        assert self.options.provider_id is not None  # resolved in __init__
        return self.options.provider_id

    @property
    def registered(self) -> tuple[str, ...]:
        """The workflows whose steps this instance runs, in registration order."""
        return tuple(self._workers)

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
        """Check Redis, then start the workers of registered consumers and the timers.

        The provider runs in a task of its own until :meth:`stop`; callers that own a task
        group can use :meth:`serve` instead.

        Raises:
            ProviderUnavailableError: Redis did not answer within ``connect_timeout``.
        """
        await self._supervisor.start(self._lifecycle.work)

    async def stop(self) -> None:
        """Stop taking steps, wait up to ``shutdown_timeout`` for running ones, release Redis.

        Steps still running after the timeout are interrupted and handed back at once, without
        spending an attempt, for other instances to run (what cannot be handed back within a
        second is reclaimed after ``stall_timeout``);
        pending ``result()`` and ``watch()`` calls on this instance raise
        :class:`~plait.workflows.ProviderClosedError`. Also ends a running :meth:`serve`.
        """
        await self._supervisor.stop()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the provider inside the caller's task group until the surrounding scope is cancelled.

        ``await tg.start(workflows.serve)`` returns once the provider is started, as
        :meth:`start` does; cancelling the scope then stops it as :meth:`stop` does (running
        steps get up to ``shutdown_timeout`` to finish, shielded from the cancellation), and
        this returns once it is stopped::

            async with anyio.create_task_group() as tg:
                await tg.start(workflows.serve)
                ...  # execute, serve requests
                tg.cancel_scope.cancel()

        Raises:
            ProviderUnavailableError: Redis did not answer within ``connect_timeout`` (raised
                by ``tg.start``).
        """
        await self._supervisor.serve(self._lifecycle.work, task_status=task_status)

    def register(self, consumer: WorkflowConsumer[Any, Any]) -> None:
        """Run ``consumer``'s steps on this instance (before or after :meth:`start`).

        Raises:
            InvalidDefinitionError: a step has no handler, or a step-less workflow has no
                ``on_complete``, or the workflow is registered twice.
        """
        consumer.validate()
        name = consumer.definition.name
        if name in self._workers:
            raise InvalidDefinitionError(f"workflow {name!r} is registered twice")
        handlers = Handlers(
            consumer,
            self.options.retry,
            max_payload=self.options.max_payload_bytes,
            events=self.options.events,
            payloads=self._payloads,
        )
        worker = Worker(
            self._connection,
            self._scripts,
            handlers,
            options=self.options,
            announcement=announcement(handlers.jobs(), consumer.definition.version),
            leases=self._leases,
            telemetry=self._telemetry,
            on_retry=self._timers.wake,
            intake=self._intake,
        )
        self._workers[name] = worker
        self._pins = {d: pin for d, pin in self._pins.items() if d.name != name}
        self._definitions[name] = consumer.definition
        self._timers.watch(name)
        self._lifecycle.add(name, worker)

    # -- executing ---------------------------------------------------------------------------

    async def execute(
        self,
        definition: Workflow[InputT, OutputT],
        data: InputT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
        start_at: datetime | None = None,
        delay: timedelta | None = None,
        concurrency_key: str | None = None,
        debounce: timedelta | None = None,
        debounce_key: str | None = None,
        debounce_max_wait: timedelta | None = None,
    ) -> WorkflowHandle[OutputT]:
        """Start a run of ``definition`` (or attach to the run owning ``idempotency_key``).

        The run, its idempotency key and its first step jobs are written in one atomic call;
        the handle is returned as soon as that is durable.

        Args:
            definition: the workflow to run.
            data: its input, an instance of the workflow's input model or a mapping for it.
            idempotency_key: one run per key and workflow, kept until ``retention`` after the
                run ends; the same key with a different input raises
                :class:`~plait.workflows.IdempotencyConflictError`.
            timeout: the run's deadline, counted from now (default: ``default_timeout``).
            meta: string pairs carried to every step, with ``correlation_id`` and
                ``traceparent``.
            start_at: start the run at this (aware) time instead of now, on Redis's clock.
                The run is created now, PENDING (so its idempotency key holds at once), and
                parked until then; its ``timeout`` counts from its start.
            delay: start the run this long from now (the same, relative).
            concurrency_key: the run's concurrency key (default: the workflow's
                ``concurrency_key`` of the input, if it has one): at most the workflow's
                ``per_key_limit`` runs of one key are live at once, across all instances.
            debounce: a quiet period: executes with one ``debounce_key`` within it make one
                run, which starts once no execute of the key came for that long, with the
                latest execute's input and meta; every caller gets that run's handle (only
                the first with ``created=True``). The run's timeout counts from the first.
            debounce_key: what makes executes one burst (required with ``debounce``).
            debounce_max_wait: the run starts at the latest this long after the burst's
                first execute, however long the burst goes on.

        Raises:
            InvalidInputError: ``data`` does not validate (nothing is written).
            IdempotencyConflictError: the key belongs to a run with a different input.
            ConcurrencyKeyBusyError: ``per_key_strategy="reject_new"`` and the concurrency
                key's runs are all live (nothing is written).
            ProviderUnavailableError: Redis did not answer within ``connect_timeout``.
            RedisCommandError: Redis refused the command (e.g. a key of the wrong type).
        """
        self._check_started()
        submission = submission_of(
            definition,
            data,
            idempotency_key=idempotency_key,
            timeout=timeout,
            meta=meta,
            start_at=start_at,
            delay=delay,
            concurrency_key=concurrency_key,
            debounce=debounce,
            debounce_key=debounce_key,
            debounce_max_wait=debounce_max_wait,
            max_payload=self.options.max_payload_bytes,
            default_timeout=self.options.default_timeout,
            payloads=self._payloads,
        )
        name = submission.name
        run_id = new_run_id(name)
        keys = self._runs.keys(name)
        self._definitions.setdefault(name, definition)
        with self._telemetry.producing(
            f"execute {name}", operation="execute", destination=name, message_id=run_id
        ):
            call = script_call(
                self._scripts,
                keys,
                run_id,
                submission,
                definition=definition,
                retention_ms=int(self.options.retention.total_seconds() * 1000),
                pinned=lambda: self._pinned(definition).args(),
            )
            outcome, found, earliest = await self._enrollment.alongside(
                name,
                lambda: call_until(
                    call,
                    timeout=self.options.connect_timeout.total_seconds(),
                    what=f"execute {name}",
                    kinds=WORKFLOW_KINDS,
                ),
            )
        if outcome == "created":
            self._telemetry.runs_started.add(1, {"plait.workflow": name})
        if outcome == "conflict":
            raise IdempotencyConflictError(idempotency_key or "", found)
        if outcome == "busy":
            raise ConcurrencyKeyBusyError(name, found)
        debounced = submission.quiet is not None
        if submission.deadline or submission.delayed or debounced:
            self._timers.watch(name)
        # the timer may be asleep until a later time: it must see this deadline (or start)
        if earliest or submission.delayed or (debounced and outcome == "created"):
            self._timers.wake(name)
        return WorkflowHandle(
            self._runs, found, name, created=outcome == "created", output=definition.output
        )

    async def schedule(
        self,
        schedule_id: str,
        definition: Workflow[InputT, Any],
        data: InputT | Mapping[str, Any],
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str = "UTC",
        overlap: Overlap = "skip",
        catchup: CatchUp = "latest_once",
        catchup_window: timedelta = timedelta(hours=1),
        timeout: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> ScheduleInfo:
        """Run ``definition`` with ``data`` at each tick of a schedule (create or replace it).

        The schedule lives in Redis: every started instance of the prefix fires it, and each
        tick makes exactly one run, whose idempotency key is ``schedule:<id>:<tick ms>``; its
        meta carries ``schedule_id``, ``scheduled_at`` and ``catch_up``. Replacing a schedule
        keeps its last run (for the overlap policy) and fires from its next tick on; a paused
        schedule stays paused. See :attr:`schedules` to list, pause, resume and delete.

        Args:
            schedule_id: the schedule's name (letters, digits, ``_.:-``; 128 at most).
            definition: the workflow each tick runs.
            data: its input, validated now.
            cron: a cron expression (5 fields: minute hour day month weekday), read in
                ``timezone``; needs ``plait[schedules]`` (the ``cronsim`` package).
            every: a fixed period instead (at least 1 s): ticks at its multiples since the
                Unix epoch (``every=timedelta(minutes=5)`` fires at :00, :05...).
            timezone: an IANA name (``"Europe/Paris"``); DST changes follow cron's rules.
            overlap: what a tick does while the previous tick's run is still going:
                ``skip`` (default), ``allow``, ``buffer_one`` (one run once it ended) or
                ``cancel_previous`` (cancel it, which compensates it, then run).
            catchup: ticks missed while every instance was down (late by more than 2 s):
                ``latest_once`` (default: the latest of them runs once), ``all`` (each of
                them within ``catchup_window``) or ``none``.
            catchup_window: how far back ``catchup="all"`` goes.
            timeout: each run's timeout (default: the firing provider's ``default_timeout``).
            meta: string pairs added to each run's meta.

        Raises:
            InvalidDefinitionError: the schedule's arguments make no schedule (bad id, cron,
                timezone, period or policy).
            InvalidInputError: ``data`` does not validate (nothing is written).
            ImportError: a ``cron`` schedule without the ``cronsim`` package.
        """
        self._check_started()
        return await self._scheduling.put(
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
        )

    async def signal(
        self,
        target: str | Workflow[Any, Any],
        name: str,
        data: Any = None,
        *,
        signal_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send signal ``name`` to a run's wait of that name, from any instance.

        ``signal(run_id, "approval", Approval(...))`` names the run;
        ``signal(workflow, "approval", data, idempotency_key="order-42")`` names the run by the
        idempotency key it was executed with (what a webhook knows). The payload, validated as
        the wait's ``data`` model when the workflow is known here (passed, executed or
        registered on this instance), becomes the wait's result. A signal that comes before
        its run reaches the wait is kept and taken when it does.

        Args:
            target: the run id, or the workflow (with ``idempotency_key``).
            name: the wait's name.
            data: the payload (a model instance or a mapping for it).
            signal_id: names this signal: the same id again is a no-op (default: a new one).
            idempotency_key: the run's idempotency key, with ``target`` a workflow.

        Returns:
            True when this call delivered the signal (or kept it for its wait), False when a
            signal with the same ``signal_id`` already was.

        Raises:
            SignalRefusedError: too late: the run ended or is compensating, the wait timed
                out, or it got another signal; nothing changed.
            InvalidInputError: the run has no wait ``name``, or ``data`` does not validate
                (nothing is written).
            RunNotFoundError: no such run (or no run owns the key).
            ProviderUnavailableError: Redis did not answer within ``connect_timeout``.
        """
        self._check_started()
        return await self._signals.signal(
            target, name, data, signal_id=signal_id, idempotency_key=idempotency_key
        )

    async def get_handle(
        self, run_id: str, workflow: Workflow[Any, OutputT] | None = None
    ) -> WorkflowHandle[OutputT]:
        """A handle on an existing run, from any instance.

        Raises:
            RunNotFoundError: no run has this id (or it expired after ``retention``).
        """
        return await self._directory.get_handle(run_id, workflow)

    async def retry(self, run_id: str) -> WorkflowHandle[Any]:
        """Resume a FAILED or TIMED_OUT run as a new attempt of the same run (same id).

        Completed steps that have no rollback keep their results and are not run again;
        steps whose rollbacks ran are run again; the run resumes at the earliest such step or
        at the failed step, with a fresh deadline when it had a timeout.

        Raises:
            InvalidRunStateError: the run is in any other status.
            RunNotFoundError: no run has this id.
        """
        return await self._directory.retry(run_id)

    # -- finding and acting on runs ---------------------------------------------------------

    @overload
    async def find_run(
        self, workflow: Workflow[Any, OutputT], *, idempotency_key: str
    ) -> WorkflowHandle[OutputT] | None: ...

    @overload
    async def find_run(
        self, workflow: str, *, idempotency_key: str
    ) -> WorkflowHandle[Any] | None: ...

    async def find_run(
        self, workflow: Workflow[Any, Any] | str, *, idempotency_key: str
    ) -> WorkflowHandle[Any] | None:
        """The run of ``workflow`` owning ``idempotency_key``, or None when no run owns it (the
        key expires ``retention`` after its run ended).

        Raises:
            ProviderUnavailableError: Redis did not answer within ``connect_timeout``.
        """
        return await self._directory.find_run(workflow, idempotency_key=idempotency_key)

    async def list_runs(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        status: WorkflowStatus | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        meta: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """A page of ``workflow``'s runs matching every filter given, newest first, found
        through the indexes the provider keeps in Redis (never a scan of the runs).

        A page examines a bounded number of index entries; it may hold fewer than ``limit``
        runs while :attr:`RunPage.cursor` is not None: pass that back (with the same filters)
        for the next page. Runs stay listed while their record lives (``retention`` after
        they ended).

        Args:
            workflow: the workflow (or its name).
            status: only runs in this status now.
            since: only runs created at or after this aware time.
            until: only runs created at or before this aware time.
            meta: only runs whose meta holds each of these values; every field must be one
                the workflow indexes (``Workflow(indexed_meta=)``).
            idempotency_key: only the run owning this key.
            limit: at most this many runs (1 to 1000).
            cursor: the previous page's :attr:`RunPage.cursor`.

        Raises:
            InvalidFilterError: a filter that cannot be served (a meta field the workflow does
                not index, ``since`` after ``until``, a naive time, a foreign cursor).
            ProviderUnavailableError: Redis did not answer within ``connect_timeout``.
        """
        return await self._directory.list_runs(
            workflow,
            status=status,
            since=since,
            until=until,
            meta=meta,
            idempotency_key=idempotency_key,
            limit=limit,
            cursor=cursor,
        )

    async def retry_runs(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        status: WorkflowStatus = WorkflowStatus.FAILED,
        since: datetime | None = None,
        until: datetime | None = None,
        meta: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Retry (:meth:`retry`) one page of the runs :meth:`list_runs` lists with the same
        filters; returns the runs retried (as listed, before the retry) and the cursor of the
        next page. What it would retry is that listing: call :meth:`list_runs` for a dry run.

        A run that left ``status`` between the listing and its retry is skipped.

        Raises:
            InvalidFilterError: ``status`` is not FAILED or TIMED_OUT, or as
                :meth:`list_runs`.
        """
        return await self._directory.retry_runs(
            workflow, status=status, since=since, until=until, meta=meta, limit=limit, cursor=cursor
        )

    async def cancel_runs(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        status: WorkflowStatus = WorkflowStatus.RUNNING,
        since: datetime | None = None,
        until: datetime | None = None,
        meta: Mapping[str, str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Cancel (as ``WorkflowHandle.cancel()``) one page of the runs :meth:`list_runs`
        lists with the same filters; returns the runs cancelled (as listed, before the
        cancel) and the cursor of the next page. :meth:`list_runs` is its dry run.

        A run that ended between the listing and its cancel is skipped.

        Raises:
            InvalidFilterError: ``status`` is not PENDING or RUNNING, or as :meth:`list_runs`.
        """
        return await self._directory.cancel_runs(
            workflow, status=status, since=since, until=until, meta=meta, limit=limit, cursor=cursor
        )

    async def reconcile(self) -> ReconcileStats:
        """Run one reconciler pass now (without the lock) and return what it found."""
        self._check_started()
        return await call_until(
            self._reconciler.run_pass,
            timeout=self.options.connect_timeout.total_seconds(),
            what="reconcile",
            kinds=WORKFLOW_KINDS,
        )

    async def health(self) -> Health:
        """The backlog report: Redis reachability and latency, the queues and dead letters of
        every workflow and event of the registry, and the live instances.

        For alerting, not for probes (see :meth:`readiness`); read within ``connect_timeout``
        (see :func:`~plait.providers.redis._ops.health.check_health`), with this instance's own
        liveness (``alive``, see :attr:`alive`: a report of an instance that is not alive is
        not ok). An unreachable Redis gives a report with ``ok=False`` rather than an error.

        Raises:
            RedisCommandError: Redis refused a command (a key of the wrong type under the
                prefix).
        """
        with translated(WORKFLOW_KINDS, "health"):
            report = await check_health(
                self._connection.client,
                self.prefix,
                stalled_after=2 * self.options.stall_timeout.total_seconds(),
                timeout=self.options.connect_timeout.total_seconds(),
            )
        return with_liveness(report, self._problem())

    async def readiness(self) -> Readiness:
        """Whether this instance may take traffic: it is :attr:`alive` and Redis answers a
        ``PING`` within ``connect_timeout``.

        One round trip and no read under the prefix, so no backlog (see :meth:`health`) and no
        size of the keyspace changes the answer: the readiness probe of an API pod that only
        emits. Never raises.
        """
        timeout = self.options.connect_timeout.total_seconds()
        report = await check_readiness(self._connection.client, timeout=timeout)
        return with_liveness(report, self._problem())

    @property
    def alive(self) -> bool:
        """Whether this instance runs: started, not stopped, and none of its background work
        (step readers, timers, reconciler, notifications, heartbeat, lease renewal) has died.

        A local flag, no Redis call: cheap enough for a liveness probe. Work that dies is
        logged with its traceback, and the provider stops (``execute`` raises
        :class:`~plait.workflows.ProviderClosedError` saying why, ``stop()`` raises the error).
        """
        return self._problem() is None

    def _problem(self) -> str | None:
        """Why this instance is not alive (a sentence of its health report), or None."""
        if self._leases.failure is not None and self._supervisor.running:
            return f"this instance's lease renewal died ({self._leases.failure}; see its log)"
        return self._supervisor.problem

    @property
    def concurrency(self) -> int:
        """How many steps of each registered workflow run at once on this instance.

        Settable (``plait worker --concurrency``); best set before :meth:`start`, a change
        while running applies as running steps finish.
        """
        return self.options.concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        self.options = replace(self.options, concurrency=value)
        for worker in self._workers.values():
            worker.concurrency = value

    @property
    def last_reconcile(self) -> ReconcileStats | None:
        """The stats of this instance's last reconciler pass, if it ran one."""
        return self._reconciler.last

    def _check_started(self) -> None:
        if not self._supervisor.running:
            failure = self._supervisor.failure
            if failure is not None:
                raise ProviderClosedError(f"the workflow provider stopped: it died of {failure}")
            raise ProviderClosedError("the workflow provider is not started")

    def _pinned(self, definition: Workflow[Any, Any]) -> Pins:
        """What a run of ``definition`` executed here records (see ``capabilities``)."""
        try:
            return self._pins[definition]
        except KeyError:
            worker = self._workers.get(definition.name)
            consumer = worker.consumer if worker is not None else None
            return self._pins.setdefault(definition, pins_of(definition, consumer))

    def _announced(self) -> list[tuple[str, str]]:
        """What this instance announces with each heartbeat: one per registered workflow."""
        return [(worker.keys.consumers, worker.announcement) for worker in self._workers.values()]

    def _depths(self) -> list[tuple[str, int]]:
        return [(name, worker.depth) for name, worker in self._workers.items()]
