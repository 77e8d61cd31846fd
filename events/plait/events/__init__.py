"""Durable events: definitions, handler contexts, errors and the interfaces of providers.

Define events here and import them wherever they are emitted or handled; the Redis engine that
delivers them lives in :mod:`plait.providers.redis` (``RedisEventProvider``).
"""

from ._context import EventContext
from ._definition import Event
from ._errors import (
    EventCommandError,
    EventError,
    EventHandlerError,
    EventProviderClosedError,
    EventProviderUnavailableError,
    EventTimeoutError,
    InvalidEventError,
)
from ._protocols import EventEmitter, EventHandler, EventSubscriber

__all__ = [
    "Event",
    "EventCommandError",
    "EventContext",
    "EventEmitter",
    "EventError",
    "EventHandler",
    "EventHandlerError",
    "EventProviderClosedError",
    "EventProviderUnavailableError",
    "EventSubscriber",
    "EventTimeoutError",
    "InvalidEventError",
]
