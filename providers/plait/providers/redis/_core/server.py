"""What plait checks of the Redis it runs on: the key schema of the data under the prefix,
and settings under which Redis may lose runs.

The first provider to start under a prefix records :data:`~.keys.SCHEMA_VERSION` there; a
provider that finds another version refuses to start (:func:`claim_schema`), so two versions
of plait never write one set of keys in two ways.

plait keeps every run, job and event in Redis. Two server settings can lose them without an
error: a ``maxmemory-policy`` other than ``noeviction`` lets Redis delete keys under memory
pressure (a run hash, a stream of jobs, an idempotency key), and a server with neither RDB
snapshots (``save``) nor the append-only file loses everything when it restarts. A provider
reads both when it starts (one ``CONFIG GET``) and logs a warning, once per server and
process. A server that refuses ``CONFIG`` (managed services often do, and the minimal ACL of
``docs/deploying.md``) is not checked: that is logged once, at INFO.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from redis import exceptions as redis_errors

from . import keys
from .connection import Connection
from .errors import ErrorKinds

logger = logging.getLogger("plait.redis")

_CHECKED: set[str] = set()
"""The servers (by address) already checked by this process."""


async def claim_schema(connection: Connection, prefix: str, kinds: ErrorKinds) -> None:
    """Record this plait's key schema version under ``prefix``, or check the one recorded.

    Raises:
        IncompatibleSchemaError: (``kinds.schema``) another version is recorded.
    """
    client: Any = connection.client
    key, expected = keys.schema_version(prefix), str(keys.SCHEMA_VERSION)
    if await client.set(key, expected, nx=True):
        return
    recorded = await client.get(key)
    found = expected if recorded is None else recorded.decode(errors="replace")
    if found != expected:
        raise kinds.schema(prefix, found, expected)


async def warn_of_data_loss(connection: Connection, *, timeout: float) -> None:
    """Log a warning when the server may evict or forget plait's data (once per server; the
    check gives up silently after ``timeout`` seconds)."""
    if connection.wakeups is not None:  # memory://: dies with the process anyway
        return
    client: Any = connection.client
    address = _address(client)
    if address in _CHECKED:
        return
    _CHECKED.add(address)
    settings: dict[Any, Any] = {}
    try:
        with anyio.move_on_after(timeout):
            for name in ("maxmemory-policy", "save", "appendonly"):
                settings.update(await client.config_get(name))
    except redis_errors.RedisError as error:  # CONFIG renamed, refused by an ACL, ...
        logger.info(
            "cannot check the eviction and persistence settings of Redis at %s (%s): make "
            "sure maxmemory-policy is noeviction and persistence is on",
            address,
            error,
        )
        return
    for problem in problems(_text(settings)):
        logger.warning("Redis at %s: %s", address, problem)


def problems(settings: dict[str, str]) -> list[str]:
    """What may lose data under ``settings`` (``CONFIG GET`` of the three settings)."""
    found: list[str] = []
    policy = settings.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        found.append(
            f"maxmemory-policy is {policy!r}: under memory pressure Redis deletes keys, and "
            "with them runs, jobs and events, without an error; set it to 'noeviction' "
            "(writes then fail loudly instead)"
        )
    if not settings.get("save") and settings.get("appendonly", "no") == "no":
        found.append(
            "persistence is off (no 'save' snapshots, appendonly no): a restart of Redis "
            "loses every run, job and event; enable the append-only file (appendonly yes)"
        )
    return found


def _text(settings: dict[Any, Any]) -> dict[str, str]:
    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return {text(key): text(value) for key, value in settings.items()}


def _address(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if kwargs is None:  # a cluster: its startup nodes
        nodes: list[Any] = getattr(client, "get_nodes", list)()
        return ",".join(sorted(f"{node.host}:{node.port}" for node in nodes)) or repr(client)
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
