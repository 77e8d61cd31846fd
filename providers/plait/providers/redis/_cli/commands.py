"""The ``plait`` commands that inspect and repair what a prefix holds in Redis.

Each command reads the parsed arguments, talks to Redis through one connection and prints a
table (or JSON with ``--json``); it returns the exit code, or raises :class:`CommandError`
(exit 1) or :class:`UsageError` (exit 2).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio

from plait.workflows import (
    InvalidFilterError,
    InvalidInputError,
    RunInfo,
    RunNotFoundError,
    SignalRefusedError,
    WorkflowStepError,
)

from .._core.codecs import PLAIN, UndecodableError
from .._core.connection import Connection
from .._core.keys import EventKeys, WorkflowKeys, workflow_of
from .._ops.catalog import event_names, forget, rebuild, workflow_names
from .._ops.dead_letters import DeadLetter, DeadLetters
from .._ops.health import Health, check_health, check_readiness
from .._workflows.codec import decode_record, run_info
from .._workflows.reconciler import Reconciler
from .._workflows.scripts import RunScripts
from .._workflows.waits import Signals
from . import runs
from .output import ago, clock, emit, moment, span, table
from .schedules import (
    ScheduleNotFoundError,
    schedules_delete,
    schedules_list,
    schedules_pause,
    schedules_resume,
    schedules_show,
)

PAGE = 500
"""Run ids read at a time from a workflow's run index."""
FOREVER = 100 * 365 * 86400.0
"""A retention no run index entry reaches: ``plait reconcile`` never trims the index."""


class UsageError(Exception):
    """A bad argument: printed without a traceback, exit code 2."""


class CommandError(Exception):
    """What was asked for does not exist or cannot be done: exit code 1."""


Command = Callable[[Connection, argparse.Namespace], Awaitable[int]]


async def run(connection: Connection, args: argparse.Namespace) -> int:
    """Run the command ``args`` names; returns its exit code."""
    name = args.command + (f" {args.action}" if getattr(args, "action", None) else "")
    command: Command = COMMANDS[name]
    try:
        return await command(connection, args)
    except ScheduleNotFoundError as error:
        raise CommandError(str(error)) from None


# -- runs ------------------------------------------------------------------------------------


async def runs_list(connection: Connection, args: argparse.Namespace) -> int:
    """``runs list``: the newest runs of every workflow (or one) matching the filters."""
    try:
        return await runs.runs_list(connection, args)
    except InvalidFilterError as error:
        raise UsageError(str(error)) from None


def _time(raw: bytes | None) -> datetime | None:
    return datetime.fromtimestamp(int(raw) / 1000, tz=UTC) if raw else None


def _run_row_json(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in row.items()}  # fmt: skip


async def _info(connection: Connection, args: argparse.Namespace) -> RunInfo:
    return (await _record(connection, args))[0]


async def _record(connection: Connection, args: argparse.Namespace) -> tuple[RunInfo, Any, Any]:
    """The run's snapshot, its input and its result (None until it completed)."""
    run_id: str = args.run_id
    workflow = workflow_of(run_id)
    raw = await connection.client.hgetall(WorkflowKeys(args.prefix, workflow).run(run_id))
    if not workflow or not raw:
        raise CommandError(f"run {run_id} not found")
    record = decode_record(raw)
    return (
        run_info(run_id, workflow, record),
        _payload(record.get("input"), "the input"),
        _payload(record.get("result"), "the result"),
    )


async def runs_show(connection: Connection, args: argparse.Namespace) -> int:
    """``runs show``: the run's input, steps, attempts, timings, errors, rollbacks, meta and
    result."""
    info, data, result = await _record(connection, args)

    def lines() -> list[str]:
        shown = _describe(info)
        shown.insert(1, f"input     {json.dumps(data)}")
        if result is not None:
            shown.insert(2, f"result    {json.dumps(result)}")
        return shown

    emit(args, {**run_json(info), "input": data, "result": result}, lines)
    return 0


