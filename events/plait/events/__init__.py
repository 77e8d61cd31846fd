"""Durable events: definitions, handler contexts, errors and the interfaces of providers.

Define events here and import them wherever they are emitted or handled; the Redis engine that
delivers them lives in :mod:`plait.providers.redis` (``RedisEventProvider``).
"""

from importlib import metadata

from ._context import EventContext
from ._definition import Event
from ._errors import (
    EventCommandError,
    EventError,
    EventHandlerError,
    EventIncompatibleSchemaError,
    EventPayloadDecodeError,
    EventProviderClosedError,
    EventProviderUnavailableError,
    EventTimeoutError,
    InvalidEventError,
)
from ._protocols import EventEmitter, EventHandler, EventSubscriber

__version__ = metadata.version("plait")
"""The installed version of plait (from the package metadata)."""

__all__ = [
    "Event",
    "EventCommandError",
    "EventContext",
    "EventEmitter",
    "EventError",
    "EventHandler",
    "EventHandlerError",
    "EventIncompatibleSchemaError",
    "EventPayloadDecodeError",
    "EventProviderClosedError",
    "EventProviderUnavailableError",
    "EventSubscriber",
    "EventTimeoutError",
    "InvalidEventError",
]
