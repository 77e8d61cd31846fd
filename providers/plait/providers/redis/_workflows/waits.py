"""Runs that wait: parking waits and sleeps (worker side) and delivering signals (caller side).

A wait or a sleep is a step of the run that no handler runs: the worker that takes its entry
parks it in one transition (``lua/run_wait.lua``), which frees the entry and the running slot
and puts its timeout (or wake-up time) in the workflow's delayed set, where the timer loop that
already serves retries finds it (``wake()`` in ``lua/run_lib.lua``). A parked run costs no
worker, no task and no polling of its own. A signal (``lua/run_signal.lua``) completes the
parked wait with its payload as the wait's result, or is kept on the run until the wait is
reached; its ``signal_id`` makes a resent signal a no-op.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from plait.workflows import (
    InvalidInputError,
    RunNotFoundError,
    SignalRefusedError,
    Sleep,
    Wait,
    Workflow,
)
from plait.workflows._definition import STEP_NAME

from .._core.codecs import PLAIN, Payloads
from .._core.connection import Connection
from .._core.errors import WORKFLOW_KINDS
from .._core.keys import WorkflowKeys, workflow_of
from .._core.payload import DEFAULT_MAX_PAYLOAD, UnstorableError, check_key, stored_json
from .._core.retry import call_until
from .codec import canonical_json
from .handlers import Handlers
from .scripts import Job, RunScripts, Started

logger = logging.getLogger("plait.waits")


def signal_names(definition: Workflow[Any, Any]) -> str:
    """The names of a workflow's signal waits as its runs store them (",a,b,"; '' for none)."""
    names = [step.name for step in definition.parks if isinstance(step, Wait)]
    return f",{','.join(names)}," if names else ""


@dataclass(frozen=True, slots=True)
class Parking:
    """How a started wait or sleep is parked (the arguments of ``RunScripts.park``)."""

    kind: str
    """``signal`` or ``sleep``."""
    due_in_ms: int = -1
    """Its timeout or wake-up, in ms from now (-1: none)."""
    due_at_ms: int = 0
    """Its wake-up, in Redis ms (0: none)."""
    goes_on: bool = False
    """Whether its timeout lets the run continue."""


def parking(handlers: Handlers, job: Job, started: Started) -> Parking:
    """How to park ``job`` (a sleep's ``until`` computed from the run's context).

    Raises:
        Exception: what a sleep's ``until`` raised (the attempt then fails like a step's).
    """
    step = handlers.parks[job.name]
    if isinstance(step, Wait):
        timeout = -1 if step.timeout is None else int(step.timeout.total_seconds() * 1000)
        return Parking("signal", timeout, 0, step.on_timeout == "continue")
    due_in, due_at = _sleep_due(step, handlers, job, started)
    return Parking("sleep", due_in, due_at)


def _sleep_due(step: Sleep, handlers: Handlers, job: Job, started: Started) -> tuple[int, int]:
    """(ms from now, or -1; Redis ms at, or 0) of a sleep's wake-up."""
    if step.duration is not None:
        return int(step.duration.total_seconds() * 1000), 0
    assert step.until is not None  # Sleep checks it has one of the two

    async def no_progress(_value: Any) -> None:  # pragma: no cover - a sleep saves none
        raise TypeError("a sleep saves no progress")

    context = handlers.context(job, started, no_progress, json.loads(started.meta or "{}"))
    until = step.until(context)
    if not isinstance(until, datetime) or until.tzinfo is None:
        raise TypeError(f"sleep {step.name!r}: until must return an aware datetime")
    # An aware datetime is a point in time: the same epoch ms on Redis's clock.
    return -1, max(int(until.timestamp() * 1000), 1)


def start_of(workflow: str, start_at: datetime | None, delay: timedelta | None) -> tuple[int, int]:
    """(ms from now, Redis ms at) of a delayed start (``execute(start_at=, delay=)``); (0, 0)
    to start now.

    Raises:
        InvalidInputError: both are given, or one is not an aware datetime / a timedelta >= 0.
    """
    if start_at is None and delay is None:
        return 0, 0
    if start_at is not None and delay is not None:
        raise InvalidInputError(workflow, "give start_at or delay, not both")
    if delay is not None:
        if not isinstance(delay, timedelta) or delay < timedelta(0):
            raise InvalidInputError(workflow, f"delay must be a timedelta >= 0, not {delay!r}")
        return int(delay.total_seconds() * 1000), 0
    if not isinstance(start_at, datetime) or start_at.tzinfo is None:
        raise InvalidInputError(workflow, f"start_at must be an aware datetime, not {start_at!r}")
    return 0, max(int(start_at.timestamp() * 1000), 1)


