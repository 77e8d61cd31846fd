"""How late plait notices what time it is: reclaim behind many live steps, the reconciler
behind many healthy runs, deadlines (on every job, on any live instance) and a skewed clock.

Every figure is measured in Redis time (the run's ``deadline`` and ``finished`` fields, stream
entry ids), the clock plait's promises are stated in.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import GROUP, WorkflowKeys
from plait.providers.redis._workflows.scripts import Job as Entry
from plait.workflows import (
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowHandle,
    WorkflowStatus,
    WorkflowTimeoutError,
)

pytestmark = pytest.mark.anyio


class Job(BaseModel):
    n: int = 0


def _client(provider: RedisWorkflowProvider) -> Any:
    return provider._connection.client


async def _redis_ms(provider: RedisWorkflowProvider) -> int:
    seconds, micros = await _client(provider).time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _fields(provider: RedisWorkflowProvider, key: str, *names: str) -> list[int]:
    values = await _client(provider).hmget(key, *names)
    return [int(value) for value in values]


async def _running(handle: WorkflowHandle[Any], step: str) -> bool:
    info = (await handle.describe()).steps.get(step)
    return info is not None and info.state == "running"


# -- reclaim -------------------------------------------------------------------------------

LIVE = 12


def crowded_consumer(flow: Workflow[Job, Any]) -> WorkflowConsumer[Job, Any]:
    """Runs below ``LIVE`` hang until cancelled; the others complete at once."""
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("work")
    async def work(ctx: StepContext[Job]) -> None:
        if ctx.input.n < LIVE:
            await anyio.sleep_forever()

    return consumer


async def test_a_dead_instances_step_behind_many_live_ones_is_reclaimed_in_time(
    open_provider: OpenProvider, prefix: str
) -> None:
    flow = Workflow("crowded", input=Job).step("work")
    stall = 1.0
    keys = WorkflowKeys(prefix, flow.name)
    live = await open_provider(
        crowded_consumer(flow), concurrency=LIVE, stall_timeout=timedelta(seconds=stall)
    )
    held = [await live.execute(flow, Job(n=n)) for n in range(LIVE)]

    async def all_running() -> bool:
        return all([await _running(handle, "work") for handle in held])

    await eventually(all_running, what="the live steps run")
    # The live worker is full and reads nothing more: a dead instance takes the next entry,
    # marks it running and never renews it. Its entry sorts behind the live ones.
    orphan = await live.execute(flow, Job(n=LIVE))
    client = _client(live)
    reply = await client.xreadgroup(GROUP, "dead-instance", {keys.jobs: ">"}, count=1)
    [(entry, fields)] = [item for _, items in reply for item in items]
    job = Entry(entry.decode(), orphan.run_id, "work", fields[b"t"].decode())
    await live._scripts.start(keys, job, "dead-instance", call=live._scripts.call_id())
    taken_ms = await _redis_ms(live)
    # Another live instance with one free slot: each XAUTOCLAIM call of it examines at most
    # 10 pending entries, all of them the live worker's unless the walk goes on.
    await open_provider(
        crowded_consumer(flow), concurrency=1, stall_timeout=timedelta(seconds=stall)
    )

    assert await orphan.result(timeout=3 * stall) is None
    step = (await orphan.describe()).steps["work"]
    assert step.attempts == 2
    assert step.error is not None and step.error.cause_type == "plait.WorkerLost"
    (finished,) = await _fields(live, keys.run(orphan.run_id), "finished")
    reclaimed_after = (finished - taken_ms) / 1000
    print(f"reclaimed and completed {reclaimed_after:.3f}s after the dead instance took it")
    # Idle 1.25 x stall, found by the next pass (every stall / 2), then retried and run again.
    assert 1.25 * stall <= reclaimed_after <= 2 * stall + 0.25
    for handle in held:  # the walk reclaimed none of the live steps
        info = (await handle.describe()).steps["work"]
        assert (info.state, info.attempts) == ("running", 1)
    for handle in held:
        await handle.cancel()


# -- reconciler ----------------------------------------------------------------------------


async def test_the_reconciler_reaches_a_stuck_run_behind_pages_of_healthy_ones(
    open_provider: OpenProvider, prefix: str
) -> None:
    flow = Workflow("paged", input=Job).step("only")
    keys = WorkflowKeys(prefix, flow.name)
    caller = await open_provider(stall_timeout=timedelta(milliseconds=100))
    reconciler: Any = caller._reconciler
    reconciler._page, reconciler._pass_limit = 2, 4  # internal knobs: small pages, short passes
    healthy = [await caller.execute(flow, Job(n=n)) for n in range(5)]  # queued, no consumer
    await anyio.sleep(0.005)  # the stuck run is created in a later millisecond: it sorts last
    stuck = await caller.execute(flow, Job(n=99))
    client = _client(caller)
    for entry, fields in await client.xrange(keys.jobs):
        if fields[b"r"].decode() == stuck.run_id:
            await client.xdel(keys.jobs, entry)  # its job is lost: only the reconciler can help
    await anyio.sleep(0.15)  # the reconciler leaves runs younger than the stall timeout alone

    passes = [await caller.reconcile() for _ in range(3)]

    assert [stats.scanned for stats in passes] == [4, 2, 4]
    assert [stats.reconciled for stats in passes] == [0, 1, 0]
    queued = [fields[b"r"].decode() for _, fields in await client.xrange(keys.jobs)]
    assert sorted(queued) == sorted(run.run_id for run in [*healthy, stuck])


# -- deadlines -----------------------------------------------------------------------------


DEADLINE = timedelta(milliseconds=250)
"""Long enough for ``book`` to complete before it on a loaded machine (50 ms was not)."""


def booking(name: str, log: list[str]) -> WorkflowConsumer[Job, Any]:
    """``book`` (rollback ``unbook``) completes at once."""
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(Workflow(name, input=Job).step("book"))

    @consumer.step("book")
    async def book(ctx: StepContext[Job]) -> None:
        log.append("book")

    @consumer.rollback("book")
    async def unbook(ctx: StepContext[Job]) -> None:
        log.append("unbook")

    return consumer


async def test_a_deadline_stops_on_complete_and_compensates_the_run(
    open_provider: OpenProvider, prefix: str
) -> None:
    log: list[str] = []
    consumer = booking("late-complete", log)

    @consumer.on_complete
    async def done(ctx: WorkflowContext[Job]) -> str:
        log.append("on_complete")
        await anyio.sleep(1.0)
        log.append("on_complete finished")
        return "done"

    workflows = await open_provider(consumer)
    handle = await workflows.execute(consumer.definition, Job(), timeout=DEADLINE)

    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)
    assert log == ["book", "on_complete", "unbook"]
    assert await handle.status() is WorkflowStatus.TIMED_OUT
    run = WorkflowKeys(prefix, consumer.definition.name).run(handle.run_id)
    deadline, finished = await _fields(workflows, run, "deadline", "finished")
    print(f"on_complete stopped and compensated {finished - deadline} ms after the deadline")
    assert 0 <= finished - deadline <= 300  # not the next fallback tick, up to 1 s later


async def test_an_on_complete_that_returns_after_the_deadline_does_not_complete_the_run(
    open_provider: OpenProvider,
) -> None:
    log: list[str] = []
    consumer = booking("blocking-complete", log)

    @consumer.on_complete
    async def done(ctx: WorkflowContext[Job]) -> str:
        time.sleep(0.5)  # noqa: ASYNC251 - blocks its event loop: no cancellation can reach it
        log.append("on_complete finished")
        return "done"

    workflows = await open_provider(consumer)
    handle = await workflows.execute(consumer.definition, Job(), timeout=DEADLINE)

    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)
    assert log == ["book", "on_complete finished", "unbook"]


async def test_a_last_step_that_returns_after_the_deadline_does_not_complete_the_run(
    open_provider: OpenProvider,
) -> None:
    log: list[str] = []
    flow = Workflow("blocking-step", input=Job).step("book")  # no on_complete
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    consumer.rollback("book")(lambda ctx: log.append("unbook"))

    @consumer.step("book")
    async def book(ctx: StepContext[Job]) -> None:
        time.sleep(0.5)  # noqa: ASYNC251 - blocks its event loop: no cancellation can reach it
        log.append("book")

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job(), timeout=DEADLINE)

    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)
    assert log == ["book", "unbook"]


@pytest.mark.parametrize("executor", ["the worker", "another instance"])
async def test_a_deadline_fires_within_tens_of_ms_on_a_live_instance(
    open_provider: OpenProvider, prefix: str, executor: str
) -> None:
    flow = Workflow("due", input=Job).step("hang")
    keys = WorkflowKeys(prefix, flow.name)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("hang")
    async def hang(ctx: StepContext[Job]) -> None:
        await anyio.sleep_forever()

    worker = await open_provider(consumer, concurrency=1)
    blocker = await worker.execute(flow, Job(n=-1))  # no deadline; holds the only slot
    await eventually(lambda: _running(blocker, "hang"), what="blocker runs")
    timeout = timedelta(milliseconds=100)
    late_ms: list[int] = []
    for n in range(3):  # each run after the previous one ended: the timer just ticked
        if executor == "the worker":
            run_id = (await worker.execute(flow, Job(n=n), timeout=timeout)).run_id
        else:  # the caller leaves at once: only the worker's timer can see the deadline
            caller = await open_provider()
            run_id = (await caller.execute(flow, Job(n=n), timeout=timeout)).run_id
            await caller.stop()
        handle = await worker.get_handle(run_id, flow)
        with pytest.raises(WorkflowTimeoutError):
            await handle.result(timeout=10)
        deadline, finished = await _fields(worker, keys.run(run_id), "deadline", "finished")
        late_ms.append(finished - deadline)
    await blocker.cancel()
    print(f"deadlines fired {late_ms} ms late (executed by {executor})")
    assert min(late_ms) >= 0
    # Not the fallback tick (up to 1 s late); the machine is shared, so one run may be slower.
    assert statistics.median(late_ms) <= 150, late_ms
    assert max(late_ms) <= 500, late_ms


# -- a skewed clock ------------------------------------------------------------------------


@pytest.fixture
def skew(backend: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``skew(seconds)`` sets this process's wall clock ahead of Redis's."""
    if backend == "memory":
        pytest.skip("memory:// runs on this process's own clock: it cannot be skewed from it")
    real, real_ns = time.time, time.time_ns

    def set_skew(seconds: float) -> None:
        monkeypatch.setattr(time, "time", lambda: real() + seconds)
        monkeypatch.setattr(time, "time_ns", lambda: real_ns() + int(seconds * 1e9))

    return set_skew


