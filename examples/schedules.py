"""A report every second from two instances: each tick runs once, whoever fires it.

    python examples/schedules.py

Runs on the embedded ``memory://`` server. Two providers (two "instances") share the store;
the schedule lives there, not in either process, and both look for due ticks. Each tick is an
``execute`` whose idempotency key is the schedule id plus the tick's time, so the instance that
comes second attaches to the first one's run. Then the schedule is paused, and a cron
schedule in Paris time shows its next fire times.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer

URL = "memory://schedules-example"


class Report(BaseModel):
    name: str


report: Workflow[Report, Any] = Workflow("report", input=Report).step("write")
written: list[str] = []
three = asyncio.Event()


def consumer_on(instance: str) -> WorkflowConsumer[Report, Any]:
    consumer: WorkflowConsumer[Report, Any] = WorkflowConsumer(report)

    @consumer.step("write")
    async def write(ctx: StepContext[Report]) -> str:
        written.append(ctx.meta["scheduled_at"])
        if len(written) == 3:
            three.set()
        print(f"{instance} wrote the {ctx.input.name} report of {ctx.meta['scheduled_at']}")
        return instance

    return consumer


async def main() -> None:
    async with (
        RedisWorkflowProvider.from_url(URL, provider_id="api-1") as one,
        RedisWorkflowProvider.from_url(URL, provider_id="api-2") as two,
    ):
        one.register(consumer_on("api-1"))
        two.register(consumer_on("api-2"))
        await one.schedule("tick", report, {"name": "minutely"}, every=timedelta(seconds=1))
        await asyncio.wait_for(three.wait(), timeout=30)
        await two.schedules.pause("tick")
        print(f"ticks: {len(written)}, each once: {len(set(written)) == len(written)}")

        nightly = await two.schedule(
            "nightly-report",
            report,
            {"name": "nightly"},
            cron="0 3 * * *",
            timezone="Europe/Paris",
            overlap="skip",
            catchup="latest_once",
        )
        print("nightly-report next fires at (UTC):")
        for when in nightly.next_fire_times:
            print(f"  {when:%Y-%m-%d %H:%M}")
        print("schedules:", [info.schedule_id for info in await one.schedules.list()])


if __name__ == "__main__":
    asyncio.run(main())
