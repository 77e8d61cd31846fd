"""Redis Cluster faults on clusters of the tests' own: a slot moving while runs execute and
complete; and clusters or a server that need a password or TLS (every connection plait opens,
the lease thread's and pub/sub's too, carries the credentials and TLS settings of the URL)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import FAST_RETRY, eventually
from local_cluster import local_cluster, tls_server
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core.keys import EventKeys, WorkflowKeys
from plait.workflows import (
    StepContext,
    Workflow,
    WorkflowCancelledError,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
        reason="needs redis-server and redis-cli",
    ),
]

PASSWORD = "s3cret-pw"


class Job(BaseModel):
    n: int = 0


@pytest.fixture
def backend() -> str:
    """The clusters here are the tests' own: nothing to clean on the shared Redis."""
    return "own"


@pytest.fixture(scope="module", params=["cluster-password", "cluster-tls", "server-tls"])
def guarded_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A cluster that needs a password (and masterauth) or speaks TLS only, or one server that
    needs a password and speaks TLS only with a certificate that does not name 127.0.0.1."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param.endswith("tls") and shutil.which("openssl") is None:
        pytest.skip("needs openssl to make certificates")
    if request.param == "server-tls":
        with tls_server(folder, password=PASSWORD) as port:
            options = f"ssl_ca_certs={folder / 'ca.crt'}&ssl_check_hostname=false"
            yield f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?{options}"
        return
    tls = request.param == "cluster-tls"
    with local_cluster(folder, password=None if tls else PASSWORD, tls=tls) as cluster:
        yield cluster.url


# -- a slot moving ----------------------------------------------------------------------------

moving = Workflow("moving", input=Job, concurrency=6).step("a").step("b").step("c")


def moving_consumer(ran: dict[str, int]) -> WorkflowConsumer[Job, Any]:
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(moving)

    def step(name: str) -> None:
        @consumer.step(name)
        async def handler(ctx: StepContext[Job]) -> int:
            ran[f"{ctx.run_id}/{name}"] = ran.get(f"{ctx.run_id}/{name}", 0) + 1
            await anyio.sleep(0.02)
            return ctx.input.n

    for name in ("a", "b", "c"):
        step(name)

    @consumer.on_complete
    async def done(ctx: Any) -> int:
        return int(ctx.results["c"])

    return consumer


async def test_runs_end_exactly_once_while_their_slot_moves_between_nodes(
    tmp_path: Path, prefix: str
) -> None:
    runs = 90
    keys = WorkflowKeys(prefix, moving.name)
    ran: dict[str, int] = {}
    with local_cluster(tmp_path) as cluster:
        provider = RedisWorkflowProvider.from_url(
            cluster.url,
            prefix=prefix,
            retry=FAST_RETRY,
            stall_timeout=timedelta(seconds=2),
            shutdown_timeout=timedelta(seconds=2),
            connect_timeout=timedelta(seconds=20),
        )
        provider.register(moving_consumer(ran))
        await provider.start()
        try:
            node = cluster.node(cluster.ports[0])
            slot = int(node.execute_command("CLUSTER KEYSLOT", keys.jobs))
            handles: list[WorkflowHandle[Any]] = []

            async def execute() -> None:
                for n in range(runs):
                    handles.append(
                        await provider.execute(
                            moving,
                            Job(n=n),
                            idempotency_key=f"order-{n}" if n % 2 else None,
                            timeout=timedelta(minutes=2),
                        )
                    )
                    await anyio.sleep(0.02)

            moved = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(execute)
                await eventually(lambda: _true(len(handles) >= 20), what="runs in flight")
                # around the cluster: to each other node, then back, while runs go on
                home = cluster.owner(slot)
                for port in [*(p for p in cluster.ports if p != home), home]:
                    moved.append(await anyio.to_thread.run_sync(cluster.move, slot, port))

            results = [await handle.result(timeout=30) for handle in handles]
            client: Any = provider._connection.client
            stats = await client.hgetall(keys.stats)
            finished = [
                sum(1 for _, fields in await client.xrange(keys.events(h.run_id))
                    if fields[b"k"] == b"finished")
                for h in handles
            ]  # fmt: skip
            active = await client.zcard(keys.active)
            statuses = {await handle.status() for handle in handles}
        finally:
            await provider.stop()

    assert min(moved) > 0  # each move migrated keys while the runs went on
    assert cluster.duplicates == []
    assert results == list(range(runs))
    assert statuses == {WorkflowStatus.COMPLETED}
    assert int(stats[b"COMPLETED"]) == runs
    assert finished == [1] * runs
    assert active == 0
    assert set(ran) == {f"{h.run_id}/{step}" for h in handles for step in "abc"}


