"""Handles on runs, and what they report: status, step timeline, live events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import Any, Generic, TypeVar

from ._errors import WorkflowStepError
from ._protocols import RunBackend

__all__ = ["RunEvent", "RunInfo", "StepInfo", "WaitInfo", "WorkflowHandle", "WorkflowStatus"]

OutputT = TypeVar("OutputT")


class WorkflowStatus(StrEnum):
    """Where a run is in its life. The last four are final."""

    PENDING = "PENDING"
    """Created; no step attempt has started yet."""
    RUNNING = "RUNNING"
    """At least one step attempt started."""
    COMPENSATING = "COMPENSATING"
    """Failing, timing out or cancelled: rollbacks are running."""
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        """True once the run has ended."""
        return self in _FINAL


_FINAL = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
        WorkflowStatus.TIMED_OUT,
    }
)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: dataclasses as objects of their fields, datetimes as ISO
    8601 text, durations as seconds, enums as their values, step errors in their wire form."""
    if isinstance(value, WorkflowStepError):
        return value.to_wire()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return value


class _JSONable:
    def to_json(self) -> dict[str, Any]:
        """This record as a JSON-able dict (``json.dumps(info.to_json())`` works): datetimes as
        ISO 8601 text, statuses as their names, errors in their wire form."""
        result: dict[str, Any] = jsonable(self)
        return result


@dataclass(frozen=True, kw_only=True)
class StepInfo(_JSONable):
    """One job of a run (a step, a rollback, ``on_complete`` or ``on_error``) as recorded."""

    name: str
    """The step name; rollbacks are ``rollback:<step>``, plus ``on_complete`` and ``on_error``."""
    state: str
    """queued, running, retrying, completed, failed, cancelled or skipped; ``parked`` for a
    wait or sleep while its run waits on it (see :attr:`RunInfo.waits`)."""
    attempts: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: WorkflowStepError | None = None
    """The last failure of this job, if any."""


@dataclass(frozen=True, kw_only=True)
class WaitInfo(_JSONable):
    """One wait or sleep of a run, as recorded (``RunInfo.waits``)."""

    name: str
    kind: str
    """``signal`` (a wait) or ``sleep``."""
    state: str
    """``pending`` (not reached yet; ``signal_id`` set when a signal is kept for it),
    ``waiting`` (parked), ``signalled``, ``timed_out``, ``woke`` (a sleep that ended) or
    ``cancelled`` (its run stopped while it waited)."""
    since: datetime | None = None
    """When it began to wait (or, pending, when the kept signal came)."""
    due: datetime | None = None
    """When its timeout (or wake-up) is due, if it has one."""
    signal_id: str | None = None
    """The id of the signal it got (or keeps)."""


@dataclass(frozen=True, kw_only=True)
class RunInfo(_JSONable):
    """A snapshot of a run, from :meth:`WorkflowHandle.describe`."""

    run_id: str
    workflow: str
    status: WorkflowStatus
    created_at: datetime
    finished_at: datetime | None
    deadline: datetime | None
    meta: Mapping[str, str]
    steps: Mapping[str, StepInfo]
    """Every job that was scheduled, in the order it was first scheduled."""
    completion_order: tuple[str, ...] = ()
    """Completed steps, in the order they completed."""
    error: WorkflowStepError | None = None
    """The step error that failed the run, if one did."""
    rollback_errors: tuple[WorkflowStepError, ...] = field(default=())
    waits: Mapping[str, WaitInfo] = field(default_factory=dict)
    """Every wait and sleep the run reached or got a signal for, by name."""
    starts_at: datetime | None = None
    """When a delayed start (``execute(start_at=, delay=)``) is or was due."""
    version: str = ""
    """The version of the definition that executed the run (``Workflow.version``): its plan
    and step options are the run's, whichever version runs an attempt ('' for a run executed
    before versions were recorded)."""


@dataclass(frozen=True, kw_only=True)
class RunPage(_JSONable):
    """One page of runs found through the provider's indexes (``list_runs()``), newest first,
    or the runs a bulk action (``retry_runs()``, ``cancel_runs()``) acted on."""

    runs: tuple[RunInfo, ...]
    """The runs of the page (fewer than asked when the page's work bound was reached, or when
    runs expired after their retention: go on while :attr:`cursor` is not None)."""
    cursor: str | None
    """Pass it back as ``cursor=`` (with the same filters) for the next page; None at the end."""


@dataclass(frozen=True, kw_only=True)
class RunEvent(_JSONable):
    """Something that happened to a run, as streamed by :meth:`WorkflowHandle.watch`.

    ``kind`` is one of ``run.started``, ``step.started``, ``step.progress``, ``step.completed``,
    ``step.failed``, ``step.retrying``, ``step.released`` (a stopping instance handed the
    attempt back, or one that cannot run the job put it back: it runs again as the same
    attempt), ``compensating`` and ``finished``; a run that waits
    adds ``wait.waiting`` (parked; ``data["due"]``), ``wait.kept`` (a signal came before its
    wait), ``wait.signalled`` (``data["signal_id"]``), ``wait.timed_out``, ``wait.woke`` (a
    sleep ended) and ``run.woke`` (a delayed start began).
    """

    kind: str
    step: str | None
    attempt: int | None
    at: datetime
    data: Mapping[str, Any]
    id: str = ""
    """The event's position in the run's history, increasing: ``watch(after=id)`` resumes
    after it (a server-sent-events ``Last-Event-ID``)."""


class WorkflowHandle(Generic[OutputT]):
    """A reference to one run, usable from any instance.

    Attributes:
        run_id: the run's id.
        workflow: the workflow's name.
        created: False when an idempotency key attached this call to an existing run.
    """

    def __init__(
        self,
        backend: RunBackend,
        run_id: str,
        workflow: str,
        *,
        created: bool = True,
        output: type[OutputT] | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.created = created
        self._backend = backend
        self._output = output

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow!r}, run_id={self.run_id!r})"

    async def status(self) -> WorkflowStatus:
        """The run's current status (``RunNotFoundError`` if it does not exist)."""
        return await self._backend.run_status(self.workflow, self.run_id)

    async def result(self, timeout: timedelta | float | None = None) -> OutputT:
        """Wait for the run to end and return its result, or raise its error.

        Args:
            timeout: how long to wait; on expiry the builtin ``TimeoutError`` is raised and
                the run goes on.

        Raises:
            WorkflowStepError: a step failed for good and the run was compensated.
            WorkflowRollbackError: the run failed and some rollbacks failed too.
            WorkflowTimeoutError: the run passed its deadline.
            WorkflowCancelledError: the run was cancelled.
            ProviderClosedError: the provider stopped while waiting.
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        value = await self._backend.run_result(self.workflow, self.run_id, self._output, seconds)
        return value  # type: ignore[no-any-return]

    async def cancel(self) -> bool:
        """Cancel the run: compensate completed steps and end it CANCELLED.

        Returns False when the run had already ended.
        """
        return await self._backend.cancel_run(self.workflow, self.run_id)

    async def describe(self) -> RunInfo:
        """The run's status, per-step states, attempts, errors and timings."""
        return await self._backend.describe_run(self.workflow, self.run_id)

    def watch(self, *, after: str | None = None) -> AsyncIterator[RunEvent]:
        """Replay the run's events from its start (or from just after the event whose ``id`` is
        ``after``), then follow live; ends after ``finished``."""
        return self._backend.watch_run(self.workflow, self.run_id, after=after)
