"""The virtual clock of one ``memory://`` server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from uuid import uuid4

import anyio

from plait.providers.redis._core import memory

IDLE_TIMEOUT = 10.0
"""Real seconds :meth:`VirtualClock.idle` (and so :meth:`~VirtualClock.advance`) waits for the
work going on to finish."""
_POLL = 0.005
"""Seconds between two looks at whether the providers are idle."""


class VirtualClock:
    """The clock of one embedded ``memory://`` server, moved by the test instead of waited for.

    The server's ``TIME`` (which every Lua transition reads) and its key expiry run ahead of
    the real clock by what :meth:`advance` added, so retries and their backoffs, run deadlines
    (``execute(timeout=)``), waits' timeouts, sleeps, delayed starts (``start_at=``,
    ``delay=``), delayed events, handler retries and schedules (``cron=``, ``every=``) come due
    as production would see them after that much time. Only this server is affected: other
    ``memory://`` servers and real Redis keep the real time. Time keeps running in real time
    too; the clock only ever moves forward.

    Not covered: a step's own ``timeout=`` (enforced inside the worker with the event loop's
    clock: keep it short in tests) and leases (``stall_timeout``, renewed in real time: a
    running step is not taken as stalled by a jump).

    Use it as an async context manager, which holds the server for its lifetime (the
    ``plait_clock`` fixture does this)::

        async with VirtualClock() as clock:
            workflows = RedisWorkflowProvider.from_url(clock.url)
            ...
            await clock.advance(timedelta(hours=1))

    Args:
        url: the ``memory://NAME`` server to drive; default: a fresh one of its own.
    """

    def __init__(self, url: str | None = None) -> None:
        url = url or f"memory://plait-test-{uuid4().hex}"
        if not url.startswith("memory://"):
            raise ValueError(f"a virtual clock drives a memory:// server, not {url!r}")
        self.url = url
        """The ``memory://NAME`` URL of the server: open providers on it."""
        self._name = url[len("memory://") :] or "default"
        self._client: Any = None
        self._wakeups: memory.WakeUps | None = None

    async def __aenter__(self) -> Self:
        self._client, self._wakeups = memory.open_client(self._name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client, self._wakeups = self._client, None, None
        if client is not None:
            await client.aclose()
            memory.release(self._name)

    def now(self) -> datetime:
        """The server's time now (aware, UTC): what the Lua scripts read."""
        return datetime.fromtimestamp(self._clock().now(), tz=UTC)

    @property
    def ahead(self) -> timedelta:
        """How far the server's clock runs ahead of the real one."""
        return timedelta(seconds=self._clock().ahead)

    async def advance(self, by: timedelta) -> None:
        """Let the work going on finish, move the server's clock ``by`` forward, apply what came
        due, and let the work that follows finish.

        So when it returns, everything due by the new time has happened: due retries and
        delayed starts have run, sleeps and waits that timed out have moved on (and their runs
        compensated), runs past their deadline are ``TIMED_OUT``, delayed events and due handler
        retries are delivered, due schedule ticks have fired, each as far as it goes without
        more time passing (see :meth:`idle`).

        Time jumps at once: what came due fires at the new time, and what that schedules in
        turn (the next retry's backoff, the next tick) counts from there, as after a process
        paused that long; advance again to reach it. A schedule's ticks missed by the jump
        follow its ``catchup=`` policy.

        Args:
            by: how far (not negative).

        Raises:
            TimeoutError: the work did not finish within ``IDLE_TIMEOUT`` real seconds (a step
                that waits for the test itself, say: move the clock after releasing it).
        """
        if by < timedelta(0):
            raise ValueError("a virtual clock only moves forward")
        await self.idle()
        self._clock().move(by.total_seconds())
        await self._watchers().clock_moved()
        await self.idle()

    async def idle(self, *, timeout: float = IDLE_TIMEOUT) -> None:
        """Wait until no provider on the server has work going: no step, hook, rollback or
        handler running, no job or event queued that a started provider would take.

        What waits for time (a backoff, a sleep, a delayed start, a wait for a signal) does not
        count: it waits for :meth:`advance`.

        Args:
            timeout: real seconds to wait at most.

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        watchers = self._watchers()
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:  # twice in a row: a job queued as the last step ended is seen
            quiet = 0 if await watchers.busy() else quiet + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"the providers on {self.url} still had work after {timeout} s")
            await anyio.sleep(_POLL)

    def _clock(self) -> memory.Clock:
        self._watchers()
        return memory.clock(self._name)

    def _watchers(self) -> memory.WakeUps:
        if self._wakeups is None:
            raise RuntimeError("use the VirtualClock as `async with VirtualClock() as clock`")
        return self._wakeups