async def _true(value: bool) -> bool:
    return value


shipped = Event("moving.shipped", data=Job)


async def test_events_are_delivered_while_their_slot_moves_between_nodes(
    tmp_path: Path, prefix: str
) -> None:
    count = 160
    keys = EventKeys(prefix, shipped.name)
    seen: list[int] = []
    with local_cluster(tmp_path) as cluster:
        events = RedisEventProvider.from_url(
            cluster.url,
            group="billing",
            prefix=prefix,
            retry=FAST_RETRY,
            connect_timeout=timedelta(seconds=20),
        )

        @events.on(shipped)
        async def handle(ctx: EventContext[Job]) -> None:
            seen.append(ctx.data.n)

        async with events:
            await events.ready()
            slot = int(
                cluster.node(cluster.ports[0]).execute_command("CLUSTER KEYSLOT", keys.stream)
            )
            emitted: dict[int, str] = {}

            async def emit() -> None:
                for n in range(count):
                    emitted[n] = await events.emit(
                        shipped,
                        Job(n=n),
                        idempotency_key=f"parcel-{n}" if n % 2 else None,
                        delay=timedelta(milliseconds=50) if n % 3 == 0 else None,
                    )
                    await anyio.sleep(0.01)

            moved = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(emit)
                # the idempotency keys fill the slot: moving it takes a while
                await eventually(lambda: _true(len(emitted) >= 60), what="events emitted")
                home = cluster.owner(slot)
                for port in [*(p for p in cluster.ports if p != home), home]:
                    moved.append(await anyio.to_thread.run_sync(cluster.move, slot, port))
            await eventually(lambda: _true(set(seen) == set(range(count))), timeout=30)
            again = [
                await events.emit(shipped, Job(n=n), idempotency_key=f"parcel-{n}")
                for n in range(1, count, 2)
            ]
            client: Any = events._connection.client
            dead = await client.xlen(keys.dead)

    assert min(moved) > 0
    assert cluster.duplicates == []
    assert again == [emitted[n] for n in range(1, count, 2)]  # each key still names its event
    assert dead == 0


# -- a cluster or a server that needs a password, or TLS -------------------------------------

long = Workflow("long-lease", input=Job).step("long")
hanging = Workflow("hanging", input=Job).step("hang")


async def test_a_step_longer_than_the_stall_timeout_keeps_its_lease_on_a_guarded_redis(
    guarded_url: str, prefix: str
) -> None:
    stall = timedelta(seconds=1)
    attempts: list[int] = []
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(long)

    @consumer.step("long")
    async def run_long(ctx: StepContext[Job]) -> None:
        attempts.append(ctx.attempt)
        await anyio.sleep(3 * stall.total_seconds())

    # The runner has no free slot, so only the other instance would reclaim the entry.
    providers = [
        RedisWorkflowProvider.from_url(
            guarded_url,
            prefix=prefix,
            stall_timeout=stall,
            retry=FAST_RETRY,
            concurrency=concurrency,
        )
        for concurrency in (1, 10)
    ]
    try:
        for provider in providers:
            provider.register(consumer)
            await provider.start()
            if not attempts:
                handle = await provider.execute(long, Job())
                await eventually(lambda: _true(attempts == [1]), what="the runner took the step")
        await handle.result(timeout=20)
        step = (await handle.describe()).steps["long"]
    finally:
        for provider in providers:
            await provider.stop()
    assert attempts == [1]
    assert (step.attempts, step.error) == (1, None)


async def test_a_cancel_reaches_a_running_step_on_a_guarded_redis(
    guarded_url: str, prefix: str
) -> None:
    log: list[str] = []
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(hanging)

    @consumer.step("hang")
    async def hang(ctx: StepContext[Job]) -> None:
        log.append("started")
        try:
            await anyio.sleep(60)
        finally:
            log.append("stopped")

    provider = RedisWorkflowProvider.from_url(guarded_url, prefix=prefix)
    provider.register(consumer)
    await provider.start()
    try:
        handle = await provider.execute(hanging, Job())
        await eventually(lambda: _true(log == ["started"]), what="the step runs")
        assert await handle.cancel()
        await eventually(lambda: _true(log == ["started", "stopped"]), what="the step stops")
        with pytest.raises(WorkflowCancelledError):
            await handle.result(timeout=10)
    finally:
        await provider.stop()
