"""The ``plait`` command line.

``plait worker app.module:providers`` imports ``app.module``, takes ``providers`` (a provider,
a list of providers, or a function returning either), starts them and runs until SIGTERM or
SIGINT, then stops them gracefully: running steps get ``shutdown_timeout`` to finish and the
rest are left to be reclaimed by other instances (the process does not wait for the threads of
abandoned sync steps). It exits with 0 after a signal, and with 1 when a provider stopped by
itself (its background work died: the traceback is in the log).

The other commands inspect and repair what is stored under a prefix: ``runs list|show|retry|
cancel``, ``events tail``, ``dead-letters list|replay|purge``, ``schedules list|show|pause|
resume|delete``, ``reconcile`` and ``health``.
They print tables, or JSON with ``--json``, and exit with 0 on success, 1 when something asked
for does not exist or a check fails, 2 on bad arguments and 3 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import anyio

from plait.workflows import ProviderUnavailableError, WorkflowStatus

from .._core.connection import connect
from .._core.errors import CONNECTION_ERRORS
from .._workflows.provider import RedisWorkflowProvider
from . import commands
from .commands import CommandError, UsageError

logger = logging.getLogger("plait.cli")

DEFAULT_URL = "redis://localhost:6379/0"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
LIVENESS_POLL = 0.5
"""Seconds between two looks of ``plait worker`` at its providers' ``alive`` flags."""
UNREACHABLE: tuple[type[BaseException], ...] = (ProviderUnavailableError, *CONNECTION_ERRORS)


def load_providers(target: str) -> list[Any]:
    """The providers named by ``module:attribute`` (the attribute defaults to ``provider``)."""
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise UsageError(f"expected MODULE:OBJECT, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import {module_name!r}: {error}") from error
    try:
        found = getattr(module, attribute or "provider")
    except AttributeError:
        raise UsageError(f"{module_name!r} has no attribute {attribute or 'provider'!r}") from None
    if callable(found) and not hasattr(found, "start"):
        found = found()
    providers = list(found) if isinstance(found, list | tuple) else [found]
    for provider in providers:
        if not (hasattr(provider, "start") and hasattr(provider, "stop")):
            raise UsageError(f"{target!r} holds {provider!r}, which is not a plait provider")
    return providers


def apply_concurrency(providers: Sequence[Any], concurrency: int) -> None:
    """Set the step concurrency of every workflow provider among ``providers``."""
    for provider in providers:
        if isinstance(provider, RedisWorkflowProvider):
            provider.concurrency = concurrency
        else:
            logger.warning(
                "--concurrency applies to workflow providers; %r keeps its own", provider
            )


async def run_worker(providers: Sequence[Any]) -> int:
    """Start ``providers``, run until SIGTERM or SIGINT, stop them in reverse order.

    Returns the exit status: 0 after a signal, :data:`EXIT_FAILED` when a provider stopped by
    itself (its background work died; the provider logged the traceback), checked every
    :data:`LIVENESS_POLL` seconds with its ``alive`` flag.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started: list[Any] = []
    dead: list[Any] = []
    try:
        for provider in providers:
            await provider.start()
            started.append(provider)
        logger.info("worker ready: %d provider(s), pid %d", len(started), os.getpid())
        while not stop.is_set() and not dead:
            with anyio.move_on_after(LIVENESS_POLL):
                await stop.wait()
            dead = [provider for provider in started if not getattr(provider, "alive", True)]
        for provider in dead:
            name = getattr(provider, "provider_id", repr(provider))
            logger.error("provider %s is not alive any more: the worker exits", name)
        logger.info("stopping")
    finally:
        for provider in reversed(started):
            try:
                await provider.stop()
            except Exception:
                if provider not in dead:
                    raise
                # what it died of was logged when it died
    return EXIT_FAILED if dead else 0


def leave_abandoned_threads(status: int) -> None:
    """End the process now when threads are left running, instead of waiting for them.

    Sync handlers run in worker threads, which a cancellation cannot stop: a step still running
    when ``shutdown_timeout`` is over is abandoned (another instance reclaims it), and the
    interpreter would wait for its thread before exiting. Exit handlers run first (logging,
    telemetry exporters); the threads are not joined.
    """
    left = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.current_thread() and not thread.daemon and thread.is_alive()
    ]
    for thread in left:  # an idle worker thread ends at once, a busy one does not
        thread.join(timeout=0.1)
    left = [thread for thread in left if thread.is_alive()]
    if not left:
        return
    logger.warning("exiting without %d abandoned handler thread(s) still running", len(left))
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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
    for name, text in (
        ("show", "a run's step timeline, attempts, errors, rollbacks and meta"),
        ("retry", "resume a FAILED or TIMED_OUT run"),
        ("cancel", "cancel a live run (its completed steps are rolled back)"),
    ):
        command(runs_do, name, text).add_argument("run_id", metavar="RUN_ID")

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
    health = command(top, "health", "Redis, queues, dead letters and live instances")
    health.add_argument(
        "--stalled-after", type=float, default=30.0, help="pending without lease for S s"
    )
    health.add_argument("--max-wait", type=float, default=60.0, help="oldest unread entry, s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plait`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "worker" else "WARNING")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "worker":
            providers = load_providers(args.target)
            if args.concurrency:
                apply_concurrency(providers, args.concurrency)
            status = asyncio.run(run_worker(providers))
            leave_abandoned_threads(status)
            return status
        return asyncio.run(_run(args))
    except UsageError as error:
        print(f"plait: {error}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as error:
        print(f"plait: {error}", file=sys.stderr)
        return EXIT_FAILED
    except UNREACHABLE as error:
        print(f"plait: cannot reach Redis at {args.url}: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    if args.url.startswith("memory://"):
        raise UsageError("memory:// lives inside one process; give a redis:// URL")
    try:
        connection = connect(args.url, connect_timeout=5.0)
    except ValueError as error:
        raise UsageError(f"bad --url {args.url!r}: {error}") from None
    try:
        if args.command != "health":  # health reports an unreachable Redis itself
            await connection.client.ping()
        return await commands.run(connection, args)
    finally:
        await connection.aclose()
