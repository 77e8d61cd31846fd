"""Running one attempt of a job and recording its outcome.

An attempt runs its handler inside one cancel scope bounded by the step timeout or the run
deadline, which ``cancel_run`` can also cancel (a sync handler's thread, which cannot be
stopped, is then waited for when its run stopped); then one transition records the outcome: a
completion (which may take the workflow's next entries for this worker in the same Lua call),
a retry, a failure for good, or a dead letter. A transition that cannot reach Redis is retried
until it is recorded, never dropped.

A cancel reaches a running attempt as a message on the workflow's ``cancel`` channel, and the
attempt stops once its job's state confirms it (one read): a message alone is not enough, as it
may be late, published for an earlier attempt of a run that was retried since. Two messages
could miss it, and are caught up with: one that arrives between the start reply and the
attempt's registration (it may even come before the reply: pub/sub is another connection), and
one lost while the pub/sub connection reconnected. So the run ids of the cancel messages heard
are remembered for :data:`REMEMBERED` s, and the attempt of a run among them reads its job's
state once before its handler runs; after each (re)subscription of the channel, the attempts
registered then read theirs in one pipeline, and those registering during the next
:data:`REMEMBERED` s read theirs like the ones above. An attempt whose job is no longer running
with its token (``cancelling``, ``cancelled``, superseded) is stopped like one a message reached.
Neither read is made on the usual path: only for runs just cancelled, and after a reconnect.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel

from plait.workflows import (
    AttemptSupersededError,
    CorruptRunError,
    RunStoppedError,
    StepTimeoutError,
    UnknownJobError,
    WorkerLostError,
    WorkflowError,
)
from plait.workflows._errors import describe_exception

from .._core.calls import Straggler
from .._core.connection import Connection
from .._core.errors import BACKGROUND_ERRORS
from .._core.keys import WorkflowKeys
from .._core.retry import call_forever
from .._core.telemetry import Telemetry, record_failure
from .._core.tracing import current_meta, traceparent_of
from .._core.wire import lenient_text
from .codec import decode_record, encode_result, outcome_error
from .handlers import Handlers, wire_error
from .jobs import ERROR, compensates, display_name
from .scripts import Corrupt, Deferred, Job, Lost, Refused, RunScripts, Started, StartReply, Taken
from .waits import parking

logger = logging.getLogger("plait.worker")

FINAL_STATUS = {"failed": "FAILED", "timeout": "TIMED_OUT", "cancel": "CANCELLED"}

REMEMBERED = 30.0
"""Seconds the run id of a cancel message is remembered, and attempts registering after the
``cancel`` channel was subscribed again read their job's state (a start reply slower than
this, through an outage, is not covered)."""
_REMEMBERED_MOST = 10_000
"""Most run ids of cancel messages remembered at once (the oldest are forgotten first)."""

T = TypeVar("T")


class Attempts:
    """Runs the attempts of one workflow's jobs on this instance (for its :class:`Worker`)."""

    def __init__(
        self,
        connection: Connection,
        scripts: RunScripts,
        handlers: Handlers,
        *,
        keys: WorkflowKeys,
        owner: str,
        telemetry: Telemetry,
        on_retry: Callable[[str], None],
    ) -> None:
        self._keys = keys
        self._client: Any = connection.client
        self._scripts = scripts
        self._handlers = handlers
        self._owner = owner
        self._telemetry = telemetry
        self._on_retry = on_retry
        self.taking = True
        """Whether a completion takes the workflow's next entry (False once the worker drains)."""
        self._scopes: dict[str, dict[str, tuple[Job, anyio.CancelScope]]] = {}
        self._heard: dict[str, float] = {}
        """Run ids of the cancel messages heard in the last :data:`REMEMBERED` s (when, on the
        monotonic clock), oldest first."""
        self._doubt_until = 0.0
        """Until when (monotonic) registering attempts check their job's state: a cancel
        message may have been lost while the ``cancel`` channel was not subscribed."""
        self.begun = False
        """Whether the worker started a job yet (the first subscription needs no doubt)."""
        self._run_stopped: set[str] = set()
        """Entries whose attempt ``cancel_run`` cancelled (not their timeout or deadline)."""
        self.interrupting = False
        """Whether the worker's stop interrupts attempts: they are handed back, not run."""

    def interrupt(self) -> None:
        """Cancel every running attempt for the stop: each hands its job back to the group
        (queued again at once, no attempt spent), and attempts started from now on too."""
        self.interrupting = True
        for attempts in list(self._scopes.values()):
            for _, scope in list(attempts.values()):
                scope.cancel()

    def cancel_run(self, run_id: str) -> list[tuple[Job, anyio.CancelScope]]:
        """A cancel message named ``run_id``: remember the run for its attempts not registered
        yet (see the module's docstring), and return its running attempts (not its
        compensation), which :meth:`stop_ended` stops once their jobs' state confirms it."""
        now = time.monotonic()
        heard = self._heard
        heard.pop(run_id, None)
        heard[run_id] = now
        while True:  # forget the oldest (first in the dict) past their time or the bound
            oldest = next(iter(heard))
            if now - heard[oldest] < REMEMBERED and len(heard) <= _REMEMBERED_MOST:
                break
            del heard[oldest]
        return [
            (job, scope)
            for job, scope in self._scopes.get(run_id, {}).values()
            if not compensates(job.name)
        ]

    def _stop(self, entry: str, scope: anyio.CancelScope) -> None:
        self._run_stopped.add(entry)
        scope.cancel()

    async def resubscribed(self) -> None:
        """The ``cancel`` channel was subscribed (again): messages may have been lost since
        the attempts running here started. Each reads its job's state (one pipeline); so do
        those registering during the next :data:`REMEMBERED` s."""
        if self.begun:
            self._doubt_until = time.monotonic() + REMEMBERED
        running = [
            (job, scope)
            for attempts in list(self._scopes.values())
            for job, scope in attempts.values()
            if not compensates(job.name)
        ]
        await self.stop_ended(running, unread="run")

    async def stop_ended(
        self, running: list[tuple[Job, anyio.CancelScope]], *, unread: Literal["stop", "run"]
    ) -> None:
        """Stop the attempts of ``running`` whose job is no longer running with their token
        (one pipeline of reads). A message alone never stops one: it may be late, published
        for an earlier attempt of a run retried since. ``unread``: what an attempt does when
        its job's state cannot be read (``stop`` after a message: it is all there is to go
        on; its completion is token-checked either way)."""
        if not running:
            return
        pipe = self._client.pipeline(transaction=False)
        for job, _ in running:
            pipe.hmget(self._keys.run(job.run_id), f"{job.name}|st", f"{job.name}|tk")
        try:
            replies = await pipe.execute(raise_on_error=False)
        except BACKGROUND_ERRORS as error:
            logger.warning(
                "%s: checking running steps for cancels failed (%s)", self._keys.jobs, error
            )
            replies = [error] * len(running)
        for (job, scope), reply in zip(running, replies, strict=True):
            if unread == "stop" if isinstance(reply, Exception) else not _live(job, reply):
                self._stop(job.entry, scope)

    def _doubtful(self, run_id: str) -> bool:
        """Whether a cancel of ``run_id`` may have been missed (see the module's docstring)."""
        if not self._heard and not self._doubt_until:
            return False
        now = time.monotonic()
        heard = self._heard.get(run_id)
        return (heard is not None and now - heard < REMEMBERED) or now < self._doubt_until

    async def _check(self, job: Job, scope: anyio.CancelScope) -> None:
        """Stop the attempt (inside ``scope``) when its job is no longer running with its
        token: the run was cancelled, and the message came before the attempt registered."""
        await self.stop_ended([(job, scope)], unread="run")  # unread: the step runs (its
        # completion is token-checked)
        await anyio.lowlevel.checkpoint()  # raises the cancellation here, if it was stopped

    async def process(self, entry: str, job: Job, started: StartReply) -> list[Taken]:
        """Run one started job; returns the entries its completion took for this worker.

        Anything that goes wrong with this entry alone (Redis refusing its transition, a bug)
        dead-letters it with the reason, so the worker goes on; the reconciler repairs its run
        if it is left running (a new attempt).
        """
        try:
            if isinstance(started, Started):
                if job.name in self._handlers.parks:
                    await self._park(job, started)
                    return []
                return await self._attempt(job, started)
            await self._settle(job, started)
        except Exception as error:
            cause_type, message, _ = describe_exception(error)
            logger.exception("%s: processing entry %s failed", self._keys.jobs, entry)
            fields = {"r": job.run_id, "j": job.name, "t": job.token}
            await self.dead_letter(entry, f"processing failed: {cause_type}: {message}", fields)
        return []

    async def _park(self, job: Job, started: Started) -> None:
        """Park a wait or sleep; a sleep whose ``until`` raised fails like a step."""
        try:
            how = parking(self._handlers, job, started)
        except Exception as error:
            await self._record_failure(job, started.attempt, error)
            return
        call = self._scripts.call_id()
        parked = await transition(
            lambda: self._scripts.park(
                self._keys,
                job,
                call=call,
                kind=how.kind,
                due_in_ms=how.due_in_ms,
                due_at_ms=how.due_at_ms,
                goes_on=how.goes_on,
            ),
            self._keys.workflow,
        )
        if parked is not None and parked[0] == "parked":
            self._on_retry(self._keys.workflow)  # its timeout may be the earliest due time

    async def _settle(self, job: Job, started: StartReply) -> None:
        """Record what an entry that did not start means: a lost attempt, a corrupt run, a
        refused entry (dead-lettered), a job a limit put aside."""
        if isinstance(started, Lost):
            self._telemetry.steps_reclaimed.add(1, {"plait.workflow": self._keys.workflow})
            lost = WorkerLostError(
                f"instance {started.owner or '?'} stopped while running attempt "
                f"{started.attempt} of {job.name!r}"
            )
            await self._record_failure(job, started.attempt, lost)
        elif isinstance(started, Corrupt):
            await self._record_failure(job, started.attempt, started.error)
        elif isinstance(started, Refused):
            fields = {"r": job.run_id, "j": job.name, "t": job.token}
            await self.dead_letter(job.entry, started.reason, fields)
        elif isinstance(started, Deferred):
            self._on_retry(self._keys.workflow)

    async def reject(self, job: Job, fields: dict[str, str], *, reason: str = "") -> None:
        """A job no instance can run: dead-letter it and fail its attempt with ``reason``."""
        reason = reason or f"no handler for job {job.name!r} of workflow {self._keys.workflow!r}"
        await self.dead_letter(job.entry, reason, fields)
        detached = Job("", job.run_id, job.name, job.token)
        call = self._scripts.call_id()
        started = await transition(
            lambda: self._scripts.start(self._keys, detached, self._owner, call=call),
            self._keys.workflow,
        )
        if isinstance(started, Started | Lost | Corrupt):
            await self._record_failure(detached, started.attempt, UnknownJobError(reason))

    async def dead_letter(self, entry: str, reason: str, fields: dict[str, str]) -> None:
        """Move ``entry`` (its ``fields`` as text) to the dead-letter stream with ``reason``."""
        logger.error("%s: entry %s dead-lettered: %s", self._keys.jobs, entry, reason)
        self._telemetry.dead_letters.add(1, {"plait.workflow": self._keys.workflow})
        await transition(
            lambda: self._scripts.dead_letter(
                self._keys.jobs, self._keys.dead, entry, reason, fields
            ),
            self._keys.workflow,
        )

    async def hand_back(self, job: Job, *, started: bool = True) -> None:
        """Release a job this worker took for another instance, at once and without spending an
        attempt (see ``run_release.lua``); ``started=False`` releases it only while it is
        queued (never an attempt marked running, which may be another process's of the same
        provider id)."""
        released = await transition(
            lambda: self._scripts.release(self._keys, job, self._owner, started=started),
            self._keys.workflow,
        )
        if released == "released":
            logger.info("run %s: %s handed back for another instance", job.run_id, job.name)

    async def _attempt(self, job: Job, started: Started) -> list[Taken]:
        if self.interrupting:
            await self.hand_back(job)
            return []
        limit, deadline_ms = self._limit(job, started)
        # One scope bounds the attempt (step timeout, run deadline) and lets cancel_run stop it.
        scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
        thread = Straggler()
        self._scopes.setdefault(job.run_id, {})[job.entry] = (job, scope)
        doubtful = not compensates(job.name) and self._doubtful(job.run_id)
        result: str | None = None
        error: BaseException | None = None
        try:
            base = _run_meta(started.meta)
        except CorruptRunError as corrupt:
            base, error = {}, corrupt
        meta = {**base, "run_id": job.run_id, "step": display_name(job.name)}
        meta_token = current_meta.set(meta)
        began = time.perf_counter()
        try:
            with self._telemetry.consuming(
                lambda: self._span_of(job, started), meta, previous=started.previous_span
            ) as span:
                with scope:
                    try:
                        if error is None:
                            if doubtful:
                                await self._check(job, scope)
                            result = await self._call(job, started, base, thread)
                    except Exception as raised:
                        error = raised
                if scope.cancelled_caught and self.interrupting:
                    error = None  # the stop interrupted it: handed back below, not failed
                elif scope.cancelled_caught:
                    error = await self._stopped(job, limit, deadline_ms)
                    if isinstance(error, RunStoppedError) and thread.left:
                        result, error = await self._outlived(job, started, thread, began)
                if error is not None:
                    record_failure(span, error)
                span_id = traceparent_of(span)
        finally:
            current_meta.reset(meta_token)
            self._run_stopped.discard(job.entry)
            attempts = self._scopes.get(job.run_id, {})
            attempts.pop(job.entry, None)
            if not attempts:
                self._scopes.pop(job.run_id, None)
        self._telemetry.step_duration.record(
            time.perf_counter() - began,
            {
                "plait.workflow": self._keys.workflow,
                "plait.step": meta["step"],
                "plait.outcome": "failed" if error else "completed",
            },
        )
        if error is not None:
            await self._record_failure(
                job, started.attempt, error, span=span_id, options=started.options
            )
            return []
        if result is None:
            if scope.cancelled_caught and self.interrupting:
                await self.hand_back(job)
            return []
        return await self._complete(job, started, result)

    async def _complete(self, job: Job, started: Started, result: str) -> list[Taken]:
        take = 1 if self.taking else 0
        rollback = job.name in self._handlers.consumer.rollbacks  # recorded: it will run
        call = self._scripts.call_id()
        done = await transition(
            lambda: self._scripts.complete(
                self._keys, job, result, call=call, owner=self._owner, take=take, rollback=rollback
            ),
            self._keys.workflow,
        )
        status, taken = done if done is not None else (None, [])
        if status is None:
            self._telemetry.fencing_rejections.add(1, {"plait.workflow": self._keys.workflow})
            logger.warning(
                "run %s: late completion of %s attempt %d rejected (superseded)",
                job.run_id,
                job.name,
                started.attempt,
            )
        else:
            self._count_end(status)
        return taken

    def _span_of(self, job: Job, started: Started) -> tuple[str, dict[str, Any]]:
        """The name and attributes of an attempt's CONSUMER span."""
        step = display_name(job.name)
        return f"process {self._keys.workflow} {step}", {
            "messaging.operation.name": "process",
            "messaging.destination.name": self._keys.workflow,
            "messaging.message.id": f"{job.run_id}:{job.name}",
            "plait.run_id": job.run_id,
            "plait.step": step,
            "plait.attempt": started.attempt,
        }

    def _count_end(self, status: str) -> None:
        if status in FINAL_STATUS.values() or status == "COMPLETED":
            self._telemetry.runs_finished.add(
                1, {"plait.workflow": self._keys.workflow, "plait.status": status}
            )

    def _limit(self, job: Job, started: Started) -> tuple[float, int | None]:
        """Seconds the attempt may run (step timeout or run deadline), and the deadline when
        it is the bound.

        The run's deadline bounds its steps and ``on_complete``, not its compensation
        (rollbacks, ``on_error``), which runs because the run stopped. What is left of it is
        counted on Redis's clock, from the start call's reading: this host's clock plays no
        part, and the reply's latency only makes the bound later, never earlier.
        """
        limit = self._handlers.timeout(job.name, started.options)
        if started.deadline_ms and not compensates(job.name):
            remaining = (started.deadline_ms - started.started_ms) / 1000
            if limit is None or remaining < limit:
                return max(remaining, 0.0), started.deadline_ms
        return (math.inf if limit is None else limit), None

    async def _call(
        self, job: Job, started: Started, meta: dict[str, str], thread: Straggler
    ) -> str:
        """The handler call with its context (``meta`` is the run's meta, decoded); a sync
        handler's thread is followed by ``thread``."""

        async def save(value: Any) -> None:
            text = self._handlers.stored(encode_result(value), "progress")
            call = self._scripts.call_id()
            saved = await transition(
                lambda: self._scripts.progress(self._keys, job, text, call=call),
                self._keys.workflow,
            )
            if not saved:
                raise AttemptSupersededError(f"attempt of {job.name!r} in {job.run_id} superseded")

        context = self._handlers.context(job, started, save, meta)
        run_error = await self._run_error(job.run_id) if job.name == ERROR else None
        return await self._handlers.call(job.name, context, run_error, straggler=thread)

    async def _outlived(
        self, job: Job, started: Started, thread: Straggler, began: float
    ) -> tuple[str | None, Exception | None]:
        """The outcome of a sync handler whose run stopped while its thread ran on.

        Threads cannot be stopped, so the attempt waits for the thread (its entry stays held and
        its lease renewed, so no other instance runs it again; the job stays ``cancelling``,
        which holds the run's compensation back) and records what it really did: a completion
        joins the compensation, its rollback first. The wait is bounded by the step's timeout
        (then the thread is abandoned as timed out) and by shutdown (then the attempt is left
        to be reclaimed).
        """
        timeout = self._handlers.timeout(job.name, started.options)
        patience = math.inf if timeout is None else timeout - (time.perf_counter() - began)
        logger.info(
            "run %s: waiting for the thread of %s, which outlived its run", job.run_id, job.name
        )
        with anyio.move_on_after(patience):
            try:
                return await self._handlers.late_result(job.name, thread), None
            except Exception as raised:
                return None, raised
        return None, StepTimeoutError(f"{job.name!r} timed out after {timeout:g}s")

    async def _stopped(self, job: Job, limit: float, deadline_ms: int | None) -> Exception:
        """Why an attempt's scope was cancelled: its run stopped, the run's deadline (when
        ``deadline_ms`` was the bound), or its timeout."""
        if job.entry in self._run_stopped:  # cancel_run, not the clock
            return RunStoppedError(f"run {job.run_id} stopped while {job.name!r} ran")
        if deadline_ms is not None:
            # Let the deadline compensate the run first, so this failure joins it.
            await self._expire(deadline_ms)
            return RunStoppedError(f"run {job.run_id} passed its deadline")
        return StepTimeoutError(f"{job.name!r} timed out after {limit:g}s")

    async def _expire(self, deadline_ms: int) -> None:
        """Tick until Redis's clock has passed ``deadline_ms``: the tick then compensates the
        run (the bound is measured on Redis's clock, so this rarely takes a second tick)."""
        while True:
            ticked = await transition(lambda: self._scripts.tick(self._keys), self._keys.workflow)
            if ticked is None or ticked[3] >= deadline_ms:
                return
            await anyio.sleep((deadline_ms - ticked[3]) / 1000)

    async def _run_error(self, run_id: str) -> WorkflowError:
        record = decode_record(await self._client.hgetall(self._keys.run(run_id)))
        record["status"] = FINAL_STATUS.get(record.get("reason", ""), "FAILED")
        return outcome_error(run_id, record)

    async def _record_failure(
        self,
        job: Job,
        attempt: int,
        error: BaseException,
        *,
        span: str | None = None,
        options: str = "",
    ) -> None:
        """Record a failed attempt, retried per the run's pinned step ``options`` (or this
        version's when the run recorded none)."""
        delay = self._handlers.retry_delay_ms(job.name, attempt, error, options)
        if isinstance(error, RunStoppedError):
            delay = -1
        wire = wire_error(job.name, attempt, error, span=span)  # even when str(error) raises
        logger.warning(
            "run %s: %s attempt %d failed (%s: %s)%s",
            job.run_id,
            job.name,
            attempt,
            wire["type"],
            wire["message"],
            "; retrying" if delay >= 0 else "",
        )
        call = self._scripts.call_id()
        outcome = await transition(
            lambda: self._scripts.fail(
                self._keys, job, call=call, error=wire, retry_delay_ms=delay
            ),
            self._keys.workflow,
        )
        if outcome is None:
            return
        if outcome[0] == "retry":
            self._telemetry.steps_retried.add(1, {"plait.workflow": self._keys.workflow})
            self._on_retry(self._keys.workflow)
        elif outcome[0] == "stale":
            self._telemetry.fencing_rejections.add(1, {"plait.workflow": self._keys.workflow})
        else:
            self._count_end(outcome[1])


def _live(job: Job, reply: Any) -> bool:
    """Whether ``reply`` (the job's ``|st`` and ``|tk`` fields) shows ``job``'s attempt still
    running with its token (a run that is gone: not known, it runs on)."""
    state, token = (lenient_text(value) if value is not None else None for value in reply)
    if state is None:
        return True
    return state == "running" and token == job.token


def _run_meta(raw: str) -> dict[str, str]:
    """The run's meta, decoded.

    Raises:
        CorruptRunError: the stored meta is not a JSON object.
    """
    try:
        meta = json.loads(raw)
    except ValueError as error:
        raise CorruptRunError(f"run field 'meta' is not JSON: {error}") from None
    if not isinstance(meta, dict):
        raise CorruptRunError(f"run field 'meta' is not a JSON object: {raw[:100]!r}")
    return meta


async def transition(operation: Callable[[], Awaitable[T]], workflow: str) -> T | None:
    """A transition that must be recorded: retried through outages until it is."""
    return await call_forever(operation, what=workflow, stopping=_never)


def _never() -> bool:
    return False
