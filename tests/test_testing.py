"""The test kit (plait.testing): a virtual clock on memory://, retries without backoff, fixtures.

Each timer test checks that nothing happened before the clock moved and that it happened at
once after, far sooner (real time) than the hour the clock moved.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import fakeredis
import pytest
from conftest import eventually
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.testing import VirtualClock, without_backoff
from plait.workflows import (
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
SOON = 5.0
"""Real seconds within which what the clock made due has happened (the clock moved an hour)."""


class Order(BaseModel):
    order_id: str


async def _never(workflows: RedisWorkflowProvider, handle: Any, status: WorkflowStatus) -> None:
    """A short real-time look: ``handle`` is not ``status`` (so nothing fires without the clock)."""
    await anyio.sleep(0.3)  # long enough for a timer that would fire (it must not)
    assert await handle.status() != status


async def test_a_retry_backoff_of_an_hour_is_over_when_the_clock_moves_an_hour(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow = Workflow("kit-retry", input=Order).step(
        "charge", retry=RetryPolicy(max_attempts=2, initial_interval=HOUR)
    )
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    attempts: list[int] = []

    @consumer.step("charge")
    async def charge(ctx: StepContext[Order]) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("card declined")
        return "c-1"

    plait_workflows.register(consumer)
    handle = await plait_workflows.execute(flow, Order(order_id="o-1"))
    await plait_clock.idle()  # the first attempt failed and its retry waits
    assert attempts == [1]
    await _never(plait_workflows, handle, WorkflowStatus.COMPLETED)
    assert attempts == [1]
    started = time.monotonic()
    await plait_clock.advance(HOUR)
    assert attempts == [1, 2]  # advance returns once the due retry has run
    await handle.result(timeout=SOON)
    assert time.monotonic() - started < SOON


async def _true(value: bool) -> bool:
    return value


def _waiting(name: str, **wait: Any) -> tuple[Workflow[Order, Any], WorkflowConsumer[Order, Any]]:
    flow = Workflow(name, input=Order).step("reserve").wait("payment", **wait).step("ship")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("reserve")
    async def reserve(ctx: StepContext[Order]) -> None:
        return None

    @consumer.step("ship")
    async def ship(ctx: StepContext[Order]) -> str:
        return "shipped"

    return flow, consumer


async def test_a_run_deadline_passes_when_the_clock_moves_past_it(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow, consumer = _waiting("kit-deadline")
    plait_workflows.register(consumer)
    handle = await plait_workflows.execute(flow, Order(order_id="o-2"), timeout=HOUR)
    await _never(plait_workflows, handle, WorkflowStatus.TIMED_OUT)
    started = time.monotonic()
    await plait_clock.advance(HOUR)
    assert await handle.status() == WorkflowStatus.TIMED_OUT  # applied when advance returns
    assert time.monotonic() - started < SOON


async def test_a_wait_times_out_when_the_clock_moves_past_its_timeout(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow, consumer = _waiting("kit-wait", timeout=HOUR, on_timeout="continue")
    plait_workflows.register(consumer)
    handle = await plait_workflows.execute(flow, Order(order_id="o-3"))
    await eventually(
        lambda: _waits(handle, "payment", "waiting"), timeout=SOON, what="the run waits"
    )
    await _never(plait_workflows, handle, WorkflowStatus.COMPLETED)
    started = time.monotonic()
    await plait_clock.advance(HOUR)
    await handle.result(timeout=SOON)
    info = await handle.describe()
    assert info.steps["ship"].state == "completed"
    assert time.monotonic() - started < SOON


async def _waits(handle: Any, name: str, state: str) -> bool:
    info = await handle.describe()
    wait = info.waits.get(name)
    return wait is not None and wait.state == state


async def test_a_sleep_of_a_day_is_over_when_the_clock_moves_a_day(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow = Workflow("kit-sleep", input=Order).sleep("cool-off", duration=timedelta(days=1))
    flow = flow.step("last")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    ran: list[str] = []

    @consumer.step("last")
    async def last(ctx: StepContext[Order]) -> None:
        ran.append("last")

    plait_workflows.register(consumer)
    handle = await plait_workflows.execute(flow, Order(order_id="o-4"))
    await _never(plait_workflows, handle, WorkflowStatus.COMPLETED)
    started = time.monotonic()
    assert ran == []
    await plait_clock.advance(timedelta(days=1))
    await handle.result(timeout=SOON)
    assert ran == ["last"]
    assert time.monotonic() - started < SOON


async def test_a_delayed_start_starts_when_the_clock_reaches_it(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow = Workflow("kit-later", input=Order).step("only")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("only")
    async def only(ctx: StepContext[Order]) -> None:
        return None

    plait_workflows.register(consumer)
    later = await plait_workflows.execute(flow, Order(order_id="o-5"), delay=HOUR)
    at = await plait_workflows.execute(
        flow, Order(order_id="o-6"), start_at=datetime.now(tz=UTC) + 2 * HOUR
    )
    await _never(plait_workflows, later, WorkflowStatus.COMPLETED)
    started = time.monotonic()
    await plait_clock.advance(HOUR)
    await later.result(timeout=SOON)
    assert await at.status() == WorkflowStatus.PENDING
    await plait_clock.advance(HOUR)
    await at.result(timeout=SOON)
    assert await at.status() == WorkflowStatus.COMPLETED
    assert time.monotonic() - started < SOON


async def test_a_schedule_fires_each_time_the_clock_reaches_a_tick(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow = Workflow("kit-hourly", input=Order).step("report")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    reports: list[str] = []

    @consumer.step("report")
    async def report(ctx: StepContext[Order]) -> None:
        reports.append(ctx.meta["scheduled_at"])

    plait_workflows.register(consumer)
    await plait_workflows.schedule("hourly", flow, Order(order_id="r"), every=HOUR)
    await anyio.sleep(0.3)
    assert reports == []
    started = time.monotonic()
    await plait_clock.advance(HOUR)
    assert len(reports) == 1  # advance returns once the tick's run has run
    await plait_clock.advance(HOUR)
    assert len(reports) == 2  # the first run had ended: the second tick is not skipped
    assert time.monotonic() - started < SOON


class Placed(BaseModel):
    order_id: str


placed = Event("kit.placed", data=Placed)


async def test_a_delayed_event_and_a_handler_retry_are_due_when_the_clock_moves(
    plait_clock: VirtualClock,
) -> None:
    seen: list[tuple[str, int]] = []

    async def bill(ctx: EventContext[Placed]) -> None:
        seen.append((ctx.data.order_id, ctx.attempt))
        if ctx.attempt == 1:
            raise RuntimeError("billing down")

    retry = RetryPolicy(max_attempts=2, initial_interval=HOUR)
    async with RedisEventProvider.from_url(plait_clock.url, group="bill", retry=retry) as events:
        events.on(placed, bill)
        await events.ready()
        await events.emit(placed, Placed(order_id="e-1"), delay=HOUR)
        await anyio.sleep(0.3)
        assert seen == []
        started = time.monotonic()
        await plait_clock.advance(HOUR)  # delivered: attempt 1 fails, its retry waits an hour
        assert seen == [("e-1", 1)]
        await plait_clock.advance(HOUR)
        assert seen == [("e-1", 1), ("e-1", 2)]
        assert time.monotonic() - started < SOON


async def test_key_expiry_follows_the_clock_and_no_other_server_moves() -> None:
    async with VirtualClock() as moved, VirtualClock() as other:
        workflows = RedisWorkflowProvider.from_url(moved.url)
        client: Any = workflows._connection.client
        await client.set("k", "v", ex=3600)
        await moved.advance(HOUR)
        assert await client.get("k") is None
        assert moved.ahead == HOUR
        assert other.ahead == timedelta(0)
        assert abs((other.now() - datetime.now(tz=UTC)).total_seconds()) < 1
        assert (moved.now() - datetime.now(tz=UTC)) > HOUR - timedelta(seconds=1)
        seconds, _ = await client.time()
        assert seconds - time.time() > 3599  # what the Lua scripts read
        plain: Any = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())  # not plait's
        seconds, _ = await plain.time()
        assert abs(seconds - time.time()) < 2
        await plain.aclose()
        await workflows._connection.aclose()


async def test_each_test_gets_a_fresh_server_on_the_real_time(plait_clock: VirtualClock) -> None:
    assert plait_clock.ahead == timedelta(0)
    assert plait_clock.url.startswith("memory://plait-test-")


async def test_a_clock_only_moves_forward(plait_clock: VirtualClock) -> None:
    with pytest.raises(ValueError, match="forward"):
        await plait_clock.advance(timedelta(seconds=-1))


def test_without_backoff_keeps_the_attempts_and_drops_the_waiting() -> None:
    policy = RetryPolicy(max_attempts=5, initial_interval=HOUR, non_retryable=(KeyError,))
    quick = without_backoff(policy)
    assert (quick.max_attempts, quick.non_retryable) == (5, (KeyError,))
    assert [quick.delay(n) for n in (1, 2, 3)] == [timedelta(0)] * 3
    assert without_backoff().max_attempts == RetryPolicy().max_attempts


async def test_retries_without_backoff_run_at_once(plait_clock: VirtualClock) -> None:
    flow = Workflow("kit-quick", input=Order).step("flaky")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    @consumer.step("flaky")
    async def flaky(ctx: StepContext[Order]) -> int:
        raise RuntimeError(f"attempt {ctx.attempt}")

    workflows = RedisWorkflowProvider.from_url(plait_clock.url, retry=without_backoff())
    workflows.register(consumer)
    async with workflows:
        handle = await workflows.execute(flow, Order(order_id="q-1"))
        started = time.monotonic()
        with pytest.raises(WorkflowStepError) as failed:
            await handle.result(timeout=SOON)
        assert failed.value.attempt == 3
        assert time.monotonic() - started < 1.5  # the default policy waits 1 s + 2 s


PLUGIN_TEST = """
from datetime import timedelta