def _describe(info: RunInfo) -> list[str]:
    took = f" (took {span(info.created_at, info.finished_at)})" if info.finished_at else ""
    lines = [
        f"run       {info.run_id}",
        f"workflow  {info.workflow}",
        f"status    {info.status.value}",
        f"version   {info.version or '-'}",
        f"created   {moment(info.created_at)}",
        f"finished  {moment(info.finished_at)}{took}",
        f"deadline  {moment(info.deadline)}",
    ]
    meta = [f"{key}={value}" for key, value in sorted(info.meta.items())] or ["-"]
    lines += [f"meta      {meta[0]}", *[f"          {item}" for item in meta[1:]], ""]
    rows = [
        [
            step.name,
            step.state,
            str(step.attempts),
            clock(step.started_at),
            span(step.started_at, step.finished_at),
            _cause(step.error),
        ]
        for step in info.steps.values()
    ]
    lines += table(["STEP", "STATE", "ATTEMPTS", "STARTED", "TOOK", "LAST ERROR"], rows)
    for wait in info.waits.values():
        got = f", signal {wait.signal_id}" if wait.signal_id else ""
        due = f", due {moment(wait.due)}" if wait.due else ""
        lines.append(f"{wait.kind} {wait.name}: {wait.state} since {moment(wait.since)}{due}{got}")
    if info.completion_order:
        lines.append(f"\ncompleted in order: {', '.join(info.completion_order)}")
    if info.error is not None:
        lines.append(f"error: {info.error}")
    lines += [
        f"rollback of {error.step!r} failed: {_cause(error)}" for error in info.rollback_errors
    ]
    return lines


def _cause(error: WorkflowStepError | None) -> str:
    return f"{error.cause_type}: {error.cause_message}" if error is not None else ""


def _error_json(error: WorkflowStepError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "step": error.step,
        "attempt": error.attempt,
        "cause_type": error.cause_type,
        "cause_message": error.cause_message,
        "cause_traceback": error.cause_traceback,
    }


def run_json(info: RunInfo) -> dict[str, Any]:
    """A run snapshot as JSON-able data."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "run_id": info.run_id,
        "workflow": info.workflow,
        "status": info.status.value,
        "version": info.version,
        "created_at": iso(info.created_at),
        "finished_at": iso(info.finished_at),
        "deadline": iso(info.deadline),
        "meta": dict(info.meta),
        "steps": [
            {
                "name": step.name,
                "state": step.state,
                "attempts": step.attempts,
                "started_at": iso(step.started_at),
                "finished_at": iso(step.finished_at),
                "error": _error_json(step.error),
            }
            for step in info.steps.values()
        ],
        "completion_order": list(info.completion_order),
        "error": _error_json(info.error),
        "rollback_errors": [_error_json(error) for error in info.rollback_errors],
        "waits": [
            {
                "name": wait.name,
                "kind": wait.kind,
                "state": wait.state,
                "since": iso(wait.since),
                "due": iso(wait.due),
                "signal_id": wait.signal_id,
            }
            for wait in info.waits.values()
        ],
    }


async def runs_retry(connection: Connection, args: argparse.Namespace) -> int:
    """``runs retry``: resume a FAILED or TIMED_OUT run as a new attempt of the same run (or,
    without RUN_ID, every run of ``--workflow`` the filters find)."""
    if args.run_id is None:
        try:
            return await runs.runs_bulk(connection, args, "retry")
        except InvalidFilterError as error:
            raise UsageError(str(error)) from None
    run_id: str = args.run_id
    keys = WorkflowKeys(args.prefix, workflow_of(run_id))
    scripts = RunScripts(connection)
    outcome, status = await scripts.retry(keys, run_id, call=scripts.call_id())
    if outcome == "unknown" or not keys.workflow:
        raise CommandError(f"run {run_id} not found")
    if outcome == "invalid":
        raise CommandError(f"run {run_id} is {status}: only FAILED or TIMED_OUT runs can retry")
    data = {"run_id": run_id, "retried": True, "status": status}
    emit(args, data, lambda: [f"run {run_id} resumed ({status})"])
    return 0


async def runs_signal(connection: Connection, args: argparse.Namespace) -> int:
    """``runs signal``: send a signal (its payload as JSON) to a run's wait."""
    run_id: str = args.run_id
    try:
        data = json.loads(args.data)
    except ValueError as error:
        raise UsageError(f"--data is not JSON: {error}") from None
    signals = Signals(connection, RunScripts(connection), {}, prefix=args.prefix, connect_timeout=5)
    try:
        sent = await signals.signal(run_id, args.name, data, signal_id=args.signal_id)
    except (RunNotFoundError, InvalidInputError, SignalRefusedError) as error:
        raise CommandError(str(error)) from None
    text = f"signal {args.name} sent to run {run_id}" if sent else "already sent (same signal id)"
    emit(args, {"run_id": run_id, "signal": args.name, "sent": sent}, lambda: [text])
    return 0


