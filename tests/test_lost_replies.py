"""A reply lost after Redis ran the transition: the call is resent and does no harm.

The provider under test talks to Redis through a proxy of the test's own (``tests/faults.py``),
which lets one chosen script call through to Redis and then resets the client's connection
before the reply arrives: the script ran, the client saw a connection error and sends the same
call again. The run must still end once, with the right status, each handler run as often as
without the fault. Each test runs against the shared Redis and against a local cluster whose
nodes announce the proxy's ports (every cluster client goes through the proxy).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import anyio
import pytest
from conftest import REDIS_SERVER, REDIS_URL, _cluster_ok, _free, _ping, _wait, eventually
from faults import Proxy, script_sha
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import (
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only]

ONCE = RetryPolicy(max_attempts=1)
"""No retry: an attempt lost to the fault fails the run instead of hiding behind a retry."""

FAST = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=10))


class Job(BaseModel):
    n: int = 0


@pytest.fixture(params=["redis", "proxied-cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """``redis``: the shared Redis (keys under the test's prefix are cleaned); ``proxied-cluster``:
    a 3-master cluster of this module's own whose nodes announce the proxy's ports, so that
    cluster clients reach every node through it (stopped with the module: nothing to clean)."""
    if request.param == "proxied-cluster" and REDIS_SERVER is None:
        pytest.skip("redis-server not installed: no local Redis Cluster")
    return str(request.param)


@pytest.fixture(scope="module")
def proxied_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ...]]:
    """The node ports, then the ports they announce (where each test's proxy listens)."""
    assert REDIS_SERVER is not None
    folder = tmp_path_factory.mktemp("proxied-cluster")
    # Below the ephemeral range (32768-): each test binds the announced ports anew, which an
    # outgoing connection could have taken meanwhile.
    nodes = _ports(3, low=20_000, high=22_700, bus=True)
    announced = _ports(3, low=23_000, high=32_000, bus=False)
    try:
        for port, public in zip(nodes, announced, strict=True):
            (folder / str(port)).mkdir()
            subprocess.run(
                [
                    *(REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-announce-ip", "127.0.0.1"),
                    *("--cluster-announce-port", str(public)),
                    *("--cluster-announce-bus-port", str(port + 10_000)),
                    *("--dir", str(folder / str(port)), "--save", "", "--appendonly", "no"),
                    *("--daemonize", "yes", "--logfile", str(folder / str(port) / "log")),
                ],
                check=True,
            )
        _wait(lambda: all(_ping(port) for port in nodes), "cluster nodes answer")
        # redis-cli's final check cannot reach the announced ports (no proxy yet): not checked
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in nodes)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=False,
            capture_output=True,
        )
        _wait(lambda: _cluster_ok(nodes), "cluster state ok")
        yield (*nodes, *announced)
    finally:
        for port in nodes:
            subprocess.run(
                ["redis-cli", "-p", str(port), "shutdown", "nosave"],
                capture_output=True,
                check=False,
            )


def _ports(count: int, *, low: int, high: int, bus: bool) -> list[int]:
    """Free ports in [low, high] (with their cluster bus ports, port + 10000, when ``bus``)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(low, high)
        if port not in ports and _free(port) and (not bus or _free(port + 10_000)):
            ports.append(port)
    return ports


@pytest.fixture
async def proxy(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Proxy]:
    """The proxy to the backend's server (or to each node of the cluster)."""
    if backend == "redis":
        async with Proxy(urlparse(REDIS_URL).port or 6379) as opened:
            yield opened
        return
    ports = request.getfixturevalue("proxied_cluster")
    async with Proxy(*ports[:3], listen=ports[3:]) as opened:
        yield opened


@pytest.fixture
def through(backend: str, proxy: Proxy) -> str:
    """The URL of the backend through the proxy."""
    if backend == "redis":
        return proxy.url
    return f"redis+cluster://127.0.0.1:{proxy.port}"


@pytest.fixture
def straight(backend: str, through: str) -> str:
    """The URL of the backend not through the proxy (cluster clients still reach the nodes
    through it: the nodes announce its ports; faults aim at one script, not at a client)."""
    return REDIS_URL if backend == "redis" else through


Open = Callable[..., Awaitable[RedisWorkflowProvider]]


@pytest.fixture
async def open_on(prefix: str) -> AsyncIterator[Open]:
    """``await open_on(url, *consumers, **options)``: a started provider; all stop afterwards."""
    opened: list[RedisWorkflowProvider] = []

    async def open_(url: str, *consumers: WorkflowConsumer[Any, Any], **options: Any) -> Any:
        settings: dict[str, Any] = {
            "prefix": prefix,
            "stall_timeout": timedelta(seconds=1),
            "shutdown_timeout": timedelta(seconds=2),
            **options,
        }
        provider = RedisWorkflowProvider.from_url(url, **settings)
        for consumer in consumers:
            provider.register(consumer)
        await provider.start()
        opened.append(provider)
        return provider

    yield open_
    for provider in reversed(opened):
        await provider.stop()


def _counters(reader: InMemoryMetricReader) -> dict[str, float]:
    """Counter values by metric name (of the only workflow)."""
    values: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    status = (point.attributes or {}).get("plait.status")
                    name = f"{metric.name}:{status}" if status else metric.name
                    values[name] = getattr(point, "value", 0)
    return values


async def _stats(provider: RedisWorkflowProvider, workflow: str) -> dict[bytes, bytes]:
    """The workflow's stats hash (run outcomes, ``fenced``)."""
    client: Any = provider._connection.client
    stats = await client.hgetall(WorkflowKeys(provider.options.prefix, workflow).stats)
    # the counters only: ``idle`` marks a worker waiting for entries (it parks once quiet)
    return {field: value for field, value in stats.items() if field != b"idle"}


async def test_a_start_whose_reply_is_lost_runs_the_attempt_it_started(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-start", input=Job).step("only", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[int] = []
    consumer.step("only")(lambda ctx: ran.append(ctx.attempt))
    proxy.lose_reply(script_sha("run_start_many"))
    await open_on(through, consumer)
    caller = await open_on(straight)

    handle = await caller.execute(flow, Job())

    assert await handle.result(timeout=10) is None
    assert proxy.lost == 1
    assert ran == [1]
    assert (await handle.describe()).steps["only"].attempts == 1


async def test_a_completion_whose_reply_is_lost_runs_the_next_step_it_took(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-complete", input=Job).step("a", retry=ONCE).step("b", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[str] = []
    consumer.step("a")(lambda ctx: ran.append("a"))
    consumer.step("b")(lambda ctx: ran.append("b"))
    proxy.lose_reply(script_sha("run_complete"))  # a's: it also took b's entry and started it
    await open_on(through, consumer)
    caller = await open_on(straight)

    handle = await caller.execute(flow, Job())

    assert await handle.result(timeout=10) is None
    assert proxy.lost == 1
    assert ran == ["a", "b"]
    steps = (await handle.describe()).steps
    assert (steps["a"].attempts, steps["b"].attempts) == (1, 1)


async def test_a_failure_whose_reply_is_lost_is_retried_once_and_fences_nothing(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-fail", input=Job).step("flaky", retry=FAST)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[int] = []

    @consumer.step("flaky")
    def flaky(ctx: StepContext[Job]) -> int:
        ran.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return ctx.attempt

    proxy.lose_reply(script_sha("run_fail"))
    reader = InMemoryMetricReader()
    worker = await open_on(through, consumer, meter_provider=MeterProvider(metric_readers=[reader]))
    caller = await open_on(straight)

    handle = await caller.execute(flow, Job())

    assert await handle.result(timeout=10) is None
    await worker.stop()  # the resend is done
    assert proxy.lost == 1
    assert ran == [1, 2]
    assert b"fenced" not in await _stats(caller, flow.name)  # the resend is no stale write
    counters = _counters(reader)
    assert counters.get("plait.steps.retried") == 1
    assert "plait.fencing.rejections" not in counters


async def test_a_failure_for_good_whose_reply_is_lost_fails_the_run_with_its_error(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-fail-for-good", input=Job).step("broken", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[int] = []

    @consumer.step("broken")
    def broken(ctx: StepContext[Job]) -> None:
        ran.append(ctx.attempt)
        raise RuntimeError("broken for good")

    proxy.lose_reply(script_sha("run_fail"))
    reader = InMemoryMetricReader()
    worker = await open_on(through, consumer, meter_provider=MeterProvider(metric_readers=[reader]))
    caller = await open_on(straight)

    handle = await caller.execute(flow, Job())

    with pytest.raises(WorkflowStepError) as failed:
        await handle.result(timeout=10)
    assert (failed.value.step, failed.value.cause_type) == ("broken", "RuntimeError")
    await worker.stop()  # the resend is done (the run ended with the first call)
    assert proxy.lost == 1
    assert ran == [1]
    stats = await _stats(caller, flow.name)
    assert (stats.get(b"FAILED"), stats.get(b"fenced")) == (b"1", None)
    counters = _counters(reader)
    assert counters.get("plait.runs.finished:FAILED") == 1
    assert "plait.fencing.rejections" not in counters


async def test_a_retry_whose_reply_is_lost_returns_a_handle_and_resumes_once(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-retry", input=Job).step("flaky", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[int] = []

    @consumer.step("flaky")
    def flaky(ctx: StepContext[Job]) -> None:
        ran.append(len(ran) + 1)
        if len(ran) == 1:
            raise RuntimeError("fails the first run")

    await open_on(straight, consumer)
    caller = await open_on(through)
    handle = await caller.execute(flow, Job())
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)
    proxy.lose_reply(script_sha("run_retry"))

    resumed = await caller.retry(handle.run_id)

    assert proxy.lost == 1
    assert resumed.run_id == handle.run_id
    assert await resumed.result(timeout=10) is None
    assert ran == [1, 2]


async def test_a_cancel_whose_reply_is_lost_returns_true_and_cancels_once(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-cancel", input=Job).step("book").step("wait")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    log: list[str] = []
    consumer.step("book")(lambda ctx: log.append("book"))
    consumer.rollback("book")(lambda ctx: log.append("unbook"))

    @consumer.step("wait")
    async def wait(ctx: StepContext[Job]) -> None:
        log.append("wait")
        await anyio.sleep_forever()

    await open_on(straight, consumer)
    caller = await open_on(through)
    handle = await caller.execute(flow, Job())

    async def waiting() -> bool:
        return "wait" in log

    await eventually(waiting, what="wait running")
    proxy.lose_reply(script_sha("run_cancel"))

    assert await handle.cancel() is True
    assert proxy.lost == 1
    with pytest.raises(WorkflowCancelledError):
        await handle.result(timeout=10)
    assert await handle.status() is WorkflowStatus.CANCELLED
    assert log == ["book", "wait", "unbook"]
    assert (await _stats(caller, flow.name)).get(b"CANCELLED") == b"1"


async def test_a_progress_save_whose_reply_is_lost_is_recorded_once(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-progress", input=Job).step("long", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @consumer.step("long")
    async def long(ctx: StepContext[Job]) -> int:
        await ctx.save_progress({"done": 1})
        return 1

    proxy.lose_reply(script_sha("run_progress"))
    await open_on(through, consumer)
    caller = await open_on(straight)

    handle = await caller.execute(flow, Job())

    assert await handle.result(timeout=10) is None
    assert proxy.lost == 1
    saved = [
        event.data for event in [e async for e in handle.watch()] if event.kind == "step.progress"
    ]
    assert saved == [{"progress": {"done": 1}}]


async def test_a_dead_letter_whose_reply_is_lost_is_moved_once(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("lost-dead-letter", input=Job).step("only")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    consumer.step("only")(lambda ctx: None)
    worker = await open_on(through, consumer)
    caller = await open_on(straight)
    client: Any = caller._connection.client
    keys = WorkflowKeys(caller.options.prefix, flow.name)
    proxy.lose_reply(script_sha("run_dead_letter", None))

    await client.xadd(keys.jobs, {"garbage": "yes"})

    async def moved() -> bool:
        return proxy.lost == 1 and await client.xlen(keys.jobs) == 0

    await eventually(moved, what="entry dead-lettered")
    await worker.stop()  # the resend is done
    dead = await client.xrange(keys.dead)
    assert [fields[b"reason"] for _, fields in dead] == [b"malformed entry: field b'r' missing"]


async def test_a_start_slower_than_half_the_stall_timeout_still_runs_its_attempt(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("slow-start", input=Job).step("only", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: list[int] = []
    consumer.step("only")(lambda ctx: ran.append(ctx.attempt))
    proxy.delay_reply(script_sha("run_start_many"), 0.8)  # stall timeout 1 s
    await open_on(through, consumer)
    caller = await open_on(straight)

    handle = await caller.execute(flow, Job())

    assert await handle.result(timeout=10) is None
    assert ran == [1]


async def test_stop_is_bounded_by_the_shutdown_timeout_while_a_start_call_hangs(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("hung-start", input=Job).step("only")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    consumer.step("only")(lambda ctx: None)
    proxy.delay_reply(script_sha("run_start_many"), 30)
    worker = await open_on(through, consumer, shutdown_timeout=timedelta(seconds=1))
    caller = await open_on(straight)
    await caller.execute(flow, Job())

    async def sent() -> bool:
        return not proxy.armed

    await eventually(sent, what="start call sent")
    began = time.monotonic()
    await worker.stop()

    assert time.monotonic() - began < 3


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis"], indirect=True)  # see the README on clusters
async def test_resetting_the_workers_connections_every_100_ms_fails_no_run(
    proxy: Proxy, open_on: Open, through: str, straight: str
) -> None:
    flow = Workflow("soak", input=Job).step("a", retry=ONCE).step("b", retry=ONCE)
    flow = flow.step("c", retry=ONCE)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    ran: Counter[tuple[int, str]] = Counter()
    for name in ("a", "b", "c"):
        consumer.step(name)(lambda ctx, name=name: ran.update([(ctx.input.n, name)]))
    await open_on(through, consumer, stall_timeout=timedelta(seconds=2))
    caller = await open_on(straight)

    async def resetting() -> None:
        while True:
            await anyio.sleep(0.1)
            proxy.reset()

    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(resetting)
        handles = []
        for n in range(200):  # 40 runs/s for 5 s
            handles.append(await caller.execute(flow, Job(n=n)))
            await anyio.sleep(max(0.0, began + (n + 1) * 0.025 - time.monotonic()))
        for handle in handles:
            assert await handle.result(timeout=30) is None
        tg.cancel_scope.cancel()

    assert proxy.resets >= 40
    stats = await _stats(caller, flow.name)
    assert stats == {b"COMPLETED": b"200"}  # nothing fenced, nothing failed
    assert sorted(ran) == [(n, step) for n in range(200) for step in "abc"]
    assert set(ran.values()) == {1}
    for handle in handles:
        steps = (await handle.describe()).steps.values()
        assert [(s.attempts, s.error) for s in steps] == [(1, None)] * 3
