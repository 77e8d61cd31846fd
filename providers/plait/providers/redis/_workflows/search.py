"""Finding runs through the indexes plait keeps in Redis, a page at a time, never by scanning.

A listing pages through one index, newest first, and checks the other filters against theirs
with ``ZMSCORE`` (one pipeline per chunk of candidates), so a page costs a few round trips and
at most :data:`BUDGET` candidates whatever the number of runs stored:

- ``<base>meta:<field>:<value>`` (run id -> created ms) when a meta filter is given (the
  workflow must index the field, ``Workflow(indexed_meta=)``);
- else ``<base>status`` (``STATUS|created ms|run id``, by lex) when an end status is given
  (COMPLETED, FAILED, CANCELLED, TIMED_OUT: the index holds ended runs only);
- else ``<base>active`` (run id -> created ms) for a live status (PENDING, RUNNING,
  COMPENSATING), checked against each candidate's record (live runs are few);
- else ``<base>runs`` (run id -> created ms).

The time range bounds the index's range; an idempotency key is one ``GET`` of
``<base>idem:<key>`` and the run's record. The cursor names the index paged and where the page
stopped; it is only good with the filters that made it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plait.workflows import InvalidFilterError, RunInfo, RunPage, WorkflowStatus

from .._core.keys import WorkflowKeys
from .._core.wire import text
from .codec import decode_record, run_info

BUDGET = 1000
"""Candidates a page examines at most before it answers with a cursor to go on."""
CHUNK = 200
"""Candidates read (and checked in one pipeline) at a time."""
MAX_LIMIT = 1000
"""The most runs one page holds."""


@dataclass(frozen=True, kw_only=True)
class RunQuery:
    """What a listing asks for (every filter given must hold)."""

    status: WorkflowStatus | None = None
    since: datetime | None = None
    """Runs created at or after this (aware) time."""
    until: datetime | None = None
    """Runs created at or before this (aware) time."""
    meta: tuple[tuple[str, str], ...] = ()
    """``(field, value)`` pairs, sorted by field: the run's meta holds each."""
    idempotency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Found:
    """Run ids of one page, newest first, and where the next page starts (None: the end)."""

    ids: list[str]
    cursor: str | None
    examined: int
    """Candidates of the index the page looked at."""


