"""Deadlines on Redis replies: a connection that stops answering is closed, never waited on.

A black-holed connection (no FIN, no RST: a partition, a firewall dropping packets) gives
no error: TCP keepalive notices it only once the connection is idle, and a read in progress
waits for good. So every command sent on a connection plait opened carries a deadline for its
reply, and one timer callback per event loop (not a task or a timeout per call: it runs only
while commands are in flight, every :data:`SWEEP` seconds) closes the connection of a reply
that is overdue. The command then fails with ``TimeoutError``, which the caller's retry
(:func:`~.retry.call_until`, :func:`~.retry.call_forever`) treats like any outage: made again
on a fresh connection.

The deadline of a command is, from when it is sent:

- :data:`READ_DEADLINE` for every command (the handshake and redis-py's health-check ``PING``
  too: they are commands sent on the connection);
- its ``BLOCK`` time plus :data:`READ_DEADLINE` for a blocking read (``XREAD[GROUP] BLOCK``);
- never later than the caller's own deadline: inside :func:`deadline` (which ``call_until``
  opens with ``connect_timeout``) a command's reply is awaited no longer than that.

The cost on the hot path is two dictionary writes and a clock read per command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from redis import exceptions as redis_errors

READ_DEADLINE = 10.0
"""Seconds a command's reply may take (after its ``BLOCK`` time, for a blocking read)."""

logger = logging.getLogger("plait.redis")

SWEEP = 0.25
"""Seconds between two looks at the commands in flight (how late a deadline may be noticed)."""

_clock = time.monotonic
_running_loop = asyncio._get_running_loop  # None outside a loop, where nothing waits
_caller_deadline: ContextVar[float] = ContextVar("plait_redis_deadline", default=float("inf"))
_BLOCKING = frozenset({"XREADGROUP", "XREAD", b"XREADGROUP", b"XREAD"})


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Replies to commands sent in this block (this task) wait at most until ``seconds`` from now.

    Nested blocks keep the earlier deadline. Yields the deadline (``time.monotonic()``).
    """
    at = min(time.monotonic() + seconds, _caller_deadline.get())
    token = _caller_deadline.set(at)
    try:
        yield at
    finally:
        _caller_deadline.reset(token)


def remaining() -> float:
    """Seconds left before this task's :func:`deadline` (``inf`` outside one)."""
    return _caller_deadline.get() - time.monotonic()


class _Sweeper:
    """The commands in flight of one event loop, and the timer that closes overdue ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.due: dict[Any, float] = {}
        self.loop = loop
        self.timer: asyncio.TimerHandle | None = None
        """The next :meth:`sweep`, while commands are in flight."""

    def sweep(self) -> None:
        """Close the connections whose reply is overdue; look again soon while any remain."""
        self.timer = None
        now = time.monotonic()
        loop = self.loop
        for connection, at in list(self.due.items()):
            if at <= now:
                del self.due[connection]
                connection._plait_overdue = True
                writer = connection._writer
                if writer is not None:
                    writer.transport.abort()  # the read in progress fails at once
        if self.due and loop is not None and not loop.is_closed():
            self.timer = loop.call_later(SWEEP, self.sweep)


_sweepers: dict[asyncio.AbstractEventLoop | None, _Sweeper] = {}


def _sweeper(loop: asyncio.AbstractEventLoop | None) -> _Sweeper:
    """The sweeper of ``loop`` (one per event loop: a test opens providers on several)."""
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        for old in [old for old in _sweepers if old is not None and old.is_closed()]:
            del _sweepers[old]
        sweeper = _sweepers[loop] = _Sweeper(loop)
    return sweeper


class _Watched:
    """A connection whose every command's reply has a deadline (see the module docstring)."""

    _plait_overdue = False
    _plait_sweeper: _Sweeper | None = None

    def _plait_watch(self, args: tuple[Any, ...]) -> None:
        at = _clock() + READ_DEADLINE
        if args and args[0] in _BLOCKING:
            with contextlib.suppress(ValueError, IndexError, TypeError):
                at += int(args[args.index(b"BLOCK") + 1]) / 1000
        caller = _caller_deadline.get()
        at = min(at, caller)
        sweeper = self._plait_sweeper
        loop = _running_loop()
        if sweeper is None or sweeper.loop is not loop:
            sweeper = self._plait_sweeper = _sweeper(loop)
        sweeper.due[self] = at
        if sweeper.timer is None and loop is not None:
            sweeper.timer = loop.call_later(SWEEP, sweeper.sweep)

    def pack_command(self, *args: Any) -> Any:
        self._plait_watch(args)
        return super().pack_command(*args)  # type: ignore[misc]

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)  # a pipeline: the deadline covers its first reply (the others
        if commands:  # were sent with it, so they follow it unless the connection dies)
            self._plait_watch(tuple(commands[0]))
        return super().pack_commands(commands)  # type: ignore[misc]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis_errors.ConnectionError as error:
            if self._plait_overdue:
                self._plait_overdue = False
                raise redis_errors.TimeoutError(
                    f"no reply from Redis in time (closed by plait): {error}"
                ) from error
            raise
        finally:
            sweeper = self._plait_sweeper
            if sweeper is not None:
                sweeper.due.pop(self, None)

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        sweeper = self._plait_sweeper
        if sweeper is not None:
            sweeper.due.pop(self, None)
        await super().disconnect(*args, **kwargs)  # type: ignore[misc]


def watched(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (TCP, TLS or unix socket) whose replies have deadlines."""
    return type(connection_class.__name__, (_Watched, connection_class), {})


ROUND_TRIPS_PER_STALL = 10
"""The least number of round trips to Redis a ``stall_timeout`` should span."""


async def check_round_trip(client: Any, stall_timeout: float, who: str) -> float | None:
    """Measure the round trip to Redis (the fastest of three ``PING``) and log a warning when
    ``stall_timeout`` is shorter than :data:`ROUND_TRIPS_PER_STALL` of them.

    A step's lease is renewed every quarter of the stall timeout and a worker looks for stalled
    steps every half: with fewer round trips than that, leases lapse and steps are taken over
    while they run. Returns the round trip in seconds (None when Redis did not answer: the
    check is skipped, an outage is reported elsewhere).
    """
    best = float("inf")
    try:
        for _ in range(3):
            began = time.perf_counter()
            await client.ping()
            best = min(best, time.perf_counter() - began)
    except (redis_errors.RedisError, OSError):
        return None
    if stall_timeout < ROUND_TRIPS_PER_STALL * best:
        logger.warning(
            "%s: stall_timeout %gs is less than %d round trips to Redis (%.0f ms measured): "
            "leases may lapse and running steps be taken over; use a stall_timeout of at "
            "least %.1fs",
            who, stall_timeout, ROUND_TRIPS_PER_STALL, best * 1000,
            ROUND_TRIPS_PER_STALL * best,
        )  # fmt: skip
    return best
