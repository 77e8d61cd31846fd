"""Events across processes on the real Redis: fan-out, competing workers, a killed worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from conftest import redis_server
from faults import Proxy
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider
from plait.workflows import ProviderUnavailableError

REDIS_URL = os.environ.get("PLAIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Item(BaseModel):
    n: int


class Answer(BaseModel):
    n: int
    group: str
    worker: str


bulk_quote = Event("bulk.quote", data=Item, result=Answer)
"""The same event as ``tests/apps/event_worker.py`` defines: definitions match by name."""

pytestmark = [pytest.mark.redis_only, pytest.mark.slow]

APP = Path(__file__).resolve().parent / "apps" / "event_worker.py"
EVENTS = 1000


@pytest.fixture
def client(prefix: str) -> Iterator[sync_redis.Redis]:
    """A client on the real Redis; deletes the test's keys afterwards."""
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        client.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Started processes, killed at the end whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def spawn(processes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(APP), *args, "--url", REDIS_URL],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    processes.append(process)
    return process


def start_workers(
    processes: list[subprocess.Popen[str]], prefix: str, *extra: str
) -> dict[str, subprocess.Popen[str]]:
    workers = {
        f"{group}{n}": spawn(
            processes, "work", "--prefix", prefix, "--group", group, "--id", f"{group}{n}", *extra
        )
        for group in ("a", "b")
        for n in (1, 2)
    }
    for name, worker in workers.items():
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready", name
    return workers


def handled(client: sync_redis.Redis, prefix: str, group: str) -> dict[str, int]:
    counts = client.hgetall(f"{prefix}:test:handled:{group}")
    return {str(key): int(value) for key, value in counts.items()}


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_two_groups_of_two_processes_handle_every_event_once_per_group(
    prefix: str,
    client: sync_redis.Redis,
    processes: list[subprocess.Popen[str]],
) -> None:
    start_workers(processes, prefix)
    emitter = spawn(processes, "emit", "--prefix", prefix, "--count", str(EVENTS))
    assert emitter.wait(timeout=30) == 0
    wait_for(lambda: all(len(handled(client, prefix, g)) == EVENTS for g in "ab"), timeout=30)
    for group in "ab":
        assert set(handled(client, prefix, group).values()) == {1}, group


@pytest.mark.timeout(60)
def test_a_killed_worker_loses_no_event(
    prefix: str,
    client: sync_redis.Redis,
    processes: list[subprocess.Popen[str]],
) -> None:
    workers = start_workers(processes, prefix, "--stall", "1", "--work-ms", "5")
    emitter = spawn(processes, "emit", "--prefix", prefix, "--count", str(EVENTS))
    wait_for(lambda: len(handled(client, prefix, "a")) >= 150, timeout=30)
    workers["a1"].send_signal(signal.SIGKILL)
    assert emitter.wait(timeout=30) == 0
    wait_for(lambda: all(len(handled(client, prefix, g)) == EVENTS for g in "ab"), timeout=30)
    assert min(handled(client, prefix, "a").values()) >= 1
    assert set(handled(client, prefix, "b").values()) == {1}
    stream = f"{prefix}:ev:{{bulk.item}}:stream"
    wait_for(lambda: client.xpending(stream, "a")["pending"] == 0, timeout=10)
    assert client.xlen(f"{prefix}:ev:{{bulk.item}}:dead") == 0


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_request_is_answered_by_another_process(
    prefix: str,
    client: sync_redis.Redis,
    processes: list[subprocess.Popen[str]],
) -> None:
    start_workers(processes, prefix)
    async with RedisEventProvider.from_url(REDIS_URL, group="api", prefix=prefix) as api:
        answers = [
            await api.request(bulk_quote, Item(n=n), timeout=timedelta(seconds=5))
            for n in range(20)
        ]
    assert all(isinstance(answer, Answer) for answer in answers)
    assert [answer.n for answer in answers] == [n * 2 for n in range(20)]
    assert {answer.worker for answer in answers} <= {"a1", "a2", "b1", "b2"}


class Ping(BaseModel):
    n: int


ping = Event("outage.ping", data=Ping)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    probe = sync_redis.Redis(port=port)
    wait_for(lambda: _answers(probe), timeout=10)
    probe.close()
    return server


def _answers(client: sync_redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except sync_redis.ConnectionError:
        return False


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_consumers_survive_a_redis_restart(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    server = start_redis(tmp_path, port)
    seen: list[int] = []
    url = f"redis://127.0.0.1:{port}/0"
    try:
        events = RedisEventProvider.from_url(
            url, group="billing", prefix=prefix, connect_timeout=timedelta(milliseconds=500)
        )
        events.on(ping, lambda ctx: seen.append(ctx.data.n))
        async with events:
            await events.emit(ping, Ping(n=1))
            await _until(lambda: seen == [1])
            server.kill()
            server.wait(timeout=10)
            with pytest.raises(ProviderUnavailableError):
                await events.emit(ping, Ping(n=2))
            server = start_redis(tmp_path, port)
            # The restarted server has no data (no persistence): the reader recreates its
            # group, and the next emit is delivered.
            await _until(lambda: _has_group(port, prefix), timeout=15)
            await events.emit(ping, Ping(n=3))
            await _until(lambda: seen == [1, 3], timeout=15)
    finally:
        server.kill()
        server.wait(timeout=10)


def _has_group(port: int, prefix: str) -> bool:
    client = sync_redis.Redis(port=port)
    try:
        return bool(client.exists(f"{prefix}:ev:{{outage.ping}}:stream"))
    finally:
        client.close()


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if condition():
                return
            await anyio.sleep(0.02)


echo = Event("outage.echo", data=Ping, result=Ping)


@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_request_is_answered_although_the_requesters_connections_dropped_meanwhile(
    tmp_path: Path, prefix: str
) -> None:
    port = free_port()
    server = start_redis(tmp_path, port)
    url = f"redis://127.0.0.1:{port}/0"
    answering, answer = anyio.Event(), anyio.Event()
    replies: list[Ping] = []
    try:
        async with (
            Proxy(port) as proxy,
            RedisEventProvider.from_url(url, group="echo", prefix=prefix) as responder,
            RedisEventProvider.from_url(proxy.url, group="api", prefix=prefix) as requester,
        ):

            @responder.on(echo)
            async def reply(ctx: EventContext[Ping]) -> Ping:
                answering.set()
                await answer.wait()
                return Ping(n=ctx.data.n * 2)

            await responder.ready()
            watcher = aioredis.Redis(port=port)
            observer: Any = watcher.pubsub(ignore_subscribe_messages=True)
            await observer.psubscribe(f"{prefix}:ev:{{outage.echo}}:reply:*")

            async def ask() -> None:
                replies.append(await requester.request(echo, Ping(n=21), timeout=15))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask)
                await answering.wait()
                proxy.down()  # the requester's pub/sub connection drops while the handler runs
                answer.set()
                # the reply is published while the requester cannot be subscribed
                with anyio.fail_after(10):
                    while await observer.get_message(timeout=1.0) is None:
                        pass
                await observer.aclose()
                await watcher.aclose()
                proxy.up()
    finally:
        server.kill()
        server.wait(timeout=10)
    assert replies == [Ping(n=42)]
