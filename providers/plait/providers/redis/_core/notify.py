"""Pub/sub notifications: run endings (for ``result()``) and cancellations (for workers).

One pub/sub connection per provider, subscribed lazily to the channels someone listens on,
re-subscribed after a reconnect. Notifications only wake waiters early: every waiter also
re-reads the state it waits for (when told that its channel is subscribed again, or on a slow
poll), so a notification lost during an outage delays, never loses.

A subscribed connection is silent while nobody publishes, so silence alone cannot tell a dead
one: the session sends ``PING`` after :data:`PING_EVERY` seconds without a message, and
takes a connection that answered nothing for :data:`SILENT_LIMIT` seconds for dead (a black
hole: no FIN, no RST) and subscribes again on a new one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from .connection import Connection
from .errors import CONNECTION_ERRORS
from .watchdog import READ_DEADLINE

logger = logging.getLogger("plait.redis.notify")

Callback = Callable[[str], None]

PING_EVERY = 5.0
"""Seconds without a message after which the pub/sub session pings Redis."""
SILENT_LIMIT = PING_EVERY + READ_DEADLINE
"""Seconds without any message (a pong included) after which the session is taken for dead."""
FIRST_RECONNECT = 0.05
"""Seconds before the first reconnect of an outage; each failed try doubles it."""
LAST_RECONNECT = 2.0
"""The longest wait between two reconnect tries."""


class Notifications:
    """Dispatches pub/sub messages to callbacks by channel."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._pubsub: Any = None
        self._callbacks: dict[str, list[Callback]] = {}
        self._subscribed: dict[str, list[Callable[[], None]]] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self._ready = anyio.Event()
        # One SUBSCRIBE at a time: two at once on a fresh session would each open a connection
        # (redis-py connects lazily) and the listener would read only the last one.
        self._subscribing = anyio.Lock()
        self._unsent: list[str] = []
        self._up = False  # the current session subscribed: an outage after it starts anew

    async def listen(
        self,
        channel: str,
        callback: Callback,
        *,
        subscribed: Callable[[], None] | None = None,
        timeout: float = 2.0,
    ) -> None:
        """Call ``callback(message)`` for every message on ``channel`` from now on.

        Waits up to ``timeout`` seconds for the subscription to be confirmed; a caller that
        must not miss a message re-reads its state after this returns, and whenever
        ``subscribed()`` is called: each time the channel is subscribed again (after a
        reconnect, when messages may have been missed).
        """
        new = channel not in self._callbacks
        self._callbacks.setdefault(channel, []).append(callback)
        if subscribed is not None:
            self._subscribed.setdefault(channel, []).append(subscribed)
        if new:
            self._confirmed[channel] = anyio.Event()
            self._ready.set()
            if self._pubsub is not None:
                # Channels asked for meanwhile go in one SUBSCRIBE (thousands of workflows
                # start at once); on failure, the session resubscribes every channel when it
                # reconnects.
                self._unsent.append(channel)
                with contextlib.suppress(*CONNECTION_ERRORS):
                    async with self._subscribing:
                        batch, self._unsent = self._unsent, []
                        if batch and self._pubsub is not None:
                            await self._pubsub.subscribe(*batch)
        with anyio.move_on_after(timeout) as waiting:
            await self._confirmed[channel].wait()
        if waiting.cancelled_caught:
            logger.debug("subscription to %s not confirmed yet", channel)

    def forget(self, channel: str, callback: Callback) -> None:
        """Stop calling ``callback`` for ``channel`` (the subscription itself stays)."""
        callbacks = self._callbacks.get(channel)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)

    async def run(self) -> None:
        """Receive messages until cancelled; reconnects with backoff.

        The backoff grows while Redis stays away and starts from :data:`FIRST_RECONNECT` again
        after a session that was up, so every outage of a long life is followed by a quick
        reconnect (and the catch-up reads of its listeners), not only the first.
        """
        delay = FIRST_RECONNECT
        while True:
            await self._ready.wait()
            self._up = False
            try:
                await self._session()
                continue
            except CONNECTION_ERRORS as error:
                logger.warning("pub/sub connection lost (%s); reconnecting", error)
            except Exception:  # an error reply, a message that does not decode: a new session
                logger.exception("pub/sub session failed; reconnecting")
            self._unconfirm()
            if self._up:
                delay = FIRST_RECONNECT
            await anyio.sleep(delay)
            delay = min(delay * 2, LAST_RECONNECT)

    def _unconfirm(self) -> None:
        """Mark every subscription unconfirmed until the next session confirms it again."""
        for channel, event in self._confirmed.items():
            if event.is_set():  # anyio events are not cleared: replaced (waiters keep theirs)
                self._confirmed[channel] = anyio.Event()

    async def _session(self) -> None:
        pubsub: Any = self._connection.client.pubsub()
        try:
            self._pubsub = pubsub
            async with self._subscribing:
                await pubsub.subscribe(*self._callbacks)
            self._up = True
            heard = pinged = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    self._dispatch(message)
                elif now - heard >= SILENT_LIMIT:
                    raise TimeoutError(f"no reply on the pub/sub connection for {now - heard:.0f}s")
                elif now - max(heard, pinged) >= PING_EVERY:
                    pinged = now
                    await pubsub.ping()
        finally:
            self._pubsub = None
            await pubsub.aclose()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        if message["type"] == "subscribe":
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
            for subscribed in list(self._subscribed.get(channel, ())):
                try:
                    subscribed()
                except Exception:
                    logger.exception("subscription callback failed for %s", channel)
            return
        if message["type"] != "message":
            return
        data = message["data"]
        text = data.decode() if isinstance(data, bytes) else str(data)
        for callback in list(self._callbacks.get(channel, ())):
            try:
                callback(text)
            except Exception:
                logger.exception("notification callback failed for %s", channel)
