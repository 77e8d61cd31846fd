"""The ``plait`` command as an operator meets it: flags the worker honours, a banner that says
what runs, errors that name the cause and never show a password or a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
from conftest import REDIS_URL, eventually, redis_server
from test_events_processes import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CLI = [sys.executable, "-m", "plait.providers.redis"]
PASSWORD = "s3cret-pw"


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis of the test's own that wants the password :data:`PASSWORD`; yields its port."""
    port = free_port()
    process = subprocess.Popen(
        [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", PASSWORD, "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    probe = sync_redis.Redis(port=port, password=PASSWORD)
    try:
        for _ in range(100):
            try:
                probe.ping()
                break
            except sync_redis.ConnectionError:
                anyio.run(anyio.sleep, 0.05)
        yield port
    finally:
        probe.close()
        process.kill()
        process.wait(timeout=10)


async def plait(
    *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process([*CLI, *args], check=False, cwd=cwd, env={**os.environ, **env})
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def test_a_wrong_password_is_an_authentication_error_and_is_never_printed(
    guarded_redis: int,
) -> None:
    url = f"redis://:wrong-pw@127.0.0.1:{guarded_redis}/0"

    listing = await plait("--url", url, "runs", "list")
    health = await plait("--url", url, "health")

    assert (listing.returncode, health.returncode) == (3, 3)
    for done in (listing, health):
        output = done.stdout + done.stderr
        assert "wrong-pw" not in output
        assert "refused the credentials" in output
        assert "Traceback" not in output
    assert f"Redis at redis://:***@127.0.0.1:{guarded_redis}/0 refused" in listing.stderr


async def test_an_unreachable_redis_message_masks_the_password() -> None:
    url = f"redis://user:pw-{os.getpid()}@127.0.0.1:1/0"

    done = await plait("--url", url, "runs", "list")

    assert done.returncode == 3
    assert f"pw-{os.getpid()}" not in done.stderr
    assert "redis://user:***@127.0.0.1:1/0" in done.stderr


async def test_a_database_out_of_range_is_an_error_not_a_traceback() -> None:
    done = await plait("--url", REDIS_URL.rsplit("/", 1)[0] + "/999", "runs", "list")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "database 999" in done.stderr


def _module(folder: Path, name: str, prefix_source: str) -> None:
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from plait.providers.redis import RedisWorkflowProvider
            from plait.workflows import Workflow, WorkflowConsumer
            from pydantic import BaseModel

            class Job(BaseModel):
                n: int = 0

            flow = Workflow("banner-flow", input=Job).step("only")
            consumer = WorkflowConsumer(flow)
            consumer.step("only")(lambda ctx: None)
            provider = RedisWorkflowProvider.from_url(
                os.environ.get("PLAIT_REDIS_URL", "redis://127.0.0.1:1/0"),
                prefix={prefix_source},
                concurrency=7,
            )
            provider.register(consumer)
            """
        )
    )


def _worker(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """``plait worker ARGS`` in ``folder``, logging to ``worker.log``, with no PLAIT_* set."""
    env = {k: v for k, v in os.environ.items() if k not in ("PLAIT_REDIS_URL", "PLAIT_PREFIX")}
    with open(folder / "worker.log", "wb") as log:
        return subprocess.Popen(
            [*CLI, "worker", *args], cwd=folder, env=env, stdout=log, stderr=log
        )


async def test_worker_hands_url_and_prefix_to_the_module_and_prints_a_banner(
    tmp_path: Path, prefix: str
) -> None:
    _module(tmp_path, "flags_app", 'os.environ.get("PLAIT_PREFIX", "unset")')
    process = _worker(tmp_path, "--url", REDIS_URL, "--prefix", prefix, "flags_app:provider")
    client: Any = sync_redis.Redis.from_url(REDIS_URL)
    try:

        async def banner() -> bool:
            return "workflows: banner-flow" in (tmp_path / "worker.log").read_text()

        await eventually(banner, timeout=20, what="the worker's banner")
        assert client.exists(f"{prefix}:instances")
        text = (tmp_path / "worker.log").read_text()
        assert "banner-flow" in text
        assert "concurrency 7" in text
        assert f"prefix {prefix}" in text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        client.close()


async def test_worker_refuses_a_prefix_its_module_does_not_use(tmp_path: Path) -> None:
    _module(tmp_path, "fixed_app", '"fixed"')

    done = await plait("worker", "--prefix", "other", "fixed_app:provider", cwd=tmp_path)

    assert done.returncode == 2
    assert "--prefix is 'other'" in done.stderr
    assert "'fixed'" in done.stderr


async def test_worker_prints_the_modules_traceback_when_it_fails_to_import(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken_app.py").write_text("import os\nraise ImportError('no such thing: x9')\n")

    done = await plait("worker", "broken_app:provider", cwd=tmp_path)

    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert 'broken_app.py", line 2' in done.stderr
    assert "no such thing: x9" in done.stderr
