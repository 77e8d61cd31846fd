"""Networks that stop answering: black holes and latency, between plait and a Redis of its own.

Every test runs its own ``redis-server`` behind the tests' TCP proxy (``faults.Proxy``). A
black hole keeps every connection open and forwards nothing (no FIN, no RST), the fault that
no error reports: a caller is told :class:`ProviderUnavailableError` within
``connect_timeout``, a worker process notices and reconnects once the path heals. A latency
makes plait slow, never stuck, and a stall timeout too short for the round trip is logged.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
from apps.definitions import Job, chain
from conftest import Spawn, eventually, ready, standalone_redis
from faults import Proxy

from plait.events import Event, EventProviderUnavailableError
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core.connection import MAX_SCRIPT_CONNECTIONS
from plait.workflows import ProviderUnavailableError, Workflow, WorkflowConsumer, WorkflowStatus

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis_only,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

CONNECT = 2.0
"""The callers' connect_timeout in these tests (seconds)."""
MARGIN = 1.0
"""How much later than connect_timeout a black-holed caller may be told (the watchdog looks
every 0.25 s; the rest is this loaded machine)."""

noted = Event("network.noted", data=Job)
single = Workflow("network-single", input=Job).step("only")


@pytest.fixture
def backend() -> str:
    """A Redis server of the test's own (nothing to clean on the shared one)."""
    return "redis"


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A fresh redis-server with no persistence, shut down afterwards."""
    with standalone_redis(tmp_path) as port:
        yield port


@pytest.fixture
async def proxy(redis_port: int) -> AsyncIterator[Proxy]:
    async with Proxy(redis_port) as opened:
        yield opened


@pytest.fixture
async def caller(proxy: Proxy, prefix: str) -> AsyncIterator[RedisWorkflowProvider]:
    """A caller-only provider through the proxy, connect_timeout :data:`CONNECT`."""
    provider = RedisWorkflowProvider.from_url(
        proxy.url, prefix=prefix, connect_timeout=timedelta(seconds=CONNECT)
    )
    await provider.start()
    yield provider
    proxy.heal()
    await provider.stop()


async def _told_within(call: Callable[[], Awaitable[Any]], error: type[Exception]) -> float:
    """Seconds until ``call()`` raised ``error`` (fails the test past twice the bound)."""
    began = time.monotonic()
    with anyio.fail_after(2 * (CONNECT + MARGIN)), pytest.raises(error):
        await call()
    return time.monotonic() - began


async def test_a_black_holed_caller_is_told_within_connect_timeout(
    proxy: Proxy, caller: RedisWorkflowProvider
) -> None:
    handle = await caller.execute(single, Job(n=0))  # the pool's connections are open
    proxy.black_hole()

    waits = {
        "execute": await _told_within(
            lambda: caller.execute(single, Job(n=0)), ProviderUnavailableError
        ),
        "status": await _told_within(handle.status, ProviderUnavailableError),
        "cancel": await _told_within(handle.cancel, ProviderUnavailableError),
    }

    assert all(wait <= CONNECT + MARGIN for wait in waits.values()), waits
    proxy.heal()
    assert await handle.status() == WorkflowStatus.PENDING  # the connection came back


async def test_a_burst_of_executes_shares_a_bounded_set_of_connections(
    redis_port: int, prefix: str
) -> None:
    """1,000 executes at once do not open 1,000 connections (a connect storm that a busy Redis
    answers too slowly: its accept queue overflows and connects time out); they queue for the
    provider's script connections instead, and every one of them makes its run."""
    admin = sync_redis.Redis(port=redis_port)
    provider = RedisWorkflowProvider.from_url(f"redis://127.0.0.1:{redis_port}", prefix=prefix)
    await provider.start()
    try:
        handles = []

        async def call(n: int) -> None:
            handles.append(await provider.execute(single, Job(n=n)))

        async with anyio.create_task_group() as tg:
            for n in range(1_000):
                tg.start_soon(call, n)
        opened = int(admin.info("stats")["total_connections_received"])
    finally:
        await provider.stop()
        admin.close()

    assert len({handle.run_id for handle in handles}) == 1_000
    # at most MAX_SCRIPT_CONNECTIONS at once, some closed and opened again (only
    # MAX_IDLE_SCRIPT_CONNECTIONS are kept between calls), the pool's few: far from one per call
    assert opened <= 2 * MAX_SCRIPT_CONNECTIONS, opened


async def test_a_black_holed_burst_of_callers_is_told_within_connect_timeout(
    proxy: Proxy, caller: RedisWorkflowProvider
) -> None:
    """Callers queued for a script connection wait no longer than their own connect_timeout."""
    await caller.execute(single, Job(n=0))
    proxy.black_hole()

    async def one() -> float:
        return await _told_within(
            lambda: caller.execute(single, Job(n=0)), ProviderUnavailableError
        )

    waits: list[float] = []

    async def timed() -> None:
        waits.append(await one())

    async with anyio.create_task_group() as tg:
        for _ in range(3 * MAX_SCRIPT_CONNECTIONS):  # most of them queue for a connection
            tg.start_soon(timed)

    # Queued in turns of MAX_SCRIPT_CONNECTIONS, each told after connect_timeout, the last
    # would wait three times as long; the margin is doubled for 384 callers on 2 loaded cores.
    assert len(waits) == 3 * MAX_SCRIPT_CONNECTIONS
    assert max(waits) <= CONNECT + 2 * MARGIN, sorted(waits)[-5:]


