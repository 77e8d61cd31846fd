"""``plait worker MODULE:OBJECT``: import an application's providers, run them until a signal.

The worker hands ``--url`` and ``--prefix``, when given, to the module in the environment
(``PLAIT_REDIS_URL``, ``PLAIT_PREFIX``) before importing it, and refuses to run a provider
whose prefix or URL differs from them: a flag is never silently ignored. Once started it logs
a banner per provider (what it runs, its concurrency, its URL with the password masked).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any

import anyio

from .._core import memory
from .._core.connection import masked
from .._events.provider import RedisEventProvider
from .._workflows.provider import RedisWorkflowProvider
from .commands import UsageError

logger = logging.getLogger("plait.cli")

EXIT_FAILED = 1
LIVENESS_POLL = 0.5
"""Seconds between two looks of ``plait worker`` at its providers' ``alive`` flags."""


def hand_flags_to_module(url: str | None, prefix: str | None) -> None:
    """Put the ``--url`` / ``--prefix`` given to the worker where the module can read them."""
    if url is not None:
        os.environ["PLAIT_REDIS_URL"] = url
    if prefix is not None:
        os.environ["PLAIT_PREFIX"] = prefix


def check_flags(providers: Sequence[Any], target: str, url: str | None, prefix: str | None) -> None:
    """Refuse providers that do not use the ``--url`` / ``--prefix`` the worker was given.

    Raises:
        UsageError: a provider uses another prefix or URL.
    """
    for provider in providers:
        used_prefix = getattr(provider, "prefix", None)
        if prefix is not None and used_prefix is not None and used_prefix != prefix:
            raise UsageError(
                f"--prefix is {prefix!r} but {target} uses prefix {used_prefix!r} (build the "
                "providers with prefix=os.environ['PLAIT_PREFIX'], which the worker sets)"
            )
        used_url = _url_of(provider)
        if url is not None and used_url is not None and used_url != url:
            raise UsageError(
                f"--url is {masked(url)} but {target} uses {masked(used_url)} (build the "
                "providers from os.environ['PLAIT_REDIS_URL'], which the worker sets)"
            )


def banner(provider: Any) -> str:
    """One line saying what ``provider`` runs, where (password masked) and how many at once."""
    where = masked(_url_of(provider) or "a client given by the application")
    if isinstance(provider, RedisWorkflowProvider):
        names = ", ".join(provider.registered) or "none (executes only)"
        return (
            f"workflows: {names}; concurrency {provider.concurrency} per workflow; "
            f"{where} prefix {provider.prefix}; id {provider.provider_id}"
        )
    if isinstance(provider, RedisEventProvider):
        pairs = ", ".join(f"{event} (group {group})" for event, group in provider.subscriptions)
        return (
            f"events: {pairs or 'none (emits only)'}; concurrency {provider.concurrency}; "
            f"{where} prefix {provider.prefix}; id {provider.provider_id}"
        )
    return repr(provider)


def _url_of(provider: Any) -> str | None:
    connection = getattr(provider, "_connection", None)
    return getattr(connection, "url", None)


def load_providers(target: str) -> list[Any]:
    """The providers named by ``module:attribute`` (the attribute defaults to ``provider``)."""
    module_name, _, attribute = target.partition(":")
    if not module_name:
        raise UsageError(f"expected MODULE:OBJECT, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # the module's own traceback: the error may be deep inside it
        raise UsageError(f"cannot import {module_name!r}:\n{traceback.format_exc()}") from error
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
            _warn_if_embedded(provider)
        logger.info("worker ready: pid %d", os.getpid())
        for provider in started:
            logger.info("  %s", banner(provider))
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


def _warn_if_embedded(provider: Any) -> None:
    connection = getattr(provider, "_connection", None)
    if connection is not None and memory.is_embedded(connection.client):
        logger.warning(
            "%s runs on memory://, an embedded server inside this process: nothing it stores "
            "survives the process, and no other process sees it (use redis:// to share work)",
            getattr(provider, "provider_id", "a provider"),
        )


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
