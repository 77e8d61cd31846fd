"""Typed calls of the run transition scripts (``lua/run_*.lua``): one Lua call per transition.

Every call declares the keys its script touches (so Redis Cluster checks them before running
it, see ``lua/run_lib.lua``): the workflow's own keys first, built once per workflow, then the
keys of the run it names.

Each transition names itself with a call id (:meth:`RunScripts.call_id`), made once per
transition and passed unchanged to every resend of it: a call whose reply was lost (Redis ran
it, the connection broke before the reply came back) is made again, and the script answers the
repeat with the outcome it recorded rather than finding its own write (an attempt "lost" to
itself, a completion "stale").
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from plait.workflows import CorruptRunError

from .._core.connection import Connection
from .._core.keys import GROUP, WorkflowKeys
from .._core.lua import register
from .._core.wire import lenient_text, text


@dataclass(frozen=True, slots=True)
class Job:
    """A stream entry naming one attempt: ``entry`` id, run, job name and fencing token."""

    entry: str
    run_id: str
    name: str
    token: str


@dataclass(frozen=True, slots=True)
class Started:
    """What a worker needs to run an attempt, read in the same call that marked it running."""

    attempt: int
    input: str
    meta: str
    deadline_ms: int | None
    """The run's deadline, in Redis ms."""
    started_ms: int
    """Redis's clock when the attempt was marked running: ``deadline_ms - started_ms`` is how
    long it may run, whatever this host's clock says."""
    progress: str | None
    results: dict[str, str]
    previous_span: str | None = None
    """The traceparent of the attempt this one retries, when it recorded one."""
    options: str = ""
    """The run's step options pinned at execute (JSON, see ``codec.options_of``), '' when
    none: the retry policy and timeout of the attempt come from there, whichever version of
    the consumer runs it."""


