"""Health of a plait deployment: liveness, readiness, and the backlog report.

Three answers, each for its own audience:

- **liveness** (``provider.alive``): this instance's loops run. Local, no Redis call.
- **readiness** (:func:`check_readiness`, ``provider.readiness()``): this instance is alive
  and Redis answers a ``PING`` within a bound (the provider's ``connect_timeout``). One round
  trip, whatever the keyspace or the queues hold: what a load balancer should ask.
- **the backlog report** (:func:`check_health`, ``provider.health()``, ``plait health``):
  every workflow and event of the registry (``_ops/catalog.py``) with its lag, pending,
  stalled and retrying entries, the age of its oldest entries, its dead letters, and the live
  instances. It says what needs an operator's attention; it never decides whether an instance
  may take traffic (a backlog on one workflow says nothing about an API pod that only emits).

A queue is a consumer group of a step stream (group ``plait``) or of an event stream (one per
subscribing group). The report is not ok when Redis cannot be reached, when entries of a group
are *stalled* (pending without a lease renewal for ``stalled_after``: their consumer died and
no live instance took them over), when the oldest entry a group has not read yet has waited
longer than ``max_wait`` (no live consumer, or too few), or when the report could not be read
within its bound (it then holds what was read); a provider's own report is also not ok when
that provider is not alive (:func:`with_liveness`). Live instances are those whose
:class:`~plait.providers.redis._ops.heartbeat.Heartbeat` beat recently; :mod:`.asgi` serves all
three over HTTP.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio

from .._core.errors import REFUSED_CREDENTIALS, UNREACHABLE
from .._core.keys import GROUP, EventKeys, WorkflowKeys, instances
from .._core.wire import text
from .catalog import event_names, workflow_names
from .heartbeat import FORGET_AFTER, HEARTBEAT

Report = TypeVar("Report", "Health", "Readiness")

LIVE_BEATS = 3
"""An instance is live while its last heartbeat is at most this many periods old."""
LAG_CAP = 10_000
"""Longest range counted when Redis cannot tell a group's lag itself."""
STALL_SAMPLE = 1_000
"""Most stalled entries counted per group."""
BATCH = 200
"""Queues looked at by one pipeline."""


@dataclass(frozen=True, kw_only=True)
class GroupHealth:
    """One consumer group of one stream."""

    name: str
    """The group (``plait`` for step streams)."""
    lag: int
    """Entries the group has not read yet."""
    pending: int
    """Entries read and not acknowledged: running, or waiting for a retry (events)."""
    stalled: int
    """Pending entries whose consumer stopped renewing them (and not waiting for a retry)."""
    retrying: int = 0
    """Pending entries waiting for their retry backoff (event groups)."""
    oldest_pending: timedelta | None = None
    """Age of the oldest pending entry (since it was added to the stream)."""
    oldest_waiting: timedelta | None = None
    """Age of the oldest entry the group has not read yet."""


@dataclass(frozen=True, kw_only=True)
class QueueHealth:
    """The stream of one workflow (its steps) or of one event, and its dead letters."""

    kind: str
    """``workflow`` or ``event``."""
    name: str
    """The workflow or event name."""
    length: int
    """Entries in the stream (steps waiting or running; events kept for ``retention``)."""
    dead_letters: int
    """Entries in the dead-letter stream."""
    groups: tuple[GroupHealth, ...] = ()


@dataclass(frozen=True, kw_only=True)
class InstanceHealth:
    """A provider that sent heartbeats recently."""

    provider_id: str
    last_seen: datetime
    live: bool
    """Whether its last heartbeat is recent (within three heartbeat periods)."""