async def test_a_black_holed_emitter_is_told_within_connect_timeout(
    proxy: Proxy, prefix: str
) -> None:
    events = RedisEventProvider.from_url(
        proxy.url, prefix=prefix, group="network", connect_timeout=timedelta(seconds=CONNECT)
    )
    await events.start()
    try:
        await events.emit(noted, Job(n=0))
        proxy.black_hole()

        wait = await _told_within(
            lambda: events.emit(noted, Job(n=0)), EventProviderUnavailableError
        )
    finally:
        proxy.heal()
        await events.stop()

    assert wait <= CONNECT + MARGIN


async def test_a_provider_started_into_a_black_hole_is_told_within_connect_timeout(
    proxy: Proxy, prefix: str
) -> None:
    proxy.black_hole()  # connections are accepted, the handshake is never answered
    provider = RedisWorkflowProvider.from_url(
        proxy.url, prefix=prefix, connect_timeout=timedelta(seconds=CONNECT)
    )

    wait = await _told_within(provider.start, ProviderUnavailableError)

    assert wait <= CONNECT + MARGIN


RECOVERY = 20.0
"""Seconds after the path heals within which a worker that lost bytes completes every run:
a reply is awaited at most 10 s (the watchdog's READ_DEADLINE, plus the BLOCK time of a
blocking read), the pub/sub connection is taken for dead after 15 s of silence, then the
stall timeout (1 s) and the work itself."""


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_worker_process_whose_bytes_were_lost_recovers_after_the_path_heals(
    spawn: Spawn, proxy: Proxy, redis_port: int, prefix: str, tmp_path: Path
) -> None:
    straight = f"redis://127.0.0.1:{redis_port}/0"
    spawn("w", url=proxy.url, PLAIT_STALL="1", PLAIT_STEP_SECONDS="0.2", PLAIT_COUNT_URL=straight)
    await ready(tmp_path, "w")
    async with RedisWorkflowProvider.from_url(straight, prefix=prefix) as caller:
        before = [await caller.execute(chain, {"n": n}) for n in range(5)]

        async def running() -> bool:
            return any([await h.status() == WorkflowStatus.RUNNING for h in before])

        await eventually(running, timeout=20, what="a run in progress")
        proxy.black_hole(drop=True)  # a partition: what is sent now is lost, both ways
        after = [await caller.execute(chain, {"n": n}) for n in range(5, 10)]
        await anyio.sleep(3)  # the partition lasts 3 s
        proxy.heal()
        healed = time.monotonic()

        with anyio.fail_after(RECOVERY * 2):
            results = [await handle.result(timeout=RECOVERY * 2) for handle in before + after]
        took = time.monotonic() - healed

    assert [result["n"] for result in results] == list(range(10))
    assert took <= RECOVERY, f"recovered in {took:.1f}s"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_300_ms_one_way_latency_with_a_1_s_stall_timeout_completes_every_run(
    proxy: Proxy, redis_port: int, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(single)
    consumer.step("only")(lambda ctx: ctx.input.n)
    proxy.delay(0.3)  # a round trip of 600 ms
    worker = RedisWorkflowProvider.from_url(
        proxy.url,
        prefix=prefix,
        provider_id="slow",
        stall_timeout=timedelta(seconds=1),
        connect_timeout=timedelta(seconds=10),
    )
    worker.register(consumer)
    straight = f"redis://127.0.0.1:{redis_port}/0"
    with caplog.at_level(logging.WARNING, logger="plait"):
        await worker.start()
        try:
            async with RedisWorkflowProvider.from_url(straight, prefix=prefix) as caller:
                handles = [await caller.execute(single, Job(n=n)) for n in range(3)]
                with anyio.fail_after(60):
                    results = [await handle.result(timeout=60) for handle in handles]

                async def warned() -> bool:
                    return "round trip" in caplog.text

                await eventually(warned, timeout=10, what="the stall/round-trip warning")
        finally:
            await worker.stop()

    assert results == [None, None, None]  # completed (no on_complete)
    assert "stall_timeout 1s" in caplog.text


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    """A fresh redis-server listening on a unix socket only."""
    path = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(path), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        yield path
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_unix_socket_url_connects_with_the_keepalive_settings(
    unix_socket: Path, prefix: str
) -> None:
    """TCP keepalive options are set on TCP connections only (a unix socket has none)."""
    async with RedisWorkflowProvider.from_url(f"unix://{unix_socket}", prefix=prefix) as caller:
        handle = await caller.execute(single, Job(n=0))
        assert await handle.status() == WorkflowStatus.PENDING