import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_fixtures(plait_clock, plait_workflows, plait_events):
    assert plait_workflows._connection.url == plait_clock.url
    assert plait_events._connection.url == plait_clock.url
    await plait_clock.advance(timedelta(minutes=1))
    assert plait_clock.ahead == timedelta(minutes=1)
"""


def test_the_fixtures_come_from_the_installed_pytest_plugin(tmp_path: Path) -> None:
    (tmp_path / "test_kit.py").write_text(PLUGIN_TEST, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kit.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


async def test_idle_gives_up_on_work_that_never_ends(
    plait_workflows: RedisWorkflowProvider, plait_clock: VirtualClock
) -> None:
    flow = Workflow("kit-stuck", input=Order).step("stuck")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    release = anyio.Event()

    @consumer.step("stuck")
    async def stuck(ctx: StepContext[Order]) -> None:
        await release.wait()

    plait_workflows.register(consumer)
    handle = await plait_workflows.execute(flow, Order(order_id="s-1"))
    with pytest.raises(TimeoutError, match="still had work"):
        await plait_clock.idle(timeout=0.3)
    release.set()
    await plait_clock.idle()
    assert await handle.status() == WorkflowStatus.COMPLETED


def test_loading_the_plugin_imports_no_engine() -> None:
    """Every pytest run where plait is installed loads the plugin: it must cost nothing."""
    code = "import sys, plait.testing._plugin; print('plait.providers.redis' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
