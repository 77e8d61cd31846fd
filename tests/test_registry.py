"""The registry of workflow and event names, and the tools that read it instead of scanning.

Names are enrolled when a consumer or a handler starts and when a workflow is first executed,
on every backend; ``plait registry rebuild`` finds data written before the registry existed.
Beside a million unrelated keys (a Redis server of the tests' own, filled by ``DEBUG
POPULATE``), ``plait health``, ``plait runs list``, ``plait dead-letters list`` and the HTTP
probes answer within a bound and name the registered workflows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually, standalone_redis
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import (
    EventKeys,
    WorkflowKeys,
    event_registry,
    workflow_registry,
)
from plait.providers.redis._ops import catalog
from plait.providers.redis._ops.asgi import health_app
from plait.providers.redis._ops.catalog import event_names, rebuild, workflow_names
from plait.providers.redis._ops.health import check_health
from plait.workflows import StepContext, Workflow, WorkflowConsumer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

UNRELATED = 1_000_000
"""Keys of other applications on the crowded server."""
BOUND = 3.0
"""Seconds a command or a probe may take beside them (PING answers in well under 1 ms)."""
CLI = [sys.executable, "-m", "plait.providers.redis"]


class Item(BaseModel):
    n: int


consumed = Workflow("registry-consumed", input=Item).step("only")
executed = Workflow("registry-executed", input=Item).step("only")
late = Workflow("registry-late", input=Item).step("only")
handled = Event("registry.handled", data=Item)
emitted = Event("registry.emitted", data=Item)


def consumer(definition: Workflow[Item, Any]) -> WorkflowConsumer[Item, Any]:
    made: WorkflowConsumer[Item, Any] = WorkflowConsumer(definition)

    @made.step("only")
    async def only(ctx: StepContext[Item]) -> int:
        return ctx.input.n

    return made


async def ignore(ctx: EventContext[Item]) -> None:
    return None


@pytest.fixture
async def client(url: str) -> AsyncIterator[Any]:
    """A plain client on the test's store (it keeps an embedded server alive too)."""
    connection = connect(url, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


# -- enrolling, on every backend ---------------------------------------------------------------


async def test_a_started_consumer_and_a_first_execute_enroll_their_workflows(
    open_provider: OpenProvider, client: Any, prefix: str
) -> None:
    provider = await open_provider(consumer(consumed))
    at_start = await workflow_names(client, prefix)
    await provider.execute(executed, Item(n=1))  # nobody consumes it yet

    assert at_start == [consumed.name]
    assert await workflow_names(client, prefix) == sorted([consumed.name, executed.name])


async def test_concurrent_first_executes_enroll_their_workflow_once(
    open_provider: OpenProvider, client: Any, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = await open_provider()
    sent: list[list[str]] = []
    enroll = catalog.enroll_workflows

    async def counted(client: Any, prefix: str, names: Any) -> None:
        sent.append(list(names))
        await enroll(client, prefix, names)

    monkeypatch.setattr(catalog, "enroll_workflows", counted)
    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(provider.execute, executed, Item(n=n))
    await provider.execute(executed, Item(n=50))

    assert sent == [[executed.name]]
    assert await workflow_names(client, prefix) == [executed.name]


async def test_a_consumer_registered_after_start_is_enrolled(
    open_provider: OpenProvider, client: Any, prefix: str
) -> None:
    provider = await open_provider()
    provider.register(consumer(late))

    async def enrolled() -> bool:
        return await workflow_names(client, prefix) == [late.name]

    await eventually(enrolled, what="the late consumer's workflow is enrolled")


async def test_a_started_handler_enrolls_its_event_and_an_emit_alone_does_not(
    url: str, prefix: str, client: Any
) -> None:
    events = RedisEventProvider.from_url(url, group="billing", prefix=prefix)
    events.on(handled, ignore)
    async with events:
        at_start = await event_names(client, prefix)
        await events.emit(emitted, Item(n=1))
        await events.emit(handled, Item(n=2))
        after = await event_names(client, prefix)

    assert at_start == after == [handled.name]


async def test_the_backlog_report_and_dead_letters_cover_the_enrolled_names(
    open_provider: OpenProvider, client: Any, prefix: str
) -> None:
    provider = await open_provider(consumer(consumed))
    await provider.execute(executed, Item(n=1))
    await client.xadd(WorkflowKeys(prefix, consumed.name).jobs, {"garbage": "1"})

    async def dead_lettered() -> bool:
        return bool(await client.xlen(WorkflowKeys(prefix, consumed.name).dead))

    await eventually(dead_lettered, what="the garbage entry is dead-lettered")
    report = await check_health(client, prefix)

    assert [(queue.kind, queue.name) for queue in report.queues] == [
        ("workflow", consumed.name),
        ("workflow", executed.name),
    ]
    assert report.dead_letters == 1


async def test_rebuild_enrolls_what_was_written_before_the_registry(
    client: Any, prefix: str
) -> None:
    old_workflow, old_event = WorkflowKeys(prefix, "old-flow"), EventKeys(prefix, "old.event")
    await client.xadd(old_workflow.jobs, {"r": "old-flow.1", "j": "only", "t": "1"})
    await client.xadd(old_event.dead, {"entry": "1-1", "group": "g", "reason": "old"})
    await client.set(f"{prefix}:{{not-a-workflow}}:other", "1")
    before = await check_health(client, prefix)

    found = await rebuild(client, prefix)
    after = await check_health(client, prefix)

    assert before.queues == ()
    assert found == (["old-flow"], ["old.event"])
    assert [(queue.kind, queue.name) for queue in after.queues] == [
        ("workflow", "old-flow"),
        ("event", "old.event"),
    ]


# -- beside a million unrelated keys -----------------------------------------------------------


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of this module's own holding :data:`UNRELATED` keys of other apps."""
    folder: Path = tmp_path_factory.mktemp("crowded")
    with standalone_redis(folder, "--enable-debug-command", "local") as port:
        populated = subprocess.run(
            [
                *("redis-cli", "-p", str(port)),
                *("debug", "populate", str(UNRELATED), "other-app:session"),
            ],
            capture_output=True,
            check=True,
        )
        assert populated.stdout.strip() == b"OK", populated
        yield f"redis://127.0.0.1:{port}/0"


async def plait(url: str, prefix: str, *args: str) -> tuple[int, Any, float]:
    """Run ``plait ... --json``; returns its exit code, its decoded output and its seconds."""
    began = time.perf_counter()
    done = await anyio.run_process(
        [*CLI, "--url", url, "--prefix", prefix, *args, "--json"], check=False
    )
    took = time.perf_counter() - began
    return done.returncode, json.loads(done.stdout or b"null"), took


@pytest.mark.redis_only
@pytest.mark.slow
async def test_health_runs_list_and_dead_letters_answer_quickly_beside_a_million_keys(
    crowded: str, prefix: str
) -> None:
    async with RedisWorkflowProvider.from_url(crowded, prefix=prefix) as provider:
        provider.register(consumer(consumed))
        handle = await provider.execute(consumed, Item(n=7))
        await handle.result(timeout=10)

        health = await plait(crowded, prefix, "health")
        listed = await plait(crowded, prefix, "runs", "list")
        dead = await plait(crowded, prefix, "dead-letters", "list")

    code, report, took = health
    assert (code, report["reachable"], report["ok"]) == (0, True, True), report
    assert [(q["kind"], q["name"]) for q in report["queues"]] == [("workflow", consumed.name)]
    assert took < BOUND
    code, runs, took = listed
    assert (code, [row["run_id"] for row in runs]) == (0, [handle.run_id])
    assert took < BOUND
    code, letters, took = dead
    assert (code, letters) == (0, [])
    assert took < BOUND


async def probe(app: Any, path: str) -> tuple[int, dict[str, Any], float]:
    """GET ``path`` from an ASGI app; returns (status, decoded body, seconds)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    began = time.perf_counter()
    await app({"type": "http", "method": "GET", "path": path}, receive, send)
    start, body = sent
    return start["status"], json.loads(body["body"]), time.perf_counter() - began


@pytest.mark.redis_only
@pytest.mark.slow
async def test_three_concurrent_probes_succeed_beside_a_million_keys(
    crowded: str, prefix: str
) -> None:
    async with RedisWorkflowProvider.from_url(crowded, prefix=prefix) as provider:
        provider.register(consumer(consumed))
        await (await provider.execute(consumed, Item(n=1))).result(timeout=10)
        app = health_app(provider)
        answers: list[tuple[int, dict[str, Any], float]] = []

        async def one(path: str) -> None:
            answers.append(await probe(app, path))

        async with anyio.create_task_group() as tg:
            for path in ("/health", "/health", "/health"):
                tg.start_soon(one, path)
        backlog = await probe(app, "/health/backlog")

    assert [status for status, _, _ in answers] == [200, 200, 200], answers
    assert max(took for _, _, took in answers) < BOUND
    status, report, took = backlog
    assert (status, report["ok"]) == (200, True)
    assert [q["name"] for q in report["queues"]] == [consumed.name]
    assert took < BOUND


async def test_a_registry_key_of_another_type_stops_no_consumer_and_no_handler(
    url: str, prefix: str, client: Any
) -> None:
    await client.set(workflow_registry(prefix), "not a zset")
    await client.set(event_registry(prefix), "not a zset")
    seen = anyio.Event()

    async def note(ctx: EventContext[Item]) -> None:
        seen.set()

    workflows = RedisWorkflowProvider.from_url(url, prefix=prefix)
    workflows.register(consumer(consumed))
    events = RedisEventProvider.from_url(url, group="billing", prefix=prefix)
    events.on(handled, note)
    async with workflows, events:
        waiting = await (await workflows.execute(executed, Item(n=1))).status()
        handle = await workflows.execute(consumed, Item(n=2))
        await handle.result(timeout=10)
        done = await handle.status()
        await events.emit(handled, Item(n=3))
        with anyio.fail_after(10):
            await seen.wait()

    assert (waiting.value, done.value) == ("PENDING", "COMPLETED")
