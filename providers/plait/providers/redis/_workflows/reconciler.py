"""The reconciler: repairs live runs whose state cannot advance by themselves.

An entry lost from a stream, a retry missing from the delayed set, a finished group or
compensation step that did not advance, a deadline no timer will see: each is repaired by one
Lua call per run (``run_reconcile.lua``), which also forgets runs that already ended. Every
instance runs a pass now and then, behind a short Redis lock so one instance at a time does it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from redis import exceptions as redis_errors

from plait.workflows._errors import describe_exception

from .._core.connection import Connection
from .._core.errors import CONNECTION_ERRORS
from .._core.keys import WorkflowKeys, active_pattern, reconcile_lock, runs_pattern, workflow_of_key
from .._core.wire import lenient_text
from .scripts import RunScripts

# The reconciler has always logged as "plait.timers"; logging configs may name it.
logger = logging.getLogger("plait.timers")


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


class Reconciler:
    """Finds runs that cannot advance by themselves and repairs them, one Lua call per run.

    Every instance runs a pass each ``interval``, behind a short Redis lock so that one instance
    at a time does it. Runs younger than ``min_age`` are left alone: they are still moving.
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
    ) -> None:
        self._client: Any = connection.client
        self._scripts = scripts
        self._prefix = prefix
        self._owner = owner
        self._min_age_ms = int(min_age * 1000)
        self._retention_ms = int(retention * 1000)
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

    async def run_pass(self) -> ReconcileStats:
        """One pass over every workflow's live runs; logs and returns its stats."""
        scanned = stalled = reconciled = failed = 0
        now_ms = int(time.time() * 1000)
        async for raw in self._client.scan_iter(match=runs_pattern(self._prefix), count=500):
            # The run index keeps ids a little longer than the runs themselves live.
            try:
                await self._client.zremrangebyscore(
                    raw, "-inf", now_ms - 2 * self._retention_ms - 3_600_000
                )
            except redis_errors.ResponseError as error:  # a key of another type: left alone
                logger.error("reconciler: %s cannot be trimmed: %s", lenient_text(raw), error)
        async for raw in self._client.scan_iter(match=active_pattern(self._prefix), count=500):
            key = lenient_text(raw)
            try:
                keys = WorkflowKeys(self._prefix, workflow_of_key(key, self._prefix))
                runs = await self._client.zrangebyscore(
                    key, "-inf", now_ms - self._min_age_ms, start=0, num=5000
                )
            except redis_errors.ResponseError as error:  # one broken index must not stop the pass
                failed += 1
                logger.error("reconciler: %s cannot be read: %s", key, error)
                continue
            for raw_run in runs:
                scanned += 1
                run = lenient_text(raw_run)
                try:
                    outcome, detail = await self._scripts.reconcile(keys, run)
                except Exception as error:  # one broken run must not stop the pass
                    failed += 1
                    logger.error("reconciler: run %s: %s", run, describe_exception(error)[1])
                    continue
                if outcome == "repaired":
                    stalled += 1
                    reconciled += 1
                    logger.warning("reconciler: run %s repaired (%s)", run, detail)
        self.last = ReconcileStats(
            scanned=scanned, stalled=stalled, reconciled=reconciled, failed=failed
        )
        logger.info(
            "reconciler pass: scanned=%d stalled=%d reconciled=%d failed=%d",
            scanned,
            stalled,
            reconciled,
            failed,
        )
        return self.last
