"""The workflow error tree, plait's own failure causes, and the wire form of step errors.

Every error a caller can see derives from :class:`WorkflowError`::

    WorkflowError
    ├── InvalidDefinitionError        a workflow, step or consumer definition is invalid
    ├── InvalidInputError             execute() input does not validate (nothing written)
    ├── IdempotencyConflictError      the key belongs to a run with another input
    ├── ConcurrencyKeyBusyError       reject_new: the concurrency key's runs are all taken
    ├── RunNotFoundError              no run with this id
    ├── InvalidRunStateError          retry() of a run that is not FAILED or TIMED_OUT
    ├── InvalidFilterError            list_runs() and the bulk actions: a filter they cannot serve
    ├── ProviderUnavailableError      Redis unreachable for connect_timeout
    │   └── plait.events.EventProviderUnavailableError   (also an EventError)
    ├── ProviderClosedError           the provider is stopped or not started
    │   └── plait.events.EventProviderClosedError        (also an EventError)
    ├── RedisCommandError             Redis refused a command (e.g. a key of the wrong type)
    │   └── plait.events.EventCommandError               (also an EventError)
    ├── IncompatibleSchemaError       the data under the prefix has another key schema version
    │   └── plait.events.EventIncompatibleSchemaError    (also an EventError)
    ├── WorkflowStepError             a step, hook or rollback failed for good
    │   └── WaitTimeoutError          a wait's timeout passed before its signal came
    ├── SignalRefusedError            a signal came too late (run ended, wait timed out)
    ├── WorkflowRollbackError         the run failed and some rollbacks failed too
    ├── WorkflowTimeoutError          the run passed its deadline
    ├── WorkflowCancelledError        the run was cancelled
    ├── AttemptSupersededError        save_progress() from an attempt that is no longer live
    └── NonRetryableError             raise it in a step to fail at once
        ├── ResultNotSerializableError    a handler returned a value that is not JSON-able
        ├── InvalidResultError            on_complete's value does not validate as the output
        ├── InvalidStoredInputError       the stored input no longer validates
        ├── CorruptRunError               a field of the run record does not decode
        └── UnknownJobError               this consumer has no handler for the job

No redis-py exception reaches a caller: the Redis engine translates connection failures into
:class:`ProviderUnavailableError` (after ``connect_timeout``) and error replies into
:class:`RedisCommandError` at one boundary, and its event provider raises the ``Event*``
variants.

The causes plait itself raises inside a worker have fixed wire names in the ``plait.``
namespace (:data:`PLAIT_CAUSES`): a :class:`WorkflowStepError`'s ``cause_type`` is
``"plait.StepTimeout"``, never a private module path, and ``RetryPolicy.non_retryable`` may
list these names. Errors of a run travel through Redis as JSON
(:meth:`WorkflowStepError.to_wire` / :meth:`WorkflowStepError.from_wire`), so a caller on
another instance gets the same types and fields as the instance that ran the step.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from typing import Any, ClassVar

__all__ = [
    "PLAIT_CAUSES",
    "AttemptSupersededError",
    "ConcurrencyKeyBusyError",
    "CorruptRunError",
    "IdempotencyConflictError",
    "IncompatibleSchemaError",
    "InvalidDefinitionError",
    "InvalidInputError",
    "InvalidResultError",
    "InvalidRunStateError",
    "InvalidStoredInputError",
    "NonRetryableError",
    "PayloadDecodeError",
    "ProviderClosedError",
    "ProviderUnavailableError",
    "RedisCommandError",
    "ResultNotSerializableError",
    "RunNotFoundError",
    "RunStoppedError",
    "SignalRefusedError",
    "StepTimeoutError",
    "UnknownJobError",
    "WaitTimeoutError",
    "WorkerLostError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowRollbackError",
    "WorkflowStepError",
    "WorkflowTimeoutError",
    "cause_name",
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


class ConcurrencyKeyBusyError(WorkflowError):
    """``execute`` of a workflow whose per-key strategy is ``reject_new`` found its concurrency
    key's runs all taken (nothing was written).

    Attributes:
        workflow: the workflow's name.
        key: the concurrency key.
    """

    def __init__(self, workflow: str, key: str) -> None:
        super().__init__(f"workflow {workflow!r}: concurrency key {key!r} is busy")
        self.workflow = workflow
        self.key = key


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


class InvalidFilterError(WorkflowError):
    """A filter of ``list_runs()``, ``retry_runs()`` or ``cancel_runs()`` cannot be served (a
    meta field the workflow does not index, ``since`` after ``until``, a cursor of another
    listing...); nothing was read or written."""


class ProviderUnavailableError(WorkflowError):
    """Redis could not be reached within the provider's ``connect_timeout``."""