@dataclass(frozen=True, slots=True)
class Taken:
    """An entry a transition took for the worker: its job and what starting it gave, or, for an
    entry that names no job, its raw ``fields`` (``job`` is None)."""

    entry: str
    job: Job | None
    started: StartReply
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A global limit put the job aside until ``due_ms`` (or until a running slot frees up)."""

    due_ms: int


@dataclass(frozen=True, slots=True)
class Lost:
    """The entry was reclaimed from an attempt recorded as running by ``owner``."""

    attempt: int
    owner: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The entry cannot be started: it is foreign (its run does not exist, or the run's key
    holds another type) or Redis refused to start it. Nothing was written; the worker
    dead-letters the entry with ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Corrupt:
    """The attempt was marked running (or found running) but a field of its run does not
    decode; the worker fails the attempt with ``error`` (never retried)."""

    attempt: int
    """The attempt number, 0 when that is the field that does not decode."""
    error: CorruptRunError


StartReply = Started | Lost | Deferred | Refused | Corrupt | None
"""What starting an entry gave (None: the entry was stale and is acknowledged)."""
_WORKFLOW_KEYS: dict[str, tuple[str, ...]] = {}


def workflow_keys(keys: WorkflowKeys) -> tuple[str, ...]:
    """KEYS[1..10] of every run script, in the order ``run_lib.lua`` names them (built once per
    workflow)."""
    try:
        return _WORKFLOW_KEYS[keys.base]
    except KeyError:
        built = (
            keys.jobs,
            keys.delayed,
            keys.waiting,
            keys.running,
            keys.deadlines,
            keys.active,
            keys.runs,
            keys.consumers,
            keys.stats,
            keys.status,
        )
        return _WORKFLOW_KEYS.setdefault(keys.base, built)


def _run_keys(keys: WorkflowKeys, run_id: str) -> list[str]:
    """What a script naming one run declares: the workflow's keys, then the run's."""
    return [*workflow_keys(keys), keys.run(run_id), keys.results(run_id), keys.events(run_id)]


class RunScripts:
    """The run transitions of one connection; every method is one atomic Lua call."""

    def __init__(self, connection: Connection) -> None:
        client = connection.client
        self._connection = connection
        # Unique across processes and restarts, even of instances that share a provider id.
        self._calls = f"{os.urandom(6).hex()}:"
        self._count = itertools.count(1).__next__
        self._execute = register(client, "run_execute", "run_lib")
        self._debounce = register(client, "run_debounce", "run_lib")
        self._start = register(client, "run_start", "run_lib")
        self._start_many = register(client, "run_start_many", "run_lib")
        self._complete = register(client, "run_complete", "run_lib")
        self._fail = register(client, "run_fail", "run_lib")
        self._tick = register(client, "run_tick", "run_lib")
        self._cancel = register(client, "run_cancel", "run_lib")
        self._progress = register(client, "run_progress", "run_lib")
        self._retry = register(client, "run_retry", "run_lib")
        self._reconcile = register(client, "run_reconcile", "run_lib")
        self._release = register(client, "run_release", "run_lib")
        self._dead_letter = register(client, "run_dead_letter")
        self._wait = register(client, "run_wait", "run_lib")
        self._signal = register(client, "run_signal", "run_lib")

    def call_id(self) -> str:
        """A new call id: make one per transition, before its retry loop, and resend with it."""
        return f"{self._calls}{self._count()}"

    async def execute(
        self,
        keys: WorkflowKeys,
        run_id: str,
        *,
        idempotency_key: str,
        input_hash: str,
        input_json: str,
        meta_json: str,
        plan_json: str,
        timeout_ms: int,
        retention_ms: int,
        limits_json: str = "",
        start_in_ms: int = 0,
        start_at_ms: int = 0,
        signals: str = "",
        pinned: tuple[str, str, str] = ("", "", ""),
        per_key: tuple[str, int, str] | None = None,
        indexed: Sequence[str] = (),
    ) -> tuple[str, str, bool]:
        """Create the run (or find the key's run); returns (outcome, run id, whether the new
        run's deadline is the workflow's earliest: every instance's timer was told).

        ``start_in_ms`` / ``start_at_ms`` (Redis ms) delay its start; ``signals`` names its
        signal waits (",a,b,"); ``pinned``: what the run records of its definition (see
        ``capabilities.Pins``): the hooks and rollbacks of this instance's consumer, the step
        options, the version. ``per_key`` is (concurrency key, its limit, its strategy); the
        outcome ``busy`` says ``reject_new`` found the key's runs all live (the run id is then
        the key). ``indexed``: the meta index zsets the run goes in (none: nothing more is
        sent)."""
        args: list[Any] = [keys.base, run_id, idempotency_key, input_hash, input_json]
        args += [meta_json, plan_json]
        declared = _run_keys(keys, run_id)
        if idempotency_key:
            declared.append(keys.idempotency(idempotency_key))
        declared += indexed
        args += [timeout_ms, retention_ms, limits_json, start_in_ms, start_at_ms, signals]
        args += pinned
        if per_key is not None:
            declared += [keys.key_running(per_key[0]), keys.key_queue(per_key[0])]
            args += list(per_key)
        elif indexed:
            args += ["", 0, "queue"]
        if indexed:
            args.append(len(indexed))
        reply = await self._connection.run(self._execute, keys=declared, args=args)
        self._connection.kick(keys.jobs)
        return text(reply[0]), text(reply[1]), len(reply) > 2 and int(reply[2]) == 1

    async def debounce(
        self,
        keys: WorkflowKeys,
        run_id: str,
        *,
        debounce_key: str,
        input_hash: str,
        input_json: str,
        meta_json: str,
        plan_json: str,
        timeout_ms: int,
        retention_ms: int,
        limits_json: str,
        quiet_ms: int,
        max_wait_ms: int,
    ) -> tuple[str, str, bool]:
        """Start a burst's run, or give the waiting one this input and a later start; returns
        (``created`` | ``exists``, run id, whether a new run's deadline is the earliest)."""
        declared = [*_run_keys(keys, run_id), keys.debounce(debounce_key)]
        args: list[str | int] = [keys.base, run_id, input_hash, input_json, meta_json, plan_json]
        args += [timeout_ms, retention_ms, limits_json, quiet_ms, max_wait_ms]
        reply = await self._connection.run(self._debounce, keys=declared, args=args)
        return text(reply[0]), text(reply[1]), len(reply) > 2 and int(reply[2]) == 1

    async def start(self, keys: WorkflowKeys, job: Job, owner: str, *, call: str) -> StartReply:
        """Mark an attempt running; None when the entry is stale (and was acknowledged)."""
        reply = await self._connection.run(
            self._start,
            keys=[*_run_keys(keys, job.run_id), keys.rate(job.name)],
            args=[keys.base, job.run_id, job.name, job.token, job.entry, owner, call],
        )
        return _started(reply, job.name)

    async def start_many(
        self, keys: WorkflowKeys, jobs: list[Job], owner: str, *, call: str
    ) -> list[StartReply]:
        """:meth:`start` for a batch of entries (those of one read), in one call; each reply
        is decoded alone, so one that does not decode spoils no other."""
        declared = list(workflow_keys(keys))
        args: list[Any] = [keys.base, owner, call]
        for job in jobs:
            run_id = job.run_id
            declared += [keys.run(run_id), keys.results(run_id), keys.events(run_id)]
            declared.append(keys.rate(job.name))
            args += [job.run_id, job.name, job.token, job.entry]
        replies = await self._connection.run(self._start_many, keys=declared, args=args)
        return [_started(reply, job.name) for reply, job in zip(replies, jobs, strict=True)]

    async def complete(
        self,
        keys: WorkflowKeys,
        job: Job,
        result: str,
        *,
        call: str,
        owner: str = "",
        take: int = 0,
        rollback: bool = False,
    ) -> tuple[str | None, list[Taken]]:
        """Record success, then take and start up to ``take`` new entries for ``owner``
        (``rollback``: this consumer has the step's rollback, which the run then records).

        Returns the run's status (None when the token was superseded: nothing recorded, nothing
        taken) and the entries taken.
        """
        args = [keys.base, job.run_id, job.name, job.token, job.entry, result, owner, take, call]
        if rollback:
            args.append(1)
        reply = await self._connection.run(
            self._complete, keys=_run_keys(keys, job.run_id), args=args
        )
        self._connection.kick(keys.jobs)
        status = text(reply[1]) if text(reply[0]) == "ok" else None
        return status, [_taken(item) for item in reply[2]]

    async def fail(
        self,
        keys: WorkflowKeys,
        job: Job,
        *,
        call: str,
        error: dict[str, Any],
        retry_delay_ms: int,
    ) -> tuple[str, str]:
        """Record a failed attempt: ("retry", due ms), ("failed", run status) or ("stale", "")."""
        args: list[Any] = [keys.base, job.run_id, job.name, job.token, job.entry]
        args += [json.dumps(error), retry_delay_ms, call]
        reply = await self._connection.run(self._fail, keys=_run_keys(keys, job.run_id), args=args)
        self._connection.kick(keys.jobs)
        outcome = text(reply[0])
        if outcome == "retry":
            return outcome, text(reply[2])
        return outcome, text(reply[1]) if len(reply) > 1 else ""

    async def tick(self, keys: WorkflowKeys, limit: int = 200) -> tuple[int, int, int, int]:
        """Promote due retries and expire due deadlines.

        Returns (promoted, timed out, next due ms or -1, server now ms).
        """
        reply = await self._connection.run(
            self._tick, keys=workflow_keys(keys), args=[keys.base, limit]
        )
        promoted, expired, next_due, now = (int(x) for x in reply)
        if promoted or expired:
            self._connection.kick(keys.jobs)
        return promoted, expired, next_due, now

    async def cancel(self, keys: WorkflowKeys, run_id: str, *, call: str) -> tuple[int, str]:
        """Cancel a run; returns (1 cancelled | 0 not live | -1 unknown, status)."""
        reply = await self._connection.run(
            self._cancel, keys=_run_keys(keys, run_id), args=[keys.base, run_id, call]
        )
        self._connection.kick(keys.jobs)
        return int(reply[0]), text(reply[1])

    async def progress(self, keys: WorkflowKeys, job: Job, value: str, *, call: str) -> bool:
        """Save a progress checkpoint; False when the attempt was superseded."""
        reply = await self._connection.run(
            self._progress,
            keys=_run_keys(keys, job.run_id),
            args=[keys.base, job.run_id, job.name, job.token, value, call],
        )
        return bool(reply)

    async def retry(self, keys: WorkflowKeys, run_id: str, *, call: str) -> tuple[str, str]:
        """Resume a FAILED or TIMED_OUT run: ("resumed" | "invalid" | "unknown", status)."""
        reply = await self._connection.run(
            self._retry, keys=_run_keys(keys, run_id), args=[keys.base, run_id, call]
        )
        self._connection.kick(keys.jobs)
        return text(reply[0]), text(reply[1])

    async def reconcile(self, keys: WorkflowKeys, run_id: str) -> tuple[str, str]:
        """Repair a live run that cannot advance: ("ok" | "repaired" | "gone", detail)."""
        reply = await self._connection.run(
            self._reconcile, keys=_run_keys(keys, run_id), args=[keys.base, run_id]
        )
        outcome = text(reply[0])
        if outcome == "repaired":
            self._connection.kick(keys.jobs)
        return outcome, text(reply[1])

    async def release(
        self,
        keys: WorkflowKeys,
        job: Job,
        owner: str,
        *,
        delay_ms: int = 0,
        started: bool = True,
        grace_ms: int | None = None,
    ) -> str:
        """Hand a held job back to the group without spending an attempt (queued again under a
        new token, at once or after ``delay_ms``).

        Returns ``released``, or ``stale`` when it was no longer this worker's to hand back
        (superseded, finished, another instance's attempt; with ``started=False``, an attempt
        marked running). With ``grace_ms`` (this consumer has no handler for the job) it may
        also return ``noop`` (no instance has the hook or rollback and the run did not record
        it) or ``dead`` (no live instance announced the job for ``grace_ms``), releasing
        nothing.
        """
        args: list[Any] = [keys.base, job.run_id, job.name, job.token, job.entry, owner]
        args += [delay_ms, int(started), "" if grace_ms is None else grace_ms]
        reply = await self._connection.run(
            self._release, keys=_run_keys(keys, job.run_id), args=args
        )
        outcome = text(reply[0])
        if outcome == "released":
            self._connection.kick(keys.jobs)
        return outcome

    async def park(
        self,
        keys: WorkflowKeys,
        job: Job,
        *,
        call: str,
        kind: str,
        due_in_ms: int = -1,
        due_at_ms: int = 0,
        goes_on: bool = False,
    ) -> tuple[str, str, int]:
        """Park a started wait or sleep: ("parked", status, due ms or -1) | ("ok", status, -1)
        (it went on at once) | ("stale", "", -1)."""
        args: list[Any] = [keys.base, job.run_id, job.name, job.token, job.entry, kind]
        args += [due_in_ms, due_at_ms, "1" if goes_on else "", call]
        reply = await self._connection.run(self._wait, keys=_run_keys(keys, job.run_id), args=args)
        self._connection.kick(keys.jobs)
        due = int(reply[2]) if len(reply) > 2 else -1
        return text(reply[0]), text(reply[1]), due

    async def signal(
        self, keys: WorkflowKeys, run_id: str, name: str, *, signal_id: str, data: str
    ) -> tuple[str, str]:
        """Deliver (or keep) a signal: ("delivered" | "kept" | "duplicate" | "refused" |
        "nowait" | "unknown", status or why)."""
        reply = await self._connection.run(
            self._signal,
            keys=_run_keys(keys, run_id),
            args=[keys.base, run_id, name, signal_id, data],
        )
        outcome = text(reply[0])
        if outcome == "delivered":
            self._connection.kick(keys.jobs)
        return outcome, text(reply[1])

    async def dead_letter(
        self, stream: str, dead: str, entry: str, reason: str, fields: dict[str, str]
    ) -> None:
        """Move a stream entry to the dead-letter stream with ``reason``."""
        await self._connection.run(
            self._dead_letter,
            keys=[stream, dead],
            args=[GROUP, entry, reason, json.dumps(fields), 10_000],
        )


def _started(reply: Any, job: str) -> StartReply:
    """Decode what run_start returns for one entry of ``job``: a field of the run that does not
    decode gives :class:`Corrupt` (found by :func:`_corrupt`, off the hot path)."""
    outcome = text(reply[0])
    try:
        if outcome == "lost":
            return Lost(int(reply[1]), text(reply[2]))
        if outcome == "wait":
            return Deferred(int(reply[1]))
        if outcome == "foreign":
            return Refused(f"foreign entry: {lenient_text(reply[1])}")
        if outcome != "run":
            return None
        flat = reply[9:]
        results = {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}
        return Started(
            attempt=int(reply[1]),
            input=text(reply[2]),
            meta=text(reply[3]),
            deadline_ms=int(reply[4]) if reply[4] else None,
            started_ms=int(reply[7]),
            progress=text(reply[5]) if reply[5] else None,
            results=results,
            previous_span=_linked_span(reply[6]) if reply[6] else None,
            options=text(reply[8]),
        )
    except (ValueError, TypeError) as error:  # UnicodeDecodeError is a ValueError
        return _corrupt(reply, job, error)


def _corrupt(reply: Any, job: str, error: Exception) -> Corrupt:
    """The first field of a start reply that does not decode, as the attempt's failure."""
    fields: list[tuple[str, Any, Callable[[Any], Any]]] = [(f"{job}|at", reply[1], int)]
    if text(reply[0]) == "lost":
        fields.append((f"{job}|ow", reply[2], text))
    else:
        results = zip(reply[9::2], reply[10::2], strict=False)
        fields += [
            ("input", reply[2], text),
            ("meta", reply[3], text),
            ("deadline", reply[4] or 0, int),
            (f"{job}|pg", reply[5], text),
            ("opts", reply[8], text),
            *((f"result of {lenient_text(step)!r}", value, text) for step, value in results),
        ]
    reason = f"a field of the run does not decode ({type(error).__name__}: {error})"
    for name, raw, decode in fields:
        try:
            decode(raw)
        except (ValueError, TypeError):
            what = "not a number" if decode is int else "not UTF-8"
            reason = f"run field {name!r} is {what}: {lenient_text(raw)!r}"
            break
    try:
        attempt = int(reply[1])
    except (ValueError, TypeError):
        attempt = 0
    return Corrupt(attempt, CorruptRunError(reason))


def _linked_span(raw: Any) -> str | None:
    """The span a run's last error recorded, for the next attempt's link; None when that error
    does not decode (a link is all it would give)."""
    try:
        span = json.loads(raw).get("span")
    except (ValueError, TypeError, AttributeError):
        return None
    return span if isinstance(span, str) else None


def _taken(item: Any) -> Taken:
    entry = lenient_text(item[0])
    if len(item) == 5 and isinstance(item[4], list):
        fields = {b"r": item[1], b"j": item[2], b"t": item[3]}
        try:
            job = Job(entry, text(item[1]), text(item[2]), text(item[3]))
        except UnicodeDecodeError:  # dead-lettered as malformed by the worker
            return Taken(entry, None, None, fields)
        return Taken(entry, job, _started(item[4], job.name), fields)
    flat = item[1:]
    fields = {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
    return Taken(entry, None, None, fields)
