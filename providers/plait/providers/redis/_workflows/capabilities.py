"""Capabilities: what each instance can run, announced; what each run needs, pinned.

During a rolling deploy old and new versions of a consumer share one consumer group, so an
instance may read the job of a step, rollback or hook its version lacks. It never fails nor
skips such a job:

- **Announced.** Every instance consuming a workflow writes what it can run (its jobs and its
  definition's version) to the workflow's ``consumers`` hash, one field per provider id with
  Redis's time, refreshed by the heartbeat; a field not refreshed for
  :data:`~plait.providers.redis._ops.heartbeat.ANNOUNCED_FOR` is not live. The scripts read the
  union of the live ones (in the workflow's slot, so Cluster-safe).
- **Pinned.** ``execute`` records on the run, in the same script call, what its definition
  needs (:class:`Pins`, computed once per definition): the hooks and rollbacks of the executing
  instance's consumer, the step options (retry policies, timeouts) and the version. An
  instance that completes a step whose rollback it has records that too, so the rollback runs
  whichever version compensates the run. Attempts are retried and timed by the run's options.
- **Put back.** A job this consumer has no handler for is released for another instance after
  a short backoff (longer while no live instance can take it), without spending an attempt
  (``run_release.lua``). While no live instance
  announces it, the run records since when it waits; after ``missing_handler_grace`` the entry
  is dead-lettered with a reason naming the handler and the job fails (``plait.UnknownJob``).
  A hook or rollback that no instance has and that the run did not record runs as a no-op.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plait.workflows import Workflow, WorkflowConsumer

from .attempt import transition
from .codec import caps_of, options_of
from .jobs import display_name
from .scripts import Job, RunScripts, Started, StartReply, Taken

if TYPE_CHECKING:
    from .attempt import Attempts
    from .worker import Worker

logger = logging.getLogger("plait.worker")

PASS_ON_MS = 100
"""Backoff of a job put back for another live instance that announced it (ms, with jitter);
while none does, ``run_release.lua`` waits ten times as long, and longer as the job waits
(up to 4 s more), so waiting jobs cost little."""


@dataclass(frozen=True, slots=True)
class Pins:
    """What a run records of its definition at execute (three ARGV of ``run_execute.lua``)."""

    caps: str
    """The hooks and rollbacks of this instance's consumer of the same version ('' without)."""
    options: str
    """The step options (see ``codec.options_of``)."""
    version: str
    """The definition's version."""

    def args(self) -> tuple[str, str, str]:
        return self.caps, self.options, self.version


def pins_of(definition: Workflow[Any, Any], consumer: WorkflowConsumer[Any, Any] | None) -> Pins:
    """The pins of ``definition`` on an instance that registered ``consumer`` (or none)."""
    same = consumer is not None and consumer.definition.version == definition.version
    caps = caps_of(consumer) if same and consumer is not None else ""
    return Pins(caps, options_of(definition), definition.version)


def announcement(jobs: list[str], version: str) -> str:
    """An instance's announcement without its time: ``<version>|,<job>,...,``."""
    return f"{version}|,{','.join(jobs)},"


class PutBack:
    """Puts back the jobs a worker's consumer has no handler for (see the module docstring)."""

    def __init__(
        self,
        scripts: RunScripts,
        attempts: Attempts,
        worker: Worker,
        *,
        grace_ms: int,
        on_retry: Callable[[str], None],
    ) -> None:
        self._scripts = scripts
        self._attempts = attempts
        self._worker = worker
        self._grace_ms = grace_ms
        self._on_retry = on_retry

    async def __call__(self, entry: str, job: Job, started: StartReply) -> list[Taken]:
        """Put back ``job`` (``started``: what starting it gave, when a completion took it for
        this worker; None when it was read and not started)."""
        keys = self._worker.keys
        running = isinstance(started, Started)
        delay = int(PASS_ON_MS * random.uniform(0.75, 1.25))
        outcome = await transition(
            lambda: self._scripts.release(
                keys,
                job,
                self._worker.owner,
                delay_ms=delay,
                started=running,
                grace_ms=self._grace_ms,
            ),
            keys.workflow,
        )
        if outcome == "stale" and started is None:
            # Not queued: an attempt reclaimed from an instance that died while running it.
            # Started the usual way, its loss is recorded (and retried) like any other.
            started = await self._worker.start_alone(job)
            if isinstance(started, Started):  # cannot be run here: put it back, started
                return await self(entry, job, started)
            return await self._attempts.process(entry, job, started)
        if outcome == "released":
            logger.debug("run %s: %s put back for another instance", job.run_id, job.name)
            self._on_retry(keys.workflow)
        elif outcome == "noop":
            if started is None:
                started = await self._worker.start_alone(job)
            return await self._attempts.process(entry, job, started)
        elif outcome == "dead":
            handler = display_name(job.name)
            reason = (
                f"no instance can run {handler!r} of workflow {keys.workflow!r}: no live "
                f"instance announced it for {self._grace_ms / 1000:g}s (missing_handler_grace)"
            )
            fields = {"r": job.run_id, "j": job.name, "t": job.token}
            await self._attempts.reject(job, fields, reason=reason)
        return []
