"""The embedded ``memory://`` servers of this process, and their wake-ups.

``memory://`` (or ``memory://NAME``) is an in-process fakeredis server that runs the same Lua
scripts as a real Redis. Every provider of the process that opens the same name shares it
(:func:`open_client`); it lives while one of them uses it (:func:`release`).

Readers on it never block in ``XREADGROUP``: they read without ``BLOCK`` and wait on a
:class:`WakeUps` notification that the script wrappers set after each enqueue. fakeredis 2.41
does block (first step 1.39 ms p50 against 1.31 ms with these wake-ups, idle CPU alike), but
its blocked read runs in a task of its own that outlives the caller: a read cancelled by a
stopping provider still takes the next entries for a consumer that is gone, where they wait for
a reclaim (measured: tests/test_events.py's lagging-group test then times out). So the
wake-ups stay.

fakeredis (and lupa, its Lua) is imported on the first ``memory://`` open, never before: a
service on a real Redis does not pay for it.

Each server has a :class:`Clock`: its ``TIME`` (what the Lua scripts read) and its key expiry
run :attr:`Clock.ahead` seconds ahead of the real clock, 0 unless a test moves it
(``plait.testing.VirtualClock``). Stream idle times (leases, reclaim) stay on the real clock, as
lease renewal does. A moved clock runs the looks registered with :meth:`WakeUps.on_clock` (the
providers' timers and schedulers), so what came due is applied at once; their busy probes tell
a test when the work that followed is done.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

Look = Callable[[], Awaitable[object]]
"""An engine's "look at what is due now" pass (timer ticks, a scheduler pass)."""
Busy = Callable[[], Awaitable[bool]]
"""Whether an engine has work queued or running (a job not taken yet, a step running)."""


class _Settable(Protocol):
    def set(self) -> None: ...


class WakeUps:
    """In-process "a job was enqueued on this stream" notifications for ``memory://``."""

    def __init__(self) -> None:
        self._events: dict[str, set[_Settable]] = {}
        self._watchers: list[tuple[Look, Busy]] = []

    def kick(self, key: str) -> None:
        """Wake every reader waiting on ``key``."""
        for event in self._events.get(key, ()):
            event.set()

    @asynccontextmanager
    async def listening(self, key: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``key`` is kicked, for as long as the context lasts."""
        event = asyncio.Event()
        with self.telling(key, event):
            yield event

    @contextmanager
    def telling(self, key: str, event: _Settable) -> Iterator[None]:
        """Set ``event`` whenever ``key`` is kicked, for as long as the context lasts."""
        self._events.setdefault(key, set()).add(event)
        try:
            yield
        finally:
            waiting = self._events.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[key]

    @contextmanager
    def on_clock(self, look: Look, busy: Busy) -> Iterator[None]:
        """While the context lasts: run ``look`` whenever the server's clock is moved, and ask
        ``busy`` whether the engine still has work going (:meth:`busy`)."""
        watcher = (look, busy)
        self._watchers.append(watcher)
        try:
            yield
        finally:
            self._watchers.remove(watcher)

    async def clock_moved(self) -> None:
        """Run every registered look (one after the other), returning when all are done."""
        for look, _ in list(self._watchers):
            await look()

    async def busy(self) -> bool:
        """Whether an engine on this server still has work queued or running."""
        for _, busy in list(self._watchers):
            if await busy():
                return True
        return False


class Clock:
    """How far one embedded server's clock runs ahead of the real one."""

    def __init__(self) -> None:
        self.ahead = 0.0
        """Seconds added to the real clock (only ever grows)."""

    def now(self) -> float:
        """The server's time, in seconds since the epoch."""
        return time.time() + self.ahead

    def move(self, seconds: float) -> None:
        """Run ``seconds`` further ahead (from now on ``TIME`` follows this clock)."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        _follow_clocks()
        self.ahead += seconds


@dataclass
class _Server:
    server: Any
    clock: Clock
    wakeups: WakeUps = field(default_factory=WakeUps)
    users: int = 0


@functools.cache
def _clocked_database() -> type[Any]:
    """fakeredis's database whose time (key expiry) is its server's :class:`Clock`."""
    base: Any = importlib.import_module("fakeredis._core._database").Database

    class ClockedDatabase(base):  # type: ignore[misc]
        clock: Clock

        @property
        def time(self) -> float:
            return self._real_time + self.clock.ahead

        @time.setter
        def time(self, value: float) -> None:  # fakeredis sets it before each command
            self._real_time = value

    return ClockedDatabase


def _new_server(clock: Clock) -> Any:
    fakeredis: Any = importlib.import_module("fakeredis")
    server = fakeredis.FakeServer()
    database = _clocked_database()

    def clocked() -> Any:
        db = database(server.lock)
        db.clock = clock
        return db

    server.dbs = defaultdict(clocked)
    return server


@functools.cache
def _follow_clocks() -> None:
    """Make fakeredis's ``TIME`` read a clocked server's :class:`Clock` (done once, when a
    clock first moves: until then no server runs ahead). Other servers keep the real time."""
    mixin: Any = importlib.import_module("fakeredis.commands_mixins.server_mixin")
    real = mixin.ServerCommandsMixin.time

    def clocked_time(self: Any) -> list[bytes]:
        clock = getattr(self._db, "clock", None)
        if clock is None:
            return real(self)  # type: ignore[no-any-return]
        now_us = round(clock.now() * 1_000_000)
        return [str(now_us // 1_000_000).encode(), str(now_us % 1_000_000).encode()]

    mixin.ServerCommandsMixin.time = clocked_time


_SERVERS: dict[str, _Server] = {}
"""The live embedded servers by name."""


def open_client(name: str) -> tuple[Any, WakeUps]:
    """A new client (a ``fakeredis.FakeAsyncRedis``) on the embedded server ``name`` (started
    if none runs), and its wake-ups.

    Each call counts as one user of the server until :func:`release`.
    """
    fakeredis: Any = importlib.import_module("fakeredis")
    entry = _SERVERS.get(name)
    if entry is None:
        clock = Clock()
        entry = _SERVERS[name] = _Server(_new_server(clock), clock)
    entry.users += 1
    return fakeredis.FakeAsyncRedis(server=entry.server), entry.wakeups


def is_embedded(client: object) -> bool:
    """Whether ``client`` is a fakeredis client (asyncio or not): without fakeredis imported,
    no client can be one."""
    fakeredis: Any = sys.modules.get("fakeredis")
    return fakeredis is not None and isinstance(
        client, fakeredis.FakeAsyncRedis | fakeredis.FakeRedis
    )


def sync_twin(client: Any) -> Any:
    """A synchronous fakeredis client on the same embedded server as ``client``."""
    fakeredis: Any = importlib.import_module("fakeredis")
    return fakeredis.FakeRedis(server=client.connection_pool.connection_kwargs["server"])


def clock(name: str) -> Clock:
    """The clock of the live embedded server ``name`` (KeyError when none runs)."""
    return _SERVERS[name].clock


def release(name: str) -> None:
    """One user of ``name`` fewer; the server and its data go with the last one."""
    entry = _SERVERS.get(name)
    if entry is not None:
        entry.users -= 1
        if entry.users <= 0:
            del _SERVERS[name]