class ProviderClosedError(WorkflowError):
    """The provider was stopped while the call was waiting, or is not started."""


class IncompatibleSchemaError(WorkflowError):
    """``start()`` found data under the prefix written with another version of plait's key
    schema, which this version cannot read or would damage; nothing was written.

    Attributes:
        prefix: the key prefix.
        found: the schema version recorded under the prefix.
        expected: the schema version this plait writes.
    """

    def __init__(self, prefix: str, found: str, expected: str) -> None:
        super().__init__(
            f"the data under prefix {prefix!r} has key schema version {found}, and this plait "
            f"reads version {expected}: run a plait that reads version {found}, or use another "
            "prefix"
        )
        self.prefix = prefix
        self.found = found
        self.expected = expected


class RedisCommandError(WorkflowError):
    """Redis refused a command plait sent (an error reply, e.g. a key of the wrong type).

    Attributes:
        purpose: what plait was doing (``"execute place-order"``, ``"read run <id>"``).
        reply: the error reply of Redis.
    """

    def __init__(self, purpose: str, reply: str) -> None:
        super().__init__(f"{purpose}: Redis refused the command: {reply}")
        self.purpose = purpose
        self.reply = reply

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.purpose, self.reply))


class NonRetryableError(WorkflowError):
    """Raise (or subclass) this in a step to fail it at once, without further attempts."""


class ResultNotSerializableError(NonRetryableError):
    """A handler returned a value that cannot be stored as JSON (never retried).

    Recorded with ``cause_type="plait.ResultNotSerializable"``.
    """

    wire_name: ClassVar[str] = "plait.ResultNotSerializable"


class InvalidResultError(NonRetryableError):
    """A handler's value does not validate as its declared model (``on_complete``'s output, or
    an event's ``result``). Recorded with ``cause_type="plait.InvalidResult"``."""

    wire_name: ClassVar[str] = "plait.InvalidResult"


class InvalidStoredInputError(NonRetryableError):
    """The run's stored input no longer validates as the workflow's input model.

    Recorded with ``cause_type="plait.InvalidStoredInput"``.
    """

    wire_name: ClassVar[str] = "plait.InvalidStoredInput"


class CorruptRunError(NonRetryableError):
    """A field of the run's record in Redis does not decode or parse (edited or damaged outside
    plait); never retried: it would not change.

    Found by a script, the transition fails the run at once, without running its rollbacks
    (they would compute with the damaged record); found by a worker decoding an attempt, that
    attempt fails. Recorded with ``cause_type="plait.CorruptRun"``; the message names the field.
    """

    wire_name: ClassVar[str] = "plait.CorruptRun"


class PayloadDecodeError(WorkflowError):
    """A stored payload (an input, a result, progress, a signal, event data or a reply) that
    the provider's payload codec could not decode: a wrong or missing key, or damaged data.

    Raised to a caller reading it (``result()``); an attempt whose input or results do not
    decode fails with ``cause_type="plait.PayloadDecode"`` and is retried like any failure
    (another instance, or this one with its keys fixed, may decode it).
    """

    wire_name: ClassVar[str] = "plait.PayloadDecode"


class UnknownJobError(NonRetryableError):
    """The consumer on this instance has no handler for the job (a version mismatch).

    Recorded with ``cause_type="plait.UnknownJob"``.
    """

    wire_name: ClassVar[str] = "plait.UnknownJob"


class WorkerLostError(WorkflowError):
    """The instance running an attempt stopped renewing its lease and the attempt was reclaimed.

    Recorded with ``cause_type="plait.WorkerLost"``; list it in ``RetryPolicy.non_retryable``
    for a step that must not run twice.
    """

    wire_name: ClassVar[str] = "plait.WorkerLost"


