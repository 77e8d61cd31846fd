"""What a web application needs around plait: the HTTP status of each error, and a lifespan.

An HTTP API in front of plait maps its errors the same way every time (422 for input that does
not validate, 409 for a conflict, 404 for an unknown run, 503 while Redis is unreachable), and
starts its providers with the application. :func:`http_status` and :func:`lifespan` are that
glue, written once; neither needs a web framework installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from plait.events import EventTimeoutError, InvalidEventError
from plait.workflows import (
    IdempotencyConflictError,
    InvalidInputError,
    InvalidRunStateError,
    ProviderClosedError,
    ProviderUnavailableError,
    RunNotFoundError,
    WorkflowCancelledError,
    WorkflowTimeoutError,
)

_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidInputError, 422),
    (InvalidEventError, 422),
    (IdempotencyConflictError, 409),
    (InvalidRunStateError, 409),
    (WorkflowCancelledError, 409),
    (RunNotFoundError, 404),
    (ProviderUnavailableError, 503),
    (ProviderClosedError, 503),
    (WorkflowTimeoutError, 504),
    (EventTimeoutError, 504),
)


def http_status(error: BaseException) -> int:
    """The HTTP status an API should answer with when a plait call raised ``error``.

    ``InvalidInputError`` / ``InvalidEventError`` 422 (nothing was written: the client should
    fix the request); ``IdempotencyConflictError``, ``InvalidRunStateError`` (a retry of a run
    that did not fail) and ``WorkflowCancelledError`` 409; ``RunNotFoundError`` 404;
    ``ProviderUnavailableError`` and ``ProviderClosedError`` (and their event variants) 503,
    worth retrying; ``WorkflowTimeoutError`` / ``EventTimeoutError`` 504; anything else (a run
    that failed, ``RedisCommandError``, an error that is not plait's) 500.
    """
    for kind, status in _STATUSES:
        if isinstance(error, kind):
            return status
    return 500


def lifespan(*providers: Any) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan for an ASGI application (Starlette, FastAPI) that runs ``providers``.

    ``Starlette(routes=..., lifespan=lifespan(workflows, events))``: the providers start, in
    order, before the application takes requests, and stop, in reverse order, after it
    stopped taking them (running steps get their ``shutdown_timeout``). A provider that fails
    to start stops the ones started before it, and the application does not start.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as started:
            for provider in providers:
                await started.enter_async_context(provider)
            yield

    return run
