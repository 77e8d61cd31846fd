"""What a team adopting plait gets from the package itself: the embedded backend costs nothing
when unused, a version, a licence."""

from __future__ import annotations

import signal
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REDIS_URL, Spawn, ready
from pydantic import BaseModel

import plait.events
import plait.providers.redis
import plait.workflows
from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import Workflow, WorkflowConsumer

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = {"fakeredis", "lupa"}


class Empty(BaseModel):
    pass


def _loaded_after(code: str) -> set[str]:
    """The top-level modules ``code`` leaves imported, in a fresh interpreter."""
    names = "{name.split('.')[0] for name in sys.modules}"
    script = f"{code}\nimport sys\nprint(' '.join(sorted({names})))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return set(done.stdout.split())


def test_importing_the_provider_package_loads_no_embedded_server() -> None:
    assert EMBEDDED & _loaded_after("import plait.providers.redis") == set()


def test_a_provider_on_a_real_redis_never_loads_the_embedded_server() -> None:
    code = (
        "import anyio\n"
        "from plait.providers.redis import RedisWorkflowProvider, RedisEventProvider\n"
        f"URL = {REDIS_URL!r}\n"
        "async def main():\n"
        "    async with RedisWorkflowProvider.from_url(URL, prefix='t-lazy'):\n"
        "        pass\n"
        "    async with RedisEventProvider.from_url(URL, prefix='t-lazy', group='g'):\n"
        "        pass\n"
        "anyio.run(main)\n"
    )
    assert EMBEDDED & _loaded_after(code) == set()


@pytest.mark.anyio
async def test_memory_url_still_opens_the_embedded_server() -> None:
    provider = RedisWorkflowProvider.from_url("memory://lazy-import")
    lazy = Workflow("lazy", input=Empty).step("a")
    consumer: WorkflowConsumer[Empty, None] = WorkflowConsumer(lazy)
    consumer.step("a")(lambda ctx: None)
    provider.register(consumer)
    async with provider:
        assert (await provider.health()).ok
    assert "fakeredis" in sys.modules


def test_the_version_comes_from_the_package_metadata() -> None:
    version = metadata.version("plait")
    assert plait.workflows.__version__ == version
    assert plait.events.__version__ == version
    assert plait.providers.redis.__version__ == version


def test_plait_version_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "plait.providers.redis", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"plait {metadata.version('plait')}"


@pytest.mark.timeout(300)
def test_the_licence_is_in_the_checkout_and_the_built_packages(tmp_path: Path) -> None:
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    (sdist,) = tmp_path.glob("*.tar.gz")
    (wheel,) = tmp_path.glob("*.whl")
    with tarfile.open(sdist) as archive:
        shipped = archive.getnames()
    assert any(name.endswith("/LICENSE") for name in shipped)
    assert any(name.endswith("/CHANGELOG.md") for name in shipped)
    with zipfile.ZipFile(wheel) as archive:
        assert any(name.endswith("licenses/LICENSE") for name in archive.namelist())


@pytest.mark.anyio
async def test_a_worker_on_memory_warns_that_nothing_survives_the_process(
    spawn: Spawn, tmp_path: Path
) -> None:
    on_memory = spawn("embedded", url="memory://cli-warning")
    on_redis = spawn("served")
    await ready(tmp_path, "embedded", "served")
    on_memory.send_signal(signal.SIGTERM)
    on_redis.send_signal(signal.SIGTERM)
    on_memory.wait(timeout=20)
    on_redis.wait(timeout=20)

    assert "nothing it stores survives the process" in (tmp_path / "embedded.log").read_text()
    assert "survives" not in (tmp_path / "served.log").read_text()
