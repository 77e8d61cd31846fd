"""Event definitions: pure, immutable data shared by emitters and subscribers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel, ValidationError

from ._errors import InvalidEventError

__all__ = ["Event"]

DataT = TypeVar("DataT", bound=BaseModel)
ResultT = TypeVar("ResultT")

EVENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class Event(Generic[DataT, ResultT]):
    """A named event and the pydantic model of its data (and of its reply, for requests).

    Define events once and import them wherever they are emitted or handled::

        order_placed = Event("order.placed", data=OrderPlaced)
        quote = Event("price.quote", data=QuoteRequest, result=Quote)

    Args:
        name: matches ``^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$``; one Redis stream per name.
        data: the pydantic model every emitted payload is validated into.
        result: the model a handler's reply is validated into for ``request()``
            (``None``: the reply is plain JSON).

    Raises:
        InvalidEventError: the name or a model is invalid.
    """

    __slots__ = ("data", "name", "result")

    @overload
    def __init__(
        self: Event[DataT, Any], name: str, *, data: type[DataT], result: None = None
    ) -> None: ...

    @overload
    def __init__(self, name: str, *, data: type[DataT], result: type[ResultT]) -> None: ...

    def __init__(
        self, name: str, *, data: type[DataT], result: type[ResultT] | None = None
    ) -> None:
        if not isinstance(name, str) or not EVENT_NAME.match(name):
            raise InvalidEventError(str(name), f"the name must match {EVENT_NAME.pattern}")
        if not (isinstance(data, type) and issubclass(data, BaseModel)):
            raise InvalidEventError(name, "data must be a pydantic model class")
        if result is not None and not (isinstance(result, type) and issubclass(result, BaseModel)):
            raise InvalidEventError(name, "result must be a pydantic model class or None")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "result", result)

    name: str
    data: type[DataT]
    result: type[ResultT] | None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Event definitions are immutable")

    def __delattr__(self, key: str) -> None:
        raise AttributeError("Event definitions are immutable")

    def __repr__(self) -> str:
        result = f", result={self.result.__name__}" if self.result is not None else ""
        return f"Event({self.name!r}, data={self.data.__name__}{result})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.name, self.data, self.result) == (other.name, other.data, other.result)

    def __hash__(self) -> int:
        return hash((self.name, self.data, self.result))

    def validate(self, data: DataT | Mapping[str, Any]) -> DataT:
        """Validate ``data`` into this event's model.

        Raises:
            InvalidEventError: the data does not match the model.
        """
        if type(data) is self.data:
            return data
        try:
            if isinstance(data, BaseModel):
                return self.data.model_validate(data.model_dump())
            return self.data.model_validate(data)
        except ValidationError as error:
            message = f"data does not match {self.data.__name__}: {error}"
            raise InvalidEventError(self.name, message) from error

    def validate_result(self, value: Any) -> ResultT:
        """Validate a handler's reply into ``result`` (returned as is when ``result`` is None).

        Raises:
            ValueError: the reply does not match ``result`` (pydantic's ``ValidationError``).
        """
        if self.result is None:
            return value  # type: ignore[no-any-return]
        if isinstance(value, self.result):
            return value
        model: Any = self.result
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return model.model_validate(value)  # type: ignore[no-any-return]
