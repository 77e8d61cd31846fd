"""A consumer's handlers: the context of a job, the handler call, and what the outcome means.

A job is a step, a rollback, ``on_complete`` or ``on_error`` (see ``jobs``). This module knows
how to call each kind of handler and how to turn what it returned or raised into the JSON
result or the wire error and retry delay the scripts record; ``attempt`` runs it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from plait.workflows import (
    InvalidResultError,
    InvalidStoredInputError,
    PayloadDecodeError,
    ResultNotSerializableError,
    RetryPolicy,
    Sleep,
    StepContext,
    Wait,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowError,
    WorkflowStepError,
)

from .._core.calls import Straggler, invoke
from .._core.codecs import PLAIN, Payloads, UndecodableError
from .._core.payload import DEFAULT_MAX_PAYLOAD, UnstorableError, check_size
from .codec import decode_result, encode_result, policy_of
from .jobs import COMPLETE, ERROR, ROLLBACK, error_step_name, is_step, rollback_of, step_of
from .scripts import Job, Started


class Handlers:
    """Calls the handlers of one consumer and judges their outcomes."""

    def __init__(
        self,
        consumer: WorkflowConsumer[Any, Any],
        default_retry: RetryPolicy,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        events: Any = None,
        payloads: Payloads = PLAIN,
    ) -> None:
        self.consumer = consumer
        self._payloads = payloads
        self._max_payload = max_payload
        self._emit = events.emit if events is not None else None
        self.definition = consumer.definition
        self._default_retry = default_retry
        self._outputs = {step.name: step.output for step in self.definition.steps}
        self._decoded: dict[str, dict[str, Any] | None] = {}
        self.parks: dict[str, Wait | Sleep] = {step.name: step for step in self.definition.parks}
        """The waits and sleeps, which plait parks instead of calling a handler."""
        self._timeouts = {
            step.name: step.timeout.total_seconds()
            for step in self.definition.steps
            if step.timeout is not None and step.name not in self.parks
        }

    def knows(self, job: str) -> bool:
        """Whether this consumer has a handler for ``job`` (a job it lacks is put back for an
        instance that has one, never run as a no-op, see ``capabilities``)."""
        step = rollback_of(job)
        if step is not None:
            return step in self.consumer.rollbacks
        if job == COMPLETE:
            return self.consumer.complete_handler is not None
        if job == ERROR:
            return self.consumer.error_handler is not None
        return job in self.consumer.steps or job in self.parks

    def jobs(self) -> list[str]:
        """Every job this consumer can run (what its instance announces)."""
        jobs = [*self.consumer.steps, *self.parks]
        jobs += [ROLLBACK + step for step in self.consumer.rollbacks]
        if self.consumer.complete_handler is not None:
            jobs.append(COMPLETE)
        if self.consumer.error_handler is not None:
            jobs.append(ERROR)
        return jobs

    def policy(self, job: str, pinned: str = "") -> RetryPolicy:
        """The retry policy of a job: its step's (or rollback's) as the run recorded it at
        execute (``pinned``: the run's step options), else as this version defines it, else
        the provider default."""
        options = self._pinned(pinned)
        if options is not None:
            entry = options.get(step_of(job)) or {}
            rollback = rollback_of(job) is not None
            chosen = (entry.get("rr") if rollback else None) or entry.get("r")
            return policy_of(chosen) if chosen else self._default_retry
        try:
            step = self.definition.get_step(step_of(job))
        except KeyError:  # a hook, or a step this version of the workflow does not know
            return self._default_retry
        if rollback_of(job) is not None:
            return step.rollback_retry or step.retry or self._default_retry
        return step.retry or self._default_retry

    def timeout(self, job: str, pinned: str = "") -> float | None:
        """The step timeout of a job in seconds (rollbacks use their step's), or None; from
        the run's step options when it recorded them (``pinned``)."""
        options = self._pinned(pinned)
        if options is not None:
            seconds = (options.get(step_of(job)) or {}).get("t")
            return None if seconds is None else float(seconds)
        return self._timeouts.get(step_of(job))

    def retry_delay_ms(self, job: str, attempt: int, error: BaseException, pinned: str = "") -> int:
        """Milliseconds until the next attempt, or -1 when the job has failed for good."""
        delay = self.policy(job, pinned).next_delay(attempt, error)
        return -1 if delay is None else int(delay.total_seconds() * 1000)

    def _pinned(self, raw: str) -> dict[str, Any] | None:
        """A run's step options, decoded once per distinct text; None for a run that recorded
        none (or whose record does not decode: this version's options apply)."""
        if not raw:
            return None
        try:
            return self._decoded[raw]
        except KeyError:
            pass
        options: dict[str, Any] | None
        try:
            options = dict(json.loads(raw))
            for entry in options.values():
                for key in ("r", "rr"):
                    if entry.get(key):
                        policy_of(entry[key])
        except (ValueError, TypeError, KeyError, AttributeError, WorkflowError):
            options = None
        if len(self._decoded) >= 64:
            self._decoded.clear()
        self._decoded[raw] = options
        return options

    def context(
        self,
        job: Job,
        started: Started,
        save: Callable[[Any], Awaitable[None]],
        meta: Mapping[str, str],
    ) -> WorkflowContext[Any]:
        """The context handed to the job's handler (``meta``: the run's meta, decoded)."""
        payloads = self._payloads
        try:
            stored_input = payloads.open(started.input, "the run's input")
            texts = {
                name: payloads.open(text, f"the result of {name!r}")
                for name, text in started.results.items()
            }
            progress = payloads.open(started.progress, "the progress") if started.progress else ""
        except UndecodableError as error:
            raise PayloadDecodeError(str(error)) from None
        try:
            data = self.definition.input.model_validate_json(stored_input)
        except ValidationError as error:
            raise InvalidStoredInputError(f"stored input does not validate: {error}") from error
        results = {
            name: decode_result(text, self._outputs.get(name)) for name, text in texts.items()
        }
        common: dict[str, Any] = {
            "run_id": job.run_id,
            "workflow": self.definition.name,
            "attempt": started.attempt,
            "input": data,
            "results": results,
            "meta": meta,
            "deadline": (
                datetime.fromtimestamp(started.deadline_ms / 1000, tz=UTC)
                if started.deadline_ms
                else None
            ),
            "emit": self._emit,
        }
        if job.name in (COMPLETE, ERROR):
            return WorkflowContext(**common)
        return StepContext(
            step=error_step_name(job.name),
            fencing_token=int(job.token),
            progress=json.loads(progress) if progress else None,
            save=save,
            **common,
        )

    async def call(
        self,
        job: str,
        context: WorkflowContext[Any],
        run_error: WorkflowError | None,
        *,
        straggler: Straggler | None = None,
    ) -> str:
        """Run the job's handler and return its result as JSON (``"null"`` for hooks); a sync
        handler's thread is followed by ``straggler`` (see :meth:`late_result`)."""
        if job == COMPLETE:
            handler: Callable[..., Any] | None = self.consumer.complete_handler
            value = await invoke(handler, context, straggler=straggler) if handler else None
            return self._complete_result(value)
        if job == ERROR:
            handler = self.consumer.error_handler
            if handler is not None:
                await invoke(handler, context, run_error, straggler=straggler)
            return "null"
        step = rollback_of(job)
        if step is not None:
            handler = self.consumer.rollbacks.get(step)
            if handler is not None:
                await invoke(handler, context, straggler=straggler)
            return "null"
        value = await invoke(self.consumer.steps[job], context, straggler=straggler)
        return self._step_result(job, value)

    async def late_result(self, job: str, straggler: Straggler) -> str:
        """What :meth:`call` returns, for a job whose caller left its sync handler's thread:
        waits for the thread to end (raises what the handler raised)."""
        value = await straggler.outcome()
        if job == COMPLETE:
            return self._complete_result(value)
        if is_step(job):
            return self._step_result(job, value)
        return "null"  # on_error and rollbacks return nothing

    def stored(self, text: str, what: str) -> str:
        """``text`` (a result or progress as JSON) as stored (through the payload codec),
        refused when over ``max_payload_bytes`` (of JSON, before the codec).

        Raises:
            ResultNotSerializableError: ``text`` is too large to store, or the payload codec
                failed on it.
        """
        size = len(text) if text.isascii() else len(text.encode(errors="surrogatepass"))
        try:
            check_size(size, what, self._max_payload)
            return self._payloads.seal(text, what)
        except UnstorableError as error:
            raise ResultNotSerializableError(str(error)) from None

    def _step_result(self, job: str, value: Any) -> str:
        try:
            text = encode_result(value)
        except TypeError as error:
            raise ResultNotSerializableError(f"step {job!r}: {error}") from None
        return self.stored(text, f"the result of step {job!r}")

    def _complete_result(self, value: Any) -> str:
        output = self.definition.output
        if isinstance(output, type) and issubclass(output, BaseModel):
            try:
                value = output.model_validate(value)
            except ValidationError as error:
                raise InvalidResultError(
                    f"on_complete result does not validate as {output.__name__}: {error}"
                ) from None
        try:
            text = encode_result(value)
        except TypeError as error:
            raise ResultNotSerializableError(f"on_complete: {error}") from None
        return self.stored(text, "the result of on_complete")


def wire_error(
    job: str, attempt: int, error: BaseException, *, span: str | None = None
) -> dict[str, Any]:
    """The stored form of a failed attempt's error (with its span, linked by the next try)."""
    wire = WorkflowStepError.from_exception(error_step_name(job), attempt, error).to_wire()
    if span:
        wire["span"] = span
    return wire
