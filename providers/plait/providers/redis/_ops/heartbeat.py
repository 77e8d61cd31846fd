"""The heartbeat by which every started provider says it is alive, and what it can run.

Each beat adds the provider id with Redis' time to ``<prefix>:instances`` (``ZADD <prefix>:instances
<now ms> <provider id>``); :func:`~plait.providers.redis._ops.health.check_health` reads that zset
to list the live instances of a deployment. It also refreshes the announcement of each workflow
this instance consumes (``<prefix>:{<wf>}:consumers``, field provider id, value
``<now ms>|<version>|,<job>,...,``, see ``_workflows/capabilities``), which the run scripts
read: an announcement not refreshed for :data:`ANNOUNCED_FOR` is no longer live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import anyio

from .._core.errors import BACKGROUND_ERRORS, CONNECTION_ERRORS
from .._core.keys import instances

logger = logging.getLogger("plait.health")

HEARTBEAT = 5.0
"""Seconds between two heartbeats of a started provider."""
FORGET_AFTER = 300.0
"""Seconds after which the heartbeat of a stopped or dead instance is removed."""
ANNOUNCED_FOR = 20.0
"""Seconds an announcement stays live without a beat (``ANNOUNCED_FOR`` of ``run_lib.lua``)."""

Announcements = Callable[[], list[tuple[str, str]]]
"""What an instance announces now: (``consumers`` key, announcement without its time) pairs."""


async def announce(client: Any, key: str, provider_id: str, body: str) -> None:
    """Announce ``body`` as ``provider_id``'s in the ``consumers`` hash ``key`` now (Redis'
    time), and forget the announcements silent for :data:`FORGET_AFTER` seconds."""
    now_ms = await _now_ms(client)
    await client.hset(key, provider_id, f"{now_ms}|{body}")
    rows = await client.hgetall(key)
    silent = [
        field for field, value in rows.items() if _seen(value) < now_ms - int(FORGET_AFTER * 1000)
    ]
    if silent:
        await client.hdel(key, *silent)


def _seen(value: bytes) -> int:
    seen = value.partition(b"|")[0]
    return int(seen) if seen.isdigit() else 0


async def _now_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


class Heartbeat:
    """Tells the deployment that a provider is alive, every :data:`HEARTBEAT` seconds.

    Each beat adds ``provider_id`` with Redis' time to ``<prefix>:instances`` and removes the
    entries of instances silent for :data:`FORGET_AFTER` seconds; stopping removes its own.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        provider_id: str,
        *,
        period: float = HEARTBEAT,
        announcements: Announcements = list,
    ) -> None:
        self._client = client
        self._key = instances(prefix)
        self._provider_id = provider_id
        self._period = period
        self._announcements = announcements

    async def beat(self) -> None:
        """Record one heartbeat now, and refresh this instance's announcements."""
        now_ms = await _now_ms(self._client)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key, {self._provider_id: now_ms})
            pipe.zremrangebyscore(self._key, "-inf", now_ms - int(FORGET_AFTER * 1000))
            for key, body in self._announcements():
                pipe.hset(key, self._provider_id, f"{now_ms}|{body}")
            await pipe.execute()

    async def serve(self) -> None:
        """Beat until cancelled, then remove this instance's entry."""
        try:
            while True:
                try:
                    await self.beat()
                except CONNECTION_ERRORS as error:
                    logger.debug("heartbeat of %s failed: %s", self._provider_id, error)
                except Exception as error:  # an error reply (a key of another type): next beat
                    logger.warning("heartbeat of %s failed: %r", self._provider_id, error)
                await anyio.sleep(self._period)
        finally:
            with anyio.move_on_after(1.0, shield=True), suppress(*BACKGROUND_ERRORS):
                await self._client.zrem(self._key, self._provider_id)
                for key, _ in self._announcements():
                    await self._client.hdel(key, self._provider_id)
