"""The handlers of a workflow, registered on the instances that run its steps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ._context import StepContext, WorkflowContext
from ._definition import Sleep, Wait, Workflow
from ._errors import InvalidDefinitionError, WorkflowError

__all__ = ["WorkflowConsumer"]

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT")
F = TypeVar("F", bound=Callable[..., Any])

StepHandler = Callable[[StepContext[Any]], Any | Awaitable[Any]]
CompleteHandler = Callable[[WorkflowContext[Any]], Any | Awaitable[Any]]
ErrorHandler = Callable[[WorkflowContext[Any], WorkflowError], Any | Awaitable[Any]]


class WorkflowConsumer(Generic[InputT, OutputT]):
    """Binds handlers to the steps of a workflow definition.

    Handlers may be ``async def`` or plain functions (run in a worker thread)::

        orders = WorkflowConsumer(place_order)

        @orders.step("reserve")
        async def reserve(ctx: StepContext[Order]) -> dict: ...

        @orders.rollback("reserve")
        async def release(ctx: StepContext[Order]) -> None: ...
    """

    def __init__(self, definition: Workflow[InputT, OutputT]) -> None:
        self.definition = definition
        self.steps: dict[str, StepHandler] = {}
        self.rollbacks: dict[str, StepHandler] = {}
        self.complete_handler: CompleteHandler | None = None
        self.error_handler: ErrorHandler | None = None

    def step(self, name: str) -> Callable[[F], F]:
        """Decorator: register the handler of step ``name``."""
        return self._bind(self.steps, name, "step")

    def rollback(self, name: str) -> Callable[[F], F]:
        """Decorator: register the compensation of step ``name``."""
        return self._bind(self.rollbacks, name, "rollback")

    def on_complete(self, handler: F) -> F:
        """Decorator: the handler whose return value is the run's result."""
        self.complete_handler = handler
        return handler

    def on_error(self, handler: F) -> F:
        """Decorator: called once after a failed run's rollbacks finished."""
        self.error_handler = handler
        return handler

    def _bind(self, table: dict[str, StepHandler], name: str, what: str) -> Callable[[F], F]:
        try:
            step = self.definition.get_step(name)
        except KeyError:
            raise InvalidDefinitionError(
                f"workflow {self.definition.name!r} has no step {name!r} for this {what}"
            ) from None
        if isinstance(step, Wait | Sleep):
            raise InvalidDefinitionError(
                f"workflow {self.definition.name!r}: {name!r} is a wait or sleep, which plait "
                f"runs itself: it takes no {what}"
            )
        if name in table:
            raise InvalidDefinitionError(
                f"workflow {self.definition.name!r}: {what} {name!r} registered twice"
            )

        def register(handler: F) -> F:
            table[name] = handler
            return handler

        return register

    def validate(self) -> None:
        """Raise :class:`InvalidDefinitionError` unless every step has a handler.

        A workflow without steps needs an ``on_complete`` handler.
        """
        name = self.definition.name
        missing = [
            s.name
            for s in self.definition.steps
            if s.name not in self.steps and not isinstance(s, Wait | Sleep)
        ]
        if missing:
            raise InvalidDefinitionError(f"workflow {name!r}: no handler for steps {missing}")
        if not self.definition.steps and self.complete_handler is None:
            raise InvalidDefinitionError(
                f"workflow {name!r} has no steps and its consumer no on_complete handler"
            )
