"""``plait worker`` processes never hang and never die silently.

Workers are separate processes (``tests/apps``) on the real Redis: a corrupt run neither stops
the worker that takes it nor the one that reclaims it; a worker whose background work died
anyway exits with status 1 and the traceback in its log; SIGTERM ends a worker within
``shutdown_timeout`` (plus a small bound) even while a sync step blocks its thread.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from apps.definitions import chain, hold
from apps.fault_app import napping
from conftest import REDIS_URL, Spawn, eventually, ready

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import WorkflowStatus, WorkflowStepError

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.slow]

FAULTS = "apps.fault_app:providers"


@pytest.fixture
def backend() -> str:
    """These tests run on the real Redis only (keys under the test's prefix are cleaned)."""
    return "redis"


async def exited(process: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until ``process`` exits (fails the test after ``timeout``)."""
    began = time.monotonic()

    async def gone() -> bool:
        return process.poll() is not None

    await eventually(gone, timeout=timeout, what="the worker process exited")
    return time.monotonic() - began


async def test_a_worker_process_fails_a_corrupt_run_and_completes_every_other(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        bad = await caller.execute(chain, {"n": -1})
        await client.hset(WorkflowKeys(prefix, chain.name).run(bad.run_id), "deadline", "soon")
        good = [await caller.execute(chain, {"n": n}) for n in range(20)]
        worker = spawn("w")
        await ready(tmp_path, "w")

        results = [await handle.result(timeout=30) for handle in good]
        with pytest.raises(WorkflowStepError) as caught:
            await bad.result(timeout=30)
        report = await caller.health()

    assert [result["n"] for result in results] == list(range(20))
    assert caught.value.cause_type == "plait.CorruptRun"
    assert "'deadline'" in caught.value.cause_message
    assert worker.poll() is None
    assert "w" in {instance.provider_id for instance in report.live_instances}


async def test_a_worker_that_reclaims_a_corrupt_run_fails_it_and_goes_on(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    first = spawn("a", PLAIT_HOLD_SECONDS="60")
    await ready(tmp_path, "a")
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        handle = await caller.execute(hold, {"n": 1})
        run_key = WorkflowKeys(prefix, hold.name).run(handle.run_id)

        async def held_by_a() -> bool:
            return bool(await client.hget(run_key, "work|ow") == b"a")

        await eventually(held_by_a, what="a runs the step")
        await client.hset(run_key, "work|at", "one")
        first.kill()
        second = spawn("b")

        with pytest.raises(WorkflowStepError) as caught:
            await handle.result(timeout=30)
        after = await (await caller.execute(chain, {"n": 7})).result(timeout=30)

    assert caught.value.cause_type == "plait.CorruptRun"
    assert "'work|at'" in caught.value.cause_message
    assert after["n"] == 7
    assert second.poll() is None


async def test_a_worker_whose_background_work_died_exits_1_with_the_traceback(
    spawn: Spawn, prefix: str, tmp_path: Path
) -> None:
    worker = spawn("dying", app=FAULTS, PLAIT_FAULT="heartbeat")
    await ready(tmp_path, "dying")

    await exited(worker, timeout=15)

    log = (tmp_path / "dying.log").read_text()
    assert worker.returncode == 1
    assert "Traceback" in log
    assert "RuntimeError: injected fault: the heartbeat loop died" in log


async def test_sigterm_ends_a_worker_within_its_shutdown_timeout_while_a_sync_step_blocks(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    worker = spawn("napper", app=FAULTS, PLAIT_SLEEP="30")
    await ready(tmp_path, "napper")
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        handle = await caller.execute(napping, {"n": 1})

        async def napping_now() -> bool:
            return bool((await handle.describe()).steps["nap"].state == "running")

        await eventually(napping_now, what="the sync step runs")
        worker.send_signal(signal.SIGTERM)
        seconds = await exited(worker, timeout=20)
        status = await handle.status()

    assert worker.returncode == 0
    assert seconds < 1 + 2  # shutdown_timeout of the app, and a bound for the rest
    assert status is WorkflowStatus.RUNNING  # left to be reclaimed by another instance
    assert "abandoned" in (tmp_path / "napper.log").read_text()
