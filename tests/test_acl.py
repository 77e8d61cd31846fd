"""plait as a Redis ACL user with only what ``docs/deploying.md`` grants it.

The ``ACL SETUSER`` line is read from that page, so the documented ACL is the tested one. The
Redis is the test's own (its default user has a password); everything runs as the ACL user.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from conftest import FAST_RETRY, eventually, redis_server, standalone_redis
from dashboard_server import request, serve
from local_cluster import local_cluster
from pydantic import BaseModel

from plait.events import Event, EventCommandError, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core import server as server_checks
from plait.providers.redis._core.keys import WorkflowKeys
from plait.providers.redis._dashboard.app import DashboardOptions
from plait.workflows import (
    ProviderUnavailableError,
    RedisCommandError,
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "deploying.md"
ADMIN_PASSWORD = "admin-pw"
PASSWORD = "plait-pw"
PREFIX = "plait"
"""The documented line's prefix (the default), used as is: the Redis is this test's own."""
CLI = [sys.executable, "-m", "plait.providers.redis"]


def documented_acl_lines() -> list[list[str]]:
    """The ``ACL SETUSER`` lines of the docs' "Redis ACL" section, split into arguments: the
    user's, then what a Redis Cluster adds."""
    section = DOCS.read_text().split("## Redis ACL", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines()]
    lines = [line for line in lines if line.startswith("ACL SETUSER ")]
    return [shlex.split(line.replace(">CHANGE-ME", f">{PASSWORD}")) for line in lines]


def documented_acl() -> list[str]:
    """The user's ``ACL SETUSER`` line (the first of the section)."""
    lines = documented_acl_lines()
    assert len(lines) == 2, "the section shows the user's line and the cluster's"
    return lines[0]


@dataclass(frozen=True)
class AclRedis:
    """A Redis of the test's own: the default user has a password, ``plait`` the docs' ACL."""

    port: int

    @property
    def url(self) -> str:
        """The ACL user's URL."""
        return f"redis://plait:{PASSWORD}@127.0.0.1:{self.port}/0"

    def admin(self) -> Any:
        """A client of the default user (``Any``: ``execute_command`` is untyped)."""
        return sync_redis.Redis(port=self.port, password=ADMIN_PASSWORD)


@pytest.fixture
def backend() -> str:
    """The Redis here is the test's own: nothing to clean on the shared one."""
    return "own"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    with standalone_redis(tmp_path) as port:
        server = AclRedis(port)
        setup: Any = sync_redis.Redis(port=port)
        setup.execute_command(*documented_acl())
        setup.execute_command("ACL", "SETUSER", "default", f">{ADMIN_PASSWORD}")
        setup.close()
        try:
            yield server
        finally:  # the starter shuts the server down as the default user, without a password
            admin = server.admin()
            admin.execute_command("ACL", "SETUSER", "default", "nopass")
            admin.close()


@pytest.fixture(autouse=True)
def each_server_unchecked() -> None:
    server_checks._CHECKED.clear()


# -- the workflows and events of the scenario ------------------------------------------------


class Order(BaseModel):
    order_id: str


class Approval(BaseModel):
    by: str


class Ping(BaseModel):
    n: int


class Pong(BaseModel):
    n: int


trip = (
    Workflow("acl-trip", input=Order)
    .step("reserve")
    .step("charge", retry=RetryPolicy(max_attempts=1))
)
approval = Workflow("acl-approval", input=Order).wait("approve", data=Approval).step("ship")
tick = Workflow("acl-tick", input=Order).step("tock")
pinged = Event("acl.ping", data=Ping, result=Pong)
noted = Event("acl.noted", data=Ping)


def consumers(log: list[str]) -> list[WorkflowConsumer[Order, Any]]:
    saga: WorkflowConsumer[Order, Any] = WorkflowConsumer(trip)

    @saga.step("reserve")
    async def reserve(ctx: StepContext[Order]) -> str:
        return f"R-{ctx.input.order_id}"

    @saga.step("charge")
    async def charge(ctx: StepContext[Order]) -> None:
        raise RuntimeError("card declined")

    @saga.rollback("reserve")
    async def release(ctx: StepContext[Order]) -> None:
        log.append(f"released {ctx.results['reserve']}")

    waiting: WorkflowConsumer[Order, Any] = WorkflowConsumer(approval)

    @waiting.step("ship")
    async def ship(ctx: StepContext[Order]) -> str:
        return f"shipped, approved by {ctx.results['approve'].by}"

    @waiting.on_complete
    async def shipped(ctx: WorkflowContext[Order]) -> str:
        return str(ctx.results["ship"])

    ticking: WorkflowConsumer[Order, Any] = WorkflowConsumer(tick)

    @ticking.step("tock")
    async def tock(ctx: StepContext[Order]) -> None:
        log.append(f"tick {ctx.input.order_id}")

    return [saga, waiting, ticking]