def query_of(
    *,
    status: WorkflowStatus | str | None,
    since: datetime | None,
    until: datetime | None,
    meta: Mapping[str, str] | None,
    idempotency_key: str | None,
    indexed: tuple[str, ...] | None,
) -> RunQuery:
    """The filters checked (``indexed``: the meta fields the workflow indexes, None when its
    definition is not known here).

    Raises:
        InvalidFilterError: a filter that cannot be served.
    """
    try:
        wanted = None if status is None else WorkflowStatus(status)
    except ValueError:
        raise InvalidFilterError(f"unknown run status {status!r}") from None
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and (not isinstance(moment, datetime) or moment.tzinfo is None):
            raise InvalidFilterError(f"{name} must be an aware datetime, not {moment!r}")
    if since is not None and until is not None and since > until:
        raise InvalidFilterError("since is after until")
    pairs: list[tuple[str, str]] = []
    for name, value in (meta or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidFilterError("meta filters map field names to string values")
        if indexed is not None and name not in indexed:
            raise InvalidFilterError(
                f"meta field {name!r} is not indexed (Workflow(indexed_meta=) lists"
                f" {list(indexed)})"
            )
        pairs.append((name, value))
    if idempotency_key is not None and not isinstance(idempotency_key, str):
        raise InvalidFilterError("idempotency_key must be a string")
    return RunQuery(
        status=wanted,
        since=since,
        until=until,
        meta=tuple(sorted(pairs)),
        idempotency_key=idempotency_key,
    )


def check_limit(limit: int) -> int:
    """``limit`` checked: 1 to :data:`MAX_LIMIT`."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidFilterError(f"limit must be an int from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


def status_member(status: str, created_ms: int | str, run_id: str) -> str:
    """The run's member of the status index (``lua/run_lib.lua``'s ``restatus``)."""
    return f"{status}|{str(created_ms).zfill(13)}|{run_id}"


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def owner_of(client: Any, keys: WorkflowKeys, idempotency_key: str) -> str | None:
    """The run owning ``idempotency_key``, if one does."""
    raw = await client.get(keys.idempotency(idempotency_key))
    return None if raw is None else text(raw).rpartition("|")[0]


async def find(
    client: Any, keys: WorkflowKeys, query: RunQuery, *, limit: int, cursor: str | None
) -> Found:
    """One page of the ids of the runs matching ``query`` (all but the idempotency key: the
    caller checks that one against the record), newest first, from ``cursor``.

    Raises:
        InvalidFilterError: ``cursor`` is not one of this listing's.
    """
    if query.meta:
        field, value = query.meta[0]
        index = keys.meta_index(field, value)
        return await _by_score(
            client, keys, query, tag="m", index=index, limit=limit, cursor=cursor
        )
    if query.status is not None and query.status.is_final:
        return await _by_status(client, keys, query, limit=limit, cursor=cursor)
    if query.status is not None:
        return await _by_score(
            client, keys, query, tag="a", index=keys.active, limit=limit, cursor=cursor
        )
    return await _by_score(
        client, keys, query, tag="r", index=keys.runs, limit=limit, cursor=cursor
    )


def _position(tag: str, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    found, colon, position = cursor.partition(":")
    if found != tag or not colon or not position:
        raise InvalidFilterError(f"not a cursor of this listing: {cursor!r}")
    return position


async def _checked(
    client: Any,
    keys: WorkflowKeys,
    query: RunQuery,
    candidates: list[tuple[str, int]],
    *,
    meta: tuple[tuple[str, str], ...],
    status: bool,
) -> list[bool]:
    """Whether each (run id, created ms) is in every index of ``meta`` and, with ``status``,
    has the query's status (an end status by the status index, a live one by the record):
    one pipeline."""
    if not candidates or (not meta and not status):
        return [True] * len(candidates)
    ids = [run_id for run_id, _ in candidates]
    wanted = query.status if status else None
    async with client.pipeline(transaction=False) as pipe:
        for field, value in meta:
            pipe.zmscore(keys.meta_index(field, value), ids)
        if wanted is not None and wanted.is_final:
            members = [status_member(wanted.value, at, run_id) for run_id, at in candidates]
            pipe.zmscore(keys.status, members)
        elif wanted is not None:
            for run_id in ids:
                pipe.hget(keys.run(run_id), "status")
        replies = await pipe.execute()
    held = [all(reply[i] is not None for reply in replies[: len(meta)]) for i in range(len(ids))]
    if wanted is not None and wanted.is_final:
        return [ok and replies[-1][i] is not None for i, ok in enumerate(held)]
    if wanted is not None:
        statuses = replies[len(meta) :]
        return [
            ok and text(got or b"") == wanted.value for ok, got in zip(held, statuses, strict=True)
        ]
    return held


async def _by_score(
    client: Any,
    keys: WorkflowKeys,
    query: RunQuery,
    *,
    tag: str,
    index: str,
    limit: int,
    cursor: str | None,
) -> Found:
    """Page through a zset of run id -> created ms, from (score, how many of that score were
    examined already)."""
    position = _position(tag, cursor)
    bottom: int | str = "-inf" if query.since is None else _ms(query.since)
    top: int | str = "+inf" if query.until is None else _ms(query.until)
    skip = 0
    if position is not None:
        last, _, seen = position.partition(":")
        if not (last.isdigit() and seen.isdigit()):
            raise InvalidFilterError(f"not a cursor of this listing: {cursor!r}")
        top, skip = int(last), int(seen)
    others = query.meta[1:] if tag == "m" else query.meta
    ids: list[str] = []
    examined = 0
    while examined < BUDGET:
        count = min(CHUNK, BUDGET - examined)
        raw = await client.zrevrangebyscore(
            index, top, bottom, start=skip, num=count, withscores=True
        )
        candidates = [(text(member), int(score)) for member, score in raw]
        matches = await _checked(
            client, keys, query, candidates, meta=others, status=query.status is not None
        )
        for (run_id, score), match in zip(candidates, matches, strict=True):
            examined += 1
            skip = skip + 1 if score == top else 1
            top = score
            if match:
                ids.append(run_id)
                if len(ids) == limit:
                    return Found(ids=ids, cursor=f"{tag}:{top}:{skip}", examined=examined)
        if len(candidates) < count:
            return Found(ids=ids, cursor=None, examined=examined)
    return Found(ids=ids, cursor=f"{tag}:{top}:{skip}", examined=examined)


async def _by_status(
    client: Any, keys: WorkflowKeys, query: RunQuery, *, limit: int, cursor: str | None
) -> Found:
    """Page through the status index (by lex) from the member examined last."""
    status = query.status.value if query.status is not None else ""
    position = _position("s", cursor)
    if position is not None and not position.startswith(status + "|"):
        raise InvalidFilterError(f"not a cursor of this listing: {cursor!r}")
    bottom = f"[{status}|" if query.since is None else f"[{status}|{_ms(query.since):013d}"
    top = f"({status}|:" if query.until is None else f"({status}|{_ms(query.until) + 1:013d}"
    if position is not None:
        top = f"({position}"
    ids: list[str] = []
    examined = 0
    while examined < BUDGET:
        count = min(CHUNK, BUDGET - examined)
        raw = await client.zrevrangebylex(keys.status, top, bottom, start=0, num=count)
        members = [text(member) for member in raw]
        candidates = []
        for member in members:
            _, at, run_id = member.split("|", 2)
            # a record whose creation time does not parse has its member all the same
            candidates.append((run_id, int(at) if at.isascii() and at.isdigit() else 0))
        matches = await _checked(client, keys, query, candidates, meta=query.meta, status=False)
        for member, (run_id, _), match in zip(members, candidates, matches, strict=True):
            examined += 1
            top = f"({member}"
            if match:
                ids.append(run_id)
                if len(ids) == limit:
                    return Found(ids=ids, cursor=f"s:{member}", examined=examined)
        if len(members) < count:
            return Found(ids=ids, cursor=None, examined=examined)
    return Found(ids=ids, cursor=f"s:{top[1:]}", examined=examined)


async def page(
    client: Any, keys: WorkflowKeys, query: RunQuery, *, limit: int, cursor: str | None
) -> RunPage:
    """One page of the runs matching ``query`` as :class:`RunInfo` (records read in one
    pipeline; runs whose record expired are left out)."""
    if query.idempotency_key is not None:
        owner = await owner_of(client, keys, query.idempotency_key)
        infos = await records(client, keys, [owner] if owner else [])
        return RunPage(runs=tuple(info for info in infos if _holds(info, query)), cursor=None)
    found = await find(client, keys, query, limit=limit, cursor=cursor)
    infos = await records(client, keys, found.ids)
    # the record has the last word: an instance of an older plait (during a rolling deploy)
    # changes a run's status without moving its index entry
    wanted = [info for info in infos if _holds(info, query)]
    return RunPage(runs=tuple(wanted), cursor=found.cursor)


async def records(client: Any, keys: WorkflowKeys, ids: list[str]) -> list[RunInfo]:
    """The runs of ``ids`` that still exist, as :class:`RunInfo`, in that order."""
    if not ids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for run_id in ids:
            pipe.hgetall(keys.run(run_id))
        replies = await pipe.execute()
    return [
        run_info(run_id, keys.workflow, decode_record(raw))
        for run_id, raw in zip(ids, replies, strict=True)
        if raw
    ]


def _holds(info: RunInfo, query: RunQuery) -> bool:
    """Whether a run found by its idempotency key matches the other filters."""
    return (
        (query.status is None or info.status is query.status)
        and (query.since is None or info.created_at >= query.since)
        and (query.until is None or info.created_at <= query.until)
        and all(info.meta.get(field) == value for field, value in query.meta)
    )
