"""Riding out Redis outages: :func:`call_until` for callers, :func:`call_forever` for workers.

Only connection errors are retried (:data:`~.errors.CONNECTION_ERRORS`); an error reply is
not going to change by asking again. A connection error does not say whether Redis ran the
call: an operation retried here must be safe to repeat (a run transition is, given the same
call id on every attempt: ``RunScripts.call_id``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import CONNECTION_ERRORS, REFUSED_CREDENTIALS, ErrorKinds, translated
from .watchdog import deadline

T = TypeVar("T")

logger = logging.getLogger("plait.redis")


async def call_until(
    operation: Callable[[], Awaitable[T]], *, timeout: float, what: str, kinds: ErrorKinds
) -> T:
    """Run ``operation`` for a caller, retrying connection errors for up to ``timeout`` seconds.

    Every reply is awaited no later than ``timeout`` from now (:func:`~.watchdog.deadline`):
    a connection that stops answering (black-holed, no FIN, no RST), even in the middle of
    its handshake, is closed then, so the caller is told within ``timeout`` (plus the
    watchdog's sweep, a quarter of a second) whatever the network does.

    Args:
        operation: the Redis call(s), made again on each attempt.
        timeout: how long Redis may stay unreachable (the provider's ``connect_timeout``).
        what: what the operation does, for errors (``"execute place-order"``).
        kinds: the classes the provider raises (see :func:`~.errors.translated`).

    Raises:
        ProviderUnavailableError: (``kinds.unavailable``) Redis stayed unreachable for
            ``timeout`` seconds.
        RedisCommandError: (``kinds.command``) Redis refused a command; not retried.
    """
    delay = 0.05
    with translated(kinds, what), deadline(timeout) as until:
        while True:
            try:
                return await operation()
            except REFUSED_CREDENTIALS:
                raise  # Redis answered: waiting cannot change its mind
            except CONNECTION_ERRORS:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    raise
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 1.0)


async def call_forever(
    operation: Callable[[], Awaitable[T]], *, what: str, stopping: Callable[[], bool]
) -> T | None:
    """Run a background ``operation`` until it succeeds, retrying connection errors.

    Used by workers for transitions that must never be dropped. Returns None only when
    ``stopping()`` turns true while Redis is unreachable (the job is then left to reclaim).
    Other errors propagate untranslated: the worker's loop decides what they mean.
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
