"""Finding and acting on runs through the indexes kept in Redis, on every backend: lookup by
idempotency key, filters by status, time and indexed meta, paging, bulk retry and cancel."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider, eventually, keys_under
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.providers.redis._core.keys import WorkflowKeys
from plait.workflows import (
    InvalidDefinitionError,
    InvalidFilterError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStatus,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Order(BaseModel):
    n: int


ship = Workflow("search-ship", input=Order, indexed_meta=("customer", "region")).step("pack")
plain = Workflow("search-plain", input=Order).step("pack")


def ship_consumer(
    broken: set[int], *, hold: anyio.Event | None = None
) -> WorkflowConsumer[Order, Any]:
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(ship)

    @consumer.step("pack")
    async def pack(ctx: StepContext[Order]) -> int:
        if hold is not None:
            await hold.wait()
        if ctx.input.n in broken:
            raise RuntimeError(f"order {ctx.input.n} cannot be packed")
        return ctx.input.n

    return consumer


async def settled(workflows: RedisWorkflowProvider, runs: list[Any]) -> None:
    for handle in runs:
        with contextlib.suppress(WorkflowStepError):
            await handle.result(timeout=20)


async def every_page(workflows: RedisWorkflowProvider, **filters: Any) -> list[list[str]]:
    """The run ids of every page of a listing, following its cursor."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await workflows.list_runs(ship, cursor=cursor, **filters)
        pages.append([info.run_id for info in page.runs])
        if page.cursor is None:
            return pages
        cursor = page.cursor


async def test_a_run_is_found_by_its_idempotency_key(open_provider: OpenProvider) -> None:
    workflows = await open_provider(ship_consumer(set()))
    handle = await workflows.execute(ship, Order(n=1), idempotency_key="order-1")

    found = await workflows.find_run(ship, idempotency_key="order-1")
    by_name = await workflows.find_run("search-ship", idempotency_key="order-1")
    missing = await workflows.find_run(ship, idempotency_key="order-2")
    listed = await workflows.list_runs(ship, idempotency_key="order-1")

    assert found is not None and by_name is not None
    assert (found.run_id, by_name.run_id, missing) == (handle.run_id, handle.run_id, None)
    assert [info.run_id for info in listed.runs] == [handle.run_id]
    await found.result(timeout=20)
    assert await handle.status() is WorkflowStatus.COMPLETED


async def test_runs_are_listed_by_status_newest_first(open_provider: OpenProvider) -> None:
    workflows = await open_provider(ship_consumer({2, 4}))
    runs = [await workflows.execute(ship, Order(n=n)) for n in range(1, 6)]
    await settled(workflows, runs)

    failed = await workflows.list_runs(ship, status=WorkflowStatus.FAILED)
    completed = await workflows.list_runs(ship, status=WorkflowStatus.COMPLETED)
    running = await workflows.list_runs(ship, status=WorkflowStatus.RUNNING)
    everything = await workflows.list_runs(ship)

    ids = [handle.run_id for handle in runs]
    assert [info.run_id for info in failed.runs] == [ids[3], ids[1]]
    assert [info.run_id for info in completed.runs] == [ids[4], ids[2], ids[0]]
    assert [info.status for info in failed.runs] == [WorkflowStatus.FAILED] * 2
    assert (running.runs, running.cursor, failed.cursor) == ((), None, None)
    assert [info.run_id for info in everything.runs] == ids[::-1]


