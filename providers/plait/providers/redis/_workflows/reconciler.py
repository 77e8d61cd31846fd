"""The reconciler: repairs live runs whose state cannot advance by themselves.

An entry lost from a stream, a retry missing from the delayed set, a finished group or
compensation step that did not advance, a deadline no timer will see: each is repaired by one
Lua call per run (``run_reconcile.lua``), which also forgets runs that already ended. Every
instance runs a pass now and then, behind a short Redis lock so one instance at a time does it.
A pass looks at the workflows of the registry (``_ops/catalog.py``), never scans the keyspace.

A pass reads each workflow's live runs oldest first, a page at a time, and looks at no more
than ``pass_limit`` of them: the next pass of this instance goes on where it stopped, and
starts from the oldest again once it has reached the newest, so no run is left behind.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from redis import exceptions as redis_errors

from plait.workflows import WorkflowStatus
from plait.workflows._errors import describe_exception

from .._core.connection import Connection
from .._core.errors import CONNECTION_ERRORS
from .._core.keys import WorkflowKeys, reconcile_lock, workflow_of_key
from .._core.wire import text
from .._ops.catalog import workflow_names
from .scripts import RunScripts

# The reconciler has always logged as "plait.timers"; logging configs may name it.
logger = logging.getLogger("plait.timers")

PAGE = 500
"""Live runs read per call."""
PASS_LIMIT = 5000
"""Most live runs of one workflow one pass looks at (None in :class:`Reconciler`: all)."""


@dataclass(frozen=True, kw_only=True)
class ReconcileStats:
    """What one reconciler pass found.

    Attributes:
        scanned: live runs looked at.
        stalled: runs whose state could not advance by itself.
        reconciled: stalled runs repaired.
        failed: runs the pass could not check or repair (errors are logged).
        at: when the pass ended.
    """

    scanned: int = 0
    stalled: int = 0
    reconciled: int = 0
    failed: int = 0
    at: datetime = field(default_factory=lambda: datetime.now(tz=UTC))


TRIM_BATCH = 10_000
"""Index entries past the horizon one reconciler pass looks at per workflow and index."""


class Reconciler:
    """Finds runs that cannot advance by themselves and repairs them, one Lua call per run.

    Every instance runs a pass each ``interval``, behind a short Redis lock so that one instance
    at a time does it. Runs younger than ``min_age`` are left alone: they are still moving.
    A pass reads ``page`` runs per call and looks at up to ``pass_limit`` runs of each workflow
    (None: all of them).
    """

    def __init__(
        self,
        connection: Connection,
        scripts: RunScripts,
        prefix: str,
        *,
        owner: str,
        min_age: float,
        retention: float,
        page: int = PAGE,
        pass_limit: int | None = PASS_LIMIT,
    ) -> None:
        self._client: Any = connection.client
        self._scripts = scripts
        self._prefix = prefix
        self._owner = owner
        self._min_age_ms = int(min_age * 1000)
        self._retention_ms = int(retention * 1000)
        self._page = page
        self._pass_limit = pass_limit
        self._cursors: dict[str, _Cursor] = {}
        """Per active set, where the previous pass stopped (absent: at the oldest run)."""
        self.last: ReconcileStats | None = None

    async def serve(self, interval: float) -> None:
        """A locked pass every ``interval`` seconds until cancelled."""
        while True:
            await anyio.sleep(interval * (0.75 + random.random() / 2))
            try:
                locked = await self._client.set(
                    reconcile_lock(self._prefix), self._owner, nx=True, px=int(interval * 900)
                )
                if locked:
                    await self.run_pass()
            except CONNECTION_ERRORS as error:
                logger.warning("reconciler: Redis unreachable (%s)", error)
            except Exception:  # an error reply, a bug: the next pass tries again
                logger.exception("reconciler: the pass failed")

    async def _trim(self, keys: WorkflowKeys, horizon: int) -> None:
        """Drop from the runs and status indexes the runs created before ``horizon`` whose
        record is gone. A run created that long ago whose record is still there (it lived
        longer than the horizon: waiting for days, say, then ended within its retention)
        stays listed, by its status too, until its record expires."""
        client = self._client
        # At most TRIM_BATCH of each per pass (a backlog goes in the next passes).
        old = [
            text(member)
            for member in await client.zrangebyscore(
                keys.runs, "-inf", horizon, start=0, num=TRIM_BATCH
            )
        ]
        members: list[str] = []
        for status in (status for status in WorkflowStatus if status.is_final):
            members += [
                text(member)
                for member in await client.zrangebylex(
                    keys.status,
                    f"[{status.value}|",
                    f"({status.value}|{horizon:013d}",
                    start=0,
                    num=TRIM_BATCH,
                )
            ]
        ids = sorted(set(old) | {member.split("|", 2)[2] for member in members})
        if not ids:
            return
        async with client.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.exists(keys.run(run_id))
            kept = {run_id for run_id, n in zip(ids, await pipe.execute(), strict=True) if n}
        gone_runs = [run_id for run_id in old if run_id not in kept]
        gone_members = [m for m in members if m.split("|", 2)[2] not in kept]
        async with client.pipeline(transaction=False) as pipe:
            if gone_runs:
                pipe.zrem(keys.runs, *gone_runs)
            if gone_members:
                pipe.zrem(keys.status, *gone_members)
            await pipe.execute()

    async def run_pass(self) -> ReconcileStats:
        """One pass over every workflow's live runs (up to ``pass_limit`` runs of each, from
        where the last pass stopped); logs and returns its stats."""
        tally = _Tally()
        seconds, micros = await self._client.time()  # scores are Redis ms: compare with its clock
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        names = await workflow_names(self._client, self._prefix)
        for name in names:
            # The run indexes keep ids a little longer than the runs themselves live.
            keys = WorkflowKeys(self._prefix, name)
            horizon = now_ms - 2 * self._retention_ms - 3_600_000
            try:
                await self._trim(keys, horizon)
            except redis_errors.ResponseError as error:  # another type: left alone
                logger.error("reconciler: %s cannot be trimmed: %s", keys.base, error)
        for name in names:
            key = WorkflowKeys(self._prefix, name).active
            try:
                await self._walk(key, now_ms - self._min_age_ms, tally)
            except redis_errors.ResponseError as error:  # one broken index must not stop the pass
                tally.failed += 1
                logger.error("reconciler: %s cannot be read: %s", key, error)
        self.last = ReconcileStats(
            scanned=tally.scanned,
            stalled=tally.reconciled,
            reconciled=tally.reconciled,
            failed=tally.failed,
        )
        logger.info(
            "reconciler pass: scanned=%d stalled=%d reconciled=%d failed=%d",
            self.last.scanned,
            self.last.stalled,
            self.last.reconciled,
            self.last.failed,
        )
        return self.last

    async def _walk(self, key: str, newest_ms: int, tally: _Tally) -> None:
        """Reconcile the runs of active set ``key`` created up to ``newest_ms``, oldest first,
        from where the last pass stopped, until the newest run or ``pass_limit`` runs.

        A page is read by score from the cursor's, plus the runs of that score already seen,
        which are skipped: runs leaving the set meanwhile never make the walk miss others.
        """
        keys = WorkflowKeys(self._prefix, workflow_of_key(key, self._prefix))
        cursor = self._cursors.pop(key, None)
        budget = self._pass_limit
        while budget is None or budget > 0:
            size = self._page if budget is None else min(self._page, budget)
            low, seen = (cursor.score, cursor.seen) if cursor else ("-inf", 0)
            rows = await self._client.zrangebyscore(
                key, low, newest_ms, start=0, num=seen + size, withscores=True
            )
            fresh = [
                (score, run) for run, score in rows if cursor is None or cursor.precedes(score, run)
            ]
            for _, run in fresh:
                await self._reconcile(keys, run.decode(), tally)
            if len(rows) < seen + size or not fresh:
                return  # the newest run is reached: the next pass starts from the oldest
            if budget is not None:
                budget -= len(fresh)
            cursor = _Cursor.after(cursor, fresh)
        if cursor is not None:
            self._cursors[key] = cursor

    async def _reconcile(self, keys: WorkflowKeys, run_id: str, tally: _Tally) -> None:
        tally.scanned += 1
        try:
            outcome, detail = await self._scripts.reconcile(keys, run_id)
        except Exception as error:  # one broken run must not stop the pass
            tally.failed += 1
            logger.error("reconciler: run %s: %s", run_id, describe_exception(error)[1])
            return
        if outcome == "repaired":
            tally.reconciled += 1
            logger.warning("reconciler: run %s repaired (%s)", run_id, detail)


@dataclass
class _Tally:
    scanned: int = 0
    reconciled: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Cursor:
    """Where a walk of an active set stopped: the last run looked at and its score, and how
    many runs of that score it has looked at (all sorting up to it)."""

    score: float
    run: bytes
    seen: int

    def precedes(self, score: float, run: bytes) -> bool:
        """Whether the run sorts after this cursor (Redis orders equal scores by member)."""
        return (score, run) > (self.score, self.run)

    @staticmethod
    def after(cursor: _Cursor | None, page: list[tuple[float, bytes]]) -> _Cursor:
        """The cursor past ``page`` (runs after ``cursor``, in order)."""
        score, run = page[-1]
        seen = sum(1 for other, _ in page if other == score)
        if cursor is not None and cursor.score == score:
            seen += cursor.seen
        return _Cursor(score, run, seen)
