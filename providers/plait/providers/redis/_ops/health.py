"""Health of a plait deployment: Redis, queues, dead letters and live instances.

:func:`check_health` reads everything under a prefix, so the CLI (which has no provider) and
each provider's ``health()`` report the same thing. Live instances are those whose
:class:`~plait.providers.redis._ops.heartbeat.Heartbeat` beat recently; :mod:`.asgi` serves the
report over HTTP.

A queue is a consumer group of a step stream (group ``plait``) or of an event stream (one per
subscribing group). Health is not ok when Redis cannot be reached, when entries of a group are
*stalled* (pending without a lease renewal for ``stalled_after``: their consumer died and no
live instance took them over), or when the oldest entry a group has not read yet has waited
longer than ``max_wait`` (no live consumer, or too few); a provider's own report is also not ok
when that provider is not alive (:func:`with_liveness`), or when a workflow's jobs wait for a
consumer that can run them (put back lately because no live instance announced their step,
rollback or hook, see ``_workflows/capabilities``). A workflow's queue lists the versions its
live consumers announced.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from redis import exceptions as redis_errors

from .._core.errors import REFUSED_CREDENTIALS, UNREACHABLE
from .._core.keys import GROUP, EventKeys, WorkflowKeys, instances
from .._core.wire import text
from .._workflows.jobs import display_name
from .catalog import event_names, workflow_names
from .heartbeat import ANNOUNCED_FOR, FORGET_AFTER, HEARTBEAT

LIVE_BEATS = 3
"""An instance is live while its last heartbeat is at most this many periods old."""
LAG_CAP = 10_000
"""Longest range counted when Redis cannot tell a group's lag itself."""
STALL_SAMPLE = 1_000
"""Most stalled entries counted per group."""
WAITED_LATELY = 10.0
"""Seconds after its last put-back that a job still counts as waiting for a consumer."""
WF = ("jobs", "dead")
EV = ("stream", "dead")


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
    versions: tuple[str, ...] = ()
    """The definition versions the workflow's live consumers announced (workflows only)."""
    waiting_for: tuple[str, ...] = ()
    """Jobs (``ship``, ``rollback:ship``, ``on_error``...) put back lately because no live
    instance announced them: runs wait for a consumer that can run them."""


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
        ok: Redis answered and no queue has stalled or long-waiting entries.
        reachable: Redis answered.
        latency_ms: the round trip of a ``PING``, in milliseconds (None when unreachable).
        queues: every workflow and event stream under the prefix, by kind and name.
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


def with_liveness(report: Health, problem: str | None) -> Health:
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
    """Read the health of everything stored under ``prefix``.

    Args:
        client: a ``redis.asyncio.Redis`` (or the ``memory://`` fake).
        prefix: the key prefix of the providers.
        stalled_after: seconds without a lease renewal after which a pending entry is stalled
            (use about twice the providers' ``stall_timeout``).
        max_wait: seconds the oldest unread entry of a group may wait before health is not ok.
        timeout: seconds the whole check may take before Redis counts as unreachable.

    Returns:
        The report; an unreachable Redis gives ``ok=False, reachable=False`` (never raises).
    """
    try:
        with anyio.fail_after(timeout):
            began = time.perf_counter()
            await client.ping()
            latency = (time.perf_counter() - began) * 1000
            return await _Reader(client, prefix, stalled_after, max_wait).read(latency)
    except UNREACHABLE as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error)
        problem = f"Redis unreachable: {reason or type(error).__name__}"
        if isinstance(error, REFUSED_CREDENTIALS):
            problem = f"Redis refused the credentials: {error}"
        return Health(ok=False, reachable=False, latency_ms=None, problems=(problem,))


class _Reader:
    """One health check: the streams, groups, dead letters and heartbeats under a prefix."""

    def __init__(self, client: Any, prefix: str, stalled_after: float, max_wait: float) -> None:
        self._client = client
        self._prefix = prefix
        self._stalled_ms = int(stalled_after * 1000)
        self._max_wait = timedelta(seconds=max_wait)
        self._now_ms = 0
        self.problems: list[str] = []

    async def read(self, latency_ms: float) -> Health:
        seconds, micros = await self._client.time()
        self._now_ms = int(seconds) * 1000 + int(micros) // 1000
        client, prefix = self._client, self._prefix
        queues = [
            *[await self._workflow(name) for name in await workflow_names(client, prefix, *WF)],
            *[await self._event(name) for name in await event_names(client, prefix, *EV)],
        ]
        heartbeats = await self._instances()
        return Health(
            ok=not self.problems,
            reachable=True,
            latency_ms=round(latency_ms, 3),
            queues=tuple(queues),
            instances=heartbeats,
            problems=tuple(self.problems),
        )

    async def _workflow(self, name: str) -> QueueHealth:
        keys = WorkflowKeys(self._prefix, name)
        length = int(await self._client.xlen(keys.jobs))
        infos = await self._groups(keys.jobs)
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
        versions, waiting_for = await self._consumers(keys)
        queue = QueueHealth(
            kind="workflow",
            name=name,
            length=length,
            dead_letters=int(await self._client.xlen(keys.dead)),
            groups=tuple(groups),
            versions=versions,
            waiting_for=waiting_for,
        )
        self._judge(queue)
        return queue

    async def _consumers(self, keys: WorkflowKeys) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The versions live consumers of a workflow announced, and the jobs waiting lately
        for a consumer that can run them."""
        versions: set[str] = set()
        for row in (await self._client.hgetall(keys.consumers)).values():
            seen, _, rest = text(row).partition("|")
            live = seen.isdigit() and self._now_ms - int(seen) <= ANNOUNCED_FOR * 1000
            if live:
                versions.add(rest.partition("|")[0])
        waiting = []
        for field_name, value in (await self._client.hgetall(keys.stats)).items():
            name, at = text(field_name), text(value)
            lately = at.isdigit() and self._now_ms - int(at) <= WAITED_LATELY * 1000
            if name.startswith("wait:") and lately:
                waiting.append(display_name(name[len("wait:") :]))
        return tuple(sorted(versions)), tuple(sorted(waiting))

    async def _event(self, name: str) -> QueueHealth:
        keys = EventKeys(self._prefix, name)
        groups = []
        for info in await self._groups(keys.stream):
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
            name=name,
            length=int(await self._client.xlen(keys.stream)),
            dead_letters=int(await self._client.xlen(keys.dead)),
            groups=tuple(groups),
        )
        self._judge(queue)
        return queue

    async def _groups(self, stream: str) -> list[dict[str, Any]]:
        try:
            return list(await self._client.xinfo_groups(stream))
        except redis_errors.ResponseError:  # no such stream (only dead letters are left)
            return []

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
        for job in queue.waiting_for:
            self.problems.append(
                f"{what}: waiting for a consumer that can run {job!r} (no live instance "
                "announced it; its runs wait, see missing_handler_grace)"
            )
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
