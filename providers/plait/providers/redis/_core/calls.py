"""Calling user code: the one way both engines run a step, hook or event handler.

A handler is async when it is a coroutine function, a ``functools.partial`` of one, or an object
whose ``__call__`` is one: it is awaited on the event loop. Anything else runs in a worker
thread (anyio's default limiter); the thread is abandoned when the caller is cancelled, since
threads cannot be stopped, and its late result is discarded. A sync handler that returns an
awaitable has it awaited.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio


async def invoke(handler: Callable[..., Any], *args: Any) -> Any:
    """Call ``handler(*args)`` and return its result: awaited, or run in a worker thread."""
    if is_async(handler):
        return await handler(*args)
    value = await anyio.to_thread.run_sync(
        functools.partial(handler, *args), abandon_on_cancel=True
    )
    if inspect.isawaitable(value):
        return await value
    return value


def is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` returns a coroutine (so it must not go to a thread)."""
    target = handler.func if isinstance(handler, functools.partial) else handler
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )
