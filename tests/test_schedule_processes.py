"""Schedules fired by three ``plait worker`` processes on the real Redis, no leader among them.

Each tick makes exactly one run (counted by the runs' side effects and by their idempotency
keys) while instances are SIGKILLed and restarted, and ticks missed while every instance was
down follow each schedule's catch-up policy.
"""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from apps.definitions import Job, ticked
from conftest import REDIS_URL, Spawn, eventually, ready

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.slow]

APP = "apps.schedule_app:provider"
INSTANCES = ("s1", "s2", "s3")


@pytest.fixture
def backend() -> str:
    """These tests run on the real Redis only (keys under the test's prefix are cleaned)."""
    return "redis"


async def redis_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def make_schedules(prefix: str, **schedules: dict[str, Any]) -> None:
    """Create each schedule (every second) through a provider that stops right after."""
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as maker:
        for schedule_id, options in schedules.items():
            await maker.schedule(
                schedule_id, ticked, Job(n=0), every=timedelta(seconds=1), **options
            )


async def pause(prefix: str, *schedule_ids: str) -> None:
    async with RedisWorkflowProvider.from_url(REDIS_URL, prefix=prefix) as anyone:
        for schedule_id in schedule_ids:
            await anyone.schedules.pause(schedule_id)


async def fired(client: Any, prefix: str, schedule_id: str) -> list[int]:
    """The ticks (ms) that ran, in order."""
    ticks = await client.zrange(f"{prefix}:test:ticks:{schedule_id}", 0, -1, withscores=True)
    return [int(score) for _, score in ticks]


async def runs_per_tick(client: Any, prefix: str, schedule_id: str, ticks: list[int]) -> set[int]:
    return {await client.scard(f"{prefix}:test:tick:{schedule_id}:{tick}") for tick in ticks}


async def idempotency_keys(client: Any, prefix: str) -> list[str]:
    """The idempotency key of every run of the ticked workflow."""
    keys = WorkflowKeys(prefix, ticked.name)
    runs = await client.zrange(keys.runs, 0, -1)
    return [(await client.hget(keys.run(run.decode()), "ikey")).decode() for run in runs]


async def settled(client: Any, prefix: str) -> None:
    """Wait until every run of the ticked workflow ended."""

    async def none_live() -> bool:
        return bool(await client.zcard(WorkflowKeys(prefix, ticked.name).active) == 0)

    await eventually(none_live, timeout=30, what="every scheduled run ended")


@pytest.mark.timeout(150)
async def test_three_instances_fire_each_tick_exactly_once_while_they_are_killed(
    spawn: Spawn, tmp_path: Path, prefix: str, client: Any
) -> None:
    # 30 s rather than the 60 s of the issue: the whole suite shares two cores with other
    # jobs and CI's time; 30 s is 30 ticks and six kill/restart cycles.
    workers = {name: spawn(name, app=APP) for name in INSTANCES}
    await ready(tmp_path, *INSTANCES)
    await make_schedules(prefix, steady={"catchup": "all", "overlap": "allow"})
    began = anyio.current_time()
    while anyio.current_time() - began < 30:
        await anyio.sleep(4)
        victim = random.choice(INSTANCES)
        workers[victim].kill()
        workers[victim].wait(timeout=10)
        await anyio.sleep(0.5)
        workers[victim] = spawn(victim, app=APP)
    await pause(prefix, "steady")
    await settled(client, prefix)
    ticks = await fired(client, prefix, "steady")

    assert len(ticks) >= 25
    assert {b - a for a, b in itertools.pairwise(ticks)} == {1000}
    assert await runs_per_tick(client, prefix, "steady", ticks) == {1}
    keys = await idempotency_keys(client, prefix)
    assert sorted(keys) == sorted(f"schedule:steady:{tick}" for tick in ticks)


@pytest.mark.timeout(150)
async def test_ticks_missed_while_every_instance_was_down_follow_the_catch_up_policy(
    spawn: Spawn, tmp_path: Path, prefix: str, client: Any
) -> None:
    policies = ("latest_once", "all", "none")
    workers = [spawn(name, app=APP) for name in INSTANCES]
    await ready(tmp_path, *INSTANCES)
    await make_schedules(
        prefix, **{policy: {"catchup": policy, "overlap": "allow"} for policy in policies}
    )

    async def ticking() -> bool:
        return all([len(await fired(client, prefix, policy)) >= 3 for policy in policies])

    await eventually(ticking, timeout=20, what="every schedule ticking")
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.wait(timeout=10)
    down = await redis_ms(client)
    await anyio.sleep(10)  # the outage itself: every instance is down for 10 s
    up = await redis_ms(client)
    for name in INSTANCES:
        spawn(f"{name}-back", app=APP)

    async def back() -> bool:
        return all([(await fired(client, prefix, policy))[-1] > up + 2000 for policy in policies])

    await eventually(back, timeout=30, what="every schedule ticking again")
    await pause(prefix, *policies)
    await settled(client, prefix)
    caught = {
        policy: await client.zrange(f"{prefix}:test:caught:{policy}", 0, -1, withscores=True)
        for policy in policies
    }
    ticks = {policy: await fired(client, prefix, policy) for policy in policies}
    missed = [tick for tick in range(ticks["all"][0], up - 2000, 1000) if tick > down]

    assert len(caught["latest_once"]) == 1
    assert caught["none"] == []
    assert {b - a for a, b in itertools.pairwise(ticks["all"])} == {1000}
    assert set(missed) <= {int(score) for _, score in caught["all"]}
    assert len(missed) >= 7
    for policy in policies:
        assert await runs_per_tick(client, prefix, policy, ticks[policy]) == {1}
    assert (
        not [  # no tick of the outage ran under "none" except those back within 2 s
            tick for tick in ticks["none"] if down + 1000 < tick < up - 2000
        ]
    )
