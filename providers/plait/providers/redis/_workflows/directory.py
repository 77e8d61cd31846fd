"""Finding runs and acting on them: handles, retry, and the paged search with its bulk actions.

The provider's ``get_handle``, ``retry``, ``find_run``, ``list_runs``, ``retry_runs`` and
``cancel_runs`` are :class:`RunDirectory`'s; the indexes it reads are :mod:`.search`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from plait.workflows import (
    InvalidFilterError,
    InvalidRunStateError,
    RunInfo,
    RunNotFoundError,
    RunPage,
    Workflow,
    WorkflowHandle,
    WorkflowStatus,
)

from .._core.connection import Connection
from .._core.errors import WORKFLOW_KINDS
from .._core.keys import workflow_of
from .._core.retry import call_until
from . import search
from .runs import Runs
from .scripts import RunScripts
from .timers import Timers

OutputT = TypeVar("OutputT")


class RunDirectory:
    """The runs of a provider's prefix, found by id, idempotency key or filters (see the
    provider's methods of the same names for their contracts)."""

    def __init__(
        self,
        connection: Connection,
        scripts: RunScripts,
        runs: Runs,
        *,
        timers: Timers,
        definitions: dict[str, Workflow[Any, Any]],
        connect_timeout: float,
        check_started: Callable[[], None],
    ) -> None:
        self._connection = connection
        self._scripts = scripts
        self._runs = runs
        self._timers = timers
        self._definitions = definitions
        self._connect_timeout = connect_timeout
        self._check_started = check_started

    async def get_handle(
        self, run_id: str, workflow: Workflow[Any, OutputT] | None = None
    ) -> WorkflowHandle[OutputT]:
        """A handle on an existing run."""
        name = workflow.name if workflow is not None else workflow_of(run_id)
        definition = workflow or self._definitions.get(name)
        await self._runs.run_status(name, run_id)
        output = definition.output if definition is not None else None
        return WorkflowHandle(self._runs, run_id, name, created=False, output=output)

    async def retry(self, run_id: str) -> WorkflowHandle[Any]:
        """Resume a FAILED or TIMED_OUT run as a new attempt of the same run."""
        self._check_started()
        name = workflow_of(run_id)
        call = self._scripts.call_id()
        outcome, status = await call_until(
            lambda: self._scripts.retry(self._runs.keys(name), run_id, call=call),
            timeout=self._connect_timeout,
            what=f"retry {run_id}",
            kinds=WORKFLOW_KINDS,
        )
        if outcome == "unknown":
            raise RunNotFoundError(run_id)
        if outcome == "invalid":
            raise InvalidRunStateError(run_id, status)
        definition = self._definitions.get(name)
        self._timers.watch(name)
        output = definition.output if definition is not None else None
        return WorkflowHandle(self._runs, run_id, name, created=False, output=output)

    async def find_run(
        self, workflow: Workflow[Any, Any] | str, *, idempotency_key: str
    ) -> WorkflowHandle[Any] | None:
        """The run of ``workflow`` owning ``idempotency_key``, or None."""
        self._check_started()
        name, definition = self._definition_of(workflow)
        owner = await call_until(
            lambda: search.owner_of(
                self._connection.client, self._runs.keys(name), idempotency_key
            ),
            timeout=self._connect_timeout,
            what=f"find a run of {name}",
            kinds=WORKFLOW_KINDS,
        )
        if owner is None:
            return None
        try:
            return await self.get_handle(owner, definition)
        except RunNotFoundError:
            return None

    async def list_runs(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        status: WorkflowStatus | None,
        since: datetime | None,
        until: datetime | None,
        meta: Mapping[str, str] | None,
        idempotency_key: str | None,
        limit: int,
        cursor: str | None,
    ) -> RunPage:
        """A page of ``workflow``'s runs matching every filter given, newest first."""
        self._check_started()
        name, definition = self._definition_of(workflow)
        query = search.query_of(
            status=status,
            since=since,
            until=until,
            meta=meta,
            idempotency_key=idempotency_key,
            indexed=None if definition is None else definition.indexed_meta,
        )
        keys = self._runs.keys(name)
        return await call_until(
            lambda: search.page(
                self._connection.client, keys, query, limit=search.check_limit(limit), cursor=cursor
            ),
            timeout=self._connect_timeout,
            what=f"list the runs of {name}",
            kinds=WORKFLOW_KINDS,
        )

    async def retry_runs(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        status: WorkflowStatus,
        since: datetime | None,
        until: datetime | None,
        meta: Mapping[str, str] | None,
        limit: int,
        cursor: str | None,
    ) -> RunPage:
        """Retry one page of the runs :meth:`list_runs` lists; returns those retried."""
        if status not in (WorkflowStatus.FAILED, WorkflowStatus.TIMED_OUT):
            raise InvalidFilterError(f"only FAILED and TIMED_OUT runs are retried, not {status}")

        async def retried(info: RunInfo) -> bool:
            await self.retry(info.run_id)
            return True

        listed = await self.list_runs(
            workflow,
            status=status,
            since=since,
            until=until,
            meta=meta,
            idempotency_key=None,
            limit=limit,
            cursor=cursor,
        )
        return await _acted(listed, retried)

    async def cancel_runs(
        self,
        workflow: Workflow[Any, Any] | str,
        *,
        status: WorkflowStatus,
        since: datetime | None,
        until: datetime | None,
        meta: Mapping[str, str] | None,
        limit: int,
        cursor: str | None,
    ) -> RunPage:
        """Cancel one page of the runs :meth:`list_runs` lists; returns those cancelled."""
        if status not in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
            raise InvalidFilterError(f"only PENDING and RUNNING runs are cancelled, not {status}")

        async def cancelled(info: RunInfo) -> bool:
            return await self._runs.cancel_run(info.workflow, info.run_id)

        listed = await self.list_runs(
            workflow,
            status=status,
            since=since,
            until=until,
            meta=meta,
            idempotency_key=None,
            limit=limit,
            cursor=cursor,
        )
        return await _acted(listed, cancelled)

    def _definition_of(
        self, workflow: Workflow[Any, OutputT] | str
    ) -> tuple[str, Workflow[Any, OutputT] | None]:
        if isinstance(workflow, Workflow):
            return workflow.name, workflow
        if not isinstance(workflow, str):
            raise TypeError(f"expected a Workflow or its name, got {type(workflow).__name__}")
        return workflow, self._definitions.get(workflow)


async def _acted(listed: RunPage, act: Callable[[RunInfo], Awaitable[bool]]) -> RunPage:
    """The runs of ``listed`` that ``act`` acted on, one after another, with its cursor (a run
    that changed meanwhile, or is gone, is skipped)."""
    done = []
    for info in listed.runs:
        try:
            if await act(info):
                done.append(info)
        except (InvalidRunStateError, RunNotFoundError):
            continue
    return RunPage(runs=tuple(done), cursor=listed.cursor)