class StepTimeoutError(WorkflowError, TimeoutError):
    """The attempt ran past its step timeout and was cancelled.

    Recorded with ``cause_type="plait.StepTimeout"``.
    """

    wire_name: ClassVar[str] = "plait.StepTimeout"


class RunStoppedError(WorkflowError):
    """The attempt was cancelled because its run left RUNNING (cancel, deadline, a failure).

    Recorded with ``cause_type="plait.RunStopped"``; never retried.
    """

    wire_name: ClassVar[str] = "plait.RunStopped"


class AttemptSupersededError(WorkflowError):
    """A fenced write (``save_progress``) came from an attempt that is no longer the live one.

    Recorded with ``cause_type="plait.AttemptSuperseded"`` when the step lets it propagate.
    """

    wire_name: ClassVar[str] = "plait.AttemptSuperseded"


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

    @classmethod
    def from_exception(cls, step: str, attempt: int, error: BaseException) -> WorkflowStepError:
        """Capture an exception raised by a handler (its type name at least, whatever it is)."""
        return cls(step, attempt, *describe_exception(error))

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able form of this error, as stored in Redis."""
        return {
            "step": self.step,
            "attempt": self.attempt,
            "type": self.cause_type,
            "message": self.cause_message,
            "traceback": self.cause_traceback,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WorkflowStepError:
        """Rebuild a step error from :meth:`to_wire`'s form (a wait's timeout as
        :class:`WaitTimeoutError`)."""
        kind = WaitTimeoutError if data.get("type") == WaitTimeoutError.wire_name else cls
        return kind(
            str(data.get("step", "?")),
            int(data.get("attempt", 0)),
            str(data.get("type", "Exception")),
            str(data.get("message", "")),
            str(data.get("traceback", "")),
        )


class WaitTimeoutError(WorkflowStepError):
    """A wait's ``timeout`` passed before its signal came (and the wait did not say
    ``on_timeout="continue"``): the run failed and its completed steps were compensated.

    Recorded with ``cause_type="plait.WaitTimeout"``; ``step`` and :attr:`wait` name the wait.
    """

    wire_name: ClassVar[str] = "plait.WaitTimeout"

    @property
    def wait(self) -> str:
        """The name of the wait that timed out."""
        return self.step


class SignalRefusedError(WorkflowError):
    """A signal was refused and nothing changed: its run has ended or is compensating, its
    wait already timed out, or the wait was already signalled with another ``signal_id``.

    Attributes:
        run_id: the run the signal was for.
        wait: the signal's (and its wait's) name.
        reason: why (the run's status, ``"timed out"``, ``"already signalled"``).
    """

    def __init__(self, run_id: str, wait: str, reason: str) -> None:
        super().__init__(f"signal {wait!r} to run {run_id} refused: {reason}")
        self.run_id = run_id
        self.wait = wait
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id, self.wait, self.reason))


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


PLAIT_CAUSES: dict[str, type[WorkflowError]] = {
    kind.wire_name: kind
    for kind in (
        AttemptSupersededError,
        CorruptRunError,
        InvalidResultError,
        InvalidStoredInputError,
        PayloadDecodeError,
        ResultNotSerializableError,
        RunStoppedError,
        StepTimeoutError,
        UnknownJobError,
        WaitTimeoutError,
        WorkerLostError,
    )
}
"""The fixed ``cause_type`` of every failure cause plait itself raises, and its class."""


def cause_name(kind: type) -> str:
    """The ``cause_type`` recorded for an exception class.

    plait's own causes have a fixed ``plait.<Name>`` (the class itself, not a subclass);
    builtins their bare name (``ValueError``); everything else ``module.QualName``.
    """
    fixed = kind.__dict__.get("wire_name")
    if isinstance(fixed, str):
        return fixed
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def describe_exception(error: BaseException) -> tuple[str, str, str]:
    """(cause type, message, traceback text) of ``error``, even when its ``str()`` raises."""
    try:
        message = str(error)
    except Exception as broken:  # a cause that cannot describe itself is still recorded
        message = f"<str() of {type(error).__name__} raised {type(broken).__name__}>"
    try:
        text = "".join(traceback.format_exception(error))
    except Exception:
        text = ""
    return cause_name(type(error)), message, text