async def test_runs_are_listed_by_indexed_meta_status_and_time(
    open_provider: OpenProvider,
) -> None:
    workflows = await open_provider(ship_consumer({3}))
    first = [
        await workflows.execute(ship, Order(n=n), meta={"customer": "c-1", "region": "eu"})
        for n in (1, 2)
    ]
    await settled(workflows, first)
    since = datetime.now(tz=UTC)
    await anyio.sleep(0.01)  # the next runs are created strictly later, on any clock
    later = [
        await workflows.execute(ship, Order(n=3), meta={"customer": "c-1", "region": "us"}),
        await workflows.execute(ship, Order(n=4), meta={"customer": "c-2", "region": "eu"}),
    ]
    await settled(workflows, later)

    def ids(page: Any) -> list[str]:
        return [info.run_id for info in page.runs]

    customer = await workflows.list_runs(ship, meta={"customer": "c-1"})
    both = await workflows.list_runs(ship, meta={"customer": "c-1", "region": "eu"})
    failed_c1 = await workflows.list_runs(
        ship, meta={"customer": "c-1"}, status=WorkflowStatus.FAILED
    )
    recent = await workflows.list_runs(ship, since=since)
    old_eu = await workflows.list_runs(ship, meta={"region": "eu"}, until=since)
    recent_done = await workflows.list_runs(ship, status=WorkflowStatus.COMPLETED, since=since)

    assert ids(customer) == [later[0].run_id, first[1].run_id, first[0].run_id]
    assert ids(both) == [first[1].run_id, first[0].run_id]
    assert ids(failed_c1) == [later[0].run_id]
    assert ids(recent) == [later[1].run_id, later[0].run_id]
    assert ids(old_eu) == [first[1].run_id, first[0].run_id]
    assert ids(recent_done) == [later[1].run_id]
    assert customer.runs[0].meta["customer"] == "c-1"


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": WorkflowStatus.COMPLETED},
        {"meta": {"customer": "c"}},
        {"meta": {"customer": "c", "region": "r"}, "status": WorkflowStatus.COMPLETED},
    ],
    ids=["runs", "status", "meta", "meta+status"],
)
async def test_pages_follow_their_cursor_across_page_boundaries(
    open_provider: OpenProvider, filters: dict[str, Any]
) -> None:
    workflows = await open_provider(ship_consumer(set()))
    runs = [
        await workflows.execute(ship, Order(n=n), meta={"customer": "c", "region": "r"})
        for n in range(5)
    ]
    await settled(workflows, runs)

    pages = await every_page(workflows, limit=2, **filters)

    listed = [run_id for page in pages for run_id in page]
    # every run once, none skipped (runs created in the same millisecond come in either order)
    assert sorted(listed) == sorted(h.run_id for h in runs)
    assert [len(page) for page in pages[:2]] == [2, 2]


async def test_failed_runs_since_a_time_are_retried_in_bulk(open_provider: OpenProvider) -> None:
    broken = {1, 2, 3}
    workflows = await open_provider(ship_consumer(broken))
    before = await workflows.execute(ship, Order(n=1))
    await settled(workflows, [before])
    since = datetime.now(tz=UTC)
    await anyio.sleep(0.01)
    runs = [await workflows.execute(ship, Order(n=n)) for n in (2, 3, 4)]
    await settled(workflows, runs)

    dry_run = await workflows.list_runs(ship, status=WorkflowStatus.FAILED, since=since)
    broken.clear()
    retried: list[str] = []
    cursor = None
    while True:
        page = await workflows.retry_runs(ship, since=since, limit=1, cursor=cursor)
        retried += [info.run_id for info in page.runs]
        if page.cursor is None:
            break
        cursor = page.cursor

    assert [info.run_id for info in dry_run.runs] == [runs[1].run_id, runs[0].run_id]
    assert retried == [runs[1].run_id, runs[0].run_id]
    for handle in runs:
        await handle.result(timeout=20)
    assert await before.status() is WorkflowStatus.FAILED
    failed = await workflows.list_runs(ship, status=WorkflowStatus.FAILED)
    assert [info.run_id for info in failed.runs] == [before.run_id]