@dataclass(frozen=True, kw_only=True)
class Health:
    """A health report, from :meth:`RedisWorkflowProvider.health` or ``plait health``.

    Attributes:
        ok: Redis answered, the report was read within its bound, and no queue has stalled
            or long-waiting entries (and, in a provider's report, the provider is alive).
        reachable: Redis answered.
        latency_ms: the round trip of a ``PING``, in milliseconds (None when unreachable).
        queues: every workflow and event of the registry, by kind and name.
        instances: providers that sent a heartbeat in the last few minutes.
        problems: why the report is not ok, one sentence each.
        checked_at: when the report was made.
        alive: whether the provider that made the report runs: started, not stopped, and its
            background work (readers, timers, heartbeat, lease renewal) has not died. None in
            a report made without a provider (``plait health``, :func:`check_health`).
    """

    ok: bool
    reachable: bool
    latency_ms: float | None
    queues: tuple[QueueHealth, ...] = ()
    instances: tuple[InstanceHealth, ...] = ()
    problems: tuple[str, ...] = ()
    checked_at: datetime = field(default_factory=lambda: datetime.now(tz=UTC))
    alive: bool | None = None

    @property
    def dead_letters(self) -> int:
        """Dead letters of every queue."""
        return sum(queue.dead_letters for queue in self.queues)

    @property
    def live_instances(self) -> tuple[InstanceHealth, ...]:
        """The instances whose heartbeat is recent."""
        return tuple(instance for instance in self.instances if instance.live)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-able data (durations in seconds, times in ISO 8601)."""
        data = _jsonable(asdict(self))
        data["dead_letters"] = self.dead_letters
        data["live_instances"] = len(self.live_instances)
        return data  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class Readiness:
    """Whether an instance may take traffic, from ``provider.readiness()``.

    Attributes:
        ok: the instance is alive and Redis answered a ``PING`` within the bound.
        reachable: Redis answered.
        latency_ms: the round trip of the ``PING``, in milliseconds (None when unreachable).
        problems: why it is not ready, one sentence each.
        checked_at: when it was checked.
        alive: the provider's liveness (``provider.alive``); None without a provider
            (:func:`check_readiness`).
    """

    ok: bool
    reachable: bool
    latency_ms: float | None
    problems: tuple[str, ...] = ()
    checked_at: datetime = field(default_factory=lambda: datetime.now(tz=UTC))
    alive: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The answer as JSON-able data (times in ISO 8601)."""
        return _jsonable(asdict(self))  # type: ignore[no-any-return]


async def check_readiness(client: Any, *, timeout: float = 5.0) -> Readiness:
    """Whether Redis answers a ``PING`` within ``timeout`` seconds (never raises).

    One round trip: it reads nothing under the prefix, so neither the size of the keyspace
    nor any backlog changes the answer.
    """
    try:
        with anyio.fail_after(timeout):
            began = time.perf_counter()
            await client.ping()
            latency = (time.perf_counter() - began) * 1000
    except UNREACHABLE as error:
        return Readiness(ok=False, reachable=False, latency_ms=None, problems=(_why(error),))
    return Readiness(ok=True, reachable=True, latency_ms=round(latency, 3))


def _why(error: BaseException) -> str:
    if isinstance(error, REFUSED_CREDENTIALS):
        return f"Redis refused the credentials: {error}"
    reason = "timed out" if isinstance(error, TimeoutError) else str(error)
    return f"Redis unreachable: {reason or type(error).__name__}"


def with_liveness(report: Report, problem: str | None) -> Report:
    """``report`` as a provider gives it: ``alive`` when ``problem`` is None, else not alive and
    not ok, with ``problem`` (why it is not alive) added to its problems."""
    if problem is None:
        return replace(report, alive=True)
    return replace(report, ok=False, alive=False, problems=(*report.problems, problem))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, timedelta):
        return round(value.total_seconds(), 3)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


