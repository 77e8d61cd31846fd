"""An ``execute``'s arguments: checked before anything is written, then one script call.

:func:`submission_of` validates the input and every option of an execute (raising
:class:`~plait.workflows.InvalidInputError` while nothing is written yet);
:func:`script_call` turns the result into the one atomic call that writes the run:
``run_execute.lua``, or ``run_debounce.lua`` for a debounced execute.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from plait.workflows import InvalidInputError, Workflow

from .._core.codecs import Payloads
from .._core.keys import WorkflowKeys
from .._core.payload import UnstorableError, check_key, check_meta, stored_json
from .._core.tracing import outgoing_meta
from .codec import canonical_json, input_hash, limits_for, plan_of
from .flow import debounce_of, per_key_of
from .scripts import RunScripts
from .waits import signal_names, start_of


def seconds(value: timedelta | float | None) -> float | None:
    """``value`` in seconds (a timedelta or a number), None for None."""
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _is_positive_duration(value: object) -> bool:
    if isinstance(value, timedelta):
        return value > timedelta(0)
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True, kw_only=True)
class Submission:
    """One execute's arguments, checked."""

    name: str
    """The workflow's name."""
    canonical: str
    """The validated input as canonical JSON."""
    sealed: str
    """The input as stored: ``canonical`` through the provider's payload codec."""
    meta: dict[str, str] | None
    """The caller's meta, checked (None when not given)."""
    idempotency_key: str | None
    """The caller's idempotency key."""
    limits: str
    """The run's limits as stored (:func:`~.codec.limits_for`)."""
    per_key: tuple[str, int, str] | None
    """(concurrency key, limit, strategy), or None."""
    quiet: tuple[str, int, int] | None
    """(debounce key, quiet ms, max wait ms), or None without debounce."""
    start_in_ms: int
    """A delayed start in ms from now (0: none)."""
    start_at_ms: int
    """A delayed start at this Redis time in ms (0: none)."""
    deadline: float | None
    """The run's timeout in seconds (None or 0: none)."""

    @property
    def delayed(self) -> bool:
        """Whether the run starts later than now (``start_at=`` or ``delay=``)."""
        return bool(self.start_in_ms or self.start_at_ms)


def submission_of(
    definition: Workflow[Any, Any],
    data: Any,
    *,
    idempotency_key: str | None,
    timeout: timedelta | None,
    meta: Mapping[str, str] | None,
    start_at: datetime | None,
    delay: timedelta | None,
    concurrency_key: str | None,
    debounce: timedelta | None,
    debounce_key: str | None,
    debounce_max_wait: timedelta | None,
    max_payload: int,
    default_timeout: timedelta | float | None,
    payloads: Payloads,
) -> Submission:
    """The arguments of ``execute(definition, data, ...)``, checked.

    Raises:
        TypeError: ``definition`` is not a Workflow.
        InvalidInputError: ``data`` or an option does not validate, or the payload codec
            failed on the input.
    """
    if not isinstance(definition, Workflow):
        raise TypeError(f"expected a Workflow, got {type(definition).__name__}")
    name = definition.name
    try:
        model = definition.input.model_validate(data)
        canonical = stored_json(
            lambda: canonical_json(model.model_dump(mode="json")), "the input", limit=max_payload
        )
        user_meta = None if meta is None else check_meta(meta)
        if idempotency_key is not None:
            check_key(idempotency_key)
        limits = limits_for(definition, model)
        per_key = per_key_of(definition, model, concurrency_key)
        quiet = debounce_of(debounce, debounce_key, debounce_max_wait, idempotency_key, per_key)
        sealed = payloads.seal(canonical, "the input")
    except (ValidationError, UnstorableError) as error:
        raise InvalidInputError(name, str(error)) from None
    if timeout is not None and not _is_positive_duration(timeout):
        raise InvalidInputError(name, f"timeout must be a positive timedelta, not {timeout!r}")
    start_in_ms, start_at_ms = start_of(name, start_at, delay)
    if (start_in_ms or start_at_ms) and (per_key is not None or quiet is not None):
        raise InvalidInputError(
            name, "a delayed start does not go with a concurrency key or debounce="
        )
    return Submission(
        name=name,
        canonical=canonical,
        sealed=sealed,
        meta=user_meta,
        idempotency_key=idempotency_key,
        limits=limits,
        per_key=per_key,
        quiet=quiet,
        start_in_ms=start_in_ms,
        start_at_ms=start_at_ms,
        deadline=seconds(timeout if timeout is not None else default_timeout),
    )


def script_call(
    scripts: RunScripts,
    keys: WorkflowKeys,
    run_id: str,
    submission: Submission,
    *,
    definition: Workflow[Any, Any],
    retention_ms: int,
    pinned: Callable[[], tuple[str, str, str]],
) -> Callable[[], Awaitable[tuple[str, str, bool]]]:
    """The call that writes the run (retried as one: it is idempotent by ``run_id``); returns
    (outcome, run id, whether its deadline or start is the workflow's earliest)."""
    deadline = submission.deadline
    common: dict[str, Any] = {
        "input_hash": input_hash(submission.canonical),
        "input_json": submission.sealed,
        "meta_json": canonical_json(outgoing_meta(submission.meta, correlation_id=run_id)),
        "plan_json": plan_of(definition),
        "timeout_ms": int(deadline * 1000) if deadline else 0,
        "retention_ms": retention_ms,
        "limits_json": submission.limits,
    }
    if submission.quiet is None:
        ikey = submission.idempotency_key or ""
        signals = signal_names(definition)
        user_meta = submission.meta
        indexed = [
            keys.meta_index(field, user_meta[field])
            for field in definition.indexed_meta
            if user_meta is not None and field in user_meta
        ]

        def call() -> Awaitable[tuple[str, str, bool]]:
            return scripts.execute(
                keys,
                run_id,
                idempotency_key=ikey,
                start_in_ms=submission.start_in_ms,
                start_at_ms=submission.start_at_ms,
                signals=signals,
                per_key=submission.per_key,
                pinned=pinned(),
                indexed=indexed,
                **common,
            )

        return call
    dkey, quiet_ms, max_wait_ms = submission.quiet

    def debounced() -> Awaitable[tuple[str, str, bool]]:
        return scripts.debounce(
            keys,
            run_id,
            debounce_key=dkey,
            quiet_ms=quiet_ms,
            max_wait_ms=max_wait_ms,
            **common,
        )

    return debounced
