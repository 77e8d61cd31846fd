"""What a started workflow provider runs, from ``start()`` to ``stop()``.

The :class:`~.._core.supervisor.Supervisor` owns the task; :class:`Lifecycle` is the work it
runs: notifications, heartbeat, timers, reconciler, scheduler, intake and one worker per
registered workflow, then the drain of running steps on the way out.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as redis_errors

from .._core.connection import Connection
from .._core.errors import WORKFLOW_KINDS
from .._core.keys import WorkflowKeys
from .._core.notify import Notifications
from .._core.retry import call_until
from .._core.scheduler import Scheduler
from .._core.telemetry import Telemetry
from .._core.watchdog import check_round_trip
from .._ops.catalog import Enrollment
from .._ops.heartbeat import Heartbeat
from .intake import Intake
from .lease import Leases
from .options import WorkflowProviderOptions
from .reconciler import Reconciler
from .runs import Runs
from .timers import Timers
from .worker import Worker

logger = logging.getLogger("plait.provider")


class Lifecycle:
    """The background work of one provider instance and its workers (``workers`` is shared
    with the provider, which adds to it in ``register``)."""

    def __init__(
        self,
        connection: Connection,
        workers: dict[str, Worker],
        *,
        options: WorkflowProviderOptions,
        runs: Runs,
        telemetry: Telemetry,
        leases: Leases,
        notifications: Notifications,
        heartbeat: Heartbeat,
        timers: Timers,
        reconciler: Reconciler,
        scheduler: Scheduler,
        intake: Intake,
        enrollment: Enrollment,
    ) -> None:
        self._connection = connection
        self._workers = workers
        self._options = options
        self._runs = runs
        self._telemetry = telemetry
        self._leases = leases
        self._notifications = notifications
        self._heartbeat = heartbeat
        self._timers = timers
        self._reconciler = reconciler
        self._scheduler = scheduler
        self._intake = intake
        self._enrollment = enrollment
        self._tg: anyio.abc.TaskGroup | None = None

    @property
    def _provider_id(self) -> str:
        assert self._options.provider_id is not None  # resolved by the provider
        return self._options.provider_id

    def add(self, name: str, worker: Worker) -> None:
        """Start the worker of workflow ``name`` (just registered) if already started."""
        if self._tg is not None:  # started: enroll it beside its worker's start
            self._tg.start_soon(self._enrollment.alongside, name, lambda: self._run_worker(worker))

    async def work(
        self, stopping: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The supervised work: runs until ``stopping`` is set, then drains."""
        self._telemetry.find_tracer()
        self._leases.start()
        try:
            await self._supervise(stopping, task_status)
        finally:
            await anyio.to_thread.run_sync(self._leases.stop)

    async def _supervise(self, stopping: anyio.Event, task_status: TaskStatus[None]) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._notifications.run)
            tg.start_soon(self._heartbeat.serve)
            await tg.start(self._timers.serve)
            tg.start_soon(self._reconciler.serve, self._options.reconcile_interval.total_seconds())
            await self._enroll(list(self._workers))
            tg.start_soon(self._scheduler.serve)
            tg.start_soon(self._intake.serve)
            await self._intake.prepare(list(self._workers.values()))  # pipelined
            async with anyio.create_task_group() as starting:  # thousands: not one by one
                for worker in self._workers.values():
                    starting.start_soon(tg.start, self._run_worker, worker)
            if self._workers:
                stall = self._options.stall_timeout.total_seconds()
                tg.start_soon(check_round_trip, self._connection.client, stall, self._provider_id)
            self._runs.open()
            task_status.started()
            try:
                with self._connection.on_clock(self._clock_moved, self._busy):
                    await stopping.wait()
            finally:
                self._runs.close()
            with anyio.CancelScope(shield=True):
                await self._drain()
            tg.cancel_scope.cancel()
        self._tg = None

    async def _clock_moved(self) -> None:
        """A test moved the ``memory://`` clock: apply what came due now (plait.testing)."""
        await self._timers.catch_up()
        await self._scheduler.fire_due()

    async def _busy(self) -> bool:
        """Whether a step runs here or a job of this instance's workflows waits to be taken
        (plait.testing: a virtual clock moves only once the work before is done)."""
        if any(worker.running for worker in self._workers.values()):
            return True
        client = self._connection.client
        for name in self._workers:
            with contextlib.suppress(redis_errors.ResponseError):  # no stream yet
                for group in await client.xinfo_groups(
                    WorkflowKeys(self._options.prefix, name).jobs
                ):
                    if group["pending"] or group["lag"]:
                        return True
        return False

    async def _drain(self) -> None:
        timeout = self._options.shutdown_timeout.total_seconds()
        async with anyio.create_task_group() as tg:
            for worker in self._workers.values():
                tg.start_soon(worker.drain, timeout)
        left = sum(worker.running for worker in self._workers.values())
        if left:
            logger.warning(
                "%s: %d running steps not handed back, left to be reclaimed",
                self._provider_id,
                left,
            )

    async def _enroll(self, names: list[str]) -> None:
        """Add ``names`` to the registry of workflows (``_ops/catalog.py``)."""
        await call_until(
            lambda: self._enrollment.workflows(names),
            timeout=self._options.connect_timeout.total_seconds(),
            what="start",
            kinds=WORKFLOW_KINDS,
        )

    async def _run_worker(
        self, worker: Worker, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            # Not waited for: the confirmation wakes the worker if it parked before it came.
            tg.start_soon(self._intake.listen, worker.keys)
            # Subscribed before the first start, so no cancel of an attempt goes unheard;
            # resubscribed() catches up after a reconnect (and when the confirmation is late).
            await self._notifications.listen(
                worker.keys.cancel_channel, worker.cancel_run, subscribed=worker.resubscribed
            )
            await tg.start(worker.serve)
            task_status.started()
