"""Mixed versions of one consumer never fail a run nor skip a rollback, on every backend.

Instances announce what they can run; runs record at execute what they need. An instance
without the handler of a job puts the job back for one that has it (no attempt spent, no
no-op); only when no live instance announced the handler for ``missing_handler_grace`` is the
entry dead-lettered, with a reason naming the handler.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from apps.definitions import Job, shipping_v1, shipping_v2
from conftest import OpenProvider, eventually

from plait.workflows import (
    InvalidDefinitionError,
    NonRetryableError,
    RetryPolicy,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowRollbackError,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = pytest.mark.anyio


def shipping(version: int, ran: Counter[str]) -> WorkflowConsumer[Job, Any]:
    """Version 1 has ``pack`` and ``label`` and the rollback of ``pack``; version 2 adds the
    step ``ship`` (it fails the runs whose ``n`` is a multiple of 4) and the rollback of
    ``label``. ``ran`` counts each job's side effects, by ``<n>:<job>``."""
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(
        shipping_v2 if version == 2 else shipping_v1
    )

    def work(ctx: StepContext[Job]) -> int:
        ran[f"{ctx.input.n}:{ctx.step}"] += 1
        return version

    def ship(ctx: StepContext[Job]) -> int:
        ran[f"{ctx.input.n}:ship"] += 1
        if ctx.input.n % 4 == 0:
            raise NonRetryableError("no carrier")
        return version

    consumer.step("pack")(work)
    consumer.step("label")(work)
    consumer.rollback("pack")(lambda ctx: ran.update([f"{ctx.input.n}:rollback:pack"]))
    if version == 2:
        consumer.step("ship")(ship)
        consumer.rollback("label")(lambda ctx: ran.update([f"{ctx.input.n}:rollback:label"]))
    return consumer


async def test_runs_of_a_step_no_instance_has_wait_and_finish_once_one_starts(
    open_provider: OpenProvider,
) -> None:
    ran: Counter[str] = Counter()
    old = await open_provider(shipping(1, ran))
    handles = [await old.execute(shipping_v2, {"n": n}) for n in (1, 2, 3)]

    async def waiting() -> bool:
        report = await old.health()
        queue = next(q for q in report.queues if q.name == "shipping")
        return queue.waiting_for == ("ship",) and all(ran[f"{n}:label"] for n in (1, 2, 3))

    await eventually(waiting, what="health says the runs wait for a consumer of 'ship'")
    report = await old.health()
    statuses = {await handle.status() for handle in handles}
    await open_provider(shipping(2, ran))
    results = [await handle.result(timeout=15) for handle in handles]
    infos = [await handle.describe() for handle in handles]

    assert statuses == {WorkflowStatus.RUNNING}
    assert any("waiting for a consumer that can run 'ship'" in p for p in report.problems)
    assert results == [None] * 3
    assert [info.steps["ship"].attempts for info in infos] == [1] * 3
    assert [ran[f"{n}:ship"] for n in (1, 2, 3)] == [1] * 3


async def test_a_rollback_is_run_by_an_instance_that_has_it_never_skipped(
    open_provider: OpenProvider,
) -> None:
    ran: Counter[str] = Counter()
    await open_provider(shipping(2, ran), concurrency=2)
    old = await open_provider(shipping(1, ran), concurrency=8)  # announced last, takes more
    handles = [await old.execute(shipping_v2, {"n": 4 * n}) for n in range(1, 11)]

    for handle in handles:
        with pytest.raises(WorkflowStepError) as caught:
            await handle.result(timeout=20)
        assert not isinstance(caught.value, WorkflowRollbackError)
        assert caught.value.cause_message == "no carrier"

    assert [ran[f"{4 * n}:rollback:label"] for n in range(1, 11)] == [1] * 10
    assert [ran[f"{4 * n}:rollback:pack"] for n in range(1, 11)] == [1] * 10


