"""How runs are written to and read from Redis: JSON, plans, run records, errors."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic_core
from pydantic import BaseModel

from plait.workflows import (
    RetryPolicy,
    RunInfo,
    StepInfo,
    WaitInfo,
    Workflow,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowError,
    WorkflowRollbackError,
    WorkflowStatus,
    WorkflowStepError,
    WorkflowTimeoutError,
)
from plait.workflows._errors import cause_name

from .._core.payload import UnstorableError, check_text
from .._core.wire import lenient_text
from .jobs import display_name, rollback_of


class _RunIds:
    """Run ids that sort as they are made in this process, like monotonic ULIDs: within one
    millisecond the random part counts up, so indexes that order runs of the same millisecond
    by id list them in execute order."""

    __slots__ = ("_ms", "_random")

    def __init__(self) -> None:
        self._ms = 0
        self._random = 0

    def new(self, workflow: str) -> str:
        ms = int(time.time() * 1000)
        if ms <= self._ms:  # the same millisecond (or the clock went back): count up
            self._random += 1
        else:
            self._ms, self._random = ms, int.from_bytes(os.urandom(8)) >> 2  # room to count
        return f"{workflow}.{self._ms:012x}{self._random:016x}"


_run_ids = _RunIds()


def new_run_id(workflow: str) -> str:
    """A time-ordered run id that names its workflow: ``<workflow>.<ms hex><random hex>``
    (ids made by one process sort in the order they were made)."""
    return _run_ids.new(workflow)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text (and hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def input_hash(canonical: str) -> str:
    """The hash that tells two inputs of one idempotency key apart."""
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def encode_result(value: Any) -> str:
    """A step's return value as JSON (pydantic models, dicts, lists, scalars, ``None``).

    Raises:
        TypeError: the value cannot be serialized.
    """
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as error:
        raise TypeError(f"step result of type {type(value).__name__} is not JSON-able") from error


def decode_result(text: str, model: type[Any] | None) -> Any:
    """Decode a stored result, validated into ``model`` when given (``null`` stays None: a
    wait that timed out and continued has no payload)."""
    value = json.loads(text)
    if value is None:
        return None
    if model is not None and isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(value)
    return value


def plan_of(definition: Workflow[Any, Any]) -> str:
    """The run's plan as stored: a JSON list of groups of step names."""
    return json.dumps([[step.name for step in group] for group in definition.groups])


def limits_of(definition: Workflow[Any, Any]) -> str:
    """The global limits of a workflow as its runs store them ('' when it has none)."""
    rates = {
        step.name: [step.rate_limit[0], int(step.rate_limit[1].total_seconds() * 1000)]
        for step in definition.steps
        if step.rate_limit is not None
    }
    limits: dict[str, Any] = {}
    if definition.concurrency is not None:
        limits["cc"] = definition.concurrency
    if rates:
        limits["rl"] = rates
    return json.dumps(limits) if limits else ""


def limits_for(definition: Workflow[Any, Any], model: Any) -> str:
    """The limits one run stores: :func:`limits_of`, plus the key of each step whose rate limit
    holds per key (``Step(rate_key=)``, computed from the run's validated input).

    Raises:
        UnstorableError: a rate key is not valid text, or its function failed.
    """
    keyed = [step for step in definition.steps if step.rate_key is not None]
    if not keyed:
        return limits_of(definition)  # the same text for every run of the definition
    limits = json.loads(limits_of(definition))
    for step in keyed:
        assert step.rate_key is not None
        try:
            key = step.rate_key(model)
        except Exception as error:
            raise UnstorableError(f"step {step.name!r}: rate_key failed: {error!r}") from None
        if not isinstance(key, str) or not key:
            raise UnstorableError(
                f"step {step.name!r}: rate_key must give a non-empty string, not {key!r}"
            )
        check_text(key, f"the rate_key of step {step.name!r}")
        limits["rl"][step.name].append(key)
    return json.dumps(limits)


def caps_of(consumer: WorkflowConsumer[Any, Any]) -> str:
    """Which hooks and rollbacks a consumer has, as a run records them (its ``caps``)."""
    return json.dumps(
        {
            "oc": consumer.complete_handler is not None,
            "oe": consumer.error_handler is not None,
            "rb": dict.fromkeys(consumer.rollbacks, True),
        }
    )


def policy_json(policy: RetryPolicy | None) -> dict[str, Any] | None:
    """A retry policy as a run records it (exception classes by their ``cause_type``)."""
    if policy is None:
        return None
    return {
        "n": policy.max_attempts,
        "i": policy.initial_interval.total_seconds(),
        "b": policy.backoff,
        "m": policy.max_interval.total_seconds(),
        "x": [e if isinstance(e, str) else cause_name(e) for e in policy.non_retryable],
    }


