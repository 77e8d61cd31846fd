"""Narrow interfaces: what each kind of caller needs of an event provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ._context import EventContext
    from ._definition import Event

__all__ = ["EventEmitter", "EventHandler", "EventSubscriber"]

DataT = TypeVar("DataT", bound="BaseModel")
ResultT = TypeVar("ResultT")

EventHandler = Callable[["EventContext[Any]"], Awaitable[Any] | Any]
"""A handler: an async or sync function of an :class:`EventContext`; its return value is the
reply to a ``request()``."""


class EventEmitter(Protocol):
    """Code that only emits events, asks for replies, or cancels delayed events."""

    async def emit(
        self,
        event: Event[DataT, Any],
        data: DataT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        delay: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> str:
        """Emit an event to every group; returns its id."""
        ...

    async def request(
        self,
        event: Event[DataT, ResultT],
        data: DataT | Mapping[str, Any],
        *,
        timeout: timedelta,
        meta: Mapping[str, str] | None = None,
    ) -> ResultT:
        """Emit an event and return the first group's reply."""
        ...

    async def cancel(self, event: Event[Any, Any], idempotency_key: str) -> bool:
        """Cancel a delayed event that was not delivered yet."""
        ...


class EventSubscriber(Protocol):
    """Code that registers handlers (services consuming events)."""

    @overload
    def on(
        self, event: Event[Any, Any], handler: None = None, *, group: str | None = None
    ) -> Callable[[EventHandler], EventHandler]: ...

    @overload
    def on(
        self, event: Event[Any, Any], handler: EventHandler, *, group: str | None = None
    ) -> EventHandler: ...

    def on(
        self,
        event: Event[Any, Any],
        handler: EventHandler | None = None,
        *,
        group: str | None = None,
    ) -> EventHandler | Callable[[EventHandler], EventHandler]:
        """Subscribe ``handler`` to ``event`` in ``group`` (also usable as a decorator)."""
        ...

    async def ready(self) -> None:
        """Wait until the groups of every registered handler exist."""
        ...
