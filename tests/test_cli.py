"""The ``plait`` command line, run through its real entry point in a subprocess.

Data is made by in-process providers on the test's prefix of the real Redis; each command is
then run as ``python -m plait.providers.redis --url ... --prefix ... COMMAND``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from conftest import REDIS_URL, OpenProvider, eventually
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._cli.main import apply_concurrency
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import EventKeys, WorkflowKeys
from plait.workflows import (
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.timeout(60)]

CLI = [sys.executable, "-m", "plait.providers.redis"]
UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture
def backend() -> str:
    return "redis"


class Item(BaseModel):
    n: int


flow = Workflow("cli-flow", input=Item).step("first").step("second")
stuck = Workflow("cli-stuck", input=Item).step("only")
wide = Workflow("cli-wide", input=Item).parallel("a", "b", "c", "d")
paid = Event("cli.paid", data=Item)

failing: set[int] = set()
"""Inputs whose ``second`` step fails (tests clear it to let a retry succeed)."""


def flow_consumer() -> WorkflowConsumer[Item, Any]:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(flow)

    @consumer.step("first")
    async def first(ctx: StepContext[Item]) -> int:
        return ctx.input.n

    @consumer.step("second")
    async def second(ctx: StepContext[Item]) -> int:
        if ctx.input.n in failing:
            raise ValueError(f"no second for {ctx.input.n}")
        return ctx.input.n * 2

    @consumer.rollback("first")
    async def undo_first(ctx: StepContext[Item]) -> None:
        return None

    return consumer


def stuck_consumer() -> WorkflowConsumer[Item, Any]:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(stuck)

    @consumer.step("only")
    async def only(ctx: StepContext[Item]) -> None:
        await anyio.sleep(30)

    return consumer


async def plait(prefix: str, *args: str, url: str = REDIS_URL) -> subprocess.CompletedProcess[str]:
    """Run ``plait --url URL --prefix PREFIX ARGS...``; returns its exit code and output."""
    done = await anyio.run_process([*CLI, "--url", url, "--prefix", prefix, *args], check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def plait_json(prefix: str, *args: str) -> Any:
    done = await plait(prefix, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    connection = connect(REDIS_URL, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


# -- runs ------------------------------------------------------------------------------------


async def test_runs_list_shows_the_newest_runs_first(open_provider: OpenProvider) -> None:
    provider = await open_provider(flow_consumer())
    ids = []
    for n in range(3):
        handle = await provider.execute(flow, Item(n=n))
        await handle.result()
        ids.append(handle.run_id)

    listed = await plait_json(provider.prefix, "runs", "list")

    assert [row["run_id"] for row in listed] == ids[::-1]
    assert {row["status"] for row in listed} == {"COMPLETED"}


async def test_runs_list_filters_by_status_workflow_and_limit(
    open_provider: OpenProvider,
) -> None:
    provider = await open_provider(flow_consumer())
    failing.add(-1)
    ok = await provider.execute(flow, Item(n=1))
    bad = await provider.execute(flow, Item(n=-1))
    await ok.result()
    with pytest.raises(WorkflowStepError):
        await bad.result()

    failed = await plait_json(provider.prefix, "runs", "list", "--status", "failed")
    other = await plait_json(provider.prefix, "runs", "list", "--workflow", "nothing-here")
    one = await plait_json(provider.prefix, "runs", "list", "--limit", "1")

    assert [row["run_id"] for row in failed] == [bad.run_id]
    assert other == []
    assert len(one) == 1


async def test_runs_list_prints_a_table(open_provider: OpenProvider) -> None:
    provider = await open_provider(flow_consumer())
    handle = await provider.execute(flow, Item(n=1))
    await handle.result()

    done = await plait(provider.prefix, "runs", "list")

    assert done.returncode == 0
    header, row = done.stdout.splitlines()
    assert header.split() == ["RUN", "WORKFLOW", "STATUS", "VERSION", "CREATED", "TOOK"]
    assert row.split()[:4] == [handle.run_id, "cli-flow", "COMPLETED", flow.version]


async def test_runs_show_prints_the_step_timeline_errors_and_rollbacks(
    open_provider: OpenProvider,
) -> None:
    provider = await open_provider(flow_consumer())
    failing.add(-2)
    handle = await provider.execute(flow, Item(n=-2), meta={"request_id": "r-7"})
    with pytest.raises(WorkflowStepError):
        await handle.result()

    shown = await plait_json(provider.prefix, "runs", "show", handle.run_id)
    table = await plait(provider.prefix, "runs", "show", handle.run_id)

    steps = {step["name"]: step for step in shown["steps"]}
    assert shown["status"] == "FAILED"
    assert shown["meta"]["request_id"] == "r-7"
    assert shown["version"] == flow.version
    assert steps["first"]["state"] == "completed"
    assert steps["second"]["attempts"] == 3
    assert steps["second"]["error"]["cause_message"] == "no second for -2"
    assert steps["rollback:first"]["state"] == "completed"
    assert shown["error"]["step"] == "second"
    assert "ValueError: no second for -2" in table.stdout
    assert "rollback:first" in table.stdout


async def test_runs_show_of_an_unknown_run_exits_1(prefix: str) -> None:
    done = await plait(prefix, "runs", "show", "cli-flow.0000deadbeef")

    assert done.returncode == 1
    assert done.stderr.strip() == "plait: run cli-flow.0000deadbeef not found"


async def test_runs_retry_resumes_a_failed_run(open_provider: OpenProvider) -> None:
    provider = await open_provider(flow_consumer())
    failing.add(-3)
    handle = await provider.execute(flow, Item(n=-3))
    with pytest.raises(WorkflowStepError):
        await handle.result()
    failing.discard(-3)

    retried = await plait_json(provider.prefix, "runs", "retry", handle.run_id)

    async def completed() -> bool:
        return await handle.status() is WorkflowStatus.COMPLETED

    assert retried["retried"] is True
    await eventually(completed, what="the retried run completes")


async def test_runs_retry_of_a_completed_run_exits_1(open_provider: OpenProvider) -> None:
    provider = await open_provider(flow_consumer())
    handle = await provider.execute(flow, Item(n=4))
    await handle.result()

    done = await plait(provider.prefix, "runs", "retry", handle.run_id)

    assert done.returncode == 1
    assert "is COMPLETED" in done.stderr


async def test_runs_cancel_cancels_a_live_run(open_provider: OpenProvider) -> None:
    provider = await open_provider(stuck_consumer())
    handle = await provider.execute(stuck, Item(n=1))

    async def running() -> bool:
        return await handle.status() is WorkflowStatus.RUNNING

    await eventually(running, what="the step runs")
    cancelled = await plait_json(provider.prefix, "runs", "cancel", handle.run_id)

    async def ended() -> bool:
        return await handle.status() is WorkflowStatus.CANCELLED

    assert cancelled["cancelled"] is True
    await eventually(ended, what="the run ends cancelled")


async def test_runs_cancel_of_an_unknown_run_exits_1(prefix: str) -> None:
    done = await plait(prefix, "runs", "cancel", "cli-stuck.0000deadbeef")

    assert done.returncode == 1
    assert "run cli-stuck.0000deadbeef not found" in done.stderr


# -- events ----------------------------------------------------------------------------------


async def started_tail(prefix: str, *args: str) -> Process:
    """A running ``plait events tail`` that has announced where it follows from."""
    process = await anyio.open_process(
        [*CLI, "--url", REDIS_URL, "--prefix", prefix, "events", "tail", *args, "--json"],
    )
    assert process.stderr is not None
    announced = b""
    with anyio.fail_after(10):
        while b"following" not in announced:
            announced += await process.stderr.receive()
    return process


async def output_of(process: Process) -> list[Any]:
    assert process.stdout is not None
    out = b""
    with anyio.fail_after(10):
        async for chunk in process.stdout:
            out += chunk
        await process.wait()
    return [json.loads(line) for line in out.decode().splitlines()]


# -- schedules -------------------------------------------------------------------------------


async def test_schedules_list_pause_resume_and_delete(open_provider: OpenProvider) -> None:
    provider = await open_provider()
    await provider.schedule(
        "cli-nightly", flow, Item(n=1), cron="0 3 * * *", timezone="Europe/Paris"
    )
    prefix = provider.prefix

    listed = await plait_json(prefix, "schedules", "list")
    table = await plait(prefix, "schedules", "list")
    paused = await plait_json(prefix, "schedules", "pause", "cli-nightly")
    shown = await plait_json(prefix, "schedules", "show", "cli-nightly")
    resumed = await plait(prefix, "schedules", "resume", "cli-nightly")
    again = await provider.schedules.get("cli-nightly")
    deleted = await plait(prefix, "schedules", "delete", "cli-nightly")
    gone = await plait(prefix, "schedules", "show", "cli-nightly")

    assert [(row["schedule_id"], row["target"], row["cron"]) for row in listed] == [
        ("cli-nightly", "cli-flow", "0 3 * * *")
    ]
    assert len(listed[0]["next_fire_times"]) == 3
    assert "cron 0 3 * * * (Europe/Paris)" in table.stdout
    assert (paused["paused"], shown["paused"], shown["next_fire_times"]) == (True, True, [])
    assert resumed.stdout.strip() == "schedule cli-nightly resumed"
    assert again is not None and not again.paused
    assert deleted.returncode == 0 and await provider.schedules.get("cli-nightly") is None
    assert (gone.returncode, gone.stderr.strip()) == (1, "plait: schedule cli-nightly not found")


async def test_events_tail_prints_new_events_as_they_come(prefix: str) -> None:
    async with RedisEventProvider.from_url(REDIS_URL, group="g", prefix=prefix) as events:
        await events.emit(paid, Item(n=0))
        process = await started_tail(prefix, paid.name, "--count", "2")
        first = await events.emit(paid, Item(n=1))
        second = await events.emit(paid, Item(n=2))
        printed = await output_of(process)

    assert process.returncode == 0
    assert [(line["id"], line["data"]) for line in printed] == [
        (first, {"n": 1}),
        (second, {"n": 2}),
    ]


async def test_events_tail_from_start_prints_stored_events(prefix: str) -> None:
    async with RedisEventProvider.from_url(REDIS_URL, group="g", prefix=prefix) as events:
        emitted = [await events.emit(paid, Item(n=n)) for n in range(3)]

    done = await plait(prefix, "events", "tail", paid.name, "--from-start", "--count", "3")

    assert done.returncode == 0
    assert [line.split()[2] for line in done.stdout.splitlines()] == emitted


async def test_events_tail_stops_on_sigterm(prefix: str) -> None:
    process = await started_tail(prefix, paid.name)

    process.send_signal(signal.SIGTERM)
    printed = await output_of(process)

    assert process.returncode == 0
    assert printed == []


# -- dead letters ----------------------------------------------------------------------------


async def test_dead_letters_list_and_purge_a_malformed_step_entry(
    open_provider: OpenProvider, client: Any
) -> None:
    provider = await open_provider(flow_consumer())
    keys = WorkflowKeys(provider.prefix, flow.name)
    await client.xadd(keys.jobs, {"garbage": "1"})
    await eventually(lambda: _length(client, keys.dead, 1), what="the entry is dead-lettered")

    listed = await plait_json(provider.prefix, "dead-letters", "list")
    purged = await plait_json(
        provider.prefix, "dead-letters", "purge", "--workflow", flow.name, listed[0]["id"]
    )

    assert [(row["kind"], row["name"], row["fields"]) for row in listed] == [
        ("workflow", flow.name, {"garbage": "1"})
    ]
    assert purged == {"purged": 1}
    assert await client.xlen(keys.dead) == 0


async def test_dead_letters_replay_requeues_a_step_entry(
    open_provider: OpenProvider, client: Any
) -> None:
    provider = await open_provider(flow_consumer())
    keys = WorkflowKeys(provider.prefix, flow.name)
    await client.xadd(keys.jobs, {"garbage": "2"})
    await eventually(lambda: _length(client, keys.dead, 1), what="the entry is dead-lettered")
    [(dead_id, _)] = await client.xrange(keys.dead)

    replayed = await plait_json(
        provider.prefix, "dead-letters", "replay", "--workflow", flow.name, dead_id.decode()
    )

    assert replayed[0]["outcome"] == "requeued"

    async def dead_again() -> bool:  # still garbage: the worker dead-letters it once more
        rows = await client.xrange(keys.dead)
        return len(rows) == 1 and rows[0][0] != dead_id

    await eventually(dead_again, what="the requeued entry is processed again")


async def _length(client: Any, key: str, length: int) -> bool:
    return int(await client.xlen(key)) == length


async def test_dead_letters_replay_redelivers_an_event_to_its_failing_group_only(
    prefix: str, client: Any
) -> None:
    calls: dict[str, int] = {"billing": 0, "audit": 0}
    broken = {"billing": True}

    async def bill(ctx: EventContext[Item]) -> None:
        calls["billing"] += 1
        if broken["billing"]:
            raise NonRetryableError("card declined")

    async def audit(ctx: EventContext[Item]) -> None:
        calls["audit"] += 1

    keys = EventKeys(prefix, paid.name)
    async with (
        RedisEventProvider.from_url(REDIS_URL, group="billing", prefix=prefix) as billing,
        RedisEventProvider.from_url(REDIS_URL, group="audit", prefix=prefix) as auditing,
    ):
        billing.on(paid, bill)
        auditing.on(paid, audit)
        await billing.ready()
        await auditing.ready()
        await billing.emit(paid, Item(n=5))
        await eventually(lambda: _length(client, keys.dead, 1), what="billing gives up")
        broken["billing"] = False

        listed = await plait_json(prefix, "dead-letters", "list", "--event", paid.name)
        replayed = await plait_json(prefix, "dead-letters", "replay", "--event", paid.name, "--all")

        async def billed() -> bool:
            return calls["billing"] == 2

        await eventually(billed, what="billing gets the event again")

    assert [(row["group"], row["reason"]) for row in listed] == [("billing", "non-retryable error")]
    assert replayed[0]["outcome"] == "redelivered"
    assert calls["audit"] == 1
    assert await client.xlen(keys.dead) == 0


async def test_dead_letters_replay_of_a_trimmed_event_needs_re_emit(
    prefix: str, client: Any
) -> None:
    keys = EventKeys(prefix, paid.name)
    await client.xadd(keys.stream, {"id": "e-1", "data": '{"n": 1}', "meta": "{}"})
    await client.xadd(
        keys.dead,
        {"entry": "1-1", "group": "billing", "reason": "attempts exhausted", "error": "",
         "fields": json.dumps({"id": "e-0", "data": '{"n": 0}', "meta": "{}"}), "attempts": 3},
    )  # fmt: skip

    refused = await plait(prefix, "dead-letters", "replay", "--event", paid.name, "--all")
    emitted = await plait_json(
        prefix, "dead-letters", "replay", "--event", paid.name, "--all", "--re-emit"
    )

    assert refused.returncode == 1
    assert "--re-emit" in refused.stdout
    assert emitted[0]["outcome"].startswith("re-emitted as ")
    assert [fields[b"id"] for _, fields in await client.xrange(keys.stream)] == [b"e-1", b"e-0"]
    assert await client.xlen(keys.dead) == 0


async def test_dead_letters_replay_without_ids_or_all_exits_2(prefix: str) -> None:
    bare = await plait(prefix, "dead-letters", "replay")
    ids_alone = await plait(prefix, "dead-letters", "purge", "1-1")

    assert (bare.returncode, ids_alone.returncode) == (2, 2)
    assert "--all" in bare.stderr
    assert "--workflow or --event" in ids_alone.stderr


async def test_dead_letters_replay_of_an_unknown_id_exits_1(prefix: str) -> None:
    done = await plait(prefix, "dead-letters", "replay", "--workflow", "cli-flow", "1-1")

    assert done.returncode == 1
    assert "dead letter 1-1 not found" in done.stderr


# -- reconcile, health -----------------------------------------------------------------------


async def test_reconcile_repairs_a_run_whose_job_entry_was_lost(
    open_provider: OpenProvider, client: Any
) -> None:
    provider = await open_provider()  # emitter only: nothing consumes the step
    handle = await provider.execute(flow, Item(n=1))
    keys = WorkflowKeys(provider.prefix, flow.name)
    [(entry, _)] = await client.xrange(keys.jobs)
    await client.xdel(keys.jobs, entry)

    stats = await plait_json(provider.prefix, "reconcile", "--min-age", "0")

    assert stats == {"scanned": 1, "stalled": 1, "reconciled": 1, "failed": 0}
    assert await client.xlen(keys.jobs) == 1
    assert await handle.status() is WorkflowStatus.PENDING


async def test_health_is_ok_with_a_live_instance(open_provider: OpenProvider) -> None:
    provider = await open_provider(flow_consumer(), provider_id="cli-instance")
    await (await provider.execute(flow, Item(n=1))).result()

    done = await plait(provider.prefix, "health", "--json")
    table = await plait(provider.prefix, "health")

    report = json.loads(done.stdout)
    assert done.returncode == 0
    assert report["ok"] is True
    assert [i["provider_id"] for i in report["instances"] if i["live"]] == ["cli-instance"]
    assert [(q["kind"], q["name"]) for q in report["queues"]] == [("workflow", flow.name)]
    assert table.stdout.splitlines()[0] == "OK"


async def test_health_fails_when_steps_wait_with_no_consumer(open_provider: OpenProvider) -> None:
    provider = await open_provider()
    await provider.execute(flow, Item(n=1))

    done = await plait(provider.prefix, "health", "--max-wait", "0", "--json")

    report = json.loads(done.stdout)
    assert done.returncode == 1
    assert report["ok"] is False
    assert "workflow 'cli-flow': 1 entries waiting" in report["problems"][0]


async def test_health_ready_only_pings_whatever_the_backlog(open_provider: OpenProvider) -> None:
    provider = await open_provider()  # emitter only: nothing takes the step
    await provider.execute(flow, Item(n=1))

    backlog = await plait(provider.prefix, "health", "--max-wait", "0", "--json")
    ready = await plait(provider.prefix, "health", "--ready", "--json")
    unreachable = await plait(provider.prefix, "health", "--ready", url=UNREACHABLE)

    assert (backlog.returncode, ready.returncode, unreachable.returncode) == (1, 0, 3)
    assert json.loads(ready.stdout)["ok"] is True
    assert "queues" not in json.loads(ready.stdout)
    assert unreachable.stdout.splitlines()[0] == "NOT READY"


async def test_registry_list_rebuild_and_forget(open_provider: OpenProvider, client: Any) -> None:
    provider = await open_provider(flow_consumer())
    prefix = provider.prefix
    await client.xadd(WorkflowKeys(prefix, "cli-old").jobs, {"r": "cli-old.1", "j": "a", "t": "1"})
    await client.xadd(EventKeys(prefix, "cli.old").stream, {"id": "e1", "data": "{}"})

    listed = await plait_json(prefix, "registry", "list")
    rebuilt = await plait_json(prefix, "registry", "rebuild")
    forgotten = await plait_json(prefix, "registry", "forget", "--workflow", "cli-old")
    after = await plait_json(prefix, "registry", "list")

    assert listed == {"workflows": [flow.name], "events": []}
    assert rebuilt == {"workflows": [flow.name, "cli-old"], "events": ["cli.old"]}
    assert forgotten == {"forgotten": 1}
    assert after == {"workflows": [flow.name], "events": ["cli.old"]}


async def test_runs_health_and_reconcile_answer_on_a_redis_cluster(
    cluster_url: str, prefix: str
) -> None:
    async with RedisWorkflowProvider.from_url(
        cluster_url, prefix=prefix, provider_id="cli-cluster"
    ) as provider:
        provider.register(flow_consumer())
        handle = await provider.execute(flow, Item(n=4))
        await handle.result(timeout=10)

        answers = [
            await plait(prefix, *command, "--json", url=cluster_url)
            for command in (
                ["runs", "list"],
                ["runs", "show", handle.run_id],
                ["health"],
                ["reconcile", "--min-age", "0"],
            )
        ]

    assert [done.returncode for done in answers] == [0, 0, 0, 0], [a.stderr for a in answers]
    listed, shown, report, stats = (json.loads(done.stdout) for done in answers)
    assert [row["run_id"] for row in listed] == [handle.run_id]
    assert shown["status"] == "COMPLETED"
    assert [step["name"] for step in shown["steps"]] == ["first", "second"]
    assert report["ok"] is True
    assert [i["provider_id"] for i in report["instances"] if i["live"]] == ["cli-cluster"]
    assert stats["failed"] == 0


async def test_unreachable_redis_exits_3_without_a_traceback(prefix: str) -> None:
    listing = await plait(prefix, "runs", "list", url=UNREACHABLE)
    health = await plait(prefix, "health", url=UNREACHABLE)

    assert (listing.returncode, health.returncode) == (3, 3)
    assert listing.stderr.startswith(f"plait: cannot reach Redis at {UNREACHABLE}")
    assert "Traceback" not in listing.stderr + health.stderr
    assert "Redis unreachable" in health.stdout


async def test_the_url_defaults_to_plait_redis_url() -> None:
    env = {**os.environ, "PLAIT_REDIS_URL": UNREACHABLE}

    done = await anyio.run_process([*CLI, "runs", "list"], check=False, env=env)

    assert done.returncode == 3
    assert UNREACHABLE in done.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [[], ["runs"], ["runs", "list", "--limit", "0"], ["runs", "list", "--status", "LATE"],
     ["worker", "apps.workflow_app:provider", "--concurrency", "0"], ["nonsense"]],
)  # fmt: skip
async def test_bad_arguments_exit_2(prefix: str, args: list[str]) -> None:
    done = await plait(prefix, *args)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr


# -- worker ----------------------------------------------------------------------------------


async def test_concurrency_set_before_start_limits_running_steps(prefix: str) -> None:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(wide)
    running: list[int] = [0, 0]  # now, most at once

    async def step(ctx: StepContext[Item]) -> None:
        running[0] += 1
        running[1] = max(running)
        await anyio.sleep(0.05)
        running[0] -= 1

    for name in "abcd":
        consumer.step(name)(step)
    provider = RedisWorkflowProvider.from_url(
        REDIS_URL, prefix=prefix, concurrency=10, retry=RetryPolicy(max_attempts=1)
    )
    provider.register(consumer)
    apply_concurrency([provider], 1)
    async with provider:
        await (await provider.execute(wide, Item(n=1))).result(timeout=timedelta(seconds=10))

    assert provider.concurrency == 1
    assert running[1] == 1


waiting = Workflow("cli-waiting", input=Item).wait("approval", timeout=timedelta(seconds=60))


async def test_runs_signal_resumes_a_waiting_run_and_show_lists_its_wait(
    open_provider: OpenProvider,
) -> None:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(waiting)

    @consumer.on_complete
    async def done(ctx: Any) -> Any:
        return ctx.results["approval"]

    provider = await open_provider(consumer)
    handle = await provider.execute(waiting, Item(n=1))

    async def parked() -> bool:
        waits = (await handle.describe()).waits
        return "approval" in waits and waits["approval"].state == "waiting"

    await eventually(parked, what="the run waits")
    shown = await plait(provider.prefix, "runs", "show", handle.run_id)
    assert "signal approval: waiting since" in shown.stdout
    sent = await plait_json(
        provider.prefix, "runs", "signal", handle.run_id, "approval", "--data", '{"ok": true}'
    )
    assert sent["sent"] is True
    assert await handle.result(timeout=10) == {"ok": True}
    late = await plait(provider.prefix, "runs", "signal", handle.run_id, "approval")
    assert late.returncode == 1
    assert "refused" in late.stderr