def policy_of(data: Mapping[str, Any]) -> RetryPolicy:
    """The retry policy a run recorded (see :func:`policy_json`)."""
    return RetryPolicy(
        max_attempts=int(data["n"]),
        initial_interval=timedelta(seconds=float(data["i"])),
        backoff=float(data["b"]),
        max_interval=timedelta(seconds=float(data["m"])),
        non_retryable=tuple(str(name) for name in data.get("x", ())),
    )


def options_of(definition: Workflow[Any, Any]) -> str:
    """The step options a run records at execute: JSON {step: {r: retry, rr: rollback retry,
    t: timeout s}}, '' when no step has any (the running instance's defaults apply)."""
    options: dict[str, dict[str, Any]] = {}
    for step in definition.steps:
        entry = {
            "r": policy_json(step.retry),
            "rr": policy_json(step.rollback_retry),
            "t": None if step.timeout is None else step.timeout.total_seconds(),
        }
        if any(value is not None for value in entry.values()):
            options[step.name] = entry
    return json.dumps(options, separators=(",", ":")) if options else ""


def _time(value: str | None) -> datetime | None:
    if not value or not (value.isascii() and value.isdigit()):  # damaged: as if absent
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _error(value: str | None) -> WorkflowStepError | None:
    return WorkflowStepError.from_wire(json.loads(value)) if value else None


def decode_record(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """A run hash as text (bytes that are not UTF-8, in a corrupt field, replaced)."""
    return {lenient_text(key): lenient_text(value) for key, value in raw.items()}


def rollback_errors(record: Mapping[str, str]) -> list[WorkflowStepError]:
    """The errors of every rollback that failed, in the order they ran."""
    errors = []
    for job in record.get("jobs", "").split(","):
        if rollback_of(job) is not None and record.get(f"{job}|st") == "failed":
            error = _error(record.get(f"{job}|er"))
            if error is not None:
                errors.append(error)
    return errors


def run_info(run_id: str, workflow: str, record: Mapping[str, str]) -> RunInfo:
    """A :class:`RunInfo` snapshot from a run hash."""
    steps = {}
    for job in filter(None, record.get("jobs", "").split(",")):
        name = display_name(job)
        steps[name] = StepInfo(
            name=name,
            state=_state(record.get(f"{job}|st", "queued")),
            attempts=int(record.get(f"{job}|at", "0")),
            started_at=_time(record.get(f"{job}|t0")),
            finished_at=_time(record.get(f"{job}|t1")),
            error=_error(record.get(f"{job}|er")),
        )
    return RunInfo(
        run_id=run_id,
        workflow=workflow,
        status=WorkflowStatus(record["status"]),
        created_at=_time(record.get("created")) or datetime.now(tz=UTC),
        finished_at=_time(record.get("finished")),
        deadline=_time(record.get("deadline")),
        meta=json.loads(record.get("meta", "{}")),
        steps=steps,
        completion_order=tuple(filter(None, record.get("order", "").split(","))),
        error=_error(record.get("err")),
        rollback_errors=tuple(rollback_errors(record)),
        waits=waits_of(record),
        starts_at=_time(record.get("sat")),
        version=record.get("ver", ""),
    )


def waits_of(record: Mapping[str, str]) -> dict[str, WaitInfo]:
    """The waits and sleeps of a run record that were reached or got a signal."""
    names = [name for name in record.get("sigs", "").split(",") if name]
    names += [field[:-3] for field in record if field.endswith("|wk") and field[:-3] not in names]
    waits = {}
    for name in names:
        kind, st = record.get(f"{name}|wk"), record.get(f"{name}|st")
        signal_id = record.get(f"{name}|sg")
        if kind is None:  # not reached yet
            if signal_id is None:
                continue
            state, since = "pending", record.get(f"{name}|s0")
        else:
            state = "cancelled" if st == "cancelled" else record.get(f"{name}|ws", "waiting")
            since = record.get(f"{name}|w0")
        waits[name] = WaitInfo(
            name=name,
            kind=kind or "signal",
            state=state,
            since=_time(since),
            due=_time(record.get(f"{name}|wd")),
            signal_id=signal_id,
        )
    return waits


def _state(stored: str) -> str:
    return {"done": "completed", "cancelling": "running"}.get(stored, stored)


def outcome_error(run_id: str, record: Mapping[str, str]) -> WorkflowError:
    """The error ``result()`` raises for a run that ended without completing."""
    status = record["status"]
    primary: WorkflowError
    if status == WorkflowStatus.TIMED_OUT:
        timeout_ms = int(record.get("tmo", "0") or 0)
        primary = WorkflowTimeoutError(
            run_id, timedelta(milliseconds=timeout_ms) if timeout_ms else None
        )
    elif status == WorkflowStatus.CANCELLED:
        primary = WorkflowCancelledError(run_id)
    else:
        primary = _error(record.get("err")) or WorkflowStepError("?", 0, "Unknown", "no error")
    failed_rollbacks = rollback_errors(record)
    if failed_rollbacks:
        return WorkflowRollbackError(primary, failed_rollbacks)
    return primary
