"""Connections: URLs, the embedded ``memory://`` server, and Redis error translation.

``memory://`` (or ``memory://NAME``) opens an in-process fakeredis server that runs the same
Lua scripts as a real Redis. Every provider of the process that opens the same URL shares it;
it lives while one of them uses it. Its ``XREADGROUP BLOCK`` does not block, so readers on it
wait on a :class:`WakeUps` notification that the script wrappers set after each enqueue.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import fakeredis
import hiredis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from plait.workflows import ProviderUnavailableError

T = TypeVar("T")

#: Connections per provider: blocking reads of each stream, pub/sub, transitions, callers
#: (redis-py's pool, and as many again for script calls, see ScriptCalls).
MAX_CONNECTIONS = 1000

#: Script-call connections kept open between calls; a burst beyond it closes the extra ones.
MAX_IDLE_SCRIPT_CONNECTIONS = 64

logger = logging.getLogger("plait.redis")

#: Errors that mean "Redis cannot be reached right now": retried, never leaked.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.TryAgainError,
    ConnectionError,
    OSError,
)


class WakeUps:
    """In-process "a job was enqueued on this stream" notifications for ``memory://``."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def kick(self, key: str) -> None:
        """Wake every reader waiting on ``key``."""
        for event in self._events.get(key, ()):
            event.set()

    @asynccontextmanager
    async def listening(self, key: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever ``key`` is kicked, for as long as the context lasts."""
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            waiting = self._events.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[key]


@dataclass
class _MemoryServer:
    server: Any
    wakeups: WakeUps = field(default_factory=WakeUps)
    users: int = 0


_MEMORY_SERVERS: dict[str, _MemoryServer] = {}


@dataclass
class Connection:
    """A Redis client plus what the providers need to know about it.

    Attributes:
        client: the asyncio client, a ``redis.asyncio.Redis`` or ``RedisCluster`` (responses
            are not decoded: bytes in, bytes out).
        wakeups: in-process wake-ups when the backend cannot block (``memory://``), else None.
        owned: whether closing the connection closes the client.
    """

    client: Any
    wakeups: WakeUps | None
    owned: bool
    memory_name: str | None = None
    closed: bool = False
    direct: ScriptCalls | None = None
    """Script calls straight on connections of their own (a server plait connected to)."""

    @property
    def blocks(self) -> bool:
        """Whether ``XREADGROUP BLOCK`` really blocks on this backend."""
        return self.wakeups is None

    def kick(self, key: str) -> None:
        """Tell local readers of ``key`` that something was enqueued (``memory://`` only)."""
        if self.wakeups is not None:
            self.wakeups.kick(key)

    async def run(self, script: AsyncScript, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Call a registered script (directly when this connection can, else via redis-py)."""
        if self.direct is not None:
            return await self.direct.call(script, keys, args)
        return await script(keys=keys, args=args)

    async def aclose(self) -> None:
        """Release the client (if owned) and the embedded server (when last user); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.direct is not None:
            await self.direct.aclose()
        if self.owned and isinstance(self.client, RedisCluster):
            await self.client.aclose()
        elif self.owned:
            await self.client.aclose(close_connection_pool=True)
        if self.memory_name is not None:
            entry = _MEMORY_SERVERS.get(self.memory_name)
            if entry is not None:
                entry.users -= 1
                if entry.users <= 0:
                    del _MEMORY_SERVERS[self.memory_name]


def connect(url: str, *, connect_timeout: float) -> Connection:
    """Open a connection for ``url``.

    ``redis://``, ``rediss://`` and ``unix://`` open one server; ``redis+cluster://HOST:PORT``
    (or ``rediss+cluster://``) a Redis Cluster found from that node; ``memory://[NAME]`` the
    embedded server.
    """
    if url.startswith("memory://"):
        name = url[len("memory://") :] or "default"
        entry = _MEMORY_SERVERS.get(name)
        if entry is None:
            entry = _MEMORY_SERVERS[name] = _MemoryServer(fakeredis.FakeServer())
        entry.users += 1
        fake = fakeredis.FakeAsyncRedis(server=entry.server)
        return Connection(fake, entry.wakeups, owned=True, memory_name=name)
    scheme, plus, rest = url.partition("+cluster://")
    if plus:
        cluster = RedisCluster.from_url(
            f"{scheme}://{rest}",
            socket_connect_timeout=connect_timeout,
            max_connections=MAX_CONNECTIONS,
        )
        return Connection(cluster, None, owned=True)
    # No socket timeout: reads are not wrapped in wait_for (a measurable share of worker CPU);
    # TCP keepalive and the health check find dead peers. A burst beyond MAX_CONNECTIONS gets
    # a connection error from the pool (script calls wait for a free slot instead), which
    # callers retry until connect_timeout like any outage.
    pool = aioredis.ConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        socket_connect_timeout=connect_timeout,
        socket_timeout=None,
        socket_keepalive=True,
        health_check_interval=30,
    )
    settings = pool.connection_kwargs
    encoding = codecs.lookup(settings.get("encoding", "utf-8")).name
    if encoding == "utf-8" and settings.get("encoding_errors", "strict") == "strict":
        # hiredis encodes text as strict UTF-8 only
        pool.connection_class = _packing_with_hiredis(pool.connection_class)
    client = aioredis.Redis(connection_pool=pool)
    return Connection(client, None, owned=True, direct=ScriptCalls(pool))


class ScriptCalls:
    """``EVALSHA`` straight on connections of its own, made from a pool plait created.

    redis-py's command path (pool lock, connection check, retry wrapper, observability hooks)
    cost a worker about as much CPU as packing, sending and reading the transition itself:
    113-143 us against 56-66 us per call, measured on this project's machines. Replies and
    error replies are the same as through redis-py. A connection that fails or whose call is
    interrupted is closed; the caller's retry (``call_forever``) gets a fresh one. At most
    ``MAX_CONNECTIONS`` are open at once and ``MAX_IDLE_SCRIPT_CONNECTIONS`` kept between calls.
    """

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool: Any = pool  # make_connection() is untyped in redis-py
        self._idle: list[Any] = []
        self._closed = False
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script``; reloads it when the server lost it (``NOSCRIPT`` after a restart).

        An idle connection that fails is dropped and the call made again on another one: the
        script may have run before the connection broke, which every transition script
        tolerates (a repeated call finds its token superseded or its run already created).
        """
        async with self._slots:
            return await self._call(script, keys, args)

    async def _call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        while True:
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else self._pool.make_connection()
            try:
                reply = await _evalsha(connection, script, keys, args)
            except redis_errors.ResponseError:
                await self._put_back(connection)  # an error reply: the connection is fine
                raise
            except BaseException as error:
                with anyio.CancelScope(shield=True):
                    await connection.disconnect()
                if reused and isinstance(error, redis_errors.ConnectionError):
                    continue
                raise
            await self._put_back(connection)
            return reply

    async def _put_back(self, connection: Any) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE_SCRIPT_CONNECTIONS:
            await connection.disconnect()
        else:
            self._idle.append(connection)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their call returns."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


async def _evalsha(
    connection: Any, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    await connection.connect()
    try:
        return await _ask(connection, "EVALSHA", script.sha, len(keys), *keys, *args)
    except redis_errors.NoScriptError:
        sha = await _ask(connection, "SCRIPT", "LOAD", script.script)
        script.sha = sha.decode() if isinstance(sha, bytes) else sha
        return await _ask(connection, "EVALSHA", script.sha, len(keys), *keys, *args)


async def _ask(connection: Any, *command: Any) -> Any:
    # No health check per call: a stale idle connection fails, and ScriptCalls retries once
    # on another (cheaper than redis-py's PING-after-idle check on every call).
    await connection.send_packed_command(connection.pack_command(*command), check_health=False)
    return await connection.read_response()


class _HiredisPacking:
    """Packs commands with hiredis (C): redis-py's asyncio connections pack in Python, which
    was a tenth of a busy worker's CPU (script calls carry many arguments)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        words = args[0].split() if isinstance(args[0], str | bytes) else ()
        if len(words) > 1:  # "CONFIG GET": the server expects separate words
            args = (*words, *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # memoryview, bool, None...: redis-py's packer converts or refuses
            packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
            return packed


def _packing_with_hiredis(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (TCP, TLS or unix socket) with :class:`_HiredisPacking`."""
    return type(connection_class.__name__, (_HiredisPacking, connection_class), {})


def wrap(client: aioredis.Redis | RedisCluster) -> Connection:
    """A connection around a client the caller owns (never closed by plait)."""
    wakeups = None
    if isinstance(client, fakeredis.FakeAsyncRedis):
        wakeups = WakeUps()
    return Connection(client, wakeups, owned=False)


async def call_until(
    operation: Callable[[], Awaitable[T]], *, timeout: float, what: str = "redis"
) -> T:
    """Run ``operation``, retrying connection errors with backoff for up to ``timeout`` seconds.

    Raises:
        ProviderUnavailableError: Redis stayed unreachable for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return await operation()
        except CONNECTION_ERRORS as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderUnavailableError(f"{what}: Redis unreachable: {error}") from error
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)


async def call_forever(
    operation: Callable[[], Awaitable[T]], *, what: str, stopping: Callable[[], bool]
) -> T | None:
    """Run a background ``operation`` until it succeeds, retrying connection errors.

    Used by workers for transitions that must never be dropped. Returns None only when
    ``stopping()`` turns true while Redis is unreachable (the job is then left to reclaim).
    """
    delay = 0.05
    while True:
        try:
            return await operation()
        except CONNECTION_ERRORS as error:
            if stopping():
                logger.warning("%s: giving up while stopping: %s", what, error)
                return None
            logger.warning("%s: Redis unreachable (%s), retrying in %.2fs", what, error, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)
