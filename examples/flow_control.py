"""One run at a time per customer, and a burst of edits debounced into one run.

    python examples/flow_control.py

Runs on the embedded ``memory://`` server. ``sync-account`` allows one live run per customer:
three runs for "acme" run one after the other while "globex"'s runs alongside them. Then ten
edits of one document within the quiet period make one ``reindex`` run, with the last edit,
and every caller gets that run's handle.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer

URL = "memory://flow-control"


class Account(BaseModel):
    customer: str
    n: int


class Edit(BaseModel):
    doc: str
    text: str


sync: Workflow[Account, Any] = Workflow(
    "sync-account", input=Account, concurrency_key=lambda account: account.customer
).step("push")
reindex: Workflow[Edit, Any] = Workflow("reindex", input=Edit).step("index")

syncs: WorkflowConsumer[Account, Any] = WorkflowConsumer(sync)
reindexes: WorkflowConsumer[Edit, Any] = WorkflowConsumer(reindex)


@syncs.step("push")
async def push(ctx: StepContext[Account]) -> None:
    print(f"sync {ctx.input.customer} #{ctx.input.n} starts")
    await asyncio.sleep(0.1)
    print(f"sync {ctx.input.customer} #{ctx.input.n} ends")


@reindexes.step("index")
async def index(ctx: StepContext[Edit]) -> str:
    print(f"reindex {ctx.input.doc} with {ctx.input.text!r}")
    return ctx.input.text


async def main() -> None:
    async with RedisWorkflowProvider.from_url(URL) as workflows:
        workflows.register(syncs)
        workflows.register(reindexes)
        runs = [
            await workflows.execute(sync, Account(customer=customer, n=n))
            for n in range(3)
            for customer in ("acme", "globex")
        ]
        for run in runs:
            await run.result(timeout=10)

        edits = [
            await workflows.execute(
                reindex,
                Edit(doc="doc-7", text=f"draft {n}"),
                debounce=timedelta(milliseconds=300),
                debounce_key="doc-7",
            )
            for n in range(10)
        ]
        print("one run for the burst:", len({edit.run_id for edit in edits}) == 1)
        await edits[-1].result(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