async def check_health(
    client: Any,
    prefix: str,
    *,
    stalled_after: float = 30.0,
    max_wait: float = 60.0,
    timeout: float = 5.0,
) -> Health:
    """Read the backlog report of everything the registry names under ``prefix``.

    Args:
        client: a ``redis.asyncio.Redis`` (or the ``memory://`` fake).
        prefix: the key prefix of the providers.
        stalled_after: seconds without a lease renewal after which a pending entry is stalled
            (use about twice the providers' ``stall_timeout``).
        max_wait: seconds the oldest unread entry of a group may wait before health is not ok.
        timeout: seconds the whole check may take. Redis counts as unreachable when its
            ``PING`` takes that long; a report not read in that time is returned as far as it
            got, not ok, saying so.

    Returns:
        The report; an unreachable Redis gives ``ok=False, reachable=False`` (never raises).
    """
    began = time.perf_counter()
    ready = await check_readiness(client, timeout=timeout)
    if not ready.reachable:
        return Health(ok=False, reachable=False, latency_ms=None, problems=ready.problems)
    reader = _Reader(client, prefix, stalled_after, max_wait)
    try:
        with anyio.move_on_after(timeout - (time.perf_counter() - began)) as bound:
            await reader.read()
    except UNREACHABLE as error:
        return Health(ok=False, reachable=False, latency_ms=None, problems=(_why(error),))
    if bound.cancelled_caught:
        reader.problems.append(
            f"backlog report incomplete: not read within {timeout:g}s "
            f"({len(reader.queues)} queues read; Redis answered PING in {ready.latency_ms} ms)"
        )
    return Health(
        ok=not reader.problems,
        reachable=True,
        latency_ms=ready.latency_ms,
        queues=tuple(reader.queues),
        instances=reader.instances,
        problems=tuple(reader.problems),
    )


