"""The worker of one registered consumer: take step jobs, hold their leases, run them.

Jobs arrive on the workflow's stream through the consumer group shared by every instance.
A worker reads at most as many entries as it has free slots, marks each attempt running in one
Lua call and runs each in a task (see ``attempt``: the handler under the step timeout and the
run deadline, then one Lua call that records the outcome and may take the next entries, the
first of which runs in the same task). While an entry is held, a lease thread keeps it fresh in
the pending list (``XCLAIM JUSTID``, see ``lease``); entries left idle by a dead instance are
taken over by the reclaim loop (``XAUTOCLAIM``) and the attempt they carried is failed as
``plait.WorkerLost`` and retried. A workflow whose reads found nothing for :data:`_READ_WAIT`
stops reading and parks in the provider's ``intake`` until an entry is added (no connection, no
command while idle); it reads on its own again from the first entry it gets.
Only the token-checked scripts acknowledge entries, so a zombie can never empty the pending list.
An entry naming a job this consumer has no handler for is put back for another instance (see
``capabilities``); a stopping worker hands its unfinished work back (see ``release``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors

from plait.workflows import WorkflowConsumer
from plait.workflows._errors import describe_exception

from .._core.connection import Connection
from .._core.errors import BACKGROUND_ERRORS, CONNECTION_ERRORS
from .._core.keys import GROUP, WorkflowKeys
from .._core.retry import call_forever
from .._core.telemetry import Telemetry
from .._core.wire import lenient_text
from .._ops.heartbeat import announce
from .attempt import Attempts, transition
from .capabilities import PutBack
from .handlers import Handlers
from .intake import Intake
from .lease import Leases
from .options import WorkflowProviderOptions
from .release import HAND_BACK, hand_back
from .scripts import Job, Refused, RunScripts, Started, StartReply, Taken

logger = logging.getLogger("plait.worker")


_Runner = Callable[..., Awaitable[list[Taken]]]
"""Runs one held entry: ``runner(entry, *args)``; returns the entries it took for the worker."""
_Work = tuple[_Runner, str, tuple[Any, ...]]

_READ_WAIT = 1.0
"""Longest wait of an idle read for new entries (shorter when a reclaim pass is due sooner);
a workflow whose reads found nothing for this long parks in the intake."""
_RECLAIM_CALLS = 100
"""Most XAUTOCLAIM calls of one reclaim pass (each examines up to 10 x free slots entries)."""


class Worker:
    """Runs the jobs of one workflow on this instance, ``concurrency`` at a time."""

    def __init__(
        self,
        connection: Connection,
        scripts: RunScripts,
        handlers: Handlers,
        *,
        options: WorkflowProviderOptions,
        announcement: str,
        leases: Leases,
        telemetry: Telemetry,
        on_retry: Callable[[str], None],
        intake: Intake | None = None,
    ) -> None:
        owner = options.provider_id or ""
        self.keys = WorkflowKeys(options.prefix, handlers.definition.name)
        self._connection = connection
        self._client: Any = connection.client
        self._scripts = scripts
        self._handlers = handlers
        self._attempts = Attempts(
            connection,
            scripts,
            handlers,
            keys=self.keys,
            owner=owner,
            telemetry=telemetry,
            on_retry=on_retry,
        )
        self._process = self._attempts.process  # bound once: spawned for every job
        self._owner = owner
        self.concurrency = options.concurrency
        """Most jobs of this workflow running at once here (changes apply as jobs finish)."""
        self._stall = options.stall_timeout.total_seconds()
        self._hand_back_bound = min(options.connect_timeout.total_seconds(), HAND_BACK)
        self.announcement = announcement
        """What this instance announces it can run (see ``capabilities``), without its time."""
        self._put_back = PutBack(
            scripts,
            self._attempts,
            self,
            grace_ms=int(options.missing_handler_grace.total_seconds() * 1000),
            on_retry=on_retry,
        )
        self._leases = leases
        self.depth = 0
        self._held: set[str] = set()
        self._slot_freed = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._intake: anyio.CancelScope | None = None
        self._stopping = False
        self._tg: TaskGroup | None = None
        self._reclaim_from = "0-0"
        """Where the next reclaim pass starts walking the pending list (XAUTOCLAIM cursor)."""
        self._intake_of = intake
        self.prepared = False
        """Whether the group and announcement were made for this worker already (see
        ``intake``)."""
        self.armed = False
        """Whether its ``idle`` field is set already (its first park need not set it)."""

    @property
    def running(self) -> int:
        """Jobs held by this worker now."""
        return len(self._held)

    @property
    def consumer(self) -> WorkflowConsumer[Any, Any]:
        """The consumer this worker runs."""
        return self._handlers.consumer

    @property
    def idle(self) -> anyio.Event:
        """Set while this worker holds no job."""
        return self._idle

    @property
    def client(self) -> Any:
        """The Redis client of this worker."""
        return self._client

    @property
    def owner(self) -> str:
        """This instance's consumer name in the group."""
        return self._owner

    def holds(self, entry: str) -> bool:
        """Whether a task of this worker holds ``entry`` now."""
        return entry in self._held

    async def prepare(self) -> None:
        """Create the consumer group (from the stream's start) and announce what this
        instance can run (the heartbeat refreshes it)."""
        with suppress(redis_errors.ResponseError):  # BUSYGROUP: it exists already
            await self._client.xgroup_create(self.keys.jobs, GROUP, id="0", mkstream=True)
        await announce(self._client, self.keys.consumers, self._owner, self.announcement)

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Take and run jobs until cancelled; :meth:`drain` stops the intake first."""
        if self._intake_of is None:
            await call_forever(self.prepare, what="prepare", stopping=lambda: self._stopping)
        elif not self.prepared:
            async with self._intake_of.limiter:
                await call_forever(self.prepare, what="prepare", stopping=lambda: self._stopping)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._keep_taking)
            task_status.started()

    async def drain(self, timeout: float) -> bool:
        """Stop taking jobs and wait up to ``timeout`` s for running ones, then hand back what
        is left (see :mod:`.release`); True when every job ended or was handed back."""
        self._stopping = True
        self._attempts.taking = False
        if self._intake is not None:
            self._intake.cancel()
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        return await hand_back(self, self._attempts, self._hand_back_bound)

    def cancel_run(self, run_id: str) -> None:
        """A cancel message named ``run_id``: stop this instance's running attempts of it (not
        its compensation) whose jobs' state confirms it (see ``attempt``)."""
        running = self._attempts.cancel_run(run_id)
        if running and self._tg is not None:
            with suppress(RuntimeError):  # the worker stopped already
                self._tg.start_soon(partial(self._attempts.stop_ended, running, unread="stop"))

    def resubscribed(self) -> None:
        """The ``cancel`` channel was subscribed (again): catch up with the cancels that may
        have been missed meanwhile (see ``attempt``)."""
        if self._tg is None:  # not serving yet: nothing started, nothing to catch up with
            return
        with suppress(RuntimeError):  # the worker stopped already
            self._tg.start_soon(self._attempts.resubscribed)

    # -- intake ------------------------------------------------------------------------------

    async def _keep_taking(self) -> None:
        """The intake loop, started again a second after an error of its own (a key of another
        type, a bug): only a drain ends it."""
        while True:
            try:
                return await self._take_loop()
            except Exception:
                logger.exception("%s: taking jobs failed; going on in a second", self.keys.jobs)
                await anyio.sleep(1.0)

    async def _take_loop(self) -> None:
        # Parked from the start, the intake's sweep does the first reclaim pass.
        next_reclaim = 0.0 if self._intake_of is None else time.monotonic() + self._stall / 2
        quiet_since = float("-inf")  # reads found nothing since then (a new worker: parks)
        while not self._stopping:
            # A drain cancels the waiting and reading, never a start call already made: the
            # attempts it marked running are run, not left to be reclaimed as lost.
            entries: list[tuple[bytes, Any]] = []
            self._intake = anyio.CancelScope()
            with self._intake:
                free = self.concurrency - len(self._held)
                if free <= 0:
                    self._slot_freed = anyio.Event()
                    await self._slot_freed.wait()
                    continue
                now = time.monotonic()
                if now >= next_reclaim:
                    entries = await self._reclaim_pass(free)
                    # Counted from the pass's end: a pass slower than stall/2 (a long round
                    # trip) still leaves the reads their time, so the worker is slow, not stuck.
                    next_reclaim = time.monotonic() + self._stall / 2
                elif self._intake_of is not None and now - quiet_since >= _READ_WAIT:
                    # Idle: wait in the intake (its sweep does the reclaim passes meanwhile).
                    entries, why = await self._intake_of.park(self, self._reader(free))
                    next_reclaim = 0.0 if why == "reclaim" else time.monotonic() + self._stall / 2
                    if why == "entries":
                        # Woken: read, then keep reading (blocking) for a quiet second before
                        # parking again, so this instance competes for the next entries with
                        # instances that never parked (one that puts back what it cannot run).
                        quiet_since = time.monotonic()
                        if not entries:
                            entries = await self._read(free, 0)
                else:
                    # An idle read waits no longer than the next reclaim pass is due.
                    wait = min(max(next_reclaim - now, 0.01), _READ_WAIT)
                    entries = await self._read(free, wait)
                if entries:
                    quiet_since = time.monotonic()
            await self._take(entries)

    def _reader(self, count: int) -> Callable[[], Awaitable[list[tuple[bytes, Any]]]]:
        return lambda: self._read(count, 0)

    async def _reclaim_pass(self, free: int) -> list[tuple[bytes, Any]]:
        if self._intake_of is None:
            await self._measure_depth()
            return await self._reclaim(free)
        async with self._intake_of.limiter:  # thousands of workflows starting at once
            await self._measure_depth()
            return await self._reclaim(free)

    async def _read(self, count: int, wait: float) -> list[tuple[bytes, Any]]:
        streams: dict[Any, Any] = {self.keys.jobs: ">"}
        try:
            if self._connection.wakeups is None or not wait:
                block = int(wait * 1000) if wait else None
                reply = await self._client.xreadgroup(
                    GROUP, self._owner, streams, count=count, block=block
                )
                return _entries(reply)
            async with self._connection.wakeups.listening(self.keys.jobs) as kicked:
                entries = _entries(
                    await self._client.xreadgroup(GROUP, self._owner, streams, count=count)
                )
                if not entries:
                    with anyio.move_on_after(wait):
                        await kicked.wait()
                return entries
        except CONNECTION_ERRORS as error:  # first: TRYAGAIN is also an error reply
            logger.warning("%s: reading jobs failed (%s); retrying", self.keys.jobs, error)
            await anyio.sleep(0.5)
        except redis_errors.ResponseError as error:
            if "UNBLOCKED" in str(error):  # the stream moved to another node (a slot migration)
                return []
            if "NOGROUP" not in str(error):
                raise
            await call_forever(self.prepare, what="prepare", stopping=lambda: self._stopping)
        return []

    async def _measure_depth(self) -> None:
        """Jobs waiting (lag) or running (pending) in the group, for the queue depth gauge."""
        try:
            groups = await self._client.xinfo_groups(self.keys.jobs)
        except BACKGROUND_ERRORS:
            return
        for group in groups:
            if lenient_text(group.get("name")) == GROUP:
                self.depth = int(group.get("pending") or 0) + int(group.get("lag") or 0)

    async def _reclaim(self, count: int) -> list[tuple[bytes, Any]]:
        """Up to ``count`` entries idle past the stall timeout, taken over (not those held here).

        One XAUTOCLAIM call examines at most ``10 x count`` pending entries, most of them held
        by live instances, so a pass walks the pending list with the cursor, one lap: from
        where the last pass stopped, past the end and round to that point again. It stops
        early once ``count`` entries are taken or after :data:`_RECLAIM_CALLS` calls; the next
        pass goes on from there.
        """
        start = self._reclaim_from
        cursor, wrapped = start, False
        taken: list[tuple[bytes, Any]] = []
        for _ in range(_RECLAIM_CALLS):
            try:
                reply = await self._client.xautoclaim(
                    self.keys.jobs,
                    GROUP,
                    self._owner,
                    min_idle_time=int(self._stall * 1250),
                    start_id=cursor,
                    count=count - len(taken),
                )
            except BACKGROUND_ERRORS:
                break
            cursor = lenient_text(reply[0])
            taken += [(e, f) for e, f in reply[1] if f and lenient_text(e) not in self._held]
            if cursor == "0-0":
                if wrapped or start == "0-0":
                    break
                wrapped = True
            if len(taken) >= count or (wrapped and _stream_id(cursor) >= _stream_id(start)):
                break
        self._reclaim_from = cursor
        return taken

    async def _take(self, entries: list[tuple[bytes, Any]]) -> None:
        """Hold the entries, mark their attempts running in one call, run each in a task."""
        if not entries:
            return
        batch: list[Job] = []
        for raw_entry, raw_fields in entries:
            entry, fields = lenient_text(raw_entry), raw_fields or {}
            self._hold(entry)
            job = _parse(entry, fields)
            if isinstance(job, str):
                self._spawn(self._refuse, entry, job, fields)
            elif not self._handlers.knows(job.name):
                self._spawn(self._put_back, entry, job, None)
            else:
                batch.append(job)
        if not batch:
            return
        self._attempts.begun = True
        # Made again, with the same call id, until Redis answers (however slowly): the script
        # may have marked the attempts running already, and gives the same reply to a resend.
        # Only the stop, once shutdown_timeout has passed, abandons it.
        replies: list[StartReply] | None = None
        try:
            replies = await self._start(batch)
        finally:
            if replies is None:  # cancelled by the stop: leave them to be reclaimed
                for job in batch:
                    self._release(job.entry)
        if replies is None:
            return
        for job, started in zip(batch, replies, strict=True):
            self._spawn(self._process, job.entry, job, started)

    async def _start(self, batch: list[Job]) -> list[StartReply] | None:
        """Start a batch in one call (resent with its call id until Redis answers); when Redis
        refuses that call, start each entry alone so that the one it refuses is dead-lettered
        and the others run."""
        call = self._scripts.call_id()
        try:
            return await transition(
                lambda: self._scripts.start_many(self.keys, batch, self._owner, call=call),
                self.keys.workflow,
            )
        except Exception as error:
            logger.warning(
                "%s: starting %d entries at once failed (%s); starting each alone",
                self.keys.jobs, len(batch), ": ".join(describe_exception(error)[:2]),
            )  # fmt: skip
        # Entries before the refused one were started by the failed call: starting them again
        # finds them running, so their attempts are recorded as lost and retried.
        return [await self.start_alone(job) for job in batch]

    async def start_alone(self, job: Job) -> StartReply:
        """Mark one entry's attempt running (resent with its call id until Redis answers); a
        refusal of Redis gives :class:`Refused`."""
        call = self._scripts.call_id()
        try:
            return await transition(
                lambda: self._scripts.start(self.keys, job, self._owner, call=call),
                self.keys.workflow,
            )
        except Exception as error:
            cause_type, message, _ = describe_exception(error)
            return Refused(f"cannot be started: {cause_type}: {message}")

    def _work_of(self, item: Taken) -> _Work:
        """What to run for an entry a transition took for this worker (already started)."""
        if item.job is None:
            parsed = _parse(item.entry, item.fields)
            reason = parsed if isinstance(parsed, str) else "malformed entry: fields are not UTF-8"
            return self._refuse, item.entry, (reason, item.fields)
        if not self._handlers.knows(item.job.name) and isinstance(item.started, Started):
            return self._put_back, item.entry, (item.job, item.started)
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

    # -- entries that cannot run -------------------------------------------------------------

    async def _refuse(self, entry: str, reason: str, fields: dict[bytes, bytes]) -> list[Taken]:
        """Dead-letter a malformed entry."""
        text = {lenient_text(k): lenient_text(v) for k, v in fields.items()}
        await self._attempts.dead_letter(entry, reason, text)
        return []


def _entries(reply: Any) -> list[tuple[bytes, Any]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [entry for items in reply.values() for entry in items[0]]
    return [entry for _, items in reply for entry in items]


def _stream_id(entry: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``) as a sortable pair."""
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


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
