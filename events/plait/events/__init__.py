"""Durable events: definitions, handler contexts, errors and the interfaces of providers.

Define events here and import them wherever they are emitted or handled; the Redis engine that
delivers them lives in :mod:`plait.providers.redis` (``RedisEventProvider``).
"""

from ._context import EventContext
from ._definition import Event
from ._errors import EventError, EventHandlerError, EventTimeoutError, InvalidEventError
from ._protocols import EventEmitter, EventHandler, EventSubscriber

__all__ = [
    "Event",
    "EventContext",
    "EventEmitter",
    "EventError",
    "EventHandler",
    "EventHandlerError",
    "EventSubscriber",
    "EventTimeoutError",
    "InvalidEventError",
]