class Signals:
    """Delivers signals to waiting runs (the provider's ``signal``)."""

    def __init__(
        self,
        connection: Connection,
        scripts: RunScripts,
        definitions: Mapping[str, Workflow[Any, Any]],
        *,
        prefix: str,
        connect_timeout: float,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        payloads: Payloads = PLAIN,
    ) -> None:
        self._max_payload = max_payload
        self._payloads = payloads
        self._client: Any = connection.client
        self._scripts = scripts
        self._definitions = definitions
        self._prefix = prefix
        self._timeout = connect_timeout

    async def signal(
        self,
        target: str | Workflow[Any, Any],
        name: str,
        data: Any = None,
        *,
        signal_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """See :meth:`RedisWorkflowProvider.signal`."""
        if isinstance(target, Workflow):
            definition: Workflow[Any, Any] | None = target
            workflow = target.name
        else:
            workflow = workflow_of(target)
            definition = self._definitions.get(workflow)
        text = _payload(workflow, definition, name, data, self._max_payload)
        try:
            payload = self._payloads.seal(text, "the signal's data")
        except UnstorableError as error:
            raise InvalidInputError(workflow, str(error)) from None
        sid = signal_id if signal_id is not None else uuid.uuid4().hex
        try:
            check_key(sid)
        except UnstorableError as error:
            raise InvalidInputError(workflow, f"signal_id: {error}") from None
        keys = WorkflowKeys(self._prefix, workflow)
        if isinstance(target, Workflow):
            if idempotency_key is None:
                raise TypeError("signal(workflow, ...) needs idempotency_key= to find the run")
            run_id = await self._run_of(keys, idempotency_key)
        else:
            run_id = target
        outcome, detail = await call_until(
            lambda: self._scripts.signal(keys, run_id, name, signal_id=sid, data=payload),
            timeout=self._timeout,
            what=f"signal {name} to run {run_id}",
            kinds=WORKFLOW_KINDS,
        )
        if outcome == "unknown":
            raise RunNotFoundError(run_id)
        if outcome == "nowait":
            raise InvalidInputError(workflow, f"run {run_id} has no wait named {name!r}")
        if outcome == "refused":
            raise SignalRefusedError(run_id, name, detail)
        return outcome != "duplicate"

    async def _run_of(self, keys: WorkflowKeys, idempotency_key: str) -> str:
        """The run owning ``idempotency_key`` (:class:`RunNotFoundError` when none does)."""
        raw = await call_until(
            lambda: self._client.get(keys.idempotency(idempotency_key)),
            timeout=self._timeout,
            what=f"find the run of key {idempotency_key!r}",
            kinds=WORKFLOW_KINDS,
        )
        if raw is None:
            raise RunNotFoundError(f"{keys.workflow} with idempotency key {idempotency_key!r}")
        run_id, _, _ = raw.decode().rpartition("|")
        return str(run_id)


def _payload(
    workflow: str, definition: Workflow[Any, Any] | None, name: str, data: Any, limit: int
) -> str:
    """A signal's payload as stored: validated as its wait's ``data`` when the workflow is known.

    Raises:
        InvalidInputError: the workflow has no wait ``name``, or ``data`` does not validate
            (or is not JSON-able, or is larger than ``limit`` bytes); nothing is written.
    """
    if not isinstance(name, str) or not STEP_NAME.match(name):
        raise InvalidInputError(workflow, f"invalid signal name {name!r}")
    model: type[BaseModel] | None = None
    if definition is not None:
        try:
            step = definition.get_step(name)
        except KeyError:
            step = None
        if not isinstance(step, Wait):
            raise InvalidInputError(workflow, f"workflow {workflow!r} has no wait named {name!r}")
        model = step.data
    try:
        if model is not None:
            value = model.model_validate(data).model_dump(mode="json")
        elif isinstance(data, BaseModel):
            value = data.model_dump(mode="json")
        else:
            value = data
        return stored_json(lambda: canonical_json(value), f"signal {name!r}", limit=limit)
    except (ValidationError, UnstorableError, TypeError, ValueError) as error:
        raise InvalidInputError(workflow, f"signal {name!r}: {error}") from None
