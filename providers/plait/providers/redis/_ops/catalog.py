"""What exists under a prefix: the registry of workflow and event names.

Tools that run without the application's definitions (``plait`` commands, health checks, the
reconciler) read the names from two zsets, ``<prefix>:workflows`` and ``<prefix>:events``
(name -> ms it was last enrolled), so their cost grows with the number of workflows and
events, never with the size of the keyspace. Names are enrolled:

- a workflow, when a provider starts with its consumer registered (one ``ZADD`` for all of
  them) or registers it later, and the first time a provider executes it (sent alongside the
  run's own call, so it adds no round trip; an emitter-only API pod enrolls what it executes);
- an event, when a handler's consumer group starts. An event emitted with no handler anywhere
  is not enrolled: no group reads it, so it has no backlog and no dead letters to report.

Data written before the registry existed is found once by :func:`rebuild` (``plait registry
rebuild``), which scans the keyspace: nothing else scans.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import anyio
from redis import exceptions as redis_errors

from .._core.keys import (
    EventKeys,
    WorkflowKeys,
    event_of_key,
    event_pattern,
    event_registry,
    workflow_of_key,
    workflow_pattern,
    workflow_registry,
)
from .._core.wire import text

T = TypeVar("T")

logger = logging.getLogger("plait.health")

WORKFLOW_SUFFIXES = ("runs", "jobs", "dead")
"""Keys by which :func:`rebuild` recognises a workflow."""
EVENT_SUFFIXES = ("stream", "dead")
"""Keys by which :func:`rebuild` recognises an event."""


async def workflow_names(client: Any, prefix: str) -> list[str]:
    """Sorted names of the workflows enrolled under ``prefix``."""
    return sorted(text(name) for name in await client.zrange(workflow_registry(prefix), 0, -1))


async def event_names(client: Any, prefix: str) -> list[str]:
    """Sorted names of the events enrolled under ``prefix``."""
    return sorted(text(name) for name in await client.zrange(event_registry(prefix), 0, -1))


async def enroll_workflows(client: Any, prefix: str, names: Iterable[str]) -> None:
    """Add ``names`` to the workflows of ``prefix`` (one ``ZADD``; nothing when empty)."""
    await _enroll(client, workflow_registry(prefix), names)


async def enroll_events(client: Any, prefix: str, names: Iterable[str]) -> None:
    """Add ``names`` to the events of ``prefix`` (one ``ZADD``; nothing when empty)."""
    await _enroll(client, event_registry(prefix), names)


async def _enroll(client: Any, key: str, names: Iterable[str]) -> None:
    """``ZADD`` the names. Connection errors reach the caller (who retries); an error reply (a
    key of another type) is logged: the registry is for tools, it never stops the work."""
    now_ms = int(time.time() * 1000)
    members = dict.fromkeys(names, now_ms)
    if not members:
        return
    try:
        await client.zadd(key, members)
    except redis_errors.ResponseError as error:
        logger.error("cannot enroll %s in %s: %s", ", ".join(members), key, error)


async def forget(
    client: Any, prefix: str, *, workflows: Iterable[str] = (), events: Iterable[str] = ()
) -> int:
    """Remove names from the registry (their data stays); returns how many were enrolled."""
    removed = 0
    chosen = {workflow_registry(prefix): list(workflows), event_registry(prefix): list(events)}
    for key, names in chosen.items():
        if names:
            removed += int(await client.zrem(key, *names))
    return removed


async def rebuild(client: Any, prefix: str) -> tuple[list[str], list[str]]:
    """Enroll every workflow and event that has keys under ``prefix``, found by ``SCAN``.

    For data written before the registry existed: it reads the whole keyspace (seconds for
    millions of keys), so it is a one-off command, never part of a check.

    Returns:
        The workflow names and the event names found.
    """
    workflows = await _scan(client, prefix, WORKFLOW_SUFFIXES, workflow=True)
    events = await _scan(client, prefix, EVENT_SUFFIXES, workflow=False)
    await enroll_workflows(client, prefix, workflows)
    await enroll_events(client, prefix, events)
    return workflows, events


async def _scan(client: Any, prefix: str, suffixes: Iterable[str], *, workflow: bool) -> list[str]:
    found: set[str] = set()
    for suffix in suffixes:
        pattern = workflow_pattern(prefix, suffix) if workflow else event_pattern(prefix, suffix)
        async for raw in client.scan_iter(match=pattern, count=1000):
            key = text(raw)
            if workflow:
                name = workflow_of_key(key, prefix)
                base = WorkflowKeys(prefix, name).base
            else:
                name = event_of_key(key, prefix)
                base = EventKeys(prefix, name).base
            if base + suffix == key:
                found.add(name)
    return sorted(found)


class Enrollment:
    """The workflows one provider has enrolled, so each is written once per provider."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._enrolled: set[str] = set()

    async def workflows(self, names: Iterable[str]) -> None:
        """Enroll ``names`` now (a provider starting, a consumer registered)."""
        fresh = [name for name in names if name not in self._enrolled]
        await enroll_workflows(self._client, self._prefix, fresh)
        self._enrolled.update(fresh)

    async def alongside(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``; the first time ``name`` is seen, enroll it concurrently.

        The ``ZADD`` travels beside the call (another pooled connection), so the caller waits
        one round trip as before; calls made meanwhile send none (a thousand concurrent first
        executes send one); a failure to enroll is logged and tried again next time.
        """
        if name in self._enrolled:
            return await call()
        self._enrolled.add(name)  # taken now: concurrent callers do not send it again
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._quietly, name)
            try:
                result = await call()
            except Exception as error:  # raised as is below, not grouped by the task group
                failure = error
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return result

    async def _quietly(self, name: str) -> None:
        done = False
        try:
            await enroll_workflows(self._client, self._prefix, [name])
            done = True
        except Exception as error:  # the run matters, its listing can wait for the next call
            logger.warning("enrolling workflow %r failed (tried again next time): %r", name, error)
        finally:
            if not done:  # failed or cancelled: the next call tries again
                self._enrolled.discard(name)
