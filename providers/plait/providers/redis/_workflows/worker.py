"""The worker of one registered consumer: claim step jobs, hold their leases, run them.

Jobs arrive on the workflow's stream through the consumer group shared by every instance.
A worker reads at most as many entries as it has free slots, marks each attempt running in one
Lua call, runs the handler under the step timeout and the run deadline, and records the outcome
in one more Lua call. While an entry is held, a lease thread keeps it fresh in the pending
list (``XCLAIM JUSTID``, see ``_lease``); entries left idle by a dead instance are taken over
by the reclaim loop (``XAUTOCLAIM``) and the attempt they carried is failed as
``plait.WorkerLost`` and retried.
Only the token-checked scripts acknowledge entries, so a zombie can never empty the pending list.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors

from plait.workflows import (
    AttemptSupersededError,
    RunStoppedError,
    StepTimeoutError,
    UnknownJobError,
    WorkerLostError,
    WorkflowError,
)

from .._core.connection import CONNECTION_ERRORS, Connection, call_forever
from .._core.keys import GROUP, WorkflowKeys
from .._core.telemetry import Telemetry, record_failure
from .._core.tracing import current_meta, traceparent_of
from .codec import ERROR, ROLLBACK, decode_record, display_name, encode_result, outcome_error
from .handlers import Handlers, wire_error
from .lease import Leases
from .scripts import Deferred, Job, Lost, RunScripts, Started, Taken

logger = logging.getLogger("plait.worker")

MEASURE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis_errors.ResponseError)

FINAL_STATUS = {"failed": "FAILED", "timeout": "TIMED_OUT", "cancel": "CANCELLED"}

T = TypeVar("T")

_Runner = Callable[..., Awaitable[list[Taken]]]
"""Runs one held entry: ``runner(entry, *args)``; returns the entries it took for the worker."""
_Work = tuple[_Runner, str, tuple[Any, ...]]


class Worker:
    """Runs the jobs of one workflow on this instance, ``concurrency`` at a time."""

    def __init__(
        self,
        connection: Connection,
        handlers: Handlers,
        *,
        prefix: str,
        owner: str,
        concurrency: int,
        stall_timeout: float,
        caps: str,
        leases: Leases,
        telemetry: Telemetry,
        on_retry: Callable[[str], None],
    ) -> None:
        self.keys = WorkflowKeys(prefix, handlers.definition.name)
        self._connection = connection
        self._client: Any = connection.client
        self._scripts = RunScripts(connection)
        self._handlers = handlers
        self._owner = owner
        self.concurrency = concurrency
        """Most jobs of this workflow running at once here (changes apply as jobs finish)."""
        self._stall = stall_timeout
        self._caps = caps
        self._on_retry = on_retry
        self._leases = leases
        self._telemetry = telemetry
        self.depth = 0
        self._held: set[str] = set()
        self._scopes: dict[str, dict[str, tuple[str, anyio.CancelScope]]] = {}
        self._run_stopped: set[str] = set()
        """Entries whose attempt ``cancel_run`` cancelled (not their timeout or deadline)."""
        self._slot_freed = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._intake: anyio.CancelScope | None = None
        self._stopping = False
        self._tg: TaskGroup | None = None

    @property
    def running(self) -> int:
        """Jobs held by this worker now."""
        return len(self._held)

    async def prepare(self) -> None:
        """Create the consumer group (from the stream's start) and publish the handler caps."""
        with suppress(redis_errors.ResponseError):  # BUSYGROUP: it exists already
            await self._client.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        await self._client.set(self.keys.caps, self._caps)

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Take and run jobs until cancelled; :meth:`drain` stops the intake first."""
        await call_forever(self.prepare, what="prepare", stopping=lambda: self._stopping)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._take_loop)
            task_status.started()

    async def drain(self, timeout: float) -> bool:
        """Stop taking jobs and wait up to ``timeout`` s for running ones; True when idle."""
        self._stopping = True
        if self._intake is not None:
            self._intake.cancel()
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        return self._idle.is_set()

    def cancel_run(self, run_id: str) -> None:
        """Cancel this instance's running attempts of ``run_id`` (not its compensation)."""
        for entry, (name, scope) in list(self._scopes.get(run_id, {}).items()):
            if not name.startswith(ROLLBACK) and name != ERROR:
                self._run_stopped.add(entry)
                scope.cancel()

    # -- intake ------------------------------------------------------------------------------

    async def _take_loop(self) -> None:
        self._intake = anyio.CancelScope()
        if self._stopping:
            return
        with self._intake:
            last_reclaim = 0.0
            while True:
                free = self.concurrency - len(self._held)
                if free <= 0:
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                    continue
                if time.monotonic() - last_reclaim >= self._stall / 2:
                    last_reclaim = time.monotonic()
                    await self._measure_depth()
                    free -= await self._reclaim(free)
                    if free <= 0:
                        continue
                await self._take(await self._read(free))

    async def _read(self, count: int) -> list[tuple[bytes, Any]]:
        streams: dict[Any, Any] = {self.keys.jobs: ">"}
        try:
            if self._connection.wakeups is None:
                reply = await self._client.xreadgroup(
                    GROUP, self._owner, streams, count=count, block=1000
                )
                return _entries(reply)
            async with self._connection.wakeups.listening(self.keys.jobs) as kicked:
                entries = _entries(
                    await self._client.xreadgroup(GROUP, self._owner, streams, count=count)
                )
                if not entries:
                    with anyio.move_on_after(1.0):
                        await kicked.wait()
                return entries
        except redis_errors.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await call_forever(self.prepare, what="prepare", stopping=lambda: self._stopping)
        except CONNECTION_ERRORS as error:
            logger.warning("%s: reading jobs failed (%s); retrying", self.keys.jobs, error)
            await anyio.sleep(0.5)
        return []

    async def _measure_depth(self) -> None:
        """Jobs waiting (lag) or running (pending) in the group, for the queue depth gauge."""
        try:
            groups = await self._client.xinfo_groups(self.keys.jobs)
        except MEASURE_ERRORS:
            return
        for group in groups:
            if _text(group.get("name")) == GROUP:
                self.depth = int(group.get("pending") or 0) + int(group.get("lag") or 0)

    async def _reclaim(self, count: int) -> int:
        """Take over entries idle past the stall timeout; returns how many were taken."""
        try:
            reply = await self._client.xautoclaim(
                self.keys.jobs,
                GROUP,
                self._owner,
                min_idle_time=int(self._stall * 1250),
                start_id="0-0",
                count=count,
            )
        except CONNECTION_ERRORS:
            return 0
        except redis_errors.ResponseError:
            return 0
        taken = [(e, f) for e, f in reply[1] if f and _text(e) not in self._held]
        await self._take(taken)
        return len(taken)

    async def _take(self, entries: list[tuple[bytes, Any]]) -> None:
        """Hold the entries, mark their attempts running in one call, run each in a task."""
        if not entries:
            return
        batch: list[Job] = []
        for raw_entry, raw_fields in entries:
            entry, fields = _text(raw_entry), raw_fields or {}
            self._hold(entry)
            job = _parse(entry, fields)
            if isinstance(job, str) or not self._handlers.knows(job.name):
                self._spawn(self._refuse, entry, job, fields)
            else:
                batch.append(job)
        if not batch:
            return
        replies: list[Started | Lost | Deferred | None] | None = None
        try:
            # A drain cancels the intake: let the start call finish (bounded) so the entries
            # it took are run, not left held until the stop gives up on them.
            with anyio.move_on_after(self._stall / 2, shield=True):
                replies = await self._transition(
                    lambda: self._scripts.start_many(self.keys, batch, self._owner)
                )
        finally:
            if replies is None:  # Redis unreachable meanwhile: leave them to be reclaimed
                for job in batch:
                    self._release(job.entry)
        if replies is None:
            return
        for job, started in zip(batch, replies, strict=True):
            self._spawn(self._process, job.entry, job, started)

    def _work_of(self, item: Taken) -> _Work:
        """What to run for an entry a transition took for this worker (already started)."""
        if item.job is None:
            return self._refuse, item.entry, (_parse(item.entry, item.fields), item.fields)
        if not self._handlers.knows(item.job.name):
            return self._refuse, item.entry, (item.job, item.fields)
        return self._process, item.entry, (item.job, item.started)

    def _hold(self, entry: str) -> None:
        self._held.add(entry)
        self._leases.hold(self.keys.jobs, entry)
        if self._idle.is_set():
            self._idle = anyio.Event()

    def _spawn(self, work: _Runner, entry: str, *args: Any) -> None:
        """Run ``work(entry, *args)`` in a task that releases ``entry`` when it ends."""
        assert self._tg is not None
        self._tg.start_soon(self._own, work, entry, *args)

    async def _own(self, work: _Runner, entry: str, *args: Any) -> None:
        """Run one entry, then the entries its transition took: the first in this task."""
        current: _Work | None = (work, entry, args)
        while current is not None:
            work, entry, args = current
            taken: list[Taken] = []
            try:
                taken = await work(entry, *args)
            except Exception:
                # A bug must not take the worker down: the entry stays pending and is reclaimed.
                logger.exception("%s: processing entry %s failed", self.keys.jobs, entry)
            finally:
                for item in taken:
                    self._hold(item.entry)
                self._release(entry)
            current = None
            for item in taken:
                try:
                    runner, held, extra = self._work_of(item)
                except Exception:
                    logger.exception("%s: entry %s cannot be run", self.keys.jobs, item.entry)
                    self._release(item.entry)  # pending: reclaimed after the stall timeout
                    continue
                if current is None:
                    current = runner, held, extra
                else:
                    self._spawn(runner, held, *extra)

    def _release(self, entry: str) -> None:
        self._held.discard(entry)
        self._leases.release(self.keys.jobs, entry)
        if len(self._held) < self.concurrency:  # not when a taken entry filled the slot
            self._slot_freed.set()
        if not self._held:
            self._idle.set()

    # -- one job -----------------------------------------------------------------------------

    async def _refuse(self, entry: str, job: Job | str, fields: dict[bytes, bytes]) -> list[Taken]:
        """Dead-letter a malformed entry, or the job of a step this consumer cannot run."""
        if isinstance(job, str):
            await self._dead_letter(entry, job, fields)
        else:
            await self._reject(job, fields)
        return []

    async def _process(
        self, entry: str, job: Job, started: Started | Lost | Deferred | None
    ) -> list[Taken]:
        """Run one started job; returns the entries its completion took for this worker."""
        if isinstance(started, Lost):
            self._telemetry.steps_reclaimed.add(1, {"plait.workflow": self.keys.workflow})
            lost = WorkerLostError(
                f"instance {started.owner or '?'} stopped while running attempt "
                f"{started.attempt} of {job.name!r}"
            )
            await self._record_failure(job, started.attempt, lost)
        elif isinstance(started, Started):
            return await self._attempt(job, started)
        elif isinstance(started, Deferred):
            self._on_retry(self.keys.workflow)
        return []

    async def _attempt(self, job: Job, started: Started) -> list[Taken]:
        limit, by_deadline = self._limit(job, started)
        # One scope bounds the attempt (step timeout, run deadline) and lets cancel_run stop it.
        scope = anyio.CancelScope(deadline=anyio.current_time() + limit)
        self._scopes.setdefault(job.run_id, {})[job.entry] = (job.name, scope)
        base: dict[str, str] = json.loads(started.meta)
        meta = {**base, "run_id": job.run_id, "step": display_name(job.name)}
        meta_token = current_meta.set(meta)
        result: str | None = None
        error: BaseException | None = None
        began = time.perf_counter()
        try:
            with self._telemetry.consuming(
                lambda: self._span_of(job, started), meta, previous=started.previous_span
            ) as span:
                with scope:
                    try:
                        result = await self._call(job, started, base)
                    except Exception as raised:
                        error = raised
                if scope.cancelled_caught:
                    error = await self._stopped(job, limit, by_deadline=by_deadline)
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
                "plait.workflow": self.keys.workflow,
                "plait.step": meta["step"],
                "plait.outcome": "failed" if error else "completed",
            },
        )
        if error is not None:
            await self._record_failure(job, started.attempt, error, span=span_id)
            return []
        if result is None:
            return []
        return await self._complete(job, started, result)

    async def _complete(self, job: Job, started: Started, result: str) -> list[Taken]:
        take = 0 if self._stopping else 1
        done = await self._transition(
            lambda: self._scripts.complete(self.keys, job, result, owner=self._owner, take=take)
        )
        status, taken = done if done is not None else (None, [])
        if status is None:
            self._telemetry.fencing_rejections.add(1, {"plait.workflow": self.keys.workflow})
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
        return f"process {self.keys.workflow} {step}", {
            "messaging.operation.name": "process",
            "messaging.destination.name": self.keys.workflow,
            "messaging.message.id": f"{job.run_id}:{job.name}",
            "plait.run_id": job.run_id,
            "plait.step": step,
            "plait.attempt": started.attempt,
        }

    def _count_end(self, status: str) -> None:
        if status in FINAL_STATUS.values() or status == "COMPLETED":
            self._telemetry.runs_finished.add(
                1, {"plait.workflow": self.keys.workflow, "plait.status": status}
            )

    def _limit(self, job: Job, started: Started) -> tuple[float, bool]:
        """Seconds the attempt may run (step timeout or run deadline), and whether the
        deadline is the bound."""
        limit = self._handlers.timeout(job.name)
        if started.deadline_ms and not job.name.startswith("~"):
            remaining = started.deadline_ms / 1000 - time.time()
            if limit is None or remaining < limit:
                return max(remaining, 0.0), True
        return (math.inf if limit is None else limit), False

    async def _call(self, job: Job, started: Started, meta: dict[str, str]) -> str:
        """The handler call with its context (``meta`` is the run's meta, decoded)."""

        async def save(value: Any) -> None:
            text = encode_result(value)
            saved = await self._scripts.progress(self.keys, job, text)
            if not saved:
                raise AttemptSupersededError(f"attempt of {job.name!r} in {job.run_id} superseded")

        context = self._handlers.context(job, started, save, meta)
        run_error = await self._run_error(job.run_id) if job.name == ERROR else None
        return await self._handlers.call(job.name, context, run_error)

    async def _stopped(self, job: Job, limit: float, *, by_deadline: bool) -> Exception:
        """Why an attempt's scope was cancelled: its run stopped, the deadline, or its timeout."""
        if job.entry in self._run_stopped:  # cancel_run, not the clock
            return RunStoppedError(f"run {job.run_id} stopped while {job.name!r} ran")
        if by_deadline:
            # Let the deadline compensate the run first, so this failure joins it.
            await self._transition(lambda: self._scripts.tick(self.keys))
            return RunStoppedError(f"run {job.run_id} passed its deadline")
        return StepTimeoutError(f"{job.name!r} timed out after {limit:g}s")

    async def _run_error(self, run_id: str) -> WorkflowError:
        record = decode_record(await self._client.hgetall(self.keys.run(run_id)))
        record["status"] = FINAL_STATUS.get(record.get("reason", ""), "FAILED")
        return outcome_error(run_id, record)

    async def _record_failure(
        self, job: Job, attempt: int, error: BaseException, *, span: str | None = None
    ) -> None:
        delay = self._handlers.retry_delay_ms(job.name, attempt, error)
        if isinstance(error, RunStoppedError):
            delay = -1
        logger.warning(
            "run %s: %s attempt %d failed (%s: %s)%s",
            job.run_id,
            job.name,
            attempt,
            type(error).__name__,
            error,
            "; retrying" if delay >= 0 else "",
        )
        outcome = await self._transition(
            lambda: self._scripts.fail(
                self.keys,
                job,
                error=wire_error(job.name, attempt, error, span=span),
                retry_delay_ms=delay,
            )
        )
        if outcome is None:
            return
        if outcome[0] == "retry":
            self._telemetry.steps_retried.add(1, {"plait.workflow": self.keys.workflow})
            self._on_retry(self.keys.workflow)
        elif outcome[0] == "stale":
            self._telemetry.fencing_rejections.add(1, {"plait.workflow": self.keys.workflow})
        else:
            self._count_end(outcome[1])

    async def _reject(self, job: Job, fields: dict[bytes, bytes]) -> None:
        """A job this consumer has no handler for: dead-letter it and fail its attempt."""
        reason = f"no handler for job {job.name!r} of workflow {self.keys.workflow!r}"
        await self._dead_letter(job.entry, reason, fields)
        detached = Job("", job.run_id, job.name, job.token)
        started = await self._transition(
            lambda: self._scripts.start(self.keys, detached, self._owner)
        )
        if isinstance(started, Started | Lost):
            await self._record_failure(detached, started.attempt, UnknownJobError(reason))

    async def _dead_letter(self, entry: str, reason: str, fields: dict[bytes, bytes]) -> None:
        logger.error("%s: entry %s dead-lettered: %s", self.keys.jobs, entry, reason)
        self._telemetry.dead_letters.add(1, {"plait.workflow": self.keys.workflow})
        text = {_text(k): _text(v) for k, v in fields.items()}
        await self._transition(
            lambda: self._scripts.dead_letter(self.keys.jobs, self.keys.dead, entry, reason, text)
        )

    async def _transition(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """A transition that must be recorded: retried through outages until it is."""
        return await call_forever(operation, what=self.keys.workflow, stopping=lambda: False)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[bytes, Any]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [entry for items in reply.values() for entry in items[0]]
    return [entry for _, items in reply for entry in items]


def _parse(entry: str, fields: dict[bytes, bytes]) -> Job | str:
    """The job an entry names, or why it cannot be processed."""
    try:
        run_id = fields[b"r"].decode()
        name = fields[b"j"].decode()
        token = fields[b"t"].decode()
    except KeyError as missing:
        return f"malformed entry: field {missing.args[0]!r} missing"
    except UnicodeDecodeError:
        return "malformed entry: fields are not UTF-8"
    if not token.isdigit():
        return f"malformed entry: token {token!r} is not a number"
    if not run_id or not name:
        return "malformed entry: empty run id or job name"
    return Job(entry, run_id, name, token)
