"""``serve()``: both providers run inside a caller's task group, on every backend.

``await tg.start(provider.serve)`` returns once the provider is started (as ``start()`` does);
cancelling the surrounding scope stops it gracefully (running work is drained, as ``stop()``
does), and afterwards nothing of it keeps running.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import eventually
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.workflows import (
    ProviderClosedError,
    ProviderUnavailableError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Job(BaseModel):
    n: int = 0


served = Workflow("served", input=Job).step("work")
job_done = Event("job.done", data=Job)


def workflows(url: str, prefix: str, **options: Any) -> RedisWorkflowProvider:
    options.setdefault("stall_timeout", timedelta(seconds=2))
    options.setdefault("shutdown_timeout", timedelta(seconds=5))
    return RedisWorkflowProvider.from_url(url, prefix=prefix, **options)


def events(url: str, prefix: str, **options: Any) -> RedisEventProvider:
    options.setdefault("shutdown_timeout", timedelta(seconds=5))
    return RedisEventProvider.from_url(url, group="billing", prefix=prefix, **options)


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_a_served_workflow_provider_runs_steps_until_its_scope_is_cancelled(
    url: str, prefix: str
) -> None:
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(served)
    consumer.step("work")(lambda ctx: ctx.input.n * 2)
    provider = workflows(url, prefix)
    provider.register(consumer)
    before = other_tasks()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(provider.serve)
            handle = await provider.execute(served, Job(n=21))
            assert await handle.result(timeout=10) is None  # no on_complete: no result
            assert await handle.status() is WorkflowStatus.COMPLETED
            tg.cancel_scope.cancel()

    with pytest.raises(ProviderClosedError):
        await provider.execute(served, Job())
    assert other_tasks() == before


async def test_cancelling_a_served_workflow_provider_drains_the_running_step(
    url: str, prefix: str
) -> None:
    log: list[str] = []
    started = anyio.Event()
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(served)

    @consumer.step("work")
    async def work(ctx: StepContext[Job]) -> None:
        log.append("started")
        started.set()
        await anyio.sleep(0.5)
        log.append("finished")

    provider = workflows(url, prefix)
    provider.register(consumer)
    # the observer keeps a memory:// store alive after the served provider released it
    async with workflows(url, prefix) as observer:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await tg.start(provider.serve)
                handle = await provider.execute(served, Job())
                await started.wait()
                tg.cancel_scope.cancel()

        assert log == ["started", "finished"]
        observed: WorkflowHandle[Any] = await observer.get_handle(handle.run_id)
        assert await observed.status() is WorkflowStatus.COMPLETED


async def test_a_served_event_provider_handles_events_until_its_scope_is_cancelled(
    url: str, prefix: str
) -> None:
    seen: list[int] = []
    handled = anyio.Event()
    provider = events(url, prefix)

    @provider.on(job_done)
    async def record(ctx: EventContext[Job]) -> None:
        seen.append(ctx.data.n)
        handled.set()

    before = other_tasks()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(provider.serve)
            await provider.emit(job_done, Job(n=7))
            await handled.wait()
            tg.cancel_scope.cancel()

    assert seen == [7]
    with pytest.raises(ProviderClosedError):
        await provider.emit(job_done, Job())
    assert other_tasks() == before


async def test_cancelling_a_served_event_provider_drains_the_running_handler(
    url: str, prefix: str
) -> None:
    log: list[str] = []
    started = anyio.Event()
    provider = events(url, prefix)

    @provider.on(job_done)
    async def slow(ctx: EventContext[Job]) -> None:
        log.append("started")
        started.set()
        await anyio.sleep(0.5)
        log.append("finished")

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(provider.serve)
            await provider.emit(job_done, Job())
            await started.wait()
            tg.cancel_scope.cancel()

    assert log == ["started", "finished"]


async def test_stop_ends_a_served_provider_after_draining_it(url: str, prefix: str) -> None:
    provider = events(url, prefix)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(provider.serve)
            await provider.stop()  # serve() returns: the task group exits by itself
    with pytest.raises(ProviderClosedError):
        await provider.emit(job_done, Job())


@pytest.mark.parametrize("open_", [workflows, events], ids=["workflows", "events"])
async def test_serve_raises_from_start_when_redis_is_unreachable(open_: Any, prefix: str) -> None:
    provider = open_("redis://127.0.0.1:1/0", prefix, connect_timeout=timedelta(milliseconds=300))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            with pytest.raises(ProviderUnavailableError):
                await tg.start(provider.serve)


@pytest.mark.parametrize("open_", [workflows, events], ids=["workflows", "events"])
async def test_cancelling_a_serve_that_is_still_starting_ends_it_at_once(
    open_: Any, prefix: str
) -> None:
    provider = open_("redis://127.0.0.1:1/0", prefix, connect_timeout=timedelta(seconds=30))
    before = other_tasks()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(provider.serve)
            await anyio.sleep(0.3)  # serve() is retrying the unreachable Redis
            tg.cancel_scope.cancel()
    assert other_tasks() == before


async def _use(provider: Any) -> None:
    """A call that needs a started provider."""
    if isinstance(provider, RedisEventProvider):
        await provider.emit(job_done, Job())
    else:
        await provider.execute(served, Job())


@pytest.mark.parametrize("open_", [workflows, events], ids=["workflows", "events"])
async def test_concurrent_starts_start_once_and_stop_leaves_nothing_running(
    open_: Any, url: str, prefix: str
) -> None:
    provider, observer = open_(url, prefix), open_(url, prefix)
    before = other_tasks()

    async def start_and_use() -> None:
        await provider.start()
        await _use(provider)  # each start() returns once the provider is started

    with anyio.fail_after(30):
        await asyncio.gather(start_and_use(), start_and_use())
        assert provider.provider_id in {i.provider_id for i in (await observer.health()).instances}
        await provider.stop()

        async def forgotten() -> bool:
            health = await observer.health()
            return provider.provider_id not in {i.provider_id for i in health.instances}

        await eventually(forgotten, timeout=5, what="the stopped provider's heartbeat is gone")
    assert other_tasks() == before
    with pytest.raises(ProviderClosedError):
        await _use(provider)
    await observer.stop()
