"""The workflow error tree and its wire form.

Every error a caller can see derives from :class:`WorkflowError`. Errors of a run travel
through Redis as JSON (:func:`step_error_to_wire` / :func:`step_error_from_wire`), so a caller
on another instance gets the same types and fields as the instance that ran the step.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from typing import Any

__all__ = [
    "IdempotencyConflictError",
    "InvalidDefinitionError",
    "InvalidInputError",
    "InvalidRunStateError",
    "NonRetryableError",
    "ProviderClosedError",
    "ProviderUnavailableError",
    "RunNotFoundError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowRollbackError",
    "WorkflowStepError",
    "WorkflowTimeoutError",
]


class WorkflowError(Exception):
    """Root of every error raised by plait workflows."""


class InvalidDefinitionError(WorkflowError):
    """A workflow, step or consumer definition is invalid (raised at definition time)."""


class InvalidInputError(WorkflowError):
    """The data given to ``execute`` does not validate against the workflow's input model.

    Nothing is written to Redis when this is raised.
    """

    def __init__(self, workflow: str, message: str) -> None:
        super().__init__(f"invalid input for workflow {workflow!r}: {message}")
        self.workflow = workflow


class IdempotencyConflictError(WorkflowError):
    """An idempotency key was reused with a different input.

    Attributes:
        idempotency_key: the key that was reused.
        run_id: the run that already owns the key.
    """

    def __init__(self, idempotency_key: str, run_id: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} already belongs to run {run_id} "
            "with a different input"
        )
        self.idempotency_key = idempotency_key
        self.run_id = run_id


class RunNotFoundError(WorkflowError):
    """No run with this id exists (never created, or expired after ``retention``)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class InvalidRunStateError(WorkflowError):
    """The operation is not allowed in the run's current status."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} is {status}: operation not allowed")
        self.run_id = run_id
        self.status = status


class ProviderUnavailableError(WorkflowError):
    """Redis could not be reached within the provider's ``connect_timeout``."""


class ProviderClosedError(WorkflowError):
    """The provider was stopped while the call was waiting, or is not started."""


class NonRetryableError(WorkflowError):
    """Raise (or subclass) this in a step to fail it at once, without further attempts."""


class WorkflowStepError(WorkflowError):
    """A step (or ``on_complete``, or a rollback) failed after its retries.

    Attributes:
        step: the step name (``"on_complete"`` for the completion handler).
        attempt: the attempt number that failed last (1-based).
        cause_type: the qualified type name of the original exception.
        cause_message: ``str()`` of the original exception.
        cause_traceback: the formatted traceback text of the original exception.
    """

    def __init__(
        self,
        step: str,
        attempt: int,
        cause_type: str,
        cause_message: str,
        cause_traceback: str = "",
    ) -> None:
        super().__init__(
            f"step {step!r} failed on attempt {attempt}: {cause_type}: {cause_message}"
        )
        self.step = step
        self.attempt = attempt
        self.cause_type = cause_type
        self.cause_message = cause_message
        self.cause_traceback = cause_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.step, self.attempt, self.cause_type, self.cause_message)
        return (type(self), (*args, self.cause_traceback))


class WorkflowRollbackError(WorkflowError):
    """The run failed and one or more rollbacks failed too.

    Attributes:
        primary: the error that made the run fail (a step error, or a timeout or cancellation).
        rollback_errors: one :class:`WorkflowStepError` per failed rollback; its ``step``
            names the step whose rollback failed.
    """

    def __init__(self, primary: WorkflowError, rollback_errors: list[WorkflowStepError]) -> None:
        failed = ", ".join(f"{e.step!r} ({e.cause_message})" for e in rollback_errors)
        super().__init__(f"{primary}; rollback failed for {failed}")
        self.primary = primary
        self.rollback_errors = rollback_errors


class WorkflowTimeoutError(WorkflowError):
    """The run passed its deadline; its completed steps were compensated.

    Attributes:
        run_id: the run that timed out.
        timeout: the run's timeout.
    """

    def __init__(self, run_id: str, timeout: timedelta | None) -> None:
        super().__init__(f"run {run_id} timed out after {timeout}")
        self.run_id = run_id
        self.timeout = timeout


class WorkflowCancelledError(WorkflowError):
    """The run was cancelled; its completed steps were compensated."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id


def qualified_name(kind: type) -> str:
    """Return ``module.QualName`` of a class (``builtins.`` dropped for builtins)."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def step_error_from_exception(step: str, attempt: int, error: BaseException) -> WorkflowStepError:
    """Capture an exception raised by a step handler as a :class:`WorkflowStepError`."""
    text = "".join(traceback.format_exception(error))
    return WorkflowStepError(step, attempt, qualified_name(type(error)), str(error), text)


def step_error_to_wire(error: WorkflowStepError) -> dict[str, Any]:
    """The JSON-able form of a step error, as stored in Redis."""
    return {
        "step": error.step,
        "attempt": error.attempt,
        "type": error.cause_type,
        "message": error.cause_message,
        "traceback": error.cause_traceback,
    }


def step_error_from_wire(data: dict[str, Any]) -> WorkflowStepError:
    """Rebuild a step error from its stored form."""
    return WorkflowStepError(
        str(data.get("step", "?")),
        int(data.get("attempt", 0)),
        str(data.get("type", "Exception")),
        str(data.get("message", "")),
        str(data.get("traceback", "")),
    )
