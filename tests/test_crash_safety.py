"""Crash safety with real processes: SIGKILL, SIGSTOP, callers that exit, a Redis restart.

Workers are separate processes started through ``plait worker`` on ``tests/apps/workflow_app``;
these tests need a real Redis (and start their own for the restart test).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from apps.definitions import chain, crunch, hold, stuck
from conftest import REDIS_URL, Spawn, _free_ports, _ping, _wait, eventually, ready, redis_server

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import (
    ProviderUnavailableError,
    RetryPolicy,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowTimeoutError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent
REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def backend() -> str:
    """These tests run on the real Redis only (keys under the test's prefix are cleaned)."""
    return "redis"


async def test_a_killed_worker_loses_no_run_and_completes_none_twice(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    spawn("a")
    victim = spawn("b")
    await ready(tmp_path, "a", "b")
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        handles = [await caller.execute(chain, {"n": n}) for n in range(200)]

        async def victim_holds_steps() -> bool:
            summary = await client.xpending(f"{prefix}:{{chain}}:jobs", "plait")
            held = {c["name"].decode(): c["pending"] for c in summary["consumers"]}
            return bool(held.get("b", 0) > 0 and await client.hlen(f"{prefix}:test:ran") > 60)

        await eventually(victim_holds_steps, timeout=20, what="b in the middle of steps")
        victim.kill()

        results = [await handle.result(timeout=60) for handle in handles]
        infos = [await handle.describe() for handle in handles]

    assert [result["n"] for result in results] == list(range(200))
    stats = await client.hgetall(f"{prefix}:{{chain}}:stats")
    assert int(stats[b"COMPLETED"]) == 200
    ran = {k.decode(): int(v) for k, v in (await client.hgetall(f"{prefix}:test:ran")).items()}
    for handle in handles:
        for step in ("s1", "s2", "s3"):
            assert ran[f"{handle.run_id}:{step}"] >= 1
    reclaimed = [
        lost
        for info in infos
        for lost in info.steps.values()
        if lost.error is not None and lost.error.cause_type == "plait.WorkerLost"
    ]
    assert reclaimed, "the killed worker held steps that were reclaimed"
    for lost in reclaimed:  # each ran again as a new attempt, which completed
        assert (lost.state, lost.attempts >= 2) == ("completed", True)
        assert lost.error is not None
        assert "instance b" in lost.error.cause_message
    assert all(info.status is WorkflowStatus.COMPLETED for info in infos)


async def test_a_paused_worker_cannot_complete_a_reclaimed_step(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    paused = spawn("a", PLAIT_HOLD_SECONDS="3")
    await ready(tmp_path, "a")
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        handle = await caller.execute(hold, {"n": 1})

        async def held_by_a() -> bool:
            owner = await client.hget(f"{prefix}:{{hold}}:run:{handle.run_id}", "work|ow")
            return bool(owner == b"a")

        await eventually(held_by_a, what="a runs the step")
        paused.send_signal(signal.SIGSTOP)
        spawn("b")

        result = await handle.result(timeout=30)
        assert result is None  # no on_complete: the step's own result is stored per step
        paused.send_signal(signal.SIGCONT)

        async def late_completion_fenced() -> bool:
            stats = await client.hgetall(f"{prefix}:{{hold}}:stats")
            return int(stats.get(b"fenced", 0)) >= 1

        await eventually(late_completion_fenced, timeout=15, what="a's late completion refused")
        stored = await client.hget(f"{prefix}:{{hold}}:run:{handle.run_id}:results", "work")
        info = await handle.describe()

    assert stored == b'"b attempt 2"'
    assert info.steps["work"].attempts == 2
    assert info.steps["work"].error is not None
    assert info.steps["work"].error.cause_type == "plait.WorkerLost"
    assert "instance a" in info.steps["work"].error.cause_message


async def test_a_step_blocking_its_event_loop_briefly_is_not_reclaimed(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    spawn("busy")
    await ready(tmp_path, "busy")
    rival: WorkflowConsumer[Any, Any] = WorkflowConsumer(crunch)
    rival.step("crunch")(lambda ctx: "rival")
    async with RedisWorkflowProvider.from_url(
        REDIS_URL, prefix=prefix, stall_timeout=timedelta(seconds=1)
    ) as caller:
        handle = await caller.execute(crunch, {"n": 1})

        async def held_by_busy() -> bool:
            owner = await client.hget(f"{prefix}:{{crunch}}:run:{handle.run_id}", "crunch|ow")
            return bool(owner == b"busy")

        await eventually(held_by_busy, what="the busy worker runs the step")
        caller.register(rival)  # a live rival that would reclaim a stalled step
        await handle.result(timeout=30)
        info = await handle.describe()

    assert info.steps["crunch"].attempts == 1
    assert info.steps["crunch"].error is None
    stored = await client.hget(f"{prefix}:{{crunch}}:run:{handle.run_id}:results", "crunch")
    assert stored == b'"busy"'


async def test_a_killed_worker_holding_a_stopped_step_does_not_hold_compensation_back(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    victim = spawn("a")
    await ready(tmp_path, "a")
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as caller:
        handle = await caller.execute(stuck, {"n": 1})

        async def hanging() -> bool:
            steps = (await handle.describe()).steps
            return (steps["done"].state, steps["hang"].state) == ("completed", "running")

        await eventually(hanging, what="done completed, hang running on a")
        assert await handle.cancel() is True
        victim.kill()  # its thread never returns: only the reclaim settles the attempt
        spawn("b")

        with pytest.raises(WorkflowCancelledError):
            await handle.result(timeout=30)
        info = await handle.describe()

    ran = await client.hgetall(f"{prefix}:test:ran")
    assert ran[f"{handle.run_id}:undone".encode()] == b"1"
    error = info.steps["hang"].error
    assert error is not None and error.cause_type == "plait.WorkerLost"
    assert (info.steps["hang"].state, info.steps["hang"].attempts) == ("cancelled", 1)


CALLER = """
import asyncio, sys
from datetime import timedelta
sys.path.insert(0, {tests!r})
from apps.definitions import booking
from plait.providers.redis import RedisWorkflowProvider

async def main():
    async with RedisWorkflowProvider.from_url({url!r}, prefix={prefix!r}) as caller:
        handle = await caller.execute(booking, {{"n": 1}}, timeout=timedelta(seconds=1))
        print(handle.run_id)

asyncio.run(main())
"""


async def test_a_deadline_holds_after_the_caller_exits(
    spawn: Spawn, client: Any, prefix: str, tmp_path: Path
) -> None:
    spawn("worker")
    await ready(tmp_path, "worker")
    script = CALLER.format(tests=str(TESTS), url=REDIS_URL, prefix=prefix)
    done = await anyio.run_process([sys.executable, "-c", script], check=True)
    run_id = done.stdout.decode().strip()

    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as observer:
        handle: WorkflowHandle[Any] = await observer.get_handle(run_id)
        with pytest.raises(WorkflowTimeoutError):
            await handle.result(timeout=20)

    ran = await client.hgetall(f"{prefix}:test:ran")
    assert ran[f"{run_id}:book".encode()] == b"1"
    assert ran[f"{run_id}:unbook".encode()] == b"1"


class OwnRedis:
    """A Redis server of this test's own, with an append-only file, that can be restarted."""

    def __init__(self, folder: str) -> None:
        [self.port] = _free_ports(1)
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_server()
        subprocess.run(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", self.folder, "--appendonly", "yes", "--save", ""),
                *("--daemonize", "yes", "--logfile", os.path.join(self.folder, "redis.log")),
            ],
            check=True,
        )
        _wait(lambda: _ping(self.port), "own Redis starts")

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True, check=False
        )
        _wait(lambda: not _ping(self.port), "own Redis stops")


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory() as folder:
        server = OwnRedis(folder)
        server.start()
        yield server
        server.stop()


async def test_a_redis_restart_loses_no_run(
    spawn: Spawn, own_redis: OwnRedis, prefix: str, tmp_path: Path
) -> None:
    spawn("worker", url=own_redis.url)
    await ready(tmp_path, "worker")
    unavailable = 0
    async with RedisWorkflowProvider.from_url(
        own_redis.url,
        prefix=prefix,
        connect_timeout=timedelta(milliseconds=500),
        retry=RetryPolicy(max_attempts=10),
    ) as caller:
        handles = []
        for n in range(200):
            if n == 100:
                own_redis.stop()
                with pytest.raises(ProviderUnavailableError):
                    await caller.execute(chain, {"n": -1})
                unavailable += 1
                own_redis.start()
            handles.append(await caller.execute(chain, {"n": n}))
        results = [await handle.result(timeout=60) for handle in handles]

    assert unavailable == 1
    assert [result["n"] for result in results] == list(range(200))