class _Reader:
    """One health check: the streams, groups, dead letters and heartbeats under a prefix."""

    def __init__(self, client: Any, prefix: str, stalled_after: float, max_wait: float) -> None:
        self._client = client
        self._prefix = prefix
        self._stalled_ms = int(stalled_after * 1000)
        self._max_wait = timedelta(seconds=max_wait)
        self._now_ms = 0
        self.problems: list[str] = []
        self.queues: list[QueueHealth] = []
        self.instances: tuple[InstanceHealth, ...] = ()

    async def read(self) -> None:
        """Fill :attr:`instances`, then :attr:`queues` a batch at a time (a report cut short by
        its bound keeps what was read)."""
        seconds, micros = await self._client.time()
        self._now_ms = int(seconds) * 1000 + int(micros) // 1000
        self.instances = await self._instances()
        workflows = await workflow_names(self._client, self._prefix)
        for at in range(0, len(workflows), BATCH):
            keys = [WorkflowKeys(self._prefix, name) for name in workflows[at : at + BATCH]]
            looks = await self._look([(one.jobs, one.dead) for one in keys])
            self.queues += [
                await self._workflow(one, *look) for one, look in zip(keys, looks, strict=True)
            ]
        events = await event_names(self._client, self._prefix)
        for at in range(0, len(events), BATCH):
            names = [EventKeys(self._prefix, name) for name in events[at : at + BATCH]]
            looks = await self._look([(one.stream, one.dead) for one in names])
            self.queues += [
                await self._event(one, *look) for one, look in zip(names, looks, strict=True)
            ]

    async def _look(self, streams: list[tuple[str, str]]) -> list[tuple[int, list[Any], int]]:
        """Length, groups and dead letters of each (stream, dead-letter stream), in one
        pipeline: an idle queue costs no other command."""
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, dead in streams:
                pipe.xlen(stream)
                pipe.xinfo_groups(stream)
                pipe.xlen(dead)
            replies = await pipe.execute(raise_on_error=False)
        looks = []
        for at in range(0, len(replies), 3):
            length, infos, dead = replies[at : at + 3]
            for reply in (length, dead):
                if isinstance(reply, Exception):  # a key of another type
                    raise reply
            # XINFO GROUPS fails on a stream that does not exist (only dead letters are left).
            groups = [] if isinstance(infos, Exception) else list(infos)
            looks.append((int(length), groups, int(dead)))
        return looks

    async def _workflow(
        self, keys: WorkflowKeys, length: int, infos: list[Any], dead: int
    ) -> QueueHealth:
        groups = []
        for info in infos:
            if text(info.get("name")) != GROUP:
                continue
            pending = int(info.get("pending") or 0)
            lag = info.get("lag")
            # Steps are deleted once acknowledged: what is not pending is waiting.
            lag = int(lag) if lag is not None else max(0, length - pending)
            groups.append(await self._group(keys.jobs, info, lag=lag, retry_key=None))
        if not groups and length:
            first = await self._client.xrange(keys.jobs, "-", "+", count=1)
            groups.append(
                GroupHealth(
                    name=GROUP, lag=length, pending=0, stalled=0, oldest_waiting=self._age(first)
                )
            )
        queue = QueueHealth(
            kind="workflow",
            name=keys.workflow,
            length=length,
            dead_letters=dead,
            groups=tuple(groups),
        )
        self._judge(queue)
        return queue

    async def _event(
        self, keys: EventKeys, length: int, infos: list[Any], dead: int
    ) -> QueueHealth:
        groups = []
        for info in infos:
            lag = info.get("lag")
            if lag is None:
                last = text(info.get("last-delivered-id") or "0-0")
                unread = await self._client.xrange(keys.stream, f"({last}", "+", count=LAG_CAP)
                lag = len(unread)
            group = text(info.get("name"))
            retry_key = keys.retry(group)
            groups.append(await self._group(keys.stream, info, lag=int(lag), retry_key=retry_key))
        queue = QueueHealth(
            kind="event",
            name=keys.event,
            length=length,
            dead_letters=dead,
            groups=tuple(groups),
        )
        self._judge(queue)
        return queue

    async def _group(
        self, stream: str, info: dict[str, Any], *, lag: int, retry_key: str | None
    ) -> GroupHealth:
        group = text(info.get("name"))
        pending = int(info.get("pending") or 0)
        stalled = retrying = 0
        oldest: timedelta | None = None
        if pending:
            summary = await self._client.xpending(stream, group)
            oldest = self._age_of(text(summary.get("min") or ""))
            idle = await self._client.xpending_range(
                stream, group, "-", "+", STALL_SAMPLE, idle=self._stalled_ms
            )
            ids = [text(row["message_id"]) for row in idle]
            if retry_key is not None:
                retrying = int(await self._client.zcard(retry_key))
                if ids:
                    due = await self._client.zmscore(retry_key, ids)
                    ids = [entry for entry, score in zip(ids, due, strict=True) if score is None]
            stalled = len(ids)
        waiting: timedelta | None = None
        if lag:
            last = text(info.get("last-delivered-id") or "0-0")
            waiting = self._age(await self._client.xrange(stream, f"({last}", "+", count=1))
        return GroupHealth(
            name=group,
            lag=lag,
            pending=pending,
            stalled=stalled,
            retrying=retrying,
            oldest_pending=oldest,
            oldest_waiting=waiting,
        )

    def _judge(self, queue: QueueHealth) -> None:
        what = f"{queue.kind} {queue.name!r}"
        for group in queue.groups:
            where = what if queue.kind == "workflow" else f"{what} (group {group.name!r})"
            if group.stalled:
                self.problems.append(
                    f"{where}: {group.stalled} pending entries stalled (no lease renewal for "
                    f"{self._stalled_ms / 1000:g}s; is any instance consuming it?)"
                )
            if group.oldest_waiting is not None and group.oldest_waiting > self._max_wait:
                self.problems.append(
                    f"{where}: {group.lag} entries waiting, the oldest for "
                    f"{group.oldest_waiting.total_seconds():.0f}s (no live consumer, or too few)"
                )

    async def _instances(self) -> tuple[InstanceHealth, ...]:
        rows = await self._client.zrange(instances(self._prefix), 0, -1, withscores=True)
        live_ms = LIVE_BEATS * HEARTBEAT * 1000
        found = [
            InstanceHealth(
                provider_id=text(member),
                last_seen=datetime.fromtimestamp(score / 1000, tz=UTC),
                live=self._now_ms - score <= live_ms,
            )
            for member, score in rows
            if self._now_ms - score <= FORGET_AFTER * 1000
        ]
        return tuple(sorted(found, key=lambda instance: instance.provider_id))

    def _age(self, entries: list[Any]) -> timedelta | None:
        return self._age_of(text(entries[0][0])) if entries else None

    def _age_of(self, entry_id: str) -> timedelta | None:
        millis, _, _ = entry_id.partition("-")
        if not millis.isdigit():
            return None
        return timedelta(milliseconds=max(0, self._now_ms - int(millis)))
