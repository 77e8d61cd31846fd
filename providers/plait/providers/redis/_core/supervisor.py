"""The lifetime of a provider's background work: from ``start()`` to ``stop()``.

Both providers run their readers, timers and notification loop inside one task group owned by
a dedicated task, so ``start()`` and ``stop()`` may be called from different tasks (a fixture
and a test, a lifespan hook) and nothing is left running after ``stop()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .connection import Connection
from .errors import ErrorKinds, translated
from .retry import call_until

#: ``serve(ready, stopping)``: sets ``ready`` once started, returns after ``stopping`` is set.
Serve = Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]


class Supervisor:
    """Starts and stops the background task of one provider on one connection."""

    def __init__(
        self, connection: Connection, *, connect_timeout: float, kinds: ErrorKinds
    ) -> None:
        self._connection = connection
        self._timeout = connect_timeout
        self._kinds = kinds
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` was not called since."""
        return self._task is not None

    async def start(self, serve: Serve) -> None:
        """Check that Redis answers, then run ``serve`` until it is ready.

        Raises:
            ProviderUnavailableError: (``kinds.unavailable``) Redis did not answer within
                ``connect_timeout`` (the connection is closed).
            RedisCommandError: (``kinds.command``) Redis refused a command before ``serve``
                was ready.
            Exception: whatever else ``serve`` raised before it was ready.
        """
        if self._task is not None:
            return
        try:
            await call_until(
                self._connection.client.ping, timeout=self._timeout, what="start", kinds=self._kinds
            )
        except BaseException:
            await self._connection.aclose()
            raise
        self._stopping = asyncio.Event()
        ready = asyncio.Event()
        self._task = asyncio.create_task(serve(ready, self._stopping))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            task, self._task = self._task, None
            with translated(self._kinds, "start"):
                task.result()

    async def stop(self) -> None:
        """Ask ``serve`` to return, wait for it, and release the connection (idempotent)."""
        task, self._task = self._task, None
        try:
            if task is not None:
                self._stopping.set()
                with translated(self._kinds, "stop"):
                    await task
        finally:
            await self._connection.aclose()