async def test_a_job_no_instance_announces_is_dead_lettered_after_the_grace_period(
    open_provider: OpenProvider, prefix: str
) -> None:
    old = Workflow("versioned", input=Job).step("legacy")
    new = Workflow("versioned", input=Job).step("current")
    consumer: WorkflowConsumer[Job, None] = WorkflowConsumer(new)
    consumer.step("current")(lambda ctx: None)
    grace = timedelta(seconds=1)
    workflows = await open_provider(consumer, missing_handler_grace=grace)

    began = time.monotonic()
    handle = await workflows.execute(old, {"n": 1})
    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=15)
    waited = time.monotonic() - began
    client: Any = workflows._connection.client
    dead = await client.xrange(f"{prefix}:{{versioned}}:dead")

    reason = (
        "no instance can run 'legacy' of workflow 'versioned': no live instance announced it "
        "for 1s (missing_handler_grace)"
    )
    assert caught.value.cause_type == "plait.UnknownJob"
    assert caught.value.cause_message == reason
    assert [fields[b"reason"].decode() for _, fields in dead] == [reason]
    assert waited >= grace.total_seconds()


async def test_attempts_follow_the_step_options_their_run_recorded(
    open_provider: OpenProvider,
) -> None:
    patient = Workflow("options", input=Job).step(
        "flaky", retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=10))
    )
    strict = Workflow("options", input=Job).step("flaky", retry=RetryPolicy(max_attempts=1))
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(strict)

    @consumer.step("flaky")
    def flaky(ctx: StepContext[Job]) -> int:
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return ctx.attempt

    workflows = await open_provider(consumer)
    handle = await workflows.execute(patient, {"n": 1})

    assert await handle.result(timeout=10) is None
    assert (await handle.describe()).steps["flaky"].attempts == 3


async def test_each_run_records_the_version_that_executed_it(open_provider: OpenProvider) -> None:
    ran: Counter[str] = Counter()
    named = Workflow("named", input=Job, version="2026-12.1").step("only")
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(named)
    consumer.step("only")(lambda ctx: None)
    workflows = await open_provider(consumer, shipping(1, ran))
    old = await workflows.execute(shipping_v1, {"n": 1})
    new = await workflows.execute(shipping_v2, {"n": 2})
    mine = await workflows.execute(named, {"n": 3})
    await old.result(timeout=10)
    report = await workflows.health()

    assert shipping_v1.version != shipping_v2.version  # the default: a hash of plan and options
    assert (
        shipping_v1.version
        == Workflow("shipping", input=Job)
        .step("pack", retry=RetryPolicy(max_attempts=1))
        .step("label", retry=RetryPolicy(max_attempts=1))
        .version
    )  # stable, wherever defined
    assert (await old.describe()).version == shipping_v1.version
    assert (await new.describe()).version == shipping_v2.version
    assert (await mine.describe()).version == "2026-12.1"
    versions = {queue.name: queue.versions for queue in report.queues}
    assert versions["shipping"] == (shipping_v1.version,)
    assert versions["named"] == ("2026-12.1",)


def test_a_version_must_be_a_short_name() -> None:
    with pytest.raises(InvalidDefinitionError, match="invalid version"):
        Workflow("named", input=Job, version="two words")


async def test_the_heartbeat_refreshes_the_announcement_and_stop_withdraws_it(
    open_provider: OpenProvider, prefix: str
) -> None:
    ran: Counter[str] = Counter()
    workflows = await open_provider(shipping(2, ran))
    client: Any = workflows._connection.client
    key = f"{prefix}:{{shipping}}:consumers"
    first = (await client.hget(key, workflows.provider_id)).decode()
    seconds, micros = await client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    while now_ms <= int(first.partition("|")[0]):  # the next beat must read a later time
        seconds, micros = await client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000

    await workflows._heartbeat.beat()
    beaten = (await client.hget(key, workflows.provider_id)).decode()
    await workflows.stop()

    seen, version, jobs = beaten.split("|")
    assert int(seen) > int(first.partition("|")[0])
    assert version == shipping_v2.version
    assert set(jobs.strip(",").split(",")) == {
        "pack", "label", "ship", "~rb:pack", "~rb:label"
    }  # fmt: skip
    assert await client.hget(key, workflows.provider_id) is None