async def test_running_runs_are_cancelled_in_bulk(open_provider: OpenProvider) -> None:
    hold = anyio.Event()
    workflows = await open_provider(ship_consumer(set(), hold=hold))
    runs = [
        await workflows.execute(ship, Order(n=n), meta={"customer": c, "region": "r"})
        for n, c in ((1, "a"), (2, "b"), (3, "a"))
    ]

    async def all_running() -> bool:
        page = await workflows.list_runs(ship, status=WorkflowStatus.RUNNING)
        return len(page.runs) == 3

    await eventually(all_running, what="three runs running")
    cancelled = await workflows.cancel_runs(ship, meta={"customer": "a"})
    hold.set()

    assert [info.run_id for info in cancelled.runs] == [runs[2].run_id, runs[0].run_id]
    await runs[1].result(timeout=20)
    for handle in (runs[0], runs[2]):

        async def ended(handle: Any = handle) -> bool:
            return bool((await handle.status()) is WorkflowStatus.CANCELLED)

        await eventually(ended, what="the run cancelled")
    page = await workflows.list_runs(ship, status=WorkflowStatus.CANCELLED)
    assert {info.run_id for info in page.runs} == {runs[0].run_id, runs[2].run_id}


async def test_bad_filters_raise_a_typed_error(open_provider: OpenProvider) -> None:
    workflows = await open_provider()
    now = datetime.now(tz=UTC)

    with pytest.raises(InvalidFilterError, match="not indexed"):
        await workflows.list_runs(ship, meta={"colour": "red"})
    with pytest.raises(InvalidFilterError, match="since is after until"):
        await workflows.list_runs(ship, since=now, until=now - timedelta(seconds=1))
    with pytest.raises(InvalidFilterError, match="aware"):
        await workflows.list_runs(ship, since=datetime(2026, 1, 1))
    with pytest.raises(InvalidFilterError, match="cursor"):
        await workflows.list_runs(ship, status=WorkflowStatus.FAILED, cursor="r:1:1")
    with pytest.raises(InvalidFilterError, match="limit"):
        await workflows.list_runs(ship, limit=0)
    with pytest.raises(InvalidFilterError, match="FAILED and TIMED_OUT"):
        await workflows.retry_runs(ship, status=WorkflowStatus.COMPLETED)
    with pytest.raises(InvalidFilterError, match="PENDING and RUNNING"):
        await workflows.cancel_runs(ship, status=WorkflowStatus.FAILED)


@pytest.mark.parametrize("fields", [("bad field",), ("a:b",), ("x", "x"), "customer", (1,)])
def test_a_bad_indexed_meta_field_is_an_invalid_definition(fields: Any) -> None:
    with pytest.raises(InvalidDefinitionError, match="indexed_meta"):
        Workflow("search-bad", input=Order, indexed_meta=fields)


async def test_indexed_meta_survives_adding_steps() -> None:
    assert ship.step("label").indexed_meta == ("customer", "region")


async def test_a_workflow_indexing_no_meta_writes_no_meta_index(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider()
    await workflows.execute(plain, Order(n=1), meta={"customer": "c"})
    await workflows.execute(ship, Order(n=1), meta={"customer": "c"})

    meta_keys = sorted(
        key.decode() for key in await keys_under(workflows, prefix) if b":meta:" in key
    )

    assert meta_keys == [WorkflowKeys(prefix, ship.name).meta_index("customer", "c")]


async def test_the_indexes_are_trimmed_with_the_runs_index(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider(retention=timedelta(seconds=30))
    handle = await workflows.execute(ship, Order(n=1), meta={"customer": "c"})
    keys = WorkflowKeys(prefix, ship.name)
    client: Any = workflows._connection.client
    # a run created long ago (its record expired): the reconciler trims its index entries
    old = f"{ship.name}.old"
    await client.zadd(keys.runs, {old: 1_000})
    await client.zadd(keys.status, {f"FAILED|{1_000:013d}|{old}": 0})

    await workflows.reconcile()

    status_members = [raw.decode() async for raw, _ in client.zscan_iter(keys.status)]
    assert status_members == []  # the live run is not in it (active lists it), the old one left
    assert [
        run.run_id for run in (await workflows.list_runs(ship, status=WorkflowStatus.PENDING)).runs
    ] == [handle.run_id]
    assert 0 < await client.pttl(keys.meta_index("customer", "c")) <= 3_660_000
    listed = await workflows.list_runs(ship, status=WorkflowStatus.FAILED)
    assert listed.runs == ()
