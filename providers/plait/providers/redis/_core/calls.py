"""Calling user code: the one way both engines run a step, hook or event handler.

A handler is async when it is a coroutine function, a ``functools.partial`` of one, or an object
whose ``__call__`` is one: it is awaited on the event loop. Anything else runs in a worker
thread (anyio's default limiter). Threads cannot be stopped: when the caller is cancelled, the
thread runs on; its late outcome is discarded, unless the caller passed a :class:`Straggler`,
which can wait for it. A sync handler that returns an awaitable has it awaited.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

import anyio


class Straggler:
    """The thread of a sync handler called with ``invoke(..., straggler=...)``: when the caller
    is cancelled while the handler runs in it, :attr:`left` turns True and :meth:`outcome`
    waits for what the handler does."""

    __slots__ = ("_error", "_running", "_started", "_value", "left")

    def __init__(self) -> None:
        self._running: threading.Lock | None = None  # held by the thread while the handler runs
        self._started = False
        self._value: Any = None
        self._error: BaseException | None = None
        self.left = False
        """Whether the caller was cancelled out of the started handler (which may run on)."""

    async def _run(self, call: Callable[[], Any]) -> Any:
        """``call()`` in a worker thread that records its outcome here when it ends."""
        running = self._running = threading.Lock()

        def follow() -> Any:
            if not running.acquire(blocking=False):
                return None  # the caller was cancelled before the thread started: skipped
            self._started = True
            try:
                self._value = call()
            except BaseException as error:
                self._error = error
                raise
            finally:
                running.release()
            return self._value

        try:
            return await anyio.to_thread.run_sync(follow, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            if not running.acquire(blocking=False):
                self.left = True  # the handler runs on
            elif self._started:
                running.release()
                self.left = True  # it ended: its outcome is here
            # else: the lock stays taken, so a thread that picks the call up later skips it
            raise

    async def outcome(self) -> Any:
        """Wait for the handler the caller left to end; return its value or raise the exception
        it raised (anything else it raised, such as the cancellation of an
        ``anyio.from_thread`` call made after its caller left, as a ``RuntimeError``).
        Cancellable: cancelled, it leaves the thread running and its outcome unread."""
        running = self._running
        assert self.left and running is not None
        if not running.acquire(blocking=False):
            # Wait in a thread of its own: waiting takes no slot of the handlers' limiter.
            await anyio.to_thread.run_sync(
                running.acquire, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        running.release()
        error = self._error
        if isinstance(error, Exception):
            raise error
        if error is not None:
            raise RuntimeError(f"the handler ended with {type(error).__name__}") from error
        return await _awaited(self._value)


async def invoke(
    handler: Callable[..., Any], *args: Any, straggler: Straggler | None = None
) -> Any:
    """Call ``handler(*args)`` and return its result: awaited, or run in a worker thread
    (followed by ``straggler`` when one is given)."""
    if is_async(handler):
        return await handler(*args)
    call = functools.partial(handler, *args)
    if straggler is None:
        value = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    else:
        value = await straggler._run(call)
    return await _awaited(value)


async def _awaited(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` returns a coroutine (so it must not go to a thread)."""
    target = handler.func if isinstance(handler, functools.partial) else handler
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
