"""``plait dashboard``: serve the dashboard with uvicorn until a signal.

starlette and uvicorn come with the ``plait[dashboard]`` extra; without them the command says
so and exits 1. It exits 0 after SIGINT or SIGTERM, once uvicorn has stopped. Actions (retry,
cancel, replay) are refused unless ``--allow-actions`` is given with a token (``--token`` or
``PLAIT_DASHBOARD_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
from typing import Any

from .._core.connection import connect, masked
from .commands import CommandError, UsageError

TOKEN_VARIABLE = "PLAIT_DASHBOARD_TOKEN"
EXTRA = "plait[dashboard]"


def serve_dashboard(args: argparse.Namespace) -> int:
    """Check the extra, the flags and Redis, then serve until SIGINT or SIGTERM; returns 0."""
    for module in ("starlette", "uvicorn"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise CommandError(
                f"plait dashboard needs {module}, which comes with the dashboard extra: "
                f"pip install '{EXTRA}'"
            ) from None
    if args.url.startswith("memory://"):
        raise UsageError("memory:// lives inside one process; give a redis:// URL")
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if args.allow_actions and not token:
        raise UsageError(f"--allow-actions needs a token: --token or ${TOKEN_VARIABLE}")
    asyncio.run(_ping(args.url))

    # Imported here: the rest of the CLI runs without the extra.
    import uvicorn  # noqa: PLC0415

    from .._dashboard.app import DashboardOptions, dashboard_app  # noqa: PLC0415

    options = DashboardOptions(prefix=args.prefix, allow_actions=args.allow_actions, token=token)
    app = dashboard_app(args.url, options)
    print(
        f"plait dashboard on http://{args.host}:{args.port} for {masked(args.url)} "
        f"prefix {args.prefix!r}, actions {'allowed' if args.allow_actions else 'off'}",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=(args.log_level or "info").lower(),
        timeout_graceful_shutdown=2,
    )
    # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again once it is
    # stopped (recent versions): that ends here, as a clean exit.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.Server(config).run()
    except (KeyboardInterrupt, _StoppedError):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class _StoppedError(Exception):
    """SIGTERM arrived again after uvicorn stopped."""


def _stopped(signum: int, frame: Any) -> None:
    raise _StoppedError


async def _ping(url: str) -> None:
    try:
        connection = connect(url, connect_timeout=5.0)
    except ValueError as error:
        raise UsageError(f"bad --url {masked(url)!r}: {error}") from None
    try:
        await connection.client.ping()
    finally:
        await connection.aclose()