async def test_a_worker_clock_seconds_ahead_does_not_cut_a_step_short(
    open_provider: OpenProvider, skew: Any
) -> None:
    flow = Workflow("skewed-ahead", input=Job).step("work")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("work")
    async def work(ctx: StepContext[Job]) -> None:
        await anyio.sleep(1.0)

    skew(3.0)
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job(), timeout=timedelta(seconds=3.5))

    await handle.result(timeout=10)
    assert await handle.status() is WorkflowStatus.COMPLETED
    step = (await handle.describe()).steps["work"]
    assert (step.state, step.attempts) == ("completed", 1)


async def test_a_worker_clock_slightly_ahead_still_times_the_run_out(
    open_provider: OpenProvider, skew: Any
) -> None:
    flow = Workflow("skewed-little", input=Job).step("hang")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("hang")
    async def hang(ctx: StepContext[Job]) -> None:
        await anyio.sleep_forever()

    skew(0.010)
    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job(), timeout=timedelta(milliseconds=300))

    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)
    assert await handle.status() is WorkflowStatus.TIMED_OUT


async def test_a_redis_clock_stepped_back_mid_step_still_times_the_run_out(
    open_provider: OpenProvider, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "memory":
        pytest.skip("only the embedded server's clock can be stepped from here")
    flow = Workflow("stepped-back", input=Job).step("hang")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    running = anyio.Event()

    @consumer.step("hang")
    async def hang(ctx: StepContext[Job]) -> None:
        running.set()
        await anyio.sleep_forever()

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job(), timeout=timedelta(milliseconds=200))
    with anyio.fail_after(10):
        await running.wait()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 0.1)  # the attempt's bound comes first

    with pytest.raises(WorkflowTimeoutError):
        await handle.result(timeout=10)