async def runs_cancel(connection: Connection, args: argparse.Namespace) -> int:
    """``runs cancel``: cancel a live run (completed steps are rolled back); without RUN_ID,
    every run of ``--workflow`` the filters find."""
    if args.run_id is None:
        try:
            return await runs.runs_bulk(connection, args, "cancel")
        except InvalidFilterError as error:
            raise UsageError(str(error)) from None
    run_id: str = args.run_id
    keys = WorkflowKeys(args.prefix, workflow_of(run_id))
    scripts = RunScripts(connection)
    outcome, status = await scripts.cancel(keys, run_id, call=scripts.call_id())
    if outcome < 0 or not keys.workflow:
        raise CommandError(f"run {run_id} not found")
    done = outcome == 1
    text = f"run {run_id} cancelled ({status})" if done else f"run {run_id} is {status}: not live"
    emit(args, {"run_id": run_id, "cancelled": done, "status": status}, lambda: [text])
    return 0


# -- events, dead letters --------------------------------------------------------------------


async def events_tail(connection: Connection, args: argparse.Namespace) -> int:
    """``events tail``: print the event stream as it grows, until a signal or ``--count``."""
    client = connection.client
    stream = EventKeys(args.prefix, args.event).stream
    last = "0-0"
    if not args.from_start:
        newest = await client.xrevrange(stream, "+", "-", count=1)
        last = newest[0][0].decode() if newest else "0-0"
    seen = 0
    async with anyio.create_task_group() as tg:
        await tg.start(_stop_on_signal, tg.cancel_scope)
        print(f"following {stream} from {last}", file=sys.stderr, flush=True)
        while args.count is None or seen < args.count:
            reply = await client.xread({stream: last}, count=100, block=1000)
            for entry, fields in reply[0][1] if reply else []:
                last = entry.decode()
                _print_event(args, last, fields)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
        tg.cancel_scope.cancel()
    return 0


