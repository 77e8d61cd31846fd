"""Shared fixtures: every contract test runs on ``memory://`` and on the real Redis.

Each test gets its own key prefix (never FLUSHALL) and, on ``memory://``, its own embedded
server name, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as redis_asyncio

from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.testing import VirtualClock
from plait.workflows import RetryPolicy, WorkflowConsumer

REDIS_URL = os.environ.get("PLAIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


REDIS_SERVER = shutil.which("redis-server")


def redis_server() -> str:
    """The ``redis-server`` binary for a test that starts Redis servers of its own; the test
    is skipped where none is installed (a Redis run in a container, say)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed: this test starts Redis servers of its own")
    return REDIS_SERVER


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``memory`` (embedded), ``redis`` (127.0.0.1:6379) or ``cluster``
    (a 3-master Redis Cluster the session starts itself)."""
    if request.param == "cluster" and (REDIS_SERVER is None or shutil.which("redis-cli") is None):
        pytest.skip("redis-server/redis-cli not installed: no local Redis Cluster")
    return str(request.param)


def _free_ports(count: int) -> list[int]:
    """Ports free together with their cluster bus ports (port + 10000, so port <= 55535)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20_000, 45_000)
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Redis Cluster of 3 masters, started once per session, as a plait URL."""
    assert REDIS_SERVER is not None
    folder = tmp_path_factory.mktemp("cluster")
    ports = _free_ports(3)
    try:
        for port in ports:
            (folder / str(port)).mkdir()
            subprocess.run(
                [
                    *(REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--dir", str(folder / str(port)), "--save", "", "--appendonly", "no"),
                    *("--daemonize", "yes", "--logfile", str(folder / str(port) / "log")),
                ],
                check=True,
            )
        _wait(lambda: all(_ping(port) for port in ports), "cluster nodes answer")
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
        )
        _wait(lambda: _cluster_ok(ports), "cluster state ok")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for port in ports:
            subprocess.run(
                ["redis-cli", "-p", str(port), "shutdown", "nosave"],
                capture_output=True,
                check=False,
            )


def _ping(port: int) -> bool:
    done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False)
    return done.stdout.strip() == b"PONG"


def _cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, check=False
        )
        if b"cluster_state:ok" not in done.stdout:
            return False
    return True


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting: {what}")
        time.sleep(0.05)


@contextmanager
def standalone_redis(folder: Path, *options: str) -> Iterator[int]:
    """A ``redis-server`` of the test's own, storing in ``folder`` with no persistence unless
    ``options`` (more ``--name value`` settings, which win over the defaults) say otherwise;
    yields its port once it answers and shuts it down afterwards. Skips where no
    ``redis-server`` is installed."""
    binary = redis_server()
    [port] = _free_ports(1)
    subprocess.run(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
            *("--save", "", "--appendonly", "no", *options),
            *("--daemonize", "yes", "--logfile", str(folder / f"redis-{port}.log")),
        ],
        check=True,
    )
    try:
        _wait(lambda: _ping(port), f"the test's redis-server on port {port} answers")
        yield port
    finally:
        subprocess.run(
            ["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, check=False
        )


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(backend: str, request: pytest.FixtureRequest) -> str:
    """The provider URL for the backend under test."""
    if backend == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if backend == "cluster":
        return str(request.getfixturevalue("cluster_url"))
    return REDIS_URL


class RealClock:
    """The clock of a real Redis: time passes by waiting it out."""

    async def advance(self, by: timedelta) -> None:
        """Wait ``by``."""
        await asyncio.sleep(by.total_seconds())

    def now(self) -> datetime:
        """The time now (aware, UTC): the test Redis runs on this machine, on its clock."""
        return datetime.now(UTC)


Clock = VirtualClock | RealClock


@pytest.fixture
async def clock(backend: str, url: str) -> AsyncIterator[Clock]:
    """How a contract test lets time pass: ``await clock.advance(by)`` moves the virtual clock
    of the test's ``memory://`` server (at once, plait.testing), and waits ``by`` on Redis."""
    if backend != "memory":
        yield RealClock()
        return
    async with VirtualClock(url) as virtual:
        yield virtual


