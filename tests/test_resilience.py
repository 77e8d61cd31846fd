"""One bad run, entry or key never takes a worker down, and a provider that died says so.

On every backend: a corrupt field of a run fails that run with ``plait.CorruptRun`` (or is
ignored when it only carries a span link) while the worker runs every other run; an entry whose
run does not exist or whose run key holds another type is dead-lettered with the reason, and the
rest of its batch runs; timers, the reconciler, the heartbeat and the event readers go on past
keys of the wrong type; an exception that cannot describe itself is still recorded as the
cause; and a provider whose background work died anyway reports ``alive=False`` (``alive``,
``health()``, ``health_app``) instead of looking healthy. The same faults in ``plait worker``
processes are in ``test_worker_processes.py``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel
from redis.asyncio.cluster import RedisCluster
from test_health import call

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider, health_app
from plait.providers.redis._core.keys import (
    EventKeys,
    WorkflowKeys,
    instances,
    workflow_registry,
)
from plait.providers.redis._ops.health import check_health
from plait.workflows import (
    ProviderClosedError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio


class Job(BaseModel):
    n: int = 0


flow = Workflow("sturdy", input=Job).step("s1").step("s2")


async def double(ctx: StepContext[Job]) -> int:
    return ctx.input.n * 2


def consumer(s1: Any = double) -> WorkflowConsumer[Job, Any]:
    """``s1`` doubles the input, ``s2`` adds one; the run's result is ``s2``'s."""
    steps: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    steps.step("s1")(s1)

    @steps.step("s2")
    async def s2(ctx: StepContext[Job]) -> int:
        return int(ctx.results["s1"]) + 1

    @steps.on_complete
    async def done(ctx: Any) -> int:
        return int(ctx.results["s2"])

    return steps


async def dead_letters(client: Any, keys: WorkflowKeys) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await client.xrange(keys.dead)
    ]


# -- corrupt run fields ----------------------------------------------------------------------

CORRUPT = {"deadline": "soon", "s1|at": "one", "meta": "{torn", "input": b"\xff\xfe"}


@pytest.mark.parametrize("field", sorted(CORRUPT))
async def test_a_corrupt_run_field_fails_that_run_and_the_worker_runs_every_other(
    open_provider: OpenProvider, prefix: str, field: str
) -> None:
    caller = await open_provider()  # no consumer yet: the runs wait for the worker
    client: Any = caller._connection.client
    bad = await caller.execute(flow, Job(n=-1))
    await client.hset(WorkflowKeys(prefix, flow.name).run(bad.run_id), field, CORRUPT[field])
    good = [await caller.execute(flow, Job(n=n)) for n in range(20)]

    worker = await open_provider(consumer())

    assert [await handle.result(timeout=10) for handle in good] == [2 * n + 1 for n in range(20)]
    with pytest.raises(WorkflowStepError) as caught:
        await bad.result(timeout=10)
    assert caught.value.cause_type == "plait.CorruptRun"
    assert f"'{field}'" in caught.value.cause_message
    assert await bad.status() is WorkflowStatus.FAILED
    assert worker.alive


async def test_a_corrupt_last_error_only_loses_the_span_link(
    open_provider: OpenProvider, prefix: str
) -> None:
    caller = await open_provider()
    handle = await caller.execute(flow, Job(n=4))
    client: Any = caller._connection.client
    await client.hset(WorkflowKeys(prefix, flow.name).run(handle.run_id), "s1|er", "{torn")

    await open_provider(consumer())

    assert await handle.result(timeout=10) == 9


# -- entries that name no run ----------------------------------------------------------------


async def test_an_entry_whose_run_key_holds_another_type_is_dead_lettered_and_its_batch_runs(
    open_provider: OpenProvider, prefix: str
) -> None:
    keys = WorkflowKeys(prefix, flow.name)
    caller = await open_provider()
    client: Any = caller._connection.client
    before = [await caller.execute(flow, Job(n=n)) for n in range(4)]
    imposter = f"{flow.name}.0000000000000000000000000000"
    await client.set(keys.run(imposter), "not a run")
    await client.xadd(keys.jobs, {"r": imposter, "j": "s1", "t": "1"})
    after = [await caller.execute(flow, Job(n=n)) for n in range(4, 8)]

    worker = await open_provider(consumer())  # its first read takes all nine in one batch

    results = [await handle.result(timeout=10) for handle in before + after]
    assert results == [2 * n + 1 for n in range(8)]
    [dead] = await dead_letters(client, keys)
    assert dead["reason"].startswith(f"foreign entry: the key of run {imposter} ")
    assert "WRONGTYPE" in dead["reason"]
    assert json.loads(dead["fields"]) == {"r": imposter, "j": "s1", "t": "1"}
    assert await client.get(keys.run(imposter)) == b"not a run"
    assert worker.alive


async def test_an_entry_naming_a_run_that_does_not_exist_is_dead_lettered_as_foreign(
    open_provider: OpenProvider, prefix: str
) -> None:
    keys = WorkflowKeys(prefix, flow.name)
    worker = await open_provider(consumer())
    client: Any = worker._connection.client
    ghost = f"{flow.name}.ffffffffffffffffffffffffffff"

    await client.xadd(keys.jobs, {"r": ghost, "j": "s1", "t": "3"})

    async def dead_lettered() -> bool:
        return bool(await client.xlen(keys.dead))

    await eventually(dead_lettered, what="the foreign entry dead-lettered")
    [dead] = await dead_letters(client, keys)
    assert dead["reason"] == f"foreign entry: run {ghost} does not exist"
    assert await client.xlen(keys.jobs) == 0
    assert await (await worker.execute(flow, Job(n=1))).result(timeout=10) == 3


# -- errors that cannot describe themselves --------------------------------------------------


class UnprintableError(Exception):
    """An exception whose ``str()`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no words for it")


@pytest.mark.parametrize("tracing", [False, True], ids=["untraced", "traced"])
async def test_a_step_error_whose_str_raises_is_recorded_as_its_cause(
    open_provider: OpenProvider, tracing: bool
) -> None:
    attempts: list[int] = []
    steps: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)

    @steps.step("s1")
    async def s1(ctx: StepContext[Job]) -> None:
        attempts.append(ctx.attempt)
        raise UnprintableError

    steps.step("s2")(lambda ctx: None)
    options = {"tracer_provider": TracerProvider()} if tracing else {}
    workflows = await open_provider(steps, **options)

    with pytest.raises(WorkflowStepError) as caught:
        await (await workflows.execute(flow, Job())).result(timeout=10)

    error = caught.value
    assert (error.step, error.attempt) == ("s1", 3)
    assert error.cause_type == f"{__name__}.UnprintableError"
    assert error.cause_message == "<str() of UnprintableError raised RuntimeError>"
    assert attempts == [1, 2, 3]


# -- background loops ------------------------------------------------------------------------


async def test_timers_go_on_past_a_deadline_whose_run_key_holds_another_type(
    open_provider: OpenProvider, prefix: str
) -> None:
    keys = WorkflowKeys(prefix, flow.name)
    failures: list[int] = []

    async def flaky(ctx: StepContext[Job]) -> int:
        if ctx.attempt == 1:
            failures.append(1)
            raise RuntimeError("first attempt fails: the timer must promote the retry")
        return ctx.input.n * 2

    caller = await open_provider()
    client: Any = caller._connection.client
    await client.set(keys.run(f"{flow.name}.bad"), "not a run")
    await client.zadd(keys.deadlines, {f"{flow.name}.bad": 1})

    workflows = await open_provider(consumer(flaky))

    assert await (await workflows.execute(flow, Job(n=5))).result(timeout=10) == 11
    assert failures == [1]
    assert workflows.alive


async def test_the_reconciler_goes_on_past_an_index_of_another_type(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider(consumer(), reconcile_interval=timedelta(milliseconds=50))
    client: Any = workflows._connection.client
    await client.set(WorkflowKeys(prefix, "ghost").active, "not a zset")
    await client.zadd(workflow_registry(prefix), {"ghost": 0})  # the reconciler reads the registry

    async def failed_pass() -> bool:
        last = workflows.last_reconcile
        return last is not None and last.failed > 0

    await eventually(failed_pass, what="a reconciler pass that counted the broken index")
    assert await (await workflows.execute(flow, Job(n=2))).result(timeout=10) == 5
    assert workflows.alive


async def test_the_heartbeat_goes_on_past_a_key_of_another_type(
    open_provider: OpenProvider, url: str, prefix: str
) -> None:
    caller = await open_provider()
    client: Any = caller._connection.client
    await client.set(instances(prefix), "not a zset")

    workflows = await open_provider(consumer())
    await anyio.sleep(0.2)  # the first beats failed meanwhile

    assert await (await workflows.execute(flow, Job(n=3))).result(timeout=10) == 7
    assert workflows.alive


class Ping(BaseModel):
    n: int


pinged = Event("resilience.pinged", data=Ping)
broken = Event("resilience.broken", data=Ping)


async def test_an_event_reader_goes_on_past_a_stream_of_another_type(url: str, prefix: str) -> None:
    handled: list[int] = []
    events = RedisEventProvider.from_url(url, group="g", prefix=prefix)

    @events.on(pinged)
    async def ping(ctx: EventContext[Ping]) -> None:
        handled.append(ctx.data.n)

    events.on(broken, ping)
    async with events:
        client: Any = events._connection.client
        stream = EventKeys(prefix, broken.name).stream
        await client.delete(stream)
        await client.set(stream, "not a stream")  # its reader now fails on every read
        await anyio.sleep(0.2)

        await events.emit(pinged, {"n": 1})
        await eventually(lambda: _is(handled, [1]), what="the healthy reader still delivers")
        assert events.alive
        await client.delete(stream)


async def _is(value: list[int], expected: list[int]) -> bool:
    return value == expected


# -- a provider that died says so ------------------------------------------------------------


async def _close_reopened(provider: Any) -> None:
    """Close the connections a report on a stopped provider opened again (stop() closed its
    client once; connections left open warn when collected)."""
    client = provider._connection.client
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


def _providers(url: str, prefix: str) -> dict[str, Any]:
    return {
        "workflows": RedisWorkflowProvider.from_url(url, prefix=prefix),
        "events": RedisEventProvider.from_url(url, group="g", prefix=prefix),
    }


async def _dead_heartbeat() -> None:
    await anyio.sleep(0.1)  # after start
    raise RuntimeError("injected fault: the heartbeat loop died")


@pytest.mark.parametrize("kind", ["workflows", "events"])
async def test_a_provider_whose_background_work_died_is_not_alive_and_not_healthy(
    url: str, prefix: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = _providers(url, prefix)[kind]
    monkeypatch.setattr(provider._heartbeat, "serve", _dead_heartbeat)
    await provider.start()
    assert provider.alive

    async def dead() -> bool:
        return not provider.alive

    await eventually(dead, timeout=5, what="the provider noticed its work died")
    with pytest.raises(ExceptionGroup) as stopped:
        await provider.stop()  # raises what the work died of
    report = await provider.health()
    status, _, body = await call(health_app(provider))
    with pytest.raises(ProviderClosedError, match="injected fault"):
        if kind == "workflows":
            await provider.execute(flow, Job())
        else:
            await provider.emit(pinged, {"n": 1})
    await _close_reopened(provider)

    assert (report.ok, report.alive) == (False, False)
    assert "RuntimeError: injected fault: the heartbeat loop died" in report.problems[-1]
    assert status == 503
    assert json.loads(body)["alive"] is False
    assert stopped.group_contains(RuntimeError, match="injected fault", depth=None)


async def test_a_workflow_provider_whose_lease_renewal_died_is_not_alive(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflows = RedisWorkflowProvider.from_url(url, prefix=prefix)

    def dead_renewal() -> None:
        raise RuntimeError("injected fault: the lease thread died")

    monkeypatch.setattr(workflows._leases, "_renew", dead_renewal)
    async with workflows:

        async def dead() -> bool:
            return not workflows.alive

        await eventually(dead, timeout=5, what="the provider noticed its lease thread died")
        report = await workflows.health()

    assert (report.ok, report.alive) == (False, False)
    assert report.problems[-1] == (
        "this instance's lease renewal died "
        "(RuntimeError: injected fault: the lease thread died; see its log)"
    )


async def test_started_providers_are_alive_until_they_stop(url: str, prefix: str) -> None:
    workflows = RedisWorkflowProvider.from_url(url, prefix=prefix)
    assert not workflows.alive

    async with workflows:
        report = await workflows.health()
        assert workflows.alive
    stopped = await workflows.health()
    await _close_reopened(workflows)

    assert (report.ok, report.alive) == (True, True)
    assert not workflows.alive
    assert (stopped.ok, stopped.alive) == (False, False)
    assert stopped.problems[-1] == "this instance is not running (not started, or stopped)"
    assert (await check_health(workflows._connection.client, prefix)).alive is None
