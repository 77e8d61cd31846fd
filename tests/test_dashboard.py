"""The dashboard: what it shows, read-only unless told, escaped, paged, live, and its command."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import redis as sync_redis
from conftest import FAST_RETRY, REDIS_URL
from dashboard_server import Reply, free_port, request, serve
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._cli import main
from plait.providers.redis._core.keys import workflow_registry
from plait.providers.redis._dashboard.app import DashboardOptions
from plait.workflows import (
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
    WorkflowStatus,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.anyio]

TOKEN = "s3cret-token"


class Order(BaseModel):
    order_id: str


saga = Workflow("dash-saga", input=Order).step("reserve").step("charge")
listed = Workflow("dash-list", input=Order, indexed_meta=("shard",)).step("only")


def saga_consumer(declines: set[str]) -> WorkflowConsumer[Order, Any]:
    """Reserves, then declines the card of the orders in ``declines`` (until it is emptied)."""
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(saga)

    @consumer.step("reserve")
    async def reserve(ctx: StepContext[Order]) -> dict[str, str]:
        await ctx.save_progress({"pct": 42})
        return {"held": ctx.input.order_id}

    consumer.rollback("reserve")(lambda ctx: None)

    @consumer.step("charge")
    def charge(ctx: StepContext[Order]) -> dict[str, str]:
        if ctx.input.order_id in declines:
            raise ValueError(f"card <b>declined</b> for {ctx.input.order_id}")
        return {"charge": "ok"}

    return consumer


@pytest.fixture
async def workflows(prefix: str) -> AsyncIterator[RedisWorkflowProvider]:
    provider = RedisWorkflowProvider.from_url(
        REDIS_URL, prefix=prefix, retry=FAST_RETRY, shutdown_timeout=timedelta(seconds=2)
    )
    async with provider:
        yield provider


async def get(url: str, **options: Any) -> Reply:
    return await anyio.to_thread.run_sync(lambda: request(url, **options))


def shown(page: Reply, ids: list[str]) -> list[str]:
    """The runs of ``ids`` that ``page`` lists, in its order."""
    return sorted((run_id for run_id in ids if run_id in page.text), key=page.text.index)


async def failed_run(workflows: RedisWorkflowProvider, declines: set[str], order: str) -> str:
    workflows.register(saga_consumer(declines))
    handle = await workflows.execute(saga, Order(order_id=order), meta={"note": "<i>vip</i>"})
    with pytest.raises(Exception, match="declined"):
        await handle.result(timeout=timedelta(seconds=20))
    return handle.run_id


async def test_a_failed_runs_page_shows_its_steps_rollbacks_and_error_escaped(
    workflows: RedisWorkflowProvider, prefix: str
) -> None:
    run_id = await failed_run(workflows, {"<script>alert(1)</script>"}, "<script>alert(1)</script>")
    with serve(REDIS_URL, DashboardOptions(prefix=prefix)) as base:
        page = await get(f"{base}/runs/{urllib.parse.quote(run_id)}")
        overview = await get(f"{base}/")
        runs = await get(f"{base}/workflows/dash-saga")
    assert page.status == 200
    text = page.text
    meta = (await (await workflows.get_handle(run_id)).describe()).meta
    trace_id = meta["traceparent"].split("-")[1]
    assert "rollback:reserve" in text
    assert "ValueError" in text
    assert "Traceback (most recent call last)" in text
    assert "card &lt;b&gt;declined&lt;/b&gt;" in text
    assert "<b>declined" not in text
    assert "&lt;i&gt;vip&lt;/i&gt;" in text
    assert "<i>vip" not in text
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    assert "FAILED" in text
    assert "{&quot;pct&quot;: 42}" in text  # reserve's last progress
    assert trace_id in text
    assert "dash-saga" in overview.text
    assert run_id in runs.text
    assert "<i>vip" not in runs.text


async def test_actions_are_refused_without_allow_actions_and_without_the_token(
    workflows: RedisWorkflowProvider, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    declines = {"9"}
    run_id = await failed_run(workflows, declines, "9")
    path = f"/runs/{urllib.parse.quote(run_id)}/retry"
    caplog.set_level(logging.INFO, logger="plait.dashboard")
    with serve(REDIS_URL, DashboardOptions(prefix=prefix)) as base:
        page = await get(f"{base}/runs/{urllib.parse.quote(run_id)}")
        read_only = await get(base + path, data=f"token={TOKEN}".encode())
    assert 'name="token"' not in page.text
    assert read_only.status == 403
    options = DashboardOptions(prefix=prefix, allow_actions=True, token=TOKEN)
    with serve(REDIS_URL, options) as base:
        missing = await get(base + path, data=b"")
        wrong = await get(base + path, data=b"token=guess")
        assert (await workflows.get_handle(run_id)).run_id == run_id
        assert await (await workflows.get_handle(run_id)).status() == WorkflowStatus.FAILED
        declines.clear()
        done = await get(base + path, headers={"Authorization": f"Bearer {TOKEN}"}, data=b"")
    assert (missing.status, wrong.status) == (403, 403)
    assert done.status == 303
    assert done.headers["location"] == f"/runs/{urllib.parse.quote(run_id)}"
    await (await workflows.get_handle(run_id)).result(timeout=timedelta(seconds=20))
    refused = [r.getMessage() for r in caplog.records if r.name == "plait.dashboard"]
    assert sum("refused" in message for message in refused) == 3
    assert any(f"run {run_id} resumed" in message for message in refused)


async def test_runs_are_paged_and_filtered_through_the_indexes(
    workflows: RedisWorkflowProvider, prefix: str
) -> None:
    handles: list[WorkflowHandle[Any]] = []
    for number in range(120):
        handles.append(
            await workflows.execute(
                listed, Order(order_id=str(number)), idempotency_key=f"order-{number}",
                meta={"shard": str(number % 3)},
            )
        )  # fmt: skip
    for handle in handles[::10]:
        await handle.cancel()  # no consumer runs its on_error: it stays COMPENSATING
    ids = [handle.run_id for handle in handles]
    index = sync_redis.Redis.from_url(REDIS_URL)
    try:  # newest first: by creation time, runs created in the same millisecond by id
        stored: list[bytes] = index.zrevrange(f"{prefix}:{{dash-list}}:runs", 0, -1)  # type: ignore[assignment]
        newest_first = [run_id.decode() for run_id in stored]
    finally:
        index.close()
    with serve(REDIS_URL, DashboardOptions(prefix=prefix)) as base:
        seen: list[str] = []
        url = f"{base}/workflows/dash-list"
        while url:
            page = await get(url)
            seen += shown(page, ids)
            marker = page.text.partition('<a id="next" href="')[2].partition('"')[0]
            url = base + marker.replace("&amp;", "&") if marker else ""
        every_pending: list[str] = []  # a status filter's pages follow a cursor
        url = f"{base}/workflows/dash-list?status=PENDING"
        while url:
            page = await get(url)
            every_pending += shown(page, ids)
            marker = page.text.partition('<a id="next" href="')[2].partition('"')[0]
            url = base + marker.replace("&amp;", "&") if marker else ""
        cancelling = await get(f"{base}/workflows/dash-list?status=COMPENSATING")
        completed = await get(f"{base}/workflows/dash-list?status=COMPLETED")
        pending = await get(f"{base}/workflows/dash-list?status=pending")
        by_key = await get(f"{base}/workflows/dash-list?key=order-42")
        by_meta = await get(f"{base}/workflows/dash-list?meta=shard%3D1")
        future = datetime.now(tz=UTC) + timedelta(hours=1)
        later = await get(f"{base}/workflows/dash-list?since={future:%Y-%m-%dT%H:%M:%S}")
        bad = await get(f"{base}/workflows/dash-list?meta=nothing")
    assert seen == newest_first
    assert sorted(seen) == sorted(ids)
    assert shown(cancelling, ids) == [i for i in newest_first if i in ids[::10]]
    assert not any(run_id in completed.text for run_id in ids)
    assert shown(pending, ids) == [i for i in newest_first if i not in shown(cancelling, ids)][:50]
    assert every_pending == [i for i in newest_first if i not in ids[::10]]
    assert shown(by_key, ids) == [handles[42].run_id]
    assert shown(by_meta, ids) == [i for i in newest_first if i in ids[1::3]]
    assert not any(run_id in later.text for run_id in ids)
    assert bad.status == 400


async def test_a_runs_live_page_streams_its_events_with_ids_and_ends_when_it_finishes(
    workflows: RedisWorkflowProvider, prefix: str
) -> None:
    run_id = await failed_run(workflows, {"1"}, "1")
    with serve(REDIS_URL, DashboardOptions(prefix=prefix)) as base:
        stream = await get(f"{base}/runs/{urllib.parse.quote(run_id)}?stream=1")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.startswith("event: fragment\n")
    assert stream.text.rstrip().endswith("event: end\ndata:")
    events = await (await workflows.get_handle(run_id)).describe()
    assert events.status == WorkflowStatus.FAILED


async def test_the_command_without_the_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["dashboard", "--url", REDIS_URL]) == 1
    assert "pip install 'plait[dashboard]'" in capsys.readouterr().err


async def test_the_command_refuses_actions_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PLAIT_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--url", REDIS_URL, "--allow-actions"]) == 2
    assert "needs a token" in capsys.readouterr().err


def test_plait_dashboard_serves_until_interrupted(prefix: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "plait.providers.redis", "dashboard", "--url", REDIS_URL,
         "--prefix", prefix, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                overview = request(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        refused = request(f"http://127.0.0.1:{port}/runs/x.1/cancel", data=b"token=x")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert (overview.status, refused.status) == (200, 403)
    assert process.returncode == 0
    assert f"prefix '{prefix}', actions off" in output
    assert "refused cancel /runs/x.1/cancel" in output


async def test_a_dead_letter_is_listed_escaped_and_replayed_with_the_token(prefix: str) -> None:
    client = sync_redis.Redis.from_url(REDIS_URL)
    base_key = f"{prefix}:{{dash-dead}}:"
    fields = json.dumps({"r": "dash-dead.0a", "j": "only", "t": "1"})
    letter = client.xadd(
        base_key + "dead",
        {"source": "jobs", "entry": "1-0", "reason": "<b>unknown</b> job", "fields": fields},
    )
    letter_id = letter.decode() if isinstance(letter, bytes) else str(letter)
    client.zadd(workflow_registry(prefix), {"dash-dead": 1})  # as its consumer would enroll it
    options = DashboardOptions(prefix=prefix, allow_actions=True, token=TOKEN)
    try:
        with serve(REDIS_URL, options) as base:
            listed = await get(f"{base}/dead-letters")
            path = f"/dead-letters/workflow/dash-dead/{letter_id}/replay"
            refused = await get(base + path, data=b"token=nope")
            replayed = await get(base + path, data=f"token={TOKEN}".encode())
        assert "&lt;b&gt;unknown&lt;/b&gt; job" in listed.text
        assert "<b>unknown" not in listed.text
        assert letter_id in listed.text
        assert (refused.status, replayed.status) == (403, 303)
        assert (client.xlen(base_key + "dead"), client.xlen(base_key + "jobs")) == (0, 1)
    finally:
        client.close()