async def plait(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process([*CLI, "--url", url, "--prefix", PREFIX, *args], check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


# -- the scenario ----------------------------------------------------------------------------


async def test_the_documented_acl_runs_workflows_events_schedules_and_the_cli(
    acl_redis: AclRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="plait.redis")
    log: list[str] = []
    workflows = RedisWorkflowProvider.from_url(acl_redis.url, retry=FAST_RETRY)
    for consumer in consumers(log):
        workflows.register(consumer)
    events = RedisEventProvider.from_url(acl_redis.url, group="acl", retry=FAST_RETRY)
    noticed: list[int] = []

    @events.on(pinged)
    async def answer(ctx: EventContext[Ping]) -> Pong:
        return Pong(n=ctx.data.n + 1)

    @events.on(noted)
    async def note(ctx: EventContext[Ping]) -> None:
        noticed.append(ctx.data.n)

    async with workflows, events:
        failed = await workflows.execute(trip, Order(order_id="1"))
        with pytest.raises(WorkflowStepError, match="card declined"):
            await failed.result(timeout=timedelta(seconds=20))
        assert (await failed.status()) is WorkflowStatus.FAILED
        assert log == ["released R-1"]

        waits = await workflows.execute(approval, Order(order_id="2"))
        await eventually(
            lambda: _state_is(waits, "approve", "waiting"), timeout=20, what="the run parks"
        )
        assert await workflows.signal(waits.run_id, "approve", Approval(by="ann"))
        assert await waits.result(timeout=timedelta(seconds=20)) == "shipped, approved by ann"

        await workflows.schedule(
            "acl-every-second", tick, {"order_id": "3"}, every=timedelta(seconds=1)
        )
        await eventually(lambda: _holds("tick 3" in log), timeout=20, what="a schedule tick")
        await workflows.schedules.delete("acl-every-second")

        await events.ready()
        await events.emit(noted, Ping(n=7))
        reply = await events.request(pinged, Ping(n=1), timeout=timedelta(seconds=10))
        assert reply == Pong(n=2)
        await eventually(lambda: _holds(noticed == [7]), timeout=20, what="the event handled")

        # a malformed step entry is dead-lettered; the CLI lists it, replays it (MULTI/EXEC:
        # it is dead-lettered again, being still malformed) and purges it
        jobs, dead = WorkflowKeys(PREFIX, tick.name).jobs, WorkflowKeys(PREFIX, tick.name).dead
        user = aioredis.Redis.from_url(acl_redis.url)
        await user.xadd(jobs, {"garbage": "1"})
        await eventually(lambda: _is(user.xlen(dead), 1), timeout=20, what="dead-lettered")
        letters = await plait(acl_redis.url, "dead-letters", "list", "--json")
        [letter] = json.loads(letters.stdout)
        replayed = await plait(
            acl_redis.url, "dead-letters", "replay", "--workflow", tick.name, letter["id"], "--json"
        )
        assert json.loads(replayed.stdout)[0]["outcome"] == "requeued", replayed.stderr
        await eventually(lambda: _is(user.xlen(dead), 1), timeout=20, what="dead again")
        [again] = json.loads((await plait(acl_redis.url, "dead-letters", "list", "--json")).stdout)
        assert again["id"] != letter["id"]
        purged = await plait(
            acl_redis.url, "dead-letters", "purge", "--workflow", tick.name, again["id"], "--json"
        )
        assert json.loads(purged.stdout) == {"purged": 1}, purged.stderr
        assert await user.xlen(dead) == 0
        await user.aclose()

        report = await workflows.health()
        assert report.ok, report.problems
        assert (await events.health()).ok
        health = await plait(acl_redis.url, "health", "--json")
        ready = await plait(acl_redis.url, "health", "--ready")
        listed = await plait(acl_redis.url, "runs", "list", "--json")
        registry = await plait(acl_redis.url, "registry", "list", "--json")
        with serve(acl_redis.url, DashboardOptions(prefix=PREFIX)) as base:
            pages = {
                path: await anyio.to_thread.run_sync(request, f"{base}{path}")
                for path in (
                    "/",
                    f"/workflows/{trip.name}",
                    f"/runs/{urllib.parse.quote(failed.run_id)}",
                    "/events",
                    "/dead-letters",
                    "/health",
                )
            }

    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(health.stdout)["ok"] is True
    assert ready.returncode == 0, ready.stderr
    assert listed.returncode == 0, listed.stderr
    assert {run["run_id"] for run in json.loads(listed.stdout)} >= {failed.run_id, waits.run_id}
    assert json.loads(registry.stdout) == {
        "workflows": sorted([trip.name, approval.name, tick.name]),
        "events": sorted([pinged.name, noted.name]),
    }
    assert {path: page.status for path, page in pages.items()} == dict.fromkeys(pages, 200)
    assert "rollback:reserve" in pages[f"/runs/{urllib.parse.quote(failed.run_id)}"].text
    assert failed.run_id in pages[f"/workflows/{trip.name}"].text
    checks = [r.getMessage() for r in caplog.records if "cannot check" in r.getMessage()]
    assert len(checks) == 1, "the refused CONFIG GET is said once, at INFO"
    assert "make sure maxmemory-policy is noeviction" in checks[0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert [error for error in errors if "dead-lettered" not in error] == []


async def _state_is(handle: Any, wait: str, state: str) -> bool:
    found = (await handle.describe()).waits.get(wait)
    return found is not None and found.state == state


async def _holds(value: bool) -> bool:
    return value


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


# -- what the user cannot do -----------------------------------------------------------------


def test_the_user_cannot_reach_keys_or_channels_outside_its_prefix(acl_redis: AclRedis) -> None:
    admin = acl_redis.admin()
    admin.set("other:secret", "x")
    user = sync_redis.Redis.from_url(acl_redis.url)
    try:
        user.set(f"{PREFIX}:mine", "ok")
        for denied in (
            lambda: user.get("other:secret"),
            lambda: user.set("other:x", "y"),
            lambda: user.publish("other:channel", "hi"),
            lambda: user.eval("return redis.call('GET', KEYS[1])", 1, "other:secret"),
            lambda: user.eval("return redis.call('GET', 'other:secret')", 0),
            user.flushall,
            lambda: user.keys("*"),
            lambda: user.config_get("maxmemory-policy"),
        ):
            with pytest.raises(sync_redis.ResponseError, match=r"permission|can't access"):
                denied()
        assert admin.get("other:secret") == b"x"
    finally:
        user.close()
        admin.close()


async def test_a_refused_command_is_a_typed_plait_error(acl_redis: AclRedis) -> None:
    outside = RedisWorkflowProvider.from_url(acl_redis.url, prefix="other")
    with pytest.raises(RedisCommandError, match="no permissions") as refused:
        await outside.start()
    assert not isinstance(refused.value, sync_redis.RedisError)
    await outside.stop()
    outside_events = RedisEventProvider.from_url(acl_redis.url, prefix="other", group="g")
    with pytest.raises(EventCommandError, match="no permissions"):
        await outside_events.start()
    await outside_events.stop()

    async with (
        RedisWorkflowProvider.from_url(acl_redis.url) as workflows,
        RedisEventProvider.from_url(acl_redis.url, group="g") as events,
    ):
        admin = acl_redis.admin()
        admin.execute_command("ACL", "SETUSER", "plait", "-evalsha")  # an operator takes it back
        admin.close()
        with pytest.raises(RedisCommandError, match="no permissions") as execute_refused:
            await workflows.execute(tick, Order(order_id="4"))
        with pytest.raises(EventCommandError, match="no permissions") as emit_refused:
            await events.emit(noted, Ping(n=1))
    for error in (execute_refused.value, emit_refused.value):
        assert not isinstance(error, sync_redis.RedisError)
        assert isinstance(error.__cause__, sync_redis.exceptions.NoPermissionError)


async def test_wrong_credentials_are_refused_without_retrying(acl_redis: AclRedis) -> None:
    wrong = RedisWorkflowProvider.from_url(
        acl_redis.url.replace(PASSWORD, "wrong"), connect_timeout=timedelta(seconds=30)
    )
    with anyio.fail_after(10):  # not retried until connect_timeout
        with pytest.raises(ProviderUnavailableError, match="refused the credentials"):
            await wrong.start()
    await wrong.stop()


async def test_the_documented_acl_with_its_cluster_line_runs_on_a_redis_cluster(
    tmp_path: Path,
) -> None:
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed: no local Redis Cluster")
    redis_server()
    with local_cluster(tmp_path) as cluster:
        for port in cluster.ports:
            node = cluster.node(port)
            for line in documented_acl_lines():
                node.execute_command(*line)
            node.close()
        url = f"redis+cluster://plait:{PASSWORD}@127.0.0.1:{cluster.ports[0]}"
        log: list[str] = []
        workflows = RedisWorkflowProvider.from_url(url, retry=FAST_RETRY)
        for consumer in consumers(log):
            workflows.register(consumer)
        events = RedisEventProvider.from_url(url, group="acl", retry=FAST_RETRY)

        @events.on(pinged)
        async def answer(ctx: EventContext[Ping]) -> Pong:
            return Pong(n=ctx.data.n + 1)

        async with workflows, events:
            failed = await workflows.execute(trip, Order(order_id="1"))
            with pytest.raises(WorkflowStepError, match="card declined"):
                await failed.result(timeout=timedelta(seconds=20))
            await events.ready()
            reply = await events.request(pinged, Ping(n=1), timeout=timedelta(seconds=10))
            report = await workflows.health()
            listed = await plait(url, "runs", "list", "--json")

    assert log == ["released R-1"]
    assert reply == Pong(n=2)
    assert report.ok, report.problems
    assert listed.returncode == 0, listed.stderr
    assert [run["run_id"] for run in json.loads(listed.stdout)] == [failed.run_id]