@pytest.fixture(autouse=True)
def _clean_redis_prefix(request: pytest.FixtureRequest, prefix: str) -> Iterator[None]:
    """Delete the test's keys from the real Redis afterwards (only its own prefix)."""
    backend = request.getfixturevalue("backend") if "backend" in request.fixturenames else None
    cluster_url = str(request.getfixturevalue("cluster_url")) if backend == "cluster" else ""
    yield
    if backend == "cluster":
        nodes = sync_redis.RedisCluster.from_url(cluster_url.replace("+cluster", ""))
        try:
            for key in list(nodes.scan_iter(match=f"{prefix}:*", count=1000)):
                nodes.delete(key)
        finally:
            nodes.disconnect_connection_pools()  # type: ignore[no-untyped-call]
            nodes.close()
        return
    if backend == "memory":
        return
    # on the shared Redis: contract tests on it, and every test without a backend (worker
    # processes, CLI runs) that may have written there under its prefix
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except sync_redis.ConnectionError:
        pass  # nothing can have been written there
    finally:
        client.close()


FAST_RETRY = RetryPolicy(
    max_attempts=3, initial_interval=timedelta(milliseconds=10), max_interval=timedelta(seconds=1)
)
"""Retries fast enough for tests: 10 ms, 20 ms."""

OpenProvider = Callable[..., Awaitable[RedisWorkflowProvider]]


@pytest.fixture
async def open_provider(url: str, prefix: str) -> AsyncIterator[OpenProvider]:
    """Open started workflow providers on the test's backend and prefix; all stop afterwards.

    ``await open_provider(consumer, ..., **options)`` registers the consumers before start.
    """
    opened: list[RedisWorkflowProvider] = []

    async def open_(
        *consumers: WorkflowConsumer[Any, Any], **options: Any
    ) -> RedisWorkflowProvider:
        settings: dict[str, Any] = {
            "prefix": prefix,
            "retry": FAST_RETRY,
            "stall_timeout": timedelta(seconds=2),
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


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition never held: {what}")
        await asyncio.sleep(0.01)


async def keys_under(
    provider: RedisWorkflowProvider | RedisEventProvider, prefix: str
) -> list[bytes]:
    """Every key of the provider's Redis under ``prefix``."""
    client: Any = provider._connection.client
    return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]


def only_provider_keys(keys: list[bytes], prefix: str) -> bool:
    """Whether ``keys`` hold nothing but what a started provider writes under ``prefix`` by
    itself: its heartbeat and the key schema version (no run, no event)."""
    return set(keys) <= {f"{prefix}:instances".encode(), f"{prefix}:schema".encode()}


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    """A redis-py asyncio client on the shared Redis (``REDIS_URL``), closed afterwards."""
    connection = redis_asyncio.Redis.from_url(REDIS_URL)
    yield connection
    await connection.aclose()


TESTS = Path(__file__).resolve().parent
WORKER = [sys.executable, "-m", "plait.providers.redis", "--log-level", "INFO", "worker"]

Spawn = Callable[..., subprocess.Popen[bytes]]
"""``spawn(instance, url=..., app=..., **env)`` starts a ``plait worker`` process."""


@pytest.fixture
def spawn(prefix: str, tmp_path: Path) -> Iterator[Spawn]:
    """Start ``plait worker`` processes; every one still alive is killed afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn_(
        instance: str, url: str = REDIS_URL, app: str = "apps.workflow_app:provider", **env: str
    ) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{instance}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [*WORKER, app],
            cwd=TESTS,
            env={
                **os.environ,
                "PLAIT_URL": url,
                "PLAIT_PREFIX": prefix,
                "PLAIT_ID": instance,
                **env,
            },
            stdout=log,
            stderr=log,
        )
        log.close()
        started.append(process)
        return process

    yield spawn_
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=10)


async def ready(folder: Path, *instances: str) -> None:
    """Wait until each instance's log says its providers started."""

    async def all_ready() -> bool:
        return all(
            (folder / f"{name}.log").exists()
            and "worker ready" in (folder / f"{name}.log").read_text()
            for name in instances
        )

    await eventually(all_ready, timeout=20, what=f"workers {instances} ready")
