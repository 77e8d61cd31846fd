"""What a step, rollback or completion handler sees of its run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

__all__ = ["StepContext", "WorkflowContext"]

InputT = TypeVar("InputT", bound=BaseModel)

_logger = logging.getLogger("plait.workflows.step")


class WorkflowContext(Generic[InputT]):
    """The run as seen by ``on_complete`` and ``on_error``.

    Attributes:
        run_id: the run's id.
        workflow: the workflow's name.
        attempt: the attempt of this handler (1-based).
        input: the run's validated input.
        results: completed step name -> output (decoded JSON, or the step's ``output`` model).
        meta: ``correlation_id``, ``traceparent`` and the caller's meta.
        deadline: the run's deadline, or ``None``.
        log: a logger adapter that adds run, step and attempt fields to each record.
    """

    __slots__ = (
        "_emit",
        "attempt",
        "deadline",
        "input",
        "log",
        "meta",
        "results",
        "run_id",
        "workflow",
    )

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        attempt: int,
        input: InputT,
        results: Mapping[str, Any],
        meta: Mapping[str, str],
        deadline: datetime | None,
        step: str | None = None,
        emit: Callable[..., Awaitable[str]] | None = None,
    ) -> None:
        self._emit = emit
        self.run_id = run_id
        self.workflow = workflow
        self.attempt = attempt
        self.input = input
        self.results: Mapping[str, Any] = MappingProxyType(dict(results))
        self.meta: Mapping[str, str] = MappingProxyType(dict(meta))
        self.deadline = deadline
        fields = {
            "run_id": run_id,
            "workflow": workflow,
            "step": step,
            "attempt": attempt,
            "trace_id": _trace_id(meta.get("traceparent", "")),
        }
        self.log = logging.LoggerAdapter(_logger, fields)

    async def emit(self, event: Any, data: Any, **options: Any) -> str:
        """Emit ``event`` through the workflow provider's event provider (its ``events=``).

        The event carries this run's trace (its span is a child of this job's), its
        ``correlation_id``, and this job as its ``causation_id``. ``options`` are those of the
        event provider's ``emit`` (``idempotency_key``, ``delay``, ``meta``).

        Returns:
            The event id.

        Raises:
            RuntimeError: the workflow provider was made without ``events=``.
        """
        if self._emit is None:
            raise RuntimeError(
                "ctx.emit needs an event provider: RedisWorkflowProvider(..., events=...)"
            )
        return await self._emit(event, data, **options)


class StepContext(WorkflowContext[InputT]):
    """The run as seen by a step or a rollback.

    Attributes (beyond :class:`WorkflowContext`):
        step: the step's name.
        idempotency_key: stable for this run and step across attempts; pass it to external
            systems so a retried attempt does not repeat a side effect.
        fencing_token: grows with every attempt of the run; a completion carrying an older
            token is rejected.
        progress: the last value saved with :meth:`save_progress` by an earlier attempt.
    """

    __slots__ = ("_save", "fencing_token", "idempotency_key", "progress", "step")

    def __init__(
        self,
        *,
        step: str,
        fencing_token: int,
        progress: Any,
        save: Callable[[Any], Awaitable[None]],
        **common: Any,
    ) -> None:
        super().__init__(step=step, **common)
        self.step = step
        self.idempotency_key = f"{self.run_id}:{step}"
        self.fencing_token = fencing_token
        self.progress = progress
        self._save = save

    async def save_progress(self, value: Any) -> None:
        """Durably checkpoint ``value``: a later attempt of this step sees it in ``progress``.

        The write is fenced: it is refused when this attempt was superseded.
        """
        await self._save(value)
        self.progress = value


def _trace_id(traceparent: str) -> str | None:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else None
