"""The status index, attacked: whatever path a run takes (success, failure and compensation,
cancel while pending or running, a deadline, a wait and its signal, a delayed start, a per-key
queue, a retry), the index holds exactly one member per run record, naming its status."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import (
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowError,
    WorkflowStatus,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]


class Job(BaseModel):
    mode: str
    key: str = ""


class Go(BaseModel):
    ok: bool


mixed = Workflow("inv-mixed", input=Job).step("a").step("b")
waiting = Workflow("inv-wait", input=Job).step("a").wait("go", data=Go).step("b")
keyed = Workflow("inv-keyed", input=Job, concurrency_key=lambda job: job.key).step("a")


def consumers(broken: set[str], hold: anyio.Event) -> list[WorkflowConsumer[Job, Any]]:
    mix: WorkflowConsumer[Job, Any] = WorkflowConsumer(mixed)

    @mix.step("a")
    async def a(ctx: StepContext[Job]) -> str:
        return "a"

    @mix.rollback("a")
    async def undo_a(ctx: StepContext[Job]) -> None:
        return None

    @mix.step("b")
    async def b(ctx: StepContext[Job]) -> str:
        if ctx.input.mode in broken:
            raise RuntimeError(f"{ctx.input.mode} breaks")
        if ctx.input.mode in ("hold", "late"):
            await hold.wait()
        return "b"

    wait: WorkflowConsumer[Job, Any] = WorkflowConsumer(waiting)

    @wait.step("a")
    async def wa(ctx: StepContext[Job]) -> str:
        return "a"

    @wait.step("b")
    async def wb(ctx: StepContext[Job]) -> str:
        return "b"

    key: WorkflowConsumer[Job, Any] = WorkflowConsumer(keyed)

    @key.step("a")
    async def ka(ctx: StepContext[Job]) -> str:
        if ctx.input.mode == "hold":
            await hold.wait()
        return "a"

    return [mix, wait, key]


async def index_holds(workflows: RedisWorkflowProvider, prefix: str, name: str) -> None:
    """Every ended run of ``name`` has exactly one status member, naming its status; a live
    one has none (``active`` lists it, and the record has its status)."""
    keys = WorkflowKeys(prefix, name)
    client: Any = workflows._connection.client
    statuses: dict[str, str] = {}
    async for raw in client.scan_iter(match=f"{keys.base}run:*", count=1000):
        key = raw.decode()
        if key.endswith((":results", ":events")):
            continue
        record = await client.hmget(key, ["status", "created"])
        if record[0] is not None:
            run_id = key.removeprefix(f"{keys.base}run:")
            statuses[run_id] = f"{record[0].decode()}|{int(record[1]):013d}"
    members: dict[str, list[str]] = {}
    async for raw, _ in client.zscan_iter(keys.status):
        status, created, run_id = raw.decode().split("|", 2)
        members.setdefault(run_id, []).append(f"{status}|{created}")
    live = ("PENDING|", "RUNNING|", "COMPENSATING|")
    assert {run_id: members.get(run_id) for run_id in statuses} == {
        run_id: None if member.startswith(live) else [member] for run_id, member in statuses.items()
    }
    active = {raw.decode() for raw in await client.zrange(keys.active, 0, -1)}
    assert active == {run_id for run_id, member in statuses.items() if member.startswith(live)}


async def test_every_path_keeps_one_status_member_per_ended_run(
    open_provider: OpenProvider, prefix: str
) -> None:
    broken = {"fail", "retry"}
    hold = anyio.Event()
    workflows = await open_provider(*consumers(broken, hold))
    ok = await workflows.execute(mixed, Job(mode="ok"))
    fail = await workflows.execute(mixed, Job(mode="fail"))
    retried = await workflows.execute(mixed, Job(mode="retry"))
    held = await workflows.execute(mixed, Job(mode="hold"))
    late = await workflows.execute(mixed, Job(mode="late"), timeout=timedelta(milliseconds=300))
    delayed = await workflows.execute(mixed, Job(mode="ok"), delay=timedelta(hours=1))
    parked = await workflows.execute(waiting, Job(mode="ok"))
    signalled = await workflows.execute(waiting, Job(mode="ok"))
    first = await workflows.execute(keyed, Job(mode="hold", key="k"))
    queued = await workflows.execute(keyed, Job(mode="ok", key="k"))

    await ok.result(timeout=20)
    for handle in (fail, retried):
        with contextlib.suppress(WorkflowError):
            await handle.result(timeout=20)

    async def status_is(handle: Any, status: WorkflowStatus) -> bool:
        return bool(await handle.status() is status)

    await eventually(lambda: status_is(held, WorkflowStatus.RUNNING), what="held running")
    await eventually(lambda: status_is(late, WorkflowStatus.TIMED_OUT), what="late timed out")
    await eventually(lambda: status_is(first, WorkflowStatus.RUNNING), what="first running")
    for name in (mixed.name, waiting.name, keyed.name):
        await index_holds(workflows, prefix, name)

    assert await held.cancel() is True
    assert await delayed.cancel() is True  # a PENDING run, parked until its start
    await eventually(lambda: status_is(parked, WorkflowStatus.RUNNING), what="a wait parked")
    await eventually(lambda: status_is(signalled, WorkflowStatus.RUNNING), what="parked too")
    assert await workflows.signal(signalled.run_id, "go", Go(ok=True))
    await signalled.result(timeout=20)
    broken.discard("retry")
    await workflows.retry(retried.run_id)
    await workflows.retry(late.run_id)  # a TIMED_OUT run, retried
    await retried.result(timeout=20)
    hold.set()
    await late.result(timeout=20)
    await first.result(timeout=20)
    await queued.result(timeout=20)  # it waited for the key's slot, PENDING
    for handle in (held, delayed):

        async def cancelled(handle: Any = handle) -> bool:
            return await status_is(handle, WorkflowStatus.CANCELLED)

        await eventually(cancelled, what="the run cancelled")
    await workflows.reconcile()

    for name in (mixed.name, waiting.name, keyed.name):
        await index_holds(workflows, prefix, name)
    page = await workflows.list_runs(mixed, status=WorkflowStatus.COMPLETED)
    assert {info.run_id for info in page.runs} == {ok.run_id, retried.run_id, late.run_id}
    page = await workflows.list_runs(waiting, status=WorkflowStatus.RUNNING)
    assert [info.run_id for info in page.runs] == [parked.run_id]


async def test_a_run_that_lived_long_stays_listed_after_it_ends(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider(*consumers(set(), anyio.Event()))
    handle = await workflows.execute(waiting, Job(mode="ok"))

    async def parked() -> bool:
        return bool(await handle.status() is WorkflowStatus.RUNNING)

    await eventually(parked, what="the wait parked")
    # the run was created long ago (it waited for its signal for days): as its record says
    keys = WorkflowKeys(prefix, waiting.name)
    client: Any = workflows._connection.client
    await client.zadd(keys.runs, {handle.run_id: 1_000})
    await client.hset(keys.run(handle.run_id), "created", 1_000)
    assert await workflows.signal(handle.run_id, "go", Go(ok=True))
    await handle.result(timeout=20)

    await workflows.reconcile()

    assert await handle.status() is WorkflowStatus.COMPLETED  # its record is kept
    await index_holds(workflows, prefix, waiting.name)
    listed = await workflows.list_runs(waiting, status=WorkflowStatus.COMPLETED)
    assert [info.run_id for info in listed.runs] == [handle.run_id]


async def test_a_record_with_a_damaged_creation_time_does_not_break_a_listing(
    open_provider: OpenProvider, prefix: str
) -> None:
    hold = anyio.Event()
    workflows = await open_provider(*consumers(set(), hold))
    good = await workflows.execute(mixed, Job(mode="ok"))
    await good.result(timeout=20)
    damaged = await workflows.execute(mixed, Job(mode="hold"))

    async def running() -> bool:
        return bool(await damaged.status() is WorkflowStatus.RUNNING)

    await eventually(running, what="the run running")
    keys = WorkflowKeys(prefix, mixed.name)
    client: Any = workflows._connection.client
    created = int((await client.hget(keys.run(damaged.run_id), "created")).decode())
    await client.zrem(keys.status, f"RUNNING|{created:013d}|{damaged.run_id}")
    await client.zadd(keys.status, {f"RUNNING|{'x':0>13}|{damaged.run_id}": 0})
    await client.hset(keys.run(damaged.run_id), "created", "x")
    hold.set()
    await damaged.result(timeout=20)

    page = await workflows.list_runs(mixed, status=WorkflowStatus.COMPLETED)

    assert good.run_id in {info.run_id for info in page.runs}
