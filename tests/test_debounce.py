"""Debounce: a burst of executes with one key makes one run, with the latest input."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import OpenProvider
from pydantic import BaseModel

from plait.workflows import (
    InvalidInputError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowHandle,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Edit(BaseModel):
    doc: str
    n: int


index: Workflow[Edit, Any] = Workflow("db-index", input=Edit).step("reindex")


def indexing(runs: list[tuple[str, int, float]]) -> WorkflowConsumer[Edit, Any]:
    consumer: WorkflowConsumer[Edit, Any] = WorkflowConsumer(index)

    @consumer.step("reindex")
    async def reindex(ctx: StepContext[Edit]) -> int:
        runs.append((ctx.run_id, ctx.input.n, anyio.current_time()))
        return ctx.input.n

    return consumer


QUIET = timedelta(seconds=1)


async def test_a_burst_of_a_hundred_executes_makes_one_run_with_the_last_input(
    open_provider: OpenProvider,
) -> None:
    runs: list[tuple[str, int, float]] = []
    workflows = await open_provider(indexing(runs))

    handles = [
        await workflows.execute(index, Edit(doc="doc-7", n=n), debounce=QUIET, debounce_key="doc-7")
        for n in range(100)
    ]
    await handles[-1].result(timeout=20)

    assert {handle.run_id for handle in handles} == {handles[0].run_id}
    assert [handle.created for handle in handles] == [True] + [False] * 99
    assert [(run, n) for run, n, _ in runs] == [(handles[0].run_id, 99)]


async def test_two_bursts_further_apart_than_the_quiet_period_make_two_runs(
    open_provider: OpenProvider,
) -> None:
    runs: list[tuple[str, int, float]] = []
    workflows = await open_provider(indexing(runs))
    quiet = timedelta(milliseconds=300)

    first = [
        await workflows.execute(index, Edit(doc="d", n=n), debounce=quiet, debounce_key="d")
        for n in range(5)
    ]
    await first[-1].result(timeout=20)
    second = [
        await workflows.execute(index, Edit(doc="d", n=n), debounce=quiet, debounce_key="d")
        for n in range(10, 15)
    ]
    await second[-1].result(timeout=20)

    assert first[0].run_id != second[0].run_id
    assert [n for _, n, _ in runs] == [4, 14]


async def test_other_debounce_keys_make_their_own_runs(open_provider: OpenProvider) -> None:
    runs: list[tuple[str, int, float]] = []
    workflows = await open_provider(indexing(runs))
    quiet = timedelta(milliseconds=300)

    handles = [
        await workflows.execute(
            index, Edit(doc=f"doc-{n % 2}", n=n), debounce=quiet, debounce_key=f"doc-{n % 2}"
        )
        for n in range(6)
    ]
    for handle in handles:
        await handle.result(timeout=20)

    assert sorted(n for _, n, _ in runs) == [4, 5]


async def test_debounce_max_wait_starts_the_run_while_the_burst_goes_on(
    open_provider: OpenProvider,
) -> None:
    runs: list[tuple[str, int, float]] = []
    workflows = await open_provider(indexing(runs))
    began = anyio.current_time()
    handles: list[WorkflowHandle[Any]] = []
    while anyio.current_time() - began < 3.0:  # a call every 50 ms: never quiet for 0.5 s
        handles.append(
            await workflows.execute(
                index,
                Edit(doc="busy", n=len(handles)),
                debounce=timedelta(milliseconds=500),
                debounce_key="busy",
                debounce_max_wait=timedelta(seconds=1),
            )
        )
        await anyio.sleep(0.05)
    for handle in handles:
        await handle.result(timeout=20)

    assert len({handle.run_id for handle in handles}) >= 2
    assert runs[0][2] - began < 2.5  # the first run did not wait for the end of the burst


async def test_debounce_without_a_key_or_with_an_idempotency_key_is_refused(
    open_provider: OpenProvider,
) -> None:
    workflows = await open_provider()
    bad: list[dict[str, Any]] = [
        {"debounce": QUIET},
        {"debounce": QUIET, "debounce_key": "k", "idempotency_key": "i"},
        {"debounce": timedelta(0), "debounce_key": "k"},
        {"debounce_key": "k"},
    ]
    for options in bad:
        with pytest.raises(InvalidInputError):
            await workflows.execute(index, Edit(doc="d", n=1), **options)
