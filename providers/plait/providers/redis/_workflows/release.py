"""Handing work back: what a stopping worker took but will not finish goes to another instance.

A graceful stop waits up to ``shutdown_timeout`` for running attempts. What is left then is
released at once, without spending an attempt (``run_release.lua``): the attempts still running
are interrupted and each hands its job back (queued again under a new token, its progress kept;
a step of a compensating run counts as cancelled), and entries this instance read but never
started (a start cancelled by the stop, a read whose reply the stop cut off) are found in its
pending list and queued again. Another instance takes them on its next read, instead of
reclaiming them after 1.25 x ``stall_timeout`` as ``plait.WorkerLost``, which spends an attempt
(with ``max_attempts=1``, fails the run).

What cannot be handed back within the bound (Redis unreachable) stays pending and is reclaimed
after the stall timeout, as after a crash.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from .._core.errors import BACKGROUND_ERRORS
from .._core.keys import GROUP
from .._core.wire import lenient_text
from .scripts import Job

if TYPE_CHECKING:
    from .attempt import Attempts
    from .worker import Worker

logger = logging.getLogger("plait.worker")

HAND_BACK = 1.0
"""Most seconds a stopping worker spends handing jobs back (at most ``connect_timeout``)."""
_SWEEP = 1000
"""Most entries of this instance's pending list looked at by one stop."""


async def hand_back(worker: Worker, attempts: Attempts, bound: float) -> bool:
    """Interrupt what still runs and release it, then release what was taken and not started;
    True when nothing is left held (every job ended or was handed back within ``bound`` s)."""
    if bound <= 0:  # no time to hand anything back: left to be reclaimed
        return worker.idle.is_set()
    with anyio.move_on_after(bound):
        if worker.running:
            logger.info(
                "%s: %d running steps interrupted by the stop, handed back",
                worker.keys.jobs,
                worker.running,
            )
            attempts.interrupt()
            await worker.idle.wait()
        await _release_unstarted(worker, attempts)
    return worker.idle.is_set()


async def _release_unstarted(worker: Worker, attempts: Attempts) -> None:
    """Queue again the entries this instance read and never started (pending here, held by no
    task, their job still queued): a release finds anything else not this worker's to give."""
    client: Any = worker.client
    try:
        pending = await client.xpending_range(
            worker.keys.jobs, GROUP, min="-", max="+", count=_SWEEP, consumername=worker.owner
        )
    except BACKGROUND_ERRORS as error:
        logger.warning("%s: pending entries not handed back: %s", worker.keys.jobs, error)
        return
    for item in pending:
        entry = lenient_text(item["message_id"])
        if worker.holds(entry):
            continue
        found = await client.xrange(worker.keys.jobs, entry, entry)
        if not found:
            continue  # acknowledged meanwhile, or deleted: nothing to hand back
        job = _job_of(entry, found[0][1])
        if job is not None:
            await attempts.hand_back(job, started=False)


def _job_of(entry: str, fields: dict[bytes, bytes]) -> Job | None:
    try:
        return Job(entry, fields[b"r"].decode(), fields[b"j"].decode(), fields[b"t"].decode())
    except (KeyError, UnicodeDecodeError):
        return None  # malformed: the reclaim loop of a live instance dead-letters it
