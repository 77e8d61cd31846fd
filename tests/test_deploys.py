"""Rolling deploys: instances replaced one at a time never fail a run nor skip a rollback.

Workers are separate ``plait worker`` processes of ``tests/apps/deploy_app.py`` (two versions of
one consumer, chosen by ``PLAIT_VERSION``) on the real Redis.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from apps.definitions import shipping_v1, shipping_v2
from conftest import REDIS_URL, Spawn, eventually, ready

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import WorkflowHandle, WorkflowStatus, WorkflowStepError

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.slow]

APP = "apps.deploy_app:provider"
ROLLBACKS = ("rollback:pack", "rollback:label")


@pytest.fixture
def backend() -> str:
    """These tests run on the real Redis only (keys under the test's prefix are cleaned)."""
    return "redis"


async def test_a_stopped_worker_hands_its_running_steps_to_another_without_spending_attempts(
    spawn: Spawn, prefix: str, tmp_path: Path
) -> None:
    stall = 30.0
    slow = {"PLAIT_STEP_SECONDS": "3", "PLAIT_STALL": str(stall), "PLAIT_SHUTDOWN": "0.5"}
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        leaving = spawn("leaving", app=APP, PLAIT_VERSION="1", **slow)
        await ready(tmp_path, "leaving")
        handles = [await caller.execute(shipping_v1, {"n": n}) for n in range(6)]

        async def all_running() -> bool:
            infos = [await handle.describe() for handle in handles]
            return all(info.steps["pack"].state == "running" for info in infos)

        await eventually(all_running, what="every run's first step runs on the leaving worker")
        spawn("staying", app=APP, PLAIT_VERSION="1", **slow)
        await ready(tmp_path, "staying")
        began = time.monotonic()
        leaving.send_signal(signal.SIGTERM)
        results = [await handle.result(timeout=stall / 2) for handle in handles]
        took = time.monotonic() - began
        infos = [await handle.describe() for handle in handles]

    assert results == [None] * 6
    assert [info.status for info in infos] == [WorkflowStatus.COMPLETED] * 6
    assert {info.steps["pack"].attempts for info in infos} == {1}  # max_attempts=1: none spent
    assert took < stall / 2  # taken over at once, not reclaimed after the stall timeout
    assert leaving.wait(timeout=10) == 0


async def _stopped(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``process`` and wait until it exited (0: a graceful stop)."""
    process.send_signal(signal.SIGTERM)

    async def gone() -> bool:
        return process.poll() is not None

    await eventually(gone, timeout=20, what="the worker process stopped")
    assert process.returncode == 0


async def test_replacing_v1_workers_by_v2_one_at_a_time_fails_no_run_and_skips_no_rollback(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    count = 200
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        work = {"PLAIT_STEP_SECONDS": "0.05"}
        old = [spawn(f"v1-{i}", app=APP, PLAIT_VERSION="1", **work) for i in range(2)]
        await ready(tmp_path, "v1-0", "v1-1")
        handles: list[WorkflowHandle[Any]] = []
        live: list[int] = []

        async def emit() -> None:
            # Old and new emitters side by side: odd runs on version 1, even ones on 2.
            for n in range(len(handles), len(handles) + count // 4):
                definition = shipping_v1 if n % 2 else shipping_v2
                handles.append(await caller.execute(definition, {"n": n}))

        async def stop(process: subprocess.Popen[bytes]) -> None:
            live.append(int(await client.zcard(f"{prefix}:{{shipping}}:active")))
            await _stopped(process)

        await emit()
        new = [spawn("v2-0", app=APP, PLAIT_VERSION="2", **work)]
        await emit()
        await ready(tmp_path, "v2-0")
        await emit()
        await stop(old[0])
        new.append(spawn("v2-1", app=APP, PLAIT_VERSION="2", **work))
        await ready(tmp_path, "v2-1")
        await emit()
        await stop(old[1])
        outcomes: dict[int, str] = {}
        for n, handle in enumerate(handles):
            try:
                await handle.result(timeout=30)
                outcomes[n] = "completed"
            except WorkflowStepError as error:
                outcomes[n] = f"{error.step}: {error.cause_message}"
        ran = {k.decode(): int(v) for k, v in (await client.hgetall(f"{prefix}:test:ran")).items()}
        stats = await client.hgetall(f"{prefix}:{{shipping}}:stats")

    assert min(live) > 0  # each old worker was stopped while runs were live
    doomed = {n for n in range(0, count, 2) if n % 4 == 0}  # version 2 runs that fail ship
    expected = {
        n: f"ship: no carrier for parcel {n}" if n in doomed else "completed" for n in range(count)
    }
    assert {n: o for n, o in outcomes.items() if o != expected[n]} == {}  # none failed by it
    for n, handle in enumerate(handles):
        rolled = {job: ran.get(f"{handle.run_id}:{job}", 0) for job in ROLLBACKS}
        assert rolled == dict.fromkeys(ROLLBACKS, 1 if n in doomed else 0), n  # exactly once
    finished = sum(int(v) for k, v in stats.items() if k in (b"COMPLETED", b"FAILED"))
    assert finished == count  # every run ended once: none completed twice


async def test_runs_of_v2_wait_while_only_v1_workers_run_and_finish_once_a_v2_worker_starts(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        spawn("v1", app=APP, PLAIT_VERSION="1")
        await ready(tmp_path, "v1")
        handles = [await caller.execute(shipping_v2, {"n": n}) for n in (1, 2, 3, 5, 6)]

        async def waiting() -> bool:
            queue = next(q for q in (await caller.health()).queues if q.name == "shipping")
            return queue.waiting_for == ("ship",)

        await eventually(waiting, what="health says runs wait for a consumer of 'ship'")
        statuses = {await handle.status() for handle in handles}
        spawn("v2", app=APP, PLAIT_VERSION="2")
        await ready(tmp_path, "v2")
        results = [await handle.result(timeout=30) for handle in handles]
        infos = [await handle.describe() for handle in handles]
        versions = next(q for q in (await caller.health()).queues if q.name == "shipping").versions

    assert statuses == {WorkflowStatus.RUNNING}  # waiting, visible, never FAILED
    assert results == [None] * 5
    assert {info.steps["ship"].attempts for info in infos} == {1}
    assert set(versions) == {shipping_v1.version, shipping_v2.version}
