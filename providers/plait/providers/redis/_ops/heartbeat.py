"""The heartbeat by which every started provider says it is alive.

Each beat adds the provider id with Redis' time to ``<prefix>:instances`` (``ZADD <prefix>:instances
<now ms> <provider id>``); :func:`~plait.providers.redis._ops.health.check_health` reads that zset
to list the live instances of a deployment.
"""

from __future__ import annotations

import logging
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


class Heartbeat:
    """Tells the deployment that a provider is alive, every :data:`HEARTBEAT` seconds.

    Each beat adds ``provider_id`` with Redis' time to ``<prefix>:instances`` and removes the
    entries of instances silent for :data:`FORGET_AFTER` seconds; stopping removes its own.
    """

    def __init__(
        self, client: Any, prefix: str, provider_id: str, *, period: float = HEARTBEAT
    ) -> None:
        self._client = client
        self._key = instances(prefix)
        self._provider_id = provider_id
        self._period = period

    async def beat(self) -> None:
        """Record one heartbeat now."""
        seconds, micros = await self._client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(self._key, {self._provider_id: now_ms})
            pipe.zremrangebyscore(self._key, "-inf", now_ms - int(FORGET_AFTER * 1000))
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
