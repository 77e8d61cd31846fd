"""Script calls straight on connections (:class:`ScriptCalls`), and hiredis command packing.

The hot path of a worker is one ``EVALSHA`` per transition; both halves of this module take
redis-py's general-purpose machinery off it. They apply only to servers plait connected to
itself (``connect()``), never to a client a user passed in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio
import hiredis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from .watchdog import remaining


class ScriptCalls:
    """``EVALSHA`` straight on connections of its own, made from a pool plait created.

    redis-py's command path (pool lock, connection check, retry wrapper, observability hooks)
    cost a worker about as much CPU as packing, sending and reading the transition itself:
    113-143 us against 56-66 us per call, measured on this project's machines. Replies and
    error replies are the same as through redis-py. A connection that fails or whose call is
    interrupted is closed; the caller's retry (``call_forever``) gets a fresh one. At most
    ``max_connections`` are open at once and ``max_idle`` kept between calls; a call finding
    them all busy waits for one, no longer than the caller's deadline (:func:`.watchdog.deadline`).
    """

    def __init__(
        self, pool: aioredis.ConnectionPool, *, max_connections: int, max_idle: int
    ) -> None:
        self._pool: Any = pool  # make_connection() is untyped in redis-py
        self._idle: list[Any] = []
        self._max_idle = max_idle
        self._closed = False
        self._slots = asyncio.Semaphore(max_connections)

    async def call(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run ``script``; reloads it when the server lost it (``NOSCRIPT`` after a restart).

        An idle connection that fails is dropped and the call made again on another one: the
        script may have run before the connection broke. The run transitions carry a call id
        and answer a repeat with the outcome they recorded (``_workflows/scripts.py``);
        ``run_execute`` finds its run already created.
        """
        if self._slots.locked():  # every connection busy: wait no longer than the caller may
            with anyio.move_on_after(remaining()) as waiting:
                await self._slots.acquire()
            if waiting.cancelled_caught:
                raise redis_errors.TimeoutError("every script connection stayed busy")
        else:
            await self._slots.acquire()
        try:
            return await self._call(script, keys, args)
        finally:
            self._slots.release()

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
        if self._closed or len(self._idle) >= self._max_idle:
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


def packing_with_hiredis(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (TCP, TLS or unix socket) with :class:`_HiredisPacking`.

    hiredis encodes text as strict UTF-8 only: use it for pools with that encoding.
    """
    return type(connection_class.__name__, (_HiredisPacking, connection_class), {})