async def _stop_on_signal(
    scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return


def _print_event(args: argparse.Namespace, entry: str, raw: dict[bytes, bytes]) -> None:
    fields = {key.decode(): value.decode() for key, value in raw.items()}
    at = datetime.fromtimestamp(int(entry.partition("-")[0]) / 1000, tz=UTC)
    if args.json:
        data = {
            "entry": entry,
            "at": at.isoformat(),
            "id": fields.get("id"),
            "data": _maybe_json(fields.get("data")),
            "meta": _maybe_json(fields.get("meta")),
        }
        print(json.dumps(data), flush=True)
    else:
        print(f"{moment(at)}  {fields.get('id', '?')}  {fields.get('data', '')}", flush=True)


def _payload(text: str | None, what: str) -> Any:
    """A stored payload as shown: its JSON, or why it cannot be shown (encoded by a payload
    codec, whose keys the services hold and this command does not)."""
    try:
        return _maybe_json(None if text is None else PLAIN.open(text, what))
    except UndecodableError as error:
        return {"undecodable": str(error)}


def _maybe_json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


async def dead_letters_list(connection: Connection, args: argparse.Namespace) -> int:
    """``dead-letters list``."""
    letters = await DeadLetters(connection.client, args.prefix).find(
        workflow=args.workflow, event=args.event, limit=args.limit
    )
    rows = [
        [letter.id, f"{letter.kind} {letter.name}", letter.group or "", letter.reason,
         letter.entry, moment(letter.at)]
        for letter in letters
    ]  # fmt: skip
    headers = ["ID", "SOURCE", "GROUP", "REASON", "ENTRY", "AT"]
    lines = table(headers, rows) if rows else ["no dead letters"]
    emit(args, [letter.to_json() for letter in letters], lambda: lines)
    return 0


async def _chosen(dead: DeadLetters, args: argparse.Namespace) -> list[DeadLetter]:
    if args.ids and not (args.workflow or args.event):
        raise UsageError("dead-letter ids need --workflow or --event")
    if not args.ids and not args.all:
        raise UsageError("give dead-letter ids, or --all for every matching one")
    ids = tuple(args.ids)
    letters = await dead.find(workflow=args.workflow, event=args.event, ids=ids)
    missing = sorted(set(ids) - {letter.id for letter in letters})
    if missing:
        raise CommandError(f"dead letter {', '.join(missing)} not found")
    return letters


async def dead_letters_replay(connection: Connection, args: argparse.Namespace) -> int:
    """``dead-letters replay``: requeue steps, redeliver events to their failing group."""
    dead = DeadLetters(connection.client, args.prefix)
    results = []
    for letter in await _chosen(dead, args):
        outcome = await dead.replay(letter)
        if outcome == "expired" and args.re_emit:
            outcome = f"re-emitted as {await dead.reemit(letter)}"
        results.append({**letter.to_json(), "outcome": outcome})
    lines = [f"{row['kind']} {row['name']} {row['id']}: {row['outcome']}" for row in results]
    if any(row["outcome"] == "expired" for row in results):
        lines.append("expired: the event left its stream; --re-emit sends it to every group")
    emit(args, results, lambda: lines or ["no dead letters"])
    return 1 if any(row["outcome"] == "expired" for row in results) else 0


async def dead_letters_purge(connection: Connection, args: argparse.Namespace) -> int:
    """``dead-letters purge``: delete dead letters for good."""
    dead = DeadLetters(connection.client, args.prefix)
    if args.ids or not args.all:
        letters = await _chosen(dead, args)
        for letter in letters:
            await dead.purge(letter)
        purged = len(letters)
    else:
        purged = await dead.purge_all(workflow=args.workflow, event=args.event)
    emit(args, {"purged": purged}, lambda: [f"{purged} dead letters purged"])
    return 0


# -- maintenance -----------------------------------------------------------------------------


async def reconcile(connection: Connection, args: argparse.Namespace) -> int:
    """``reconcile``: one reconciler pass over every live run (runs index left untrimmed)."""
    reconciler = Reconciler(
        connection,
        RunScripts(connection),
        args.prefix,
        owner="plait-cli",
        min_age=args.min_age,
        retention=FOREVER,
        pass_limit=None,
    )
    stats = await reconciler.run_pass()
    data = {
        "scanned": stats.scanned,
        "stalled": stats.stalled,
        "reconciled": stats.reconciled,
        "failed": stats.failed,
    }
    emit(args, data, lambda: table(["SCANNED", "STALLED", "RECONCILED", "FAILED"],
                                   [[str(value) for value in data.values()]]))  # fmt: skip
    return 1 if stats.failed else 0


async def health(connection: Connection, args: argparse.Namespace) -> int:
    """``health``: exit 0 when ok, 1 when not, 3 when Redis is unreachable (``--ready``: the
    ``PING`` alone, 0 or 3)."""
    if args.ready:
        ready = await check_readiness(connection.client, timeout=args.timeout)
        lines = [f"READY (ping {ready.latency_ms:.2f} ms)" if ready.ok else "NOT READY"]
        emit(args, ready.to_json(), lambda: [*lines, *ready.problems])
        return 0 if ready.ok else 3
    report = await check_health(
        connection.client,
        args.prefix,
        stalled_after=args.stalled_after,
        max_wait=args.max_wait,
        timeout=args.timeout,
    )
    emit(args, report.to_json(), lambda: _health_lines(report))
    if not report.reachable:
        return 3
    return 0 if report.ok else 1


def _health_lines(report: Health) -> list[str]:
    if not report.reachable:
        return ["NOT OK", *report.problems]
    instances = [
        f"{i.provider_id} ({ago(i.last_seen, report.checked_at)}{'' if i.live else ', stale'})"
        for i in report.instances
    ]
    lines = [
        "OK" if report.ok else "NOT OK",
        f"redis         ping {report.latency_ms:.2f} ms",
        f"instances     {len(report.live_instances)} live: {', '.join(instances) or '-'}",
        f"dead letters  {report.dead_letters}",
        "",
    ]
    rows = []
    for queue in report.queues:
        for group in queue.groups or [None]:
            rows.append(
                [
                    f"{queue.kind} {queue.name}",
                    group.name if group else "-",
                    str(group.lag) if group else "-",
                    str(group.pending) if group else "-",
                    str(group.stalled) if group else "-",
                    str(group.retrying) if group else "-",
                    ago(group.oldest_pending) if group else "",
                    ago(group.oldest_waiting) if group else "",
                    str(queue.dead_letters),
                ]
            )
    headers = ["QUEUE", "GROUP", "LAG", "PENDING", "STALLED", "RETRYING", "OLDEST PENDING",
               "OLDEST WAITING", "DEAD"]  # fmt: skip
    lines += table(headers, rows) if rows else ["no queues"]
    lines += [
        f"versions of {queue.name}: {', '.join(queue.versions)}"
        for queue in report.queues
        if queue.versions
    ]
    lines += [f"problem: {problem}" for problem in report.problems]
    return lines


async def registry_list(connection: Connection, args: argparse.Namespace) -> int:
    """``registry list``: the workflows and events that tools look at."""
    client, prefix = connection.client, args.prefix
    data = {"workflows": await workflow_names(client, prefix),
            "events": await event_names(client, prefix)}  # fmt: skip
    emit(args, data, lambda: _names(data))
    return 0


async def registry_rebuild(connection: Connection, args: argparse.Namespace) -> int:
    """``registry rebuild``: enroll every workflow and event found in the keyspace (SCAN)."""
    workflows, events = await rebuild(connection.client, args.prefix)
    data = {"workflows": workflows, "events": events}
    emit(args, data, lambda: _names(data))
    return 0


async def registry_forget(connection: Connection, args: argparse.Namespace) -> int:
    """``registry forget``: stop listing names (their keys are left alone)."""
    if not (args.workflow or args.event):
        raise UsageError("give --workflow NAME or --event NAME")
    removed = await forget(
        connection.client, args.prefix, workflows=args.workflow, events=args.event
    )
    emit(args, {"forgotten": removed}, lambda: [f"{removed} names forgotten"])
    return 0


def _names(data: dict[str, list[str]]) -> list[str]:
    rows = [[kind[:-1], name] for kind, names in data.items() for name in names]
    return table(["KIND", "NAME"], rows) if rows else ["no workflows or events"]


COMMANDS: dict[str, Command] = {
    "runs list": runs_list,
    "runs show": runs_show,
    "runs retry": runs_retry,
    "runs cancel": runs_cancel,
    "runs signal": runs_signal,
    "events tail": events_tail,
    "dead-letters list": dead_letters_list,
    "dead-letters replay": dead_letters_replay,
    "dead-letters purge": dead_letters_purge,
    "reconcile": reconcile,
    "health": health,
    "registry list": registry_list,
    "registry rebuild": registry_rebuild,
    "registry forget": registry_forget,
    "schedules list": schedules_list,
    "schedules show": schedules_show,
    "schedules pause": schedules_pause,
    "schedules resume": schedules_resume,
    "schedules delete": schedules_delete,
}
