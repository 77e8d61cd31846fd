"""Leases on running steps, renewed from a thread so a busy event loop cannot starve them.

A worker holds a stream entry in the group's pending list while its attempt runs; the entry's
idle time is what reclaim looks at. Renewal (``XCLAIM ... JUSTID`` of every held entry, batched
per stream) runs in a thread with its own synchronous connection, every ``stall_timeout / 4``,
so a handler that blocks the event loop for less than ``stall_timeout`` keeps its lease.
Renewal never acknowledges anything: only the token-checked scripts do.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection

from plait.workflows._errors import describe_exception

from .._core import memory
from .._core.connection import Connection
from .._core.keys import GROUP

logger = logging.getLogger("plait.lease")

#: Connection settings a synchronous client takes from an asyncio one (the server, the
#: credentials, TLS): the lease thread connects exactly as the provider does.
_SYNC_KWARGS = (
    "db",
    "username",
    "password",
    "credential_provider",
    "client_name",
    "path",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "protocol",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_check_hostname",
    "ssl_password",
    "ssl_min_version",
    "ssl_ciphers",
)


def _sync_settings(settings: dict[str, Any], connection_class: type[Any]) -> dict[str, Any]:
    """What a synchronous client needs of an asyncio client's connection settings."""
    kwargs = {key: settings[key] for key in _SYNC_KWARGS if settings.get(key) is not None}
    if "path" in kwargs:
        kwargs["unix_socket_path"] = kwargs.pop("path")
    if "socket_keepalive_options" in kwargs and not isinstance(
        kwargs["socket_keepalive_options"], dict
    ):  # redis-py's "not given" sentinel
        del kwargs["socket_keepalive_options"]
    if issubclass(connection_class, AsyncSSLConnection):
        kwargs["ssl"] = True
    kwargs["socket_timeout"] = 5
    return kwargs


def sync_client(connection: Connection) -> Any:
    """A synchronous client on the same server or cluster as ``connection`` (for the lease
    thread), with the same credentials and TLS settings."""
    client: Any = connection.client
    if memory.is_embedded(client):
        return memory.sync_twin(client)
    if isinstance(client, AsyncRedisCluster):
        settings = client.connection_kwargs
        node = client.get_nodes()[0]
        kwargs = _sync_settings(settings, settings.get("connection_class", object))
        kwargs.pop("db", None)  # a cluster has one database
        return redis.RedisCluster(host=node.host, port=int(node.port), **kwargs)
    pool = client.connection_pool
    kwargs = _sync_settings(pool.connection_kwargs, pool.connection_class)
    return redis.Redis(
        host=pool.connection_kwargs.get("host", "localhost"),
        port=pool.connection_kwargs.get("port", 6379),
        **kwargs,
    )


class Leases:
    """The entries this instance holds, per stream, and the thread that keeps them fresh."""

    def __init__(self, connection: Connection, *, owner: str, period: float) -> None:
        self._connection = connection
        self._owner = owner
        self._period = period
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None
        """What the renewal thread died of (``Type: message``); None while it runs, or once
        stopped as asked."""

    def hold(self, stream: str, entry: str) -> None:
        """Keep ``entry`` of ``stream`` leased until :meth:`release`."""
        with self._lock:
            self._held.setdefault(stream, set()).add(entry)

    def release(self, stream: str, entry: str) -> None:
        """Stop renewing ``entry``."""
        with self._lock:
            self._held.get(stream, set()).discard(entry)

    def start(self) -> None:
        """Start the renewal thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.failure = None
        self._thread = threading.Thread(target=self._renew_forever, name="plait-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing; entries still held are left to be reclaimed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._period + 5)
            self._thread = None

    def _renew_forever(self) -> None:
        try:
            self._renew()
        except BaseException as error:  # the provider reports itself not alive from now on
            cause_type, message, _ = describe_exception(error)
            self.failure = f"{cause_type}: {message}"
            logger.exception("lease renewal thread died: steps held here will be reclaimed")

    def _renew(self) -> None:
        client = sync_client(self._connection)
        try:
            while not self._stop.wait(self._period):
                with self._lock:
                    batches = [(stream, list(ids)) for stream, ids in self._held.items() if ids]
                for stream, ids in batches:
                    try:
                        client.xclaim(stream, GROUP, self._owner, 0, ids, justid=True)
                    except (redis.RedisError, OSError) as error:
                        logger.warning("%s: lease renewal failed: %s", stream, error)
                    except Exception:  # a bug: the other streams are still renewed
                        logger.exception("%s: lease renewal failed", stream)
        finally:
            if isinstance(client, redis.RedisCluster):  # close() leaves node sockets open
                client.disconnect_connection_pools()  # type: ignore[no-untyped-call]
            client.close()
