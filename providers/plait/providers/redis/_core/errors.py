"""The one boundary where redis-py's errors become plait's.

redis-py raises two families of errors, and plait treats each one way:

- **Redis cannot be reached** (:data:`CONNECTION_ERRORS`): retried. Callers retry with
  :func:`~plait.providers.redis._core.retry.call_until` until ``connect_timeout``, then get
  :class:`~plait.workflows.ProviderUnavailableError`; background loops retry for good.
- **Redis refused the command** (an error reply such as ``WRONGTYPE``, or any other
  redis-py error): not retried; callers get :class:`~plait.workflows.RedisCommandError`
  naming what plait was doing.

:func:`translated` is that mapping, after httpcore's ``map_exceptions``: every public method
runs its Redis calls inside it, so no redis-py exception reaches a caller. Each provider says
which classes it raises with its :class:`ErrorKinds` (the event provider raises the ``Event*``
variants, which are also the workflow ones)::

    with translated(WORKFLOW_KINDS, f"read run {run_id}"):
        raw = await client.hgetall(key)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import exceptions as redis_errors

from plait.events import (
    EventCommandError,
    EventIncompatibleSchemaError,
    EventProviderUnavailableError,
)
from plait.workflows import IncompatibleSchemaError, ProviderUnavailableError, RedisCommandError

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.TryAgainError,
    redis_errors.ClusterError,
    ConnectionError,
    OSError,
)
"""Errors that mean "Redis cannot be reached right now": retried, never leaked.

On a Redis Cluster these include ``TRYAGAIN`` (the keys of a call are split between two nodes
while their slot moves: Redis, or a script before its first write, refused it), ``CLUSTERDOWN``
and redis-py's ``ClusterError`` when redirections did not settle within its limit (as while a
slot moves): nothing was applied, and the call is made again.
"""

REFUSED_CREDENTIALS: tuple[type[BaseException], ...] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthenticationWrongNumberOfArgsError,
)
"""Redis answered, and refused the username or password: not retried (trying again cannot
help), reported as such rather than as "unreachable"."""

COMMAND_ERRORS: tuple[type[BaseException], ...] = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
)
"""Every other error of redis-py: Redis (or redis-py's cluster routing) refused the command.

Checked after :data:`CONNECTION_ERRORS`, which holds a few of its subclasses.
"""

BACKGROUND_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    redis_errors.ResponseError,
)
"""Errors a background loop logs and survives (it tries again on its next round)."""

UNREACHABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)
"""Errors by which a health check finds Redis unreachable (also its own time limit)."""


@dataclass(frozen=True, kw_only=True)
class ErrorKinds:
    """The classes a provider raises for the two ways a Redis call fails."""

    unavailable: type[ProviderUnavailableError]
    """Raised, with a message, when Redis stayed unreachable."""
    command: type[RedisCommandError]
    """Raised, with ``(purpose, reply)``, when Redis refused a command."""
    schema: type[IncompatibleSchemaError]
    """Raised, with ``(prefix, found, expected)``, when ``start()`` meets another key schema."""


WORKFLOW_KINDS = ErrorKinds(
    unavailable=ProviderUnavailableError,
    command=RedisCommandError,
    schema=IncompatibleSchemaError,
)
"""What :class:`~plait.providers.redis.RedisWorkflowProvider` and its handles raise."""

EVENT_KINDS = ErrorKinds(
    unavailable=EventProviderUnavailableError,
    command=EventCommandError,
    schema=EventIncompatibleSchemaError,
)
"""What :class:`~plait.providers.redis.RedisEventProvider` raises."""


@contextmanager
def translated(kinds: ErrorKinds, purpose: str) -> Iterator[None]:
    """Raise ``kinds``' errors instead of redis-py's inside the block.

    Args:
        kinds: the classes to raise.
        purpose: what the block does, for the message (``"execute place-order"``).

    Raises:
        ProviderUnavailableError: (``kinds.unavailable``) a connection error.
        RedisCommandError: (``kinds.command``) any other redis-py error.
    """
    try:
        yield
    except REFUSED_CREDENTIALS as error:
        raise kinds.unavailable(f"{purpose}: Redis refused the credentials: {error}") from error
    except CONNECTION_ERRORS as error:
        raise kinds.unavailable(f"{purpose}: Redis unreachable: {error}") from error
    except COMMAND_ERRORS as error:
        raise kinds.command(purpose, str(error)) from error
