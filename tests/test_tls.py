"""plait over ``rediss://``: a TLS-only Redis of the test's own that requires client
certificates, with a CA made by ``openssl`` in a temporary directory."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from conftest import redis_server
from local_cluster import certify
from pydantic import BaseModel
from test_events_processes import free_port

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.workflows import ProviderUnavailableError, StepContext, Workflow, WorkflowConsumer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

PASSWORD = "tls-pw"


class Item(BaseModel):
    n: int


chain = Workflow("tls-chain", input=Item).step("a").step("b").step("c")
told = Event("tls.told", data=Item, result=Item)


def chain_consumer() -> WorkflowConsumer[Item, Any]:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(chain)

    for name in ("a", "b", "c"):

        @consumer.step(name)
        async def step(ctx: StepContext[Item]) -> int:
            return ctx.input.n + len(ctx.results)

    @consumer.on_complete
    async def done(ctx: Any) -> int:
        return int(ctx.results["c"])

    return consumer


@pytest.fixture
def backend() -> str:
    """The Redis here is the test's own: nothing to clean on the shared one."""
    return "own"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Redis speaking TLS only (client certificates required, a password); yields its port
    and the folder of ``ca.crt`` and ``node.crt``/``node.key`` (also a valid client pair)."""
    binary = redis_server()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: this test makes its own CA and certificates")
    certify(tmp_path, "IP:127.0.0.1,DNS:localhost")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "node.crt"),
         "--tls-key-file", str(tmp_path / "node.key"),
         "--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "yes",
         "--requirepass", PASSWORD, "--dir", str(tmp_path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # a Redis without TLS says why there (FATAL CONFIG FILE ERROR)
    )  # fmt: skip
    try:
        _until_answering(process, port, tmp_path)
        yield port, tmp_path
    finally:
        process.kill()
        process.communicate(timeout=10)


def _until_answering(process: subprocess.Popen[bytes], port: int, folder: Path) -> None:
    """Wait for the TLS port to answer; skip when this redis-server was built without TLS."""
    client = sync_redis.Redis(
        port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(folder / "ca.crt"),
        ssl_certfile=str(folder / "node.crt"), ssl_keyfile=str(folder / "node.key"),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    try:
        while True:
            if process.poll() is not None:
                assert process.stderr is not None
                said = process.stderr.read().decode(errors="replace")
                if "tls" in said.lower():
                    pytest.skip(f"this redis-server cannot serve TLS: {said.strip()[-200:]}")
                pytest.fail(f"redis-server exited: {said}")
            try:
                client.ping()
                return
            except sync_redis.ConnectionError:
                assert time.monotonic() < deadline, "the TLS Redis did not answer"
                time.sleep(0.02)
    finally:
        client.close()


def tls_url(port: int, folder: Path, *, client_certificate: bool = True) -> str:
    options = f"ssl_ca_certs={folder / 'ca.crt'}"
    if client_certificate:
        options += f"&ssl_certfile={folder / 'node.crt'}&ssl_keyfile={folder / 'node.key'}"
    return f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?{options}"


async def test_runs_execute_and_return_their_results_over_tls_with_a_client_certificate(
    tls_redis: tuple[int, Path],
) -> None:
    port, folder = tls_redis
    url = tls_url(port, folder)

    async with RedisWorkflowProvider.from_url(url) as workflows:
        workflows.register(chain_consumer())
        await workflows.start()  # idempotent: the consumer's group and worker start here
        handles = [await workflows.execute(chain, Item(n=n)) for n in range(5)]
        results = [await handle.result(timeout=timedelta(seconds=20)) for handle in handles]
        direct = workflows._connection.direct
        assert direct is not None, "a URL plait opened makes its script calls directly"
        script_connections = list(direct._idle)

    assert results == [n + 2 for n in range(5)]
    # the transitions went over the direct connections, and those were TLS connections
    assert script_connections
    assert all(isinstance(c, aioredis.SSLConnection) for c in script_connections)


async def test_events_request_and_reply_over_tls(tls_redis: tuple[int, Path]) -> None:
    port, folder = tls_redis
    url = tls_url(port, folder)
    events = RedisEventProvider.from_url(url, group="tls")

    @events.on(told)
    async def answer(ctx: EventContext[Item]) -> Item:
        return Item(n=ctx.data.n * 2)

    async with events:
        await events.ready()
        assert await events.request(told, Item(n=21), timeout=timedelta(seconds=10)) == Item(n=42)


async def test_a_server_that_requires_a_client_certificate_refuses_a_url_without_one(
    tls_redis: tuple[int, Path],
) -> None:
    port, folder = tls_redis
    provider = RedisWorkflowProvider.from_url(
        tls_url(port, folder, client_certificate=False), connect_timeout=timedelta(seconds=1)
    )
    with pytest.raises(ProviderUnavailableError):
        await provider.start()
    await provider.stop()


async def test_a_certificate_signed_by_an_unknown_ca_is_refused(
    tls_redis: tuple[int, Path],
) -> None:
    port, folder = tls_redis
    url = tls_url(port, folder).replace(f"ssl_ca_certs={folder / 'ca.crt'}&", "")
    provider = RedisWorkflowProvider.from_url(url, connect_timeout=timedelta(seconds=1))
    with pytest.raises(ProviderUnavailableError, match="certificate verify failed"):
        await provider.start()
    await provider.stop()


async def test_ssl_cert_reqs_none_connects_without_verifying_the_server(
    tls_redis: tuple[int, Path],
) -> None:
    port, folder = tls_redis
    url = tls_url(port, folder).replace(f"ssl_ca_certs={folder / 'ca.crt'}&", "ssl_cert_reqs=none&")
    async with RedisWorkflowProvider.from_url(url) as workflows:
        workflows.register(chain_consumer())
        await workflows.start()
        handle = await workflows.execute(chain, Item(n=1))
        assert await handle.result(timeout=timedelta(seconds=20)) == 3
