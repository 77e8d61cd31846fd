"""``provider.health()``, instance heartbeats and the ASGI health endpoint, on every backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import anyio
import pytest
from conftest import REDIS_URL, OpenProvider, eventually
from faults import Proxy
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import GROUP, EventKeys, WorkflowKeys, instances
from plait.providers.redis._ops.asgi import health_app
from plait.providers.redis._ops.catalog import enroll_workflows
from plait.providers.redis._ops.health import Health, check_health
from plait.providers.redis._ops.heartbeat import FORGET_AFTER, Heartbeat
from plait.workflows import RetryPolicy, StepContext, Workflow, WorkflowConsumer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


class Item(BaseModel):
    n: int


flow = Workflow("health-flow", input=Item).step("only")
noticed = Event("health.noticed", data=Item)


@pytest.fixture
async def client(url: str) -> AsyncIterator[Any]:
    """A plain client on the test's store (it keeps an embedded server alive too)."""
    connection = connect(url, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


def held_consumer(release: anyio.Event) -> WorkflowConsumer[Item, Any]:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(flow)

    @consumer.step("only")
    async def only(ctx: StepContext[Item]) -> int:
        await release.wait()
        return ctx.input.n

    return consumer


def queue(report: Health, kind: str, name: str) -> Any:
    [found] = [q for q in report.queues if (q.kind, q.name) == (kind, name)]
    return found


async def test_health_reports_redis_reachable_with_its_latency(
    open_provider: OpenProvider,
) -> None:
    provider = await open_provider()

    report = await provider.health()

    assert report.ok
    assert report.reachable
    assert report.latency_ms is not None and report.latency_ms >= 0
    assert report.problems == ()


async def test_started_providers_are_live_instances_until_they_stop(
    open_provider: OpenProvider, url: str, prefix: str
) -> None:
    workflows = await open_provider(provider_id="wf-1")

    async def live(*ids: str) -> bool:
        report = await workflows.health()
        return [i.provider_id for i in report.instances if i.live] == list(ids)

    async with RedisEventProvider.from_url(url, group="g", prefix=prefix, provider_id="ev-1"):
        await eventually(lambda: live("ev-1", "wf-1"), what="both providers beat")
    after = await workflows.health()

    assert [i.provider_id for i in after.instances] == ["wf-1"]


async def test_silent_instances_are_not_live_and_are_forgotten(
    open_provider: OpenProvider, client: Any, prefix: str
) -> None:
    provider = await open_provider(provider_id="alive")
    await Heartbeat(client, prefix, "alive").beat()
    seconds, _ = await client.time()
    now_ms = int(seconds) * 1000
    await client.zadd(instances(prefix), {"quiet": now_ms - 60_000})
    await client.zadd(instances(prefix), {"gone": now_ms - int(FORGET_AFTER * 1000) - 60_000})

    report = await provider.health()
    await Heartbeat(client, prefix, "alive").beat()

    assert {(i.provider_id, i.live) for i in report.instances} == {
        ("alive", True),
        ("quiet", False),
    }
    assert await client.zscore(instances(prefix), "gone") is None


async def test_steps_nobody_takes_show_as_lag_and_fail_after_max_wait(
    open_provider: OpenProvider, client: Any, prefix: str
) -> None:
    provider = await open_provider()  # emitter only
    await provider.execute(flow, Item(n=1))
    await provider.execute(flow, Item(n=2))

    report = await provider.health()
    strict = await check_health(client, prefix, max_wait=0)

    [group] = queue(report, "workflow", flow.name).groups
    assert (group.name, group.lag, group.pending) == (GROUP, 2, 0)
    assert group.oldest_waiting is not None
    assert report.ok
    assert not strict.ok
    [problem] = strict.problems
    assert problem.startswith(f"workflow {flow.name!r}: 2 entries waiting, the oldest for ")


async def test_running_steps_are_pending_but_not_stalled(open_provider: OpenProvider) -> None:
    release = anyio.Event()
    provider = await open_provider(held_consumer(release))
    await provider.execute(flow, Item(n=1))

    async def taken() -> bool:
        [group] = queue(await provider.health(), "workflow", flow.name).groups
        return bool(group.pending == 1)

    await eventually(taken, what="the step is taken")
    report = await provider.health()
    release.set()

    [group] = queue(report, "workflow", flow.name).groups
    assert (group.lag, group.pending, group.stalled) == (0, 1, 0)
    assert group.oldest_pending is not None
    assert report.ok


async def test_steps_held_by_a_dead_consumer_are_stalled(
    open_provider: OpenProvider, client: Any, prefix: str
) -> None:
    provider = await open_provider()
    await provider.execute(flow, Item(n=1))
    jobs = WorkflowKeys(prefix, flow.name).jobs
    await client.xgroup_create(jobs, GROUP, id="0")
    await client.xreadgroup(GROUP, "ghost", {jobs: ">"}, count=1)  # and never renews it

    report = await check_health(client, prefix, stalled_after=0)

    [group] = queue(report, "workflow", flow.name).groups
    assert (group.pending, group.stalled) == (1, 1)
    assert not report.ok
    assert "1 pending entries stalled" in report.problems[0]


async def test_event_groups_report_lag_pending_retries_and_dead_letters(
    url: str, prefix: str, client: Any
) -> None:
    slow_retry = RetryPolicy(max_attempts=2, initial_interval=timedelta(minutes=5))
    failures: list[int] = []

    async def fail(ctx: EventContext[Item]) -> None:
        failures.append(ctx.data.n)
        raise ValueError("not now")

    keys = EventKeys(prefix, noticed.name)
    async with RedisEventProvider.from_url(
        url, group="billing", prefix=prefix, retry=slow_retry
    ) as events:
        events.on(noticed, fail)
        await events.ready()
        await client.xgroup_create(keys.stream, "late", id="0")
        await events.emit(noticed, Item(n=1))
        await client.xadd(keys.dead, {"entry": "1-1", "group": "billing", "reason": "test"})

        async def retrying() -> bool:
            return bool(await client.zcard(keys.retry("billing")))

        await eventually(retrying, what="the delivery waits for its retry")
        report = await check_health(client, prefix, stalled_after=0)

    found = queue(report, "event", noticed.name)
    groups = {group.name: group for group in found.groups}
    assert (found.length, found.dead_letters) == (1, 1)
    assert (groups["billing"].pending, groups["billing"].retrying) == (1, 1)
    assert groups["billing"].stalled == 0  # idle on purpose: waiting for its backoff
    assert (groups["late"].lag, groups["late"].pending) == (1, 0)
    assert report.dead_letters == 1


async def test_an_unreachable_redis_gives_a_report_that_is_not_ok() -> None:
    provider = RedisWorkflowProvider.from_url(
        "redis://127.0.0.1:1/0", connect_timeout=timedelta(seconds=1)
    )

    report = await provider.health()

    assert (report.ok, report.reachable, report.latency_ms) == (False, False, None)
    assert report.problems[0].startswith("Redis unreachable")


# -- the ASGI endpoint ------------------------------------------------------------------------


async def call(
    app: Any, method: str = "GET", path: str = "/health"
) -> tuple[int, dict[str, str], bytes]:
    """Call an ASGI app once; returns (status, headers, body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path}, receive, send)
    start, body = sent
    headers = {key.decode(): value.decode() for key, value in start["headers"]}
    return start["status"], headers, body["body"]


async def test_health_app_answers_200_and_the_report_as_json(open_provider: OpenProvider) -> None:
    provider = await open_provider(provider_id="api-1")
    await Heartbeat(provider._connection.client, provider.prefix, "api-1").beat()

    status, headers, body = await call(health_app(provider), path="/health/backlog")

    report = json.loads(body)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert report["ok"] is True
    assert report["live_instances"] == 1


async def test_health_app_answers_liveness_readiness_and_the_backlog_by_path(
    open_provider: OpenProvider,
) -> None:
    provider = await open_provider()
    app = health_app(provider)

    answers = {path: await call(app, path=path) for path in ("/live", "/ready", "/", "/backlog")}

    statuses = {path: status for path, (status, _, _) in answers.items()}
    bodies = {path: json.loads(body) for path, (_, _, body) in answers.items()}
    assert statuses == {"/live": 200, "/ready": 200, "/": 200, "/backlog": 200}
    assert bodies["/live"] == {"alive": True}
    assert (bodies["/ready"]["ok"], bodies["/ready"]["alive"]) == (True, True)
    assert "queues" not in bodies["/ready"]  # readiness reads nothing under the prefix
    assert bodies["/"].keys() == bodies["/ready"].keys()
    assert "queues" in bodies["/backlog"]


async def test_health_app_answers_503_when_not_ok() -> None:
    provider = RedisWorkflowProvider.from_url(
        "redis://127.0.0.1:1/0", connect_timeout=timedelta(seconds=1)
    )

    status, _, body = await call(health_app(provider))

    assert status == 503
    assert json.loads(body)["reachable"] is False


async def test_health_app_refuses_other_methods(open_provider: OpenProvider) -> None:
    provider = await open_provider()

    status, _, _ = await call(health_app(provider), method="POST")

    assert status == 405


async def test_health_app_answers_the_lifespan_protocol(open_provider: OpenProvider) -> None:
    provider = await open_provider()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await health_app(provider)({"type": "lifespan"}, receive, send)

    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


# -- liveness, readiness and the backlog, apart ---------------------------------------------


async def test_a_backlog_leaves_emitter_only_pods_ready_and_shows_in_the_backlog_report(
    url: str, prefix: str, client: Any
) -> None:
    options: dict[str, Any] = {"prefix": prefix, "stall_timeout": timedelta(milliseconds=100)}
    async with (
        RedisWorkflowProvider.from_url(url, **options) as workflows,  # executes only
        RedisEventProvider.from_url(url, group="api", **options) as events,  # emits only
    ):
        await workflows.execute(flow, Item(n=1))
        jobs = WorkflowKeys(prefix, flow.name).jobs
        await client.xgroup_create(jobs, GROUP, id="0")
        await client.xreadgroup(GROUP, "ghost", {jobs: ">"}, count=1)  # and never renews it

        async def stalled() -> bool:
            return not (await workflows.health()).ok

        await eventually(stalled, what="the ghost's step counts as stalled")
        probes = {
            (name, path): await call(health_app(provider), path=path)
            for name, provider in (("workflows", workflows), ("events", events))
            for path in ("/health", "/health/ready", "/health/live", "/health/backlog")
        }
        assert {key: status for key, (status, _, _) in probes.items()} == dict.fromkeys(probes, 200)
        ready = [await workflows.readiness(), await events.readiness()]

    assert [(r.ok, r.reachable, r.alive) for r in ready] == [(True, True, True)] * 2
    backlog = json.loads(probes[("events", "/health/backlog")][2])
    assert backlog["ok"] is False
    assert f"workflow {flow.name!r}: 1 pending entries stalled" in backlog["problems"][0]


@pytest.mark.redis_only
@pytest.mark.parametrize("backend", ["redis"])
async def test_liveness_is_local_readiness_needs_redis_and_a_dead_loop_ends_both(
    backend: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy(urlparse(REDIS_URL).port or 6379) as proxy:
        provider = RedisWorkflowProvider.from_url(
            proxy.url, prefix=prefix, connect_timeout=timedelta(seconds=1)
        )
        died = anyio.Event()

        async def heartbeat() -> None:
            await died.wait()
            raise RuntimeError("injected fault: the heartbeat loop died")

        monkeypatch.setattr(provider._heartbeat, "serve", heartbeat)
        await provider.start()
        app = health_app(provider)
        proxy.down()
        with anyio.fail_after(3):  # readiness is bounded by connect_timeout
            cut_off = [await call(app, path=path) for path in ("/live", "/ready")]
        proxy.up()
        died.set()

        async def dead() -> bool:
            return not provider.alive

        await eventually(dead, timeout=5, what="the provider noticed its heartbeat died")
        after = [await call(app, path=path) for path in ("/live", "/ready")]
        with pytest.raises(ExceptionGroup):
            await provider.stop()  # raises what the work died of

    (live, _, live_body), (ready, _, ready_body) = cut_off
    assert (live, json.loads(live_body)) == (200, {"alive": True})
    assert (ready, json.loads(ready_body)["reachable"]) == (503, False)
    (live, _, live_body), (ready, _, ready_body) = after
    assert (live, json.loads(live_body)) == (503, {"alive": False})
    assert (ready, json.loads(ready_body)["alive"]) == (503, False)


@pytest.mark.redis_only
@pytest.mark.parametrize("backend", ["redis"])
async def test_a_backlog_report_cut_short_by_its_bound_says_so_and_redis_stays_reachable(
    backend: str, client: Any, prefix: str
) -> None:
    await enroll_workflows(client, prefix, [flow.name])
    await client.xadd(WorkflowKeys(prefix, flow.name).jobs, {"r": "x", "j": "only", "t": "1"})
    async with Proxy(urlparse(REDIS_URL).port or 6379) as proxy:
        connection = connect(proxy.url, connect_timeout=2.0)
        try:
            proxy.delay_reply(b"XINFO", 3.0)  # a slow read of the queues, PING is quick
            report = await check_health(connection.client, prefix, timeout=1.0)
        finally:
            await connection.aclose()

    assert (report.ok, report.reachable) == (False, True)
    assert report.latency_ms is not None
    assert report.problems[-1].startswith("backlog report incomplete: not read within 1s")
