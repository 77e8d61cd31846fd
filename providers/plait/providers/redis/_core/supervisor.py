"""The lifetime of a provider's background work: ``serve()``, or ``start()`` to ``stop()``.

Both providers run their readers, timers and notification loop as one piece of *work* (see
:class:`Work`) inside a task group. :meth:`Supervisor.serve` runs it in the caller's task group;
:meth:`Supervisor.start` runs the same ``serve`` in a task of its own, so ``start()`` and
``stop()`` may be called from different tasks (a fixture and a test, a lifespan hook). Either
way, once the work has started, cancelling its caller does not cancel it: it is asked to stop
(the ``stopping`` event) and drains running steps and handlers first; nothing is left running
after ``serve()`` or ``stop()`` returns.

Work that dies after it started (an error no loop of it caught) is not silent: the error is
logged with its traceback at once, the supervisor stops running (:attr:`Supervisor.problem`
says why, which the providers' ``alive`` and health reports show), and the error is raised by
``serve()`` or, after ``start()``, by ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus

from plait.workflows._errors import describe_exception

from .connection import Connection
from .errors import ErrorKinds, translated
from .retry import call_until
from .server import claim_schema, warn_of_data_loss

logger = logging.getLogger("plait.provider")


class Work(Protocol):
    """A provider's background work: calls ``task_status.started()`` once it takes work, then
    runs until ``stopping`` is set, drains, and returns."""

    async def __call__(
        self, stopping: anyio.Event, *, task_status: TaskStatus[None] = ...
    ) -> None: ...


class Supervisor:
    """Starts and stops the background work of one provider on one connection."""

    def __init__(
        self, connection: Connection, *, prefix: str, connect_timeout: float, kinds: ErrorKinds
    ) -> None:
        self._connection = connection
        self._prefix = prefix
        self._timeout = connect_timeout
        self._kinds = kinds
        self._stopping: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._answered = False
        self._task: asyncio.Task[None] | None = None
        self._starting = anyio.Lock()
        self._failure: str | None = None

    @property
    def running(self) -> bool:
        """Whether Redis answered and the work was not asked to stop since (it may be starting)."""
        return self._answered and self._stopping is not None and not self._stopping.is_set()

    @property
    def failure(self) -> str | None:
        """The error the work died of (``Type: message``), until the next start; None when it
        did not die."""
        return self._failure

    @property
    def problem(self) -> str | None:
        """Why the work is not running, as a sentence of a health report; None while it runs."""
        if self._failure is not None:
            return f"this instance's background work died ({self._failure}; see its log)"
        if not self.running:
            return "this instance is not running (not started, or stopped)"
        return None

    async def serve(
        self, work: Work, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Check that Redis answers, run ``work`` until cancelled or :meth:`stop`, then drain it.

        ``task_status.started()`` is called once ``work`` started. From then on, cancelling
        this call sets ``stopping`` instead of cancelling ``work``, waits for it to drain, and
        re-raises the cancellation. The connection is released when this returns.

        Raises:
            ProviderUnavailableError: (``kinds.unavailable``) Redis did not answer within
                ``connect_timeout``.
            RedisCommandError: (``kinds.command``) Redis refused a command while starting.
            RuntimeError: the work is running already.
            Exception: whatever ``work`` raised.
        """
        if self._stopping is not None:
            raise RuntimeError("the provider is running already")
        stopping = self._stopping = anyio.Event()
        stopped = self._stopped = anyio.Event()
        self._failure = None
        failure: Exception | None = None
        try:
            await call_until(
                self._connection.client.ping, timeout=self._timeout, what="start", kinds=self._kinds
            )
            await call_until(
                lambda: claim_schema(self._connection, self._prefix, self._kinds),
                timeout=self._timeout,
                what="start",
                kinds=self._kinds,
            )
            self._answered = True
            await warn_of_data_loss(self._connection, timeout=self._timeout)
            async with anyio.create_task_group() as tg:
                try:
                    if not stopping.is_set():  # else stop() came while Redis was checked
                        await tg.start(self._run, work, stopping)
                        task_status.started()
                        await stopping.wait()
                except Exception as error:  # while starting: raised as is, not grouped
                    failure = error
                finally:
                    stopping.set()
        finally:
            self._stopping = self._stopped = None
            self._answered = False
            stopped.set()
            with anyio.CancelScope(shield=True):
                await self._connection.aclose()
        if failure is not None:
            with translated(self._kinds, "start"):
                raise failure

    async def start(self, work: Work) -> None:
        """Run :meth:`serve` in a task of its own and return once ``work`` started.

        This is the one task plait creates outside a task group (``asyncio.create_task``),
        on purpose: it outlives the caller, so ``start()`` and ``stop()`` may be called from
        different tasks; :meth:`stop` ends and awaits it. Concurrent calls start the work once:
        each returns once it started (a call made while another one starts waits for it, and
        tries again if that one failed). Does nothing when running already.

        Raises:
            ProviderUnavailableError: Redis did not answer within ``connect_timeout`` (the
                connection is closed).
            Exception: whatever ``work`` raised before it started.
        """
        async with self._starting:
            if self._task is not None or self.running:
                return
            started = anyio.Event()
            task = self._task = asyncio.create_task(self._own(work, started))
            await started.wait()
            if task.done():
                if self._task is task:
                    self._task = None
                task.result()

    async def _own(self, work: Work, started: anyio.Event) -> None:
        try:
            await self.serve(work, task_status=_Signal(started))
        finally:
            started.set()  # also when serve() failed: start() then raises its error

    async def _run(
        self, work: Work, stopping: anyio.Event, *, task_status: TaskStatus[None]
    ) -> None:
        """Run ``work``: cancellable while it starts, shielded from its caller once it started.

        Work that dies once started is reported at once: logged, :attr:`failure` set, and
        ``stopping`` set so that :attr:`running` turns False; its error then ends ``serve()``.
        """
        with anyio.CancelScope() as scope:
            try:
                await work(stopping, task_status=_Shielding(scope, task_status))
            except Exception as error:
                if scope.shield:  # it had started: nobody else may be looking
                    self._failure = _cause(error)
                    logger.error(
                        "background work died, stopping: %s", self._failure, exc_info=error
                    )
                    stopping.set()
                raise

    async def stop(self) -> None:
        """Ask the work to stop, wait until it drained, and release the connection (idempotent).

        Also ends a :meth:`serve` running in another task group (which then returns).

        Raises:
            Exception: what the work of :meth:`start` died of (logged when it died).
        """
        task, self._task = self._task, None
        stopping, stopped = self._stopping, self._stopped
        try:
            if stopping is not None:
                stopping.set()
            if task is not None:
                with translated(self._kinds, "stop"):
                    await task
            elif stopped is not None:
                await stopped.wait()
        finally:
            await self._connection.aclose()


class _Shielding:
    """A task status that shields ``scope`` at the moment its work reports started."""

    def __init__(self, scope: anyio.CancelScope, status: TaskStatus[None]) -> None:
        self._scope = scope
        self._status = status

    def started(self, value: Any = None) -> None:
        self._scope.shield = True
        self._status.started(value)


def _cause(error: BaseException) -> str:
    """``Type: message`` of what ``error`` is about (the first error of nested task groups)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    cause_type, message, _ = describe_exception(error)
    return f"{cause_type}: {message}"


class _Signal:
    """A task status that sets ``event``: :meth:`Supervisor.start` runs ``serve`` bare."""

    def __init__(self, event: anyio.Event) -> None:
        self._event = event

    def started(self, value: Any = None) -> None:
        self._event.set()
