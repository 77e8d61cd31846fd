"""``plait schedules list|show|pause|resume|delete``: the schedules stored under a prefix.

Workflow and event schedules live apart (``ScheduleKeys``); ``list`` shows both, the other
commands look for the id among workflow schedules first, then event schedules (``--events``
looks among event schedules only).
"""

from __future__ import annotations

import argparse
from typing import Any

from .._core.connection import Connection
from .._core.keys import ScheduleKeys
from .._core.schedules import ScheduleInfo, ScheduleStore, change, info_of
from .output import emit, moment, table

KINDS = ("workflows", "events")


class ScheduleNotFoundError(LookupError):
    """No schedule has the id (the caller turns it into exit code 1)."""


def _stores(connection: Connection, args: argparse.Namespace) -> list[tuple[str, ScheduleStore]]:
    kinds = ("events",) if getattr(args, "events", False) else KINDS
    return [(kind, ScheduleStore(connection, ScheduleKeys(args.prefix, kind))) for kind in kinds]


def schedule_json(kind: str, info: ScheduleInfo) -> dict[str, Any]:
    """A schedule as ``--json`` prints it."""
    return {
        "schedule_id": info.schedule_id,
        "kind": kind,
        "target": info.target,
        "cron": info.cron,
        "every_seconds": None if info.every is None else info.every.total_seconds(),
        "timezone": info.timezone,
        "overlap": info.overlap,
        "catchup": info.catchup,
        "paused": info.paused,
        "next_fire_times": [when.isoformat() for when in info.next_fire_times],
        "last_tick": info.last_tick.isoformat() if info.last_tick else None,
        "last_run": info.last_run,
    }


def _when(info: ScheduleInfo) -> str:
    if info.cron is not None:
        return f"cron {info.cron} ({info.timezone})"
    assert info.every is not None
    return f"every {info.every.total_seconds():g} s"


async def schedules_list(connection: Connection, args: argparse.Namespace) -> int:
    """``schedules list``: every schedule, its next tick and its last run."""
    found: list[tuple[str, ScheduleInfo]] = []
    for kind, store in _stores(connection, args):
        found += [(kind, info_of(i, spec, state)) for i, spec, state in await store.all()]
    rows = [
        [
            info.schedule_id,
            kind[:-1],
            info.target,
            _when(info),
            "paused" if info.paused else moment(info.next_fire_times[0]),
            info.last_run or "-",
        ]
        for kind, info in found
    ]
    headers = ["SCHEDULE", "KIND", "TARGET", "WHEN", "NEXT", "LAST RUN"]
    emit(
        args,
        [schedule_json(kind, info) for kind, info in found],
        lambda: table(headers, rows) if rows else ["no schedules"],
    )
    return 0


async def _find(connection: Connection, args: argparse.Namespace) -> tuple[str, ScheduleStore]:
    for kind, store in _stores(connection, args):
        _, spec, _ = await store.read(args.schedule_id)
        if spec is not None:
            return kind, store
    raise ScheduleNotFoundError(f"schedule {args.schedule_id} not found")


async def schedules_show(connection: Connection, args: argparse.Namespace) -> int:
    """``schedules show``: one schedule, with its next fire times."""
    kind, store = await _find(connection, args)
    _, spec, state = await store.read(args.schedule_id)
    assert spec is not None
    info = info_of(args.schedule_id, spec, state)
    lines = [
        f"schedule {info.schedule_id} ({kind[:-1]} {info.target})",
        f"  when:     {_when(info)}",
        f"  overlap:  {info.overlap}   catch-up: {info.catchup}",
        f"  paused:   {'yes' if info.paused else 'no'}",
        f"  last:     {moment(info.last_tick)} {info.last_run or ''}".rstrip(),
        *[f"  next:     {moment(when)}" for when in info.next_fire_times],
    ]
    emit(args, schedule_json(kind, info), lambda: lines)
    return 0


async def schedules_pause(connection: Connection, args: argparse.Namespace) -> int:
    """``schedules pause``: fire nothing until resumed."""
    _, store = await _find(connection, args)
    await change(store, args.schedule_id, paused=True)
    emit(args, {"schedule_id": args.schedule_id, "paused": True},
         lambda: [f"schedule {args.schedule_id} paused"])  # fmt: skip
    return 0


async def schedules_resume(connection: Connection, args: argparse.Namespace) -> int:
    """``schedules resume``: fire again from the next tick on."""
    _, store = await _find(connection, args)
    await change(store, args.schedule_id, paused=False)
    emit(args, {"schedule_id": args.schedule_id, "paused": False},
         lambda: [f"schedule {args.schedule_id} resumed"])  # fmt: skip
    return 0


async def schedules_delete(connection: Connection, args: argparse.Namespace) -> int:
    """``schedules delete``: forget the schedule (runs it fired go on)."""
    _, store = await _find(connection, args)
    await store.write(args.schedule_id, None, -1, read="*")
    emit(args, {"schedule_id": args.schedule_id, "deleted": True},
         lambda: [f"schedule {args.schedule_id} deleted"])  # fmt: skip
    return 0
