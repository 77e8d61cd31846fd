"""What the dashboard reads from Redis, a page at a time, through the indexes plait keeps.

Runs are found through a workflow's ``runs`` zset (every run, by creation time), by rank: a page
is one ``ZREVRANGE`` of its ids and one pipeline of ``HMGET`` on their records, never the whole
index. A time filter becomes a rank range (``ZCOUNT`` on the creation time), an idempotency key
is one ``GET`` of ``<prefix>:{<wf>}:idem:<key>``. A status or meta filter pages through the
status index or the meta field's index (``_workflows/search.py``: a field the workflow indexes,
``Workflow(indexed_meta=)``) from a cursor, checking the other filters with ``ZMSCORE``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from plait.workflows import InvalidFilterError, RunEvent, WorkflowStatus

from .._core.keys import EventKeys, WorkflowKeys
from .._core.wire import text
from .._workflows import search
from .._workflows.runs import _run_event

PAGE_SIZE = 50
"""Runs on one page."""
EVENT_LOG = 500
"""A run's newest events shown on its page."""


@dataclass(frozen=True, kw_only=True)
class WorkflowSummary:
    """One workflow's counts, from its indexes and counters."""

    name: str
    stored: int
    """Runs in the ``runs`` index (kept ``retention`` after they end)."""
    live: int
    """Runs not finished yet (the ``active`` index)."""
    ended: Mapping[str, int]
    """Runs that ended, per final status, since the workflow first ran (the ``stats`` hash)."""
    fenced: int
    """Writes refused because their attempt was superseded."""
    queued: int
    """Entries in the workflow's job stream."""


@dataclass(frozen=True, kw_only=True)
class RunRow:
    """One run as listed."""

    run_id: str
    status: str
    created: datetime | None
    finished: datetime | None
    meta: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class RunFilter:
    """What a runs page asks for."""

    status: WorkflowStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    meta: tuple[str, str] | None = None
    """``(field, value)``: only runs whose meta has that field with that value."""
    idempotency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunPage:
    """One page of runs, newest first."""

    rows: list[RunRow]
    offset: int
    """Rank (in the chosen index and time range) of the first run examined."""
    next_offset: int | None
    """Where the next page starts, or None at the end."""
    examined: int
    """Runs of the index this page looked at (more than ``rows`` when filtered)."""
    total: int
    """Runs of the index in the time range (before the other filters)."""
    index: str = field(default="runs")
    """``runs``, ``status`` or ``meta:<field>``: the index paged through."""
    next_cursor: str | None = None
    """Where the next page of a status or meta filter starts (its pages go by cursor, not
    offset), or None at the end."""


@dataclass(frozen=True, kw_only=True)
class GroupRow:
    """One consumer group of an event stream."""

    event: str
    group: str
    lag: int | None
    pending: int
    consumers: int
    last_delivered: str


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _time(raw: bytes | None) -> datetime | None:
    return datetime.fromtimestamp(int(raw) / 1000, tz=UTC) if raw else None


async def summaries(client: Any, prefix: str, names: list[str]) -> list[WorkflowSummary]:
    """Counts of each workflow in ``names``: one pipeline, four commands per workflow."""
    if not names:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            keys = WorkflowKeys(prefix, name)
            pipe.zcard(keys.runs)
            pipe.zcard(keys.active)
            pipe.hgetall(keys.stats)
            pipe.xlen(keys.jobs)
        replies = await pipe.execute()
    found = []
    for index, name in enumerate(names):
        stored, live, stats, queued = replies[4 * index : 4 * index + 4]
        counters = {text(key): int(value) for key, value in stats.items()}
        found.append(
            WorkflowSummary(
                name=name,
                stored=int(stored),
                live=int(live),
                ended={s.value: counters.get(s.value, 0) for s in WorkflowStatus if s.is_final},
                fenced=counters.get("fenced", 0),
                queued=int(queued),
            )
        )
    return found


async def run_page(
    client: Any,
    keys: WorkflowKeys,
    where: RunFilter,
    *,
    offset: int = 0,
    limit: int = PAGE_SIZE,
    cursor: str | None = None,
) -> RunPage:
    """A page of ``keys.workflow``'s runs matching ``where``, newest first: from rank ``offset``
    of the ``runs`` index in the time range, or, with a status or meta filter, from ``cursor``
    of the index that serves it.

    Raises:
        ValueError: a filter or cursor that cannot be served.
    """
    if where.idempotency_key:
        return await _by_idempotency_key(client, keys, where)
    if where.status is not None or where.meta is not None:
        return await _indexed_page(client, keys, where, limit=limit, cursor=cursor)
    top = "+inf" if where.until is None else _ms(where.until)
    bottom = "-inf" if where.since is None else _ms(where.since)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.runs, f"({top}", "+inf")  # runs created after the range: ranks to skip
        pipe.zcount(keys.runs, bottom, top)
        newer, total = (int(count) for count in await pipe.execute())
    start = newer + offset
    count = max(0, min(limit, total - offset))
    ids = [text(raw) for raw in await client.zrevrange(keys.runs, start, start + count - 1)]
    ids = ids if count else []
    rows = [row for row in await _records(client, keys, ids) if row is not None]
    end = offset + len(ids)
    return RunPage(
        rows=rows,
        offset=offset,
        next_offset=end if end < total else None,
        examined=len(ids),
        total=total,
    )


