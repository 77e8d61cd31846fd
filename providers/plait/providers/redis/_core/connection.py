"""Connections: what a provider talks to Redis through, opened from a URL or around a client.

``redis://``, ``rediss://`` and ``unix://`` open one server, ``redis+cluster://HOST:PORT`` a
Redis Cluster, ``memory://[NAME]`` an embedded server (:mod:`.memory`). Script calls on a
server plait connected to go straight to connections of their own (:mod:`.direct`). What a
failed call raises is decided at one boundary (:mod:`.errors`), how it is retried in
:mod:`.retry`.
"""

from __future__ import annotations

import codecs
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from . import memory
from .direct import ScriptCalls, packing_with_hiredis
from .memory import Busy, Look, WakeUps
from .watchdog import watched

#: Connections per provider: blocking reads of each stream, pub/sub, transitions, callers
#: (redis-py's pool, and as many again for script calls, see ScriptCalls).
MAX_CONNECTIONS = 1000

#: Script-call connections open at once: a burst of calls beyond it queues for one (each call
#: still told within its connect_timeout) rather than opening a connection per call. Redis
#: runs scripts one at a time, so more connections would add connects, not throughput.
MAX_SCRIPT_CONNECTIONS = 128

#: Script-call connections kept open between calls; a burst beyond it closes the extra ones.
MAX_IDLE_SCRIPT_CONNECTIONS = 64

KEEPALIVE_IDLE = 10
"""Seconds a TCP connection may stay silent before the kernel probes it."""
KEEPALIVE_INTERVAL = 5
"""Seconds between two probes."""
KEEPALIVE_COUNT = 3
"""Probes unanswered before the kernel closes the connection (dead within 25 s of silence)."""
USER_TIMEOUT_MS = 25_000
"""Linux: how long sent data may stay unacknowledged before the connection is closed."""


def keepalive_options() -> dict[int, int]:
    """TCP socket options that close a dead idle connection within about 25 s (the kernel's
    defaults take over two hours), where the platform has them."""
    wanted = {
        "TCP_KEEPIDLE": KEEPALIVE_IDLE,
        "TCP_KEEPALIVE": KEEPALIVE_IDLE,  # macOS's name for the idle time
        "TCP_KEEPINTVL": KEEPALIVE_INTERVAL,
        "TCP_KEEPCNT": KEEPALIVE_COUNT,
        "TCP_USER_TIMEOUT": USER_TIMEOUT_MS,
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


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
    url: str | None = None
    """The URL it was opened from (None around a client the caller gave)."""

    @property
    def blocks(self) -> bool:
        """Whether ``XREADGROUP BLOCK`` really blocks on this backend."""
        return self.wakeups is None

    def kick(self, key: str) -> None:
        """Tell local readers of ``key`` that something was enqueued (``memory://`` only)."""
        if self.wakeups is not None:
            self.wakeups.kick(key)

    @contextmanager
    def on_clock(self, look: Look, busy: Busy) -> Iterator[None]:
        """While the context lasts, run ``look`` whenever a test moves the embedded server's
        clock and let it ask ``busy`` (``memory://`` only: elsewhere nothing)."""
        if self.wakeups is None:
            yield
            return
        with self.wakeups.on_clock(look, busy):
            yield

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
            memory.release(self.memory_name)


def connect(url: str, *, connect_timeout: float) -> Connection:
    """Open a connection for ``url``.

    ``redis://``, ``rediss://`` and ``unix://`` open one server; ``redis+cluster://HOST:PORT``
    (or ``rediss+cluster://``) a Redis Cluster found from that node; ``memory://[NAME]`` the
    embedded server.
    """
    if url.startswith("memory://"):
        name = url[len("memory://") :] or "default"
        fake, wakeups = memory.open_client(name)
        return Connection(fake, wakeups, owned=True, memory_name=name, url=url)
    scheme, plus, rest = url.partition("+cluster://")
    if plus:
        # A MOVED patches the slot map (reinitialize_steps=0) instead of redis-py's default of
        # closing every node connection every 5th one: while a slot moves that came often
        # enough to cut calls in flight on other connections.
        cluster = RedisCluster.from_url(
            f"{scheme}://{rest}",
            socket_connect_timeout=connect_timeout,
            socket_keepalive=True,
            socket_keepalive_options=keepalive_options(),
            max_connections=MAX_CONNECTIONS,
            reinitialize_steps=0,
        )
        # Every node's connections get reply deadlines (the watchdog): the class is read from
        # these settings for each node found later, and was given to the first one already.
        settings = cluster.connection_kwargs
        settings["connection_class"] = watched(settings["connection_class"])
        for node in cluster.startup_nodes:
            node.connection_class = settings["connection_class"]
        return Connection(cluster, None, owned=True, url=url)
    # No socket timeout (redis-py wraps every read in a timeout then): replies have deadlines
    # of the watchdog's instead, and TCP keepalive finds dead idle peers. A burst beyond
    # MAX_CONNECTIONS gets a connection error from the pool (script calls wait for a free
    # slot instead), which callers retry until connect_timeout like any outage.
    pool = aioredis.ConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        socket_connect_timeout=connect_timeout,
        socket_timeout=None,
        health_check_interval=30,
    )
    settings = pool.connection_kwargs
    if issubclass(pool.connection_class, aioredis.Connection):  # TCP or TLS, not a unix socket
        settings["socket_keepalive"] = True
        settings["socket_keepalive_options"] = keepalive_options()
    encoding = codecs.lookup(settings.get("encoding", "utf-8")).name
    if encoding == "utf-8" and settings.get("encoding_errors", "strict") == "strict":
        pool.connection_class = packing_with_hiredis(pool.connection_class)
    pool.connection_class = watched(pool.connection_class)
    client = aioredis.Redis(connection_pool=pool)
    direct = ScriptCalls(
        pool, max_connections=MAX_SCRIPT_CONNECTIONS, max_idle=MAX_IDLE_SCRIPT_CONNECTIONS
    )
    return Connection(client, None, owned=True, direct=direct, url=url)


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def wrap(client: aioredis.Redis | RedisCluster) -> Connection:
    """A connection around a client the caller owns (never closed by plait)."""
    wakeups = None
    if memory.is_embedded(client):
        wakeups = WakeUps()
    return Connection(client, wakeups, owned=False)
