"""The ``plait`` command line.

``plait worker app.module:providers`` imports ``app.module``, takes ``providers`` (a provider,
a list of providers, or a function returning either), starts them and runs until SIGTERM or
SIGINT, then stops them gracefully: running steps get ``shutdown_timeout`` to finish and the
rest are left to be reclaimed by other instances (the process does not wait for the threads of
abandoned sync steps). It exits with 0 after a signal, and with 1 when a provider stopped by
itself (its background work died: the traceback is in the log); see :mod:`.worker`.

The other commands inspect and repair what is stored under a prefix: ``runs list|show|retry|
cancel|signal``, ``events tail``, ``dead-letters list|replay|purge``, ``schedules list|show|
pause|resume|delete``, ``reconcile``, ``health`` and ``registry list|rebuild|forget``. They
print tables, or JSON with ``--json``, and exit with 0 on success, 1 when something asked for
does not exist, a check fails or Redis refused a command, 2 on bad arguments (a bad URL, a
database the server does not have) and 3 when Redis cannot be reached or refused the
credentials. Messages never show a password, and never a traceback but
the user module's. ``health`` exits with 0 when the backlog report is ok, 1 when it names a
problem (stalled or long-waiting entries, a report not read within ``--timeout``) and 3 when
Redis does not answer ``PING`` within ``--timeout``; ``health --ready`` only sends that
``PING`` (0 or 3).
``plait dashboard`` serves the web dashboard (:mod:`.dashboard`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from redis import exceptions as redis_errors

from plait.workflows import ProviderUnavailableError, RedisCommandError, WorkflowStatus

from .._core.connection import connect, masked
from .._core.errors import CONNECTION_ERRORS, REFUSED_CREDENTIALS
from . import commands
from . import runs as runs_cli
from .commands import CommandError, UsageError
from .dashboard import serve_dashboard
from .worker import (
    apply_concurrency,
    check_flags,
    hand_flags_to_module,
    leave_abandoned_threads,
    load_providers,
    run_worker,
)

__all__ = ["apply_concurrency", "main"]

logger = logging.getLogger("plait.cli")

DEFAULT_URL = "redis://localhost:6379/0"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
UNREACHABLE: tuple[type[BaseException], ...] = (ProviderUnavailableError, *CONNECTION_ERRORS)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _status(text: str) -> str:
    try:
        return WorkflowStatus(text.upper()).value
    except ValueError:
        names = ", ".join(status.value for status in WorkflowStatus)
        raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of {names})") from None


def _common(defaults: bool) -> argparse.ArgumentParser:
    """The global options, accepted before and after the command."""
    parser = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(os.environ.get("PLAIT_REDIS_URL", DEFAULT_URL)),
        help="Redis URL (default: $PLAIT_REDIS_URL, then redis://localhost:6379/0)",
    )
    parser.add_argument("--prefix", default=default("plait"), help="key prefix (default plait)")
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--log-level", default=default(None), help="logging level (default INFO for worker)"
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog="plait", description=(__doc__ or "").split("\n\n")[0], parents=[_common(True)]
    )
    parser.add_argument("--version", action="version", version=f"plait {metadata.version('plait')}")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, help=text, description=text, parents=[common]
        )
        return sub

    worker = command(top, "worker", "run the providers of an application module")
    worker.add_argument("target", help="MODULE:OBJECT, e.g. app.workers:providers")
    worker.add_argument("--concurrency", type=_positive, help="steps per workflow at once")

    runs = command(top, "runs", "inspect and act on workflow runs")
    runs_do = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = command(runs_do, "list", "runs, newest first")
    listing.add_argument("--workflow", help="only this workflow's runs")
    listing.add_argument("--status", type=_status, help="only runs in this status")
    listing.add_argument("--limit", type=_positive, default=20, help="at most N (default 20)")
    listing.add_argument("--idempotency-key", help="only the run owning this key")
    runs_cli.add_filters(listing)
    showing = command(runs_do, "show", "a run's input, step timeline, errors, meta, result")
    showing.add_argument("run_id", metavar="RUN_ID")
    for name, text, status in (
        ("retry", "resume a FAILED or TIMED_OUT run, or every run the filters find", "FAILED"),
        ("cancel", "cancel a live run, or every run the filters find", "RUNNING"),
    ):
        acting = command(runs_do, name, text)
        acting.add_argument("run_id", metavar="RUN_ID", nargs="?", help="one run (or filters)")
        acting.add_argument("--workflow", help="act on this workflow's runs the filters find")
        acting.add_argument("--status", type=_status, help=f"their status (default {status})")
        runs_cli.add_filters(acting)
        acting.add_argument("--limit", type=_positive, default=1000, help="at most N runs")
        acting.add_argument("--dry-run", action="store_true", help="list them, act on none")
    signalling = command(runs_do, "signal", "send a signal to a run's wait of that name")
    signalling.add_argument("run_id", metavar="RUN_ID")
    signalling.add_argument("name", metavar="NAME", help="the wait's name")
    signalling.add_argument("--data", default="null", help="the payload, as JSON")
    signalling.add_argument("--signal-id", help="names the signal: sent again, it is a no-op")

    events = command(top, "events", "follow events")
    events_do = events.add_subparsers(dest="action", required=True, metavar="ACTION")
    tail = command(events_do, "tail", "print an event's stream as it grows (until Ctrl-C)")
    tail.add_argument("event", metavar="EVENT")
    tail.add_argument("--from-start", action="store_true", help="print stored events first")
    tail.add_argument("--count", type=_positive, help="exit after N events")

    dead = command(top, "dead-letters", "entries that could not be processed")
    dead_do = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("list", "list dead letters"),
        ("replay", "send dead letters back to be processed"),
        ("purge", "delete dead letters"),
    ):
        sub = command(dead_do, name, text)
        only = sub.add_mutually_exclusive_group()
        only.add_argument("--workflow", help="only this workflow's dead letters")
        only.add_argument("--event", help="only this event's dead letters")
        if name == "list":
            sub.add_argument("--limit", type=_positive, help="at most N per stream")
            continue
        sub.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (default: all)")
        sub.add_argument("--all", action="store_true", help="every matching dead letter")
        if name == "replay":
            sub.add_argument(
                "--re-emit",
                action="store_true",
                help="re-emit events already trimmed from their stream, to every group",
            )

    dashboard = command(top, "dashboard", "serve the web dashboard (needs plait[dashboard])")
    dashboard.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    dashboard.add_argument("--port", type=_positive, default=8000, help="port (default 8000)")
    dashboard.add_argument(
        "--allow-actions", action="store_true", help="offer retry, cancel and replay"
    )
    dashboard.add_argument("--token", help="the token actions need ($PLAIT_DASHBOARD_TOKEN)")
    schedules = command(top, "schedules", "workflow and event schedules")
    schedules_do = schedules.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(schedules_do, "list", "every schedule, its next tick and its last run")
    for name, text in (
        ("show", "a schedule with its next fire times"),
        ("pause", "fire nothing until resumed"),
        ("resume", "fire again from the next tick on"),
        ("delete", "forget a schedule (runs it fired go on)"),
    ):
        sub = command(schedules_do, name, text)
        sub.add_argument("schedule_id", metavar="SCHEDULE_ID")
        sub.add_argument("--events", action="store_true", help="an event schedule")

    reconcile = command(top, "reconcile", "one reconciler pass: repair runs that are stuck")
    reconcile.add_argument(
        "--min-age", type=float, default=15.0, help="skip runs younger than S s (default 15)"
    )
    health = command(top, "health", "the backlog report: queues, dead letters, live instances")
    health.add_argument(
        "--stalled-after", type=float, default=30.0, help="pending without lease for S s"
    )
    health.add_argument("--max-wait", type=float, default=60.0, help="oldest unread entry, s")
    health.add_argument(
        "--timeout", type=float, default=5.0, help="bound of the whole check, s (default 5)"
    )
    health.add_argument(
        "--ready", action="store_true", help="only check that Redis answers PING (a probe)"
    )

    registry = command(top, "registry", "the workflow and event names tools look at")
    registry_do = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(registry_do, "list", "the enrolled workflows and events")
    command(registry_do, "rebuild", "enroll what the keyspace holds (SCAN: once, after upgrading)")
    forget = command(registry_do, "forget", "stop listing names (their data stays)")
    forget.add_argument("--workflow", action="append", default=[], help="a workflow name")
    forget.add_argument("--event", action="append", default=[], help="an event name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plait`` console script; returns the exit code."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(given)
    level = args.log_level or ("INFO" if args.command in ("worker", "dashboard") else "WARNING")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    where = masked(args.url)
    try:
        if args.command == "worker":
            return _worker(args, given)
        if args.command == "dashboard":
            return serve_dashboard(args)
        return asyncio.run(_run(args))
    except UsageError as error:
        print(f"plait: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as error:
        print(f"plait: {error}", file=sys.stderr)
        return EXIT_FAILED
    except REFUSED_CREDENTIALS as error:
        print(f"plait: Redis at {where} refused the credentials: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except UNREACHABLE as error:
        if isinstance(error.__cause__, REFUSED_CREDENTIALS):
            print(f"plait: Redis at {where} refused the credentials: {error}", file=sys.stderr)
        else:
            print(f"plait: cannot reach Redis at {where}: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (redis_errors.RedisError, RedisCommandError) as error:
        if "DB index is out of range" in str(error):
            database = args.url.rpartition("/")[2]
            print(f"plait: Redis at {where} has no database {database} ({error})", file=sys.stderr)
            return EXIT_USAGE
        print(f"plait: Redis at {where} refused a command: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _worker(args: argparse.Namespace, given: list[str]) -> int:
    url, prefix = (_explicit(given, name) for name in ("--url", "--prefix"))
    hand_flags_to_module(url, prefix)
    providers = load_providers(args.target)
    check_flags(providers, args.target, url, prefix)
    if args.concurrency:
        apply_concurrency(providers, args.concurrency)
    status = asyncio.run(run_worker(providers))
    leave_abandoned_threads(status)
    return status


def _explicit(given: list[str], flag: str) -> str | None:
    """The value of ``flag`` when it was given on the command line (the last one wins)."""
    value = None
    for index, word in enumerate(given):
        if word == flag and index + 1 < len(given):
            value = given[index + 1]
        elif word.startswith(f"{flag}="):
            value = word.partition("=")[2]
    return value


async def _run(args: argparse.Namespace) -> int:
    if args.url.startswith("memory://"):
        raise UsageError("memory:// lives inside one process; give a redis:// URL")
    try:
        connection = connect(args.url, connect_timeout=5.0)
    except ValueError as error:
        raise UsageError(f"bad --url {masked(args.url)!r}: {error}") from None
    try:
        if args.command != "health":  # health reports an unreachable Redis itself
            await connection.client.ping()
        return await commands.run(connection, args)
    finally:
        await connection.aclose()