async def _indexed_page(
    client: Any, keys: WorkflowKeys, where: RunFilter, *, limit: int, cursor: str | None
) -> RunPage:
    try:
        query = search.query_of(
            status=where.status,
            since=where.since,
            until=where.until,
            meta=dict([where.meta]) if where.meta else None,
            idempotency_key=None,
            indexed=None,
        )
        found = await search.find(client, keys, query, limit=limit, cursor=cursor)
    except InvalidFilterError as error:
        raise ValueError(str(error)) from None
    rows = [row for row in await _records(client, keys, found.ids) if row is not None]
    if where.meta is not None:
        name, value = where.meta
        index = f"meta:{name}"
        low = "-inf" if where.since is None else _ms(where.since)
        high = "+inf" if where.until is None else _ms(where.until)
        total = int(await client.zcount(keys.meta_index(name, value), low, high))
    else:
        status = where.status.value if where.status is not None else ""
        low = f"[{status}|" if where.since is None else f"[{status}|{_ms(where.since):013d}"
        high = f"({status}|:" if where.until is None else f"({status}|{_ms(where.until) + 1:013d}"
        index = "status"
        total = int(await client.zlexcount(keys.status, low, high))
    return RunPage(
        rows=rows,
        offset=0,
        next_offset=None,
        examined=found.examined,
        total=total,
        index=index,
        next_cursor=found.cursor,
    )


def _matches(row: RunRow, where: RunFilter) -> bool:
    if where.status is not None and row.status != where.status.value:
        return False
    if where.meta is not None:
        name, value = where.meta
        return row.meta.get(name) == value
    return True


async def _records(client: Any, keys: WorkflowKeys, ids: list[str]) -> list[RunRow | None]:
    async with client.pipeline(transaction=False) as pipe:
        for run_id in ids:
            pipe.hmget(keys.run(run_id), "status", "created", "finished", "meta")
        replies = await pipe.execute()
    rows: list[RunRow | None] = []
    for run_id, (status, created, finished, meta) in zip(ids, replies, strict=True):
        if status is None:
            rows.append(None)  # expired after its retention; the index is trimmed later
            continue
        try:
            decoded = json.loads(meta) if meta else {}
        except ValueError:
            decoded = {}
        rows.append(
            RunRow(
                run_id=run_id,
                status=text(status),
                created=_time(created),
                finished=_time(finished),
                meta=decoded if isinstance(decoded, dict) else {},
            )
        )
    return rows


async def _by_idempotency_key(client: Any, keys: WorkflowKeys, where: RunFilter) -> RunPage:
    owner = await client.get(keys.idempotency(where.idempotency_key or ""))
    rows: list[RunRow] = []
    if owner is not None:
        run_id = text(owner).partition("|")[0]
        rows = [
            row
            for row in await _records(client, keys, [run_id])
            if row is not None and _matches(row, where)
        ]
    return RunPage(rows=rows, offset=0, next_offset=None, examined=len(rows), total=len(rows))


async def run_events(client: Any, keys: WorkflowKeys, run_id: str) -> list[RunEvent]:
    """The run's newest :data:`EVENT_LOG` events, oldest first."""
    entries = await client.xrevrange(keys.events(run_id), "+", "-", count=EVENT_LOG)
    return [_run_event(entry, fields) for entry, fields in reversed(entries)]


async def event_groups(client: Any, prefix: str, names: list[str]) -> list[GroupRow]:
    """The consumer groups of each event stream in ``names``, with their lag."""
    if not names:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.xinfo_groups(EventKeys(prefix, name).stream)
        replies = await pipe.execute(raise_on_error=False)
    rows = []
    for name, groups in zip(names, replies, strict=True):
        if isinstance(groups, Exception):
            continue  # the stream is gone (trimmed away, or never created)
        for group in groups:
            lag = group.get("lag")
            rows.append(
                GroupRow(
                    event=name,
                    group=text(group["name"]),
                    lag=None if lag is None else int(lag),
                    pending=int(group.get("pending", 0)),
                    consumers=int(group.get("consumers", 0)),
                    last_delivered=text(group.get("last-delivered-id", b"")),
                )
            )
    return rows
