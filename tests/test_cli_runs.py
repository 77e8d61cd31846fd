"""``plait runs list|retry|cancel`` with filters served by the run indexes, and ``runs show``'s
input and result, through the real entry point in a subprocess."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually
from pydantic import BaseModel
from test_cli import plait, plait_json

from plait.providers.redis import ZlibCodec
from plait.workflows import (
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.timeout(60)]


@pytest.fixture
def backend() -> str:
    return "redis"


class Item(BaseModel):
    n: int


sort = Workflow("cli-sort", input=Item, indexed_meta=("customer",)).step("pick")
broken: set[int] = set()


def sort_consumer(hold: anyio.Event | None = None) -> WorkflowConsumer[Item, Any]:
    consumer: WorkflowConsumer[Item, Any] = WorkflowConsumer(sort)

    @consumer.step("pick")
    async def pick(ctx: StepContext[Item]) -> int:
        if hold is not None:
            await hold.wait()
        if ctx.input.n in broken:
            raise ValueError(f"cannot pick {ctx.input.n}")
        return ctx.input.n

    @consumer.on_complete
    async def done(ctx: Any) -> dict[str, int]:
        return {"picked": ctx.input.n}

    return consumer


async def ended(handles: list[Any]) -> None:
    for handle in handles:
        with contextlib.suppress(WorkflowStepError):
            await handle.result(timeout=20)


async def test_runs_list_filters_by_meta_time_and_idempotency_key(
    open_provider: OpenProvider,
) -> None:
    provider = await open_provider(sort_consumer())
    old = await provider.execute(sort, Item(n=1), meta={"customer": "a"})
    await ended([old])
    since = datetime.now(tz=UTC).isoformat()
    await anyio.sleep(0.01)
    new = [
        await provider.execute(sort, Item(n=2), meta={"customer": "a"}, idempotency_key="k-2"),
        await provider.execute(sort, Item(n=3), meta={"customer": "b"}),
    ]
    await ended(new)
    common = ("runs", "list", "--workflow", sort.name)

    by_meta = await plait_json(provider.prefix, *common, "--meta", "customer=a")
    recent = await plait_json(provider.prefix, *common, "--since", since)
    recent_a = await plait_json(provider.prefix, *common, "--since", since, "--meta", "customer=a")
    last_hour = await plait_json(provider.prefix, *common, "--since", "1h", "--status", "COMPLETED")
    by_key = await plait_json(provider.prefix, *common, "--idempotency-key", "k-2")
    no_workflow = await plait(provider.prefix, "runs", "list", "--meta", "customer=a")

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [row["run_id"] for row in rows]

    assert ids(by_meta) == [new[0].run_id, old.run_id]
    assert ids(recent) == [new[1].run_id, new[0].run_id]
    assert ids(recent_a) == [new[0].run_id]
    assert ids(last_hour) == [new[1].run_id, new[0].run_id, old.run_id]
    assert ids(by_key) == [new[0].run_id]
    assert set(by_key[0]) == {"run_id", "workflow", "status", "version", "created", "finished"}
    assert no_workflow.returncode == 2


async def test_runs_show_includes_the_input_and_the_result(open_provider: OpenProvider) -> None:
    provider = await open_provider(sort_consumer())
    handle = await provider.execute(sort, Item(n=7))
    await handle.result(timeout=20)

    shown = await plait_json(provider.prefix, "runs", "show", handle.run_id)
    printed = await plait(provider.prefix, "runs", "show", handle.run_id)

    assert (shown["input"], shown["result"]) == ({"n": 7}, {"picked": 7})
    assert '{"n": 7}' in printed.stdout


async def test_runs_show_says_an_encoded_input_is_undecodable_instead_of_printing_it(
    open_provider: OpenProvider,
) -> None:
    provider = await open_provider(sort_consumer(), codec=ZlibCodec(threshold=0))
    handle = await provider.execute(sort, Item(n=7))
    await handle.result(timeout=20)

    shown = await plait_json(provider.prefix, "runs", "show", handle.run_id)

    assert "payload codec" in shown["input"]["undecodable"]
    assert "payload codec" in shown["result"]["undecodable"]


async def test_runs_retry_retries_failed_runs_since_a_time(open_provider: OpenProvider) -> None:
    provider = await open_provider(sort_consumer())
    broken.update({11, 12, 13})
    before = await provider.execute(sort, Item(n=11))
    await ended([before])
    since = datetime.now(tz=UTC).isoformat()
    await anyio.sleep(0.01)
    failed = [await provider.execute(sort, Item(n=n)) for n in (12, 13)]
    await ended(failed)
    args = ("runs", "retry", "--workflow", sort.name, "--status", "FAILED", "--since", since)

    dry = await plait_json(provider.prefix, *args, "--dry-run")
    broken.clear()
    real = await plait_json(provider.prefix, *args)

    expected = [failed[1].run_id, failed[0].run_id]
    assert [row["run_id"] for row in dry["retried"]] == expected
    assert (dry["dry_run"], dry["count"], real["dry_run"], real["count"]) == (True, 2, False, 2)
    assert [row["run_id"] for row in real["retried"]] == expected
    for handle in failed:
        await handle.result(timeout=20)
    assert await before.status() is WorkflowStatus.FAILED


async def test_runs_cancel_cancels_running_runs_of_a_customer(open_provider: OpenProvider) -> None:
    hold = anyio.Event()
    provider = await open_provider(sort_consumer(hold))
    runs = [
        await provider.execute(sort, Item(n=n), meta={"customer": c})
        for n, c in ((1, "a"), (2, "b"))
    ]

    async def running() -> bool:
        return all([await h.status() is WorkflowStatus.RUNNING for h in runs])

    await eventually(running, what="both runs running")
    done = await plait_json(
        provider.prefix, "runs", "cancel", "--workflow", sort.name, "--meta", "customer=a"
    )
    wrong = await plait(
        provider.prefix, "runs", "cancel", "--workflow", sort.name, "--status", "FAILED"
    )
    hold.set()

    assert [row["run_id"] for row in done["cancelled"]] == [runs[0].run_id]
    assert wrong.returncode == 2
    await runs[1].result(timeout=20)

    async def cancelled() -> bool:
        return await runs[0].status() is WorkflowStatus.CANCELLED

    await eventually(cancelled, what="the run cancelled")
