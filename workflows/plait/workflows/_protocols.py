"""Narrow interfaces: what each kind of caller needs of a workflow provider."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ._consumer import WorkflowConsumer
    from ._definition import Workflow
    from ._handle import RunEvent, RunInfo, WorkflowHandle, WorkflowStatus

__all__ = ["RunBackend", "WorkflowExecutor", "WorkflowLifecycle"]

InputT = TypeVar("InputT", bound="BaseModel")
OutputT = TypeVar("OutputT")


class WorkflowExecutor(Protocol):
    """Code that only starts runs and follows them (API handlers, emitters)."""

    async def execute(
        self,
        definition: Workflow[InputT, OutputT],
        data: InputT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout: timedelta | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> WorkflowHandle[OutputT]:
        """Start a run (or attach to the run owning ``idempotency_key``)."""
        ...

    async def get_handle(
        self, run_id: str, workflow: Workflow[Any, OutputT] | None = None
    ) -> WorkflowHandle[OutputT]:
        """A handle on an existing run."""
        ...


class WorkflowLifecycle(Protocol):
    """Code that owns a provider: starts it, registers consumers, stops it."""

    def register(self, consumer: WorkflowConsumer[Any, Any]) -> None:
        """Run this consumer's steps on this instance."""
        ...

    async def start(self) -> None:
        """Connect and start the workers."""
        ...

    async def stop(self) -> None:
        """Stop taking work and release everything."""
        ...


class RunBackend(Protocol):
    """What a :class:`WorkflowHandle` asks of the provider that made it."""

    async def run_status(self, workflow: str, run_id: str) -> WorkflowStatus:
        """The run's status."""
        ...

    async def run_result(
        self, workflow: str, run_id: str, output: type[Any] | None, timeout: float | None
    ) -> Any:
        """Wait for the run's end; return its result or raise its error."""
        ...

    async def cancel_run(self, workflow: str, run_id: str) -> bool:
        """Cancel the run."""
        ...

    async def describe_run(self, workflow: str, run_id: str) -> RunInfo:
        """Snapshot of the run."""
        ...

    def watch_run(
        self, workflow: str, run_id: str, *, after: str | None = None
    ) -> AsyncIterator[RunEvent]:
        """The run's events (those after the event ``after``, when given)."""
        ...
