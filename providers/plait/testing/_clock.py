"""The virtual clock of one ``memory://`` server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from uuid import uuid4

from plait.providers.redis._core import memory


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
        """Move the server's clock ``by`` forward and apply what came due.

        Returns once every provider started on the server has looked at what is due at the new
        time and applied it: due retries and delayed starts are queued for a worker, sleeps and
        waits that timed out have moved on, runs past their deadline are ``TIMED_OUT``, delayed
        events and due handler retries are delivered, due schedule ticks have fired. Running
        what was queued (the steps, the handlers) happens after, as usual: wait for it with
        ``handle.result()`` or a poll.

        Time jumps at once: what came due fires at the new time, and what it schedules in
        turn (the next retry's backoff, the next tick) counts from there, as after a process
        that was paused that long; advance again to reach it. A schedule's ticks missed by the
        jump follow its ``catchup=`` policy.

        Args:
            by: how far (not negative).
        """
        if by < timedelta(0):
            raise ValueError("a virtual clock only moves forward")
        self._clock().move(by.total_seconds())
        await self.settle()

    async def settle(self) -> None:
        """Have every provider on the server look at what is due now and apply it (what
        :meth:`advance` does after moving the clock), without moving it."""
        if self._wakeups is None:
            raise RuntimeError("use the VirtualClock as `async with VirtualClock() as clock`")
        await self._wakeups.clock_moved()

    def _clock(self) -> memory.Clock:
        if self._wakeups is None:
            raise RuntimeError("use the VirtualClock as `async with VirtualClock() as clock`")
        return memory.clock(self._name)
