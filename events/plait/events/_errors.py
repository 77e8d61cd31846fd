"""The event error tree.

Every error a caller of the event API can see derives from :class:`EventError`::

    EventError
    ├── InvalidEventError                 not an Event, or data that does not validate
    ├── EventTimeoutError                 no reply to a request() within its timeout
    ├── EventHandlerError                 the requested event's handler failed
    ├── EventProviderUnavailableError     Redis unreachable (also a ProviderUnavailableError)
    ├── EventProviderClosedError          provider stopped (also a ProviderClosedError)
    ├── EventCommandError                 Redis refused a command (also a RedisCommandError)
    ├── EventPayloadDecodeError           a reply the payload codec could not decode (also a
    │                                     PayloadDecodeError)
    └── EventIncompatibleSchemaError      data of another key schema version (also an
                                          IncompatibleSchemaError)

The last three are also the matching :mod:`plait.workflows` errors, so one ``except
ProviderUnavailableError`` covers both engines and one ``except EventError`` every event call.
A handler's failure travels back to a requester through Redis as JSON, so
:class:`EventHandlerError` carries the cause's type name and message rather than the exception
object.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from plait.workflows._errors import (
    IncompatibleSchemaError,
    PayloadDecodeError,
    ProviderClosedError,
    ProviderUnavailableError,
    RedisCommandError,
    describe_exception,
)

__all__ = [
    "EventCommandError",
    "EventError",
    "EventHandlerError",
    "EventIncompatibleSchemaError",
    "EventPayloadDecodeError",
    "EventProviderClosedError",
    "EventProviderUnavailableError",
    "EventTimeoutError",
    "InvalidEventError",
]


class EventError(Exception):
    """Root of every error raised by plait events."""


class EventProviderUnavailableError(EventError, ProviderUnavailableError):
    """Redis could not be reached within the event provider's ``connect_timeout``."""


class EventProviderClosedError(EventError, ProviderClosedError):
    """The event provider was stopped while the call was waiting, or is not started."""


class EventCommandError(EventError, RedisCommandError):
    """Redis refused a command of the event provider (an error reply)."""


class EventIncompatibleSchemaError(EventError, IncompatibleSchemaError):
    """The event provider's ``start()`` found data of another key schema version."""


class EventPayloadDecodeError(EventError, PayloadDecodeError):
    """The reply to a request could not be decoded by the provider's payload codec (a wrong
    or missing key, damaged data)."""


class InvalidEventError(EventError):
    """An event definition, an event object or the data given to ``emit`` is invalid.

    Nothing is written to Redis when this is raised.

    Attributes:
        event: the event's name (``""`` when the object is not an event at all).
    """

    def __init__(self, event: str, message: str) -> None:
        super().__init__(f"invalid event {event!r}: {message}" if event else message)
        self.event = event

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_invalid, (self.event, str(self)))


def _rebuild_invalid(event: str, text: str) -> InvalidEventError:
    error = InvalidEventError("", text)
    error.event = event
    return error


class EventTimeoutError(EventError):
    """No group answered a ``request()`` within its timeout.

    The event itself stays emitted: handlers may still run it later.

    Attributes:
        event: the event's name.
        event_id: the id of the request's event.
        timeout: how long the requester waited.
    """

    def __init__(self, event: str, event_id: str, timeout: timedelta) -> None:
        super().__init__(f"no reply to event {event!r} ({event_id}) within {timeout}")
        self.event = event
        self.event_id = event_id
        self.timeout = timeout

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.event, self.event_id, self.timeout))


class EventHandlerError(EventError):
    """The handler of a requested event failed (after its retries) or gave an invalid result.

    Attributes:
        event: the event's name.
        group: the group whose handler failed.
        attempt: the attempt that failed last (1-based).
        cause_type: the qualified type name of the handler's exception.
        cause_message: ``str()`` of the handler's exception.
        cause_traceback: the formatted traceback of the handler's exception, if known.
    """

    def __init__(
        self,
        event: str,
        group: str,
        *,
        attempt: int,
        cause_type: str,
        cause_message: str,
        cause_traceback: str = "",
    ) -> None:
        super().__init__(
            f"handler of event {event!r} in group {group!r} failed on attempt {attempt}: "
            f"{cause_type}: {cause_message}"
        )
        self.event = event
        self.group = group
        self.attempt = attempt
        self.cause_type = cause_type
        self.cause_message = cause_message
        self.cause_traceback = cause_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_handler_error, (self.event, self.group, self.to_wire()))

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form of this error, as it travels through Redis."""
        return {
            "attempt": self.attempt,
            "type": self.cause_type,
            "message": self.cause_message,
            "traceback": self.cause_traceback,
        }

    @staticmethod
    def wire_of(error: BaseException, attempt: int) -> dict[str, Any]:
        """The :meth:`to_wire` form of a handler's exception (dead letters, request replies)."""
        cause_type, message, text = describe_exception(error)
        return {"attempt": attempt, "type": cause_type, "message": message, "traceback": text}

    @classmethod
    def from_wire(cls, event: str, group: str, data: dict[str, Any]) -> EventHandlerError:
        """Rebuild the error from :meth:`to_wire`'s form."""
        return cls(
            event,
            group,
            attempt=int(data.get("attempt", 0)),
            cause_type=str(data.get("type", "Exception")),
            cause_message=str(data.get("message", "")),
            cause_traceback=str(data.get("traceback", "")),
        )


def _rebuild_handler_error(event: str, group: str, data: dict[str, Any]) -> EventHandlerError:
    return EventHandlerError.from_wire(event, group, data)
