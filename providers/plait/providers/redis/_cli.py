"""The ``plait`` command line.

``plait worker app.module:providers`` imports ``app.module``, takes ``providers`` (a provider,
a list of providers, or a function returning either), starts them and runs until SIGTERM or
SIGINT, then stops them gracefully: running steps get ``shutdown_timeout`` to finish and the
rest are left to be reclaimed by other instances.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("plait.cli")


class UsageError(Exception):
    """A bad argument: printed without a traceback, exit code 2."""


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


async def run_worker(providers: Sequence[Any]) -> None:
    """Start ``providers``, wait for SIGTERM or SIGINT, stop them in reverse order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    started: list[Any] = []
    try:
        for provider in providers:
            await provider.start()
            started.append(provider)
        logger.info("worker ready: %d provider(s), pid %d", len(started), os.getpid())
        await stop.wait()
        logger.info("stopping")
    finally:
        for provider in reversed(started):
            await provider.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run the providers of an application module")
    worker.add_argument("target", help="MODULE:OBJECT, e.g. app.workers:providers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plait`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "worker":
            providers = load_providers(args.target)
            asyncio.run(run_worker(providers))
    except UsageError as error:
        print(f"plait: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
