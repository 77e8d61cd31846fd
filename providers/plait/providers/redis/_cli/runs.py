"""``plait runs list`` and the bulk ``runs retry|cancel``: runs found through the indexes plait
keeps in Redis (``_workflows/search.py``), a page at a time, never by scanning the runs."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from plait.workflows import InvalidFilterError, RunInfo, WorkflowStatus

from .._core.connection import Connection
from .._core.keys import WorkflowKeys
from .._ops.catalog import workflow_names
from .._workflows import search
from .._workflows.scripts import RunScripts
from .output import emit, moment, span, table

PAGE = 100
"""Runs read per page of the index."""
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def moment_arg(text: str) -> datetime:
    """``--since`` / ``--until``: a duration ago (``90s``, ``15m``, ``1h``, ``2d``) or an ISO
    time (local time when it names no zone)."""
    found = _DURATION.match(text.strip())
    if found:
        return datetime.now(tz=UTC) - timedelta(seconds=float(found[1]) * _UNITS[found[2]])
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration (90s, 15m, 1h, 2d) or an ISO time: {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.astimezone()


def meta_arg(text: str) -> tuple[str, str]:
    """``--meta FIELD=VALUE``."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, not {text!r}")
    return name, value


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The filters ``runs list`` and the bulk ``runs retry|cancel`` share."""
    parser.add_argument("--since", type=moment_arg, help="created since: 1h, 30m, or ISO time")
    parser.add_argument("--until", type=moment_arg, help="created until: 1h, 30m, or ISO time")
    parser.add_argument(
        "--meta",
        type=meta_arg,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="meta field the workflow indexes (Workflow(indexed_meta=)); repeatable",
    )


def _query(args: argparse.Namespace, status: str | None) -> search.RunQuery:
    meta: Mapping[str, str] = dict(args.meta)
    return search.query_of(
        status=status,
        since=args.since,
        until=args.until,
        meta=meta,
        idempotency_key=getattr(args, "idempotency_key", None),
        indexed=None,
    )


async def _found(
    client: Any, keys: WorkflowKeys, query: search.RunQuery, limit: int
) -> list[RunInfo]:
    """Up to ``limit`` runs matching ``query``, newest first, following the index's pages."""
    found: list[RunInfo] = []
    cursor = None
    while len(found) < limit:
        page = await search.page(
            client, keys, query, limit=min(PAGE, limit - len(found)), cursor=cursor
        )
        found += page.runs
        if page.cursor is None:
            break
        cursor = page.cursor
    return found


def _row(info: RunInfo) -> dict[str, Any]:
    return {
        "run_id": info.run_id,
        "workflow": info.workflow,
        "status": info.status.value,
        "version": info.version,
        "created": info.created_at.isoformat(),
        "finished": info.finished_at.isoformat() if info.finished_at else None,
    }


def _table(found: list[RunInfo]) -> list[str]:
    if not found:
        return ["no runs"]
    rows = [
        [
            info.run_id,
            info.workflow,
            info.status.value,
            info.version or "-",
            moment(info.created_at),
            span(info.created_at, info.finished_at),
        ]
        for info in found
    ]
    return table(["RUN", "WORKFLOW", "STATUS", "VERSION", "CREATED", "TOOK"], rows)


async def runs_list(connection: Connection, args: argparse.Namespace) -> int:
    """``runs list``: the newest runs of every workflow (or one) matching the filters.

    Raises:
        InvalidFilterError: filters that cannot be served (a usage error).
    """
    client = connection.client
    if (args.meta or args.idempotency_key) and not args.workflow:
        raise InvalidFilterError("--meta and --idempotency-key need --workflow")
    query = _query(args, args.status)
    names = [args.workflow] if args.workflow else await workflow_names(client, args.prefix)
    found: list[RunInfo] = []
    for name in names:
        found += await _found(client, WorkflowKeys(args.prefix, name), query, args.limit)
    found.sort(key=lambda info: info.created_at, reverse=True)
    found = found[: args.limit]
    emit(args, [_row(info) for info in found], lambda: _table(found))
    return 0


async def runs_bulk(connection: Connection, args: argparse.Namespace, action: str) -> int:
    """The bulk ``runs retry`` / ``runs cancel`` (``action``): every run of ``--workflow``
    matching the filters, up to ``--limit``; ``--dry-run`` lists them only.

    Raises:
        InvalidFilterError: filters that cannot be served (a usage error).
    """
    if not args.workflow:
        raise InvalidFilterError(f"runs {action} needs RUN_ID, or --workflow and filters")
    allowed = (
        (WorkflowStatus.FAILED, WorkflowStatus.TIMED_OUT)
        if action == "retry"
        else (WorkflowStatus.RUNNING, WorkflowStatus.PENDING)
    )
    status = args.status or allowed[0].value
    if status not in {s.value for s in allowed}:
        raise InvalidFilterError(
            f"runs {action} acts on {' or '.join(s.value for s in allowed)} runs"
        )
    keys = WorkflowKeys(args.prefix, args.workflow)
    found = await _found(connection.client, keys, _query(args, status), args.limit)
    acted = found if args.dry_run else await _act(connection, keys, found, action)
    verb = {"retry": "retried", "cancel": "cancelled"}[action]
    data = {
        "workflow": args.workflow,
        "status": status,
        "dry_run": args.dry_run,
        verb: [_row(info) for info in acted],
        "count": len(acted),
    }
    title = f"would be {verb}" if args.dry_run else verb

    def lines() -> list[str]:
        return [*_table(acted), f"{len(acted)} run(s) {title}"]

    emit(args, data, lines)
    return 0


async def _act(
    connection: Connection, keys: WorkflowKeys, found: list[RunInfo], action: str
) -> list[RunInfo]:
    """Retry or cancel each run of ``found``; those that left their status meanwhile are
    skipped."""
    scripts = RunScripts(connection)
    acted = []
    for info in found:
        if action == "retry":
            outcome, _ = await scripts.retry(keys, info.run_id, call=scripts.call_id())
            done = outcome == "resumed"
        else:
            cancelled, _ = await scripts.cancel(keys, info.run_id, call=scripts.call_id())
            done = cancelled == 1
        if done:
            acted.append(info)
    return acted
