"""Schedules: stored in Redis, fired by any instance, each tick exactly once, no leader."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from conftest import Clock, OpenProvider, eventually
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core.keys import ScheduleKeys, WorkflowKeys, pattern_of
from plait.providers.redis._core.schedules import StoredSchedule, plan_ticks, ticks_after
from plait.workflows import (
    InvalidDefinitionError,
    InvalidInputError,
    StepContext,
    Workflow,
    WorkflowConsumer,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class Report(BaseModel):
    name: str


report: Workflow[Report, Any] = Workflow("sched-report", input=Report).step("write")


def recording(seen: list[dict[str, str]], *, hold: float = 0.0) -> WorkflowConsumer[Report, Any]:
    """A consumer whose step records each run's meta (schedule id, tick, catch-up)."""
    consumer: WorkflowConsumer[Report, Any] = WorkflowConsumer(report)

    @consumer.step("write")
    async def write(ctx: StepContext[Report]) -> str:
        seen.append({**ctx.meta, "run": ctx.run_id, "name": ctx.input.name})
        await anyio.sleep(hold)
        return ctx.input.name

    return consumer


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def utc(ms_: int) -> str:
    return datetime.fromtimestamp(ms_ / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def cron(expression: str, timezone: str = "UTC") -> StoredSchedule:
    return StoredSchedule(target="x", data="{}", cron=expression, timezone=timezone)


# -- ticks, computed (no waiting) ------------------------------------------------------------


def test_a_daily_cron_in_paris_fires_at_the_right_instants_across_both_dst_changes() -> None:
    spring = ticks_after(
        cron("30 2 * * *", "Europe/Paris"), ms(datetime(2026, 3, 27, 12, tzinfo=UTC))
    )
    autumn = ticks_after(
        cron("30 2 * * *", "Europe/Paris"), ms(datetime(2026, 10, 23, 12, tzinfo=UTC))
    )

    # 02:30 does not exist on 29 March (02:00 -> 03:00): it fires at 03:00 CEST, once.
    assert [utc(t) for t in itertools.islice(spring, 3)] == [
        "2026-03-28 01:30",
        "2026-03-29 01:00",
        "2026-03-30 00:30",
    ]
    # 02:30 happens twice on 25 October (03:00 -> 02:00): it fires once, then on CET.
    assert [utc(t) for t in itertools.islice(autumn, 3)] == [
        "2026-10-24 00:30",
        "2026-10-25 00:30",
        "2026-10-26 01:30",
    ]


def test_an_hourly_cron_fires_every_real_hour_when_the_clock_goes_back() -> None:
    ticks = ticks_after(
        cron("0 * * * *", "Europe/Paris"), ms(datetime(2026, 10, 24, 23, 30, tzinfo=UTC))
    )

    assert [utc(t) for t in itertools.islice(ticks, 4)] == [
        "2026-10-25 00:00",
        "2026-10-25 01:00",
        "2026-10-25 02:00",
        "2026-10-25 03:00",
    ]


def test_every_ticks_at_multiples_of_the_period_since_the_epoch() -> None:
    spec = StoredSchedule(target="x", data="{}", every_ms=300_000)
    after = ms(datetime(2026, 1, 1, 10, 2, 17, tzinfo=UTC))

    assert [utc(t) for t in itertools.islice(ticks_after(spec, after), 2)] == [
        "2026-01-01 10:05",
        "2026-01-01 10:10",
    ]


@pytest.mark.parametrize(
    ("catchup", "fired"),
    [
        ("latest_once", [(8_000, True), (9_000, False), (10_000, False)]),
        (
            "all",
            [(t, True) for t in range(1_000, 9_000, 1_000)] + [(9_000, False), (10_000, False)],
        ),
        ("none", [(9_000, False), (10_000, False)]),
    ],
)
def test_ticks_missed_while_every_instance_was_down_follow_the_catch_up_policy(
    catchup: str, fired: list[tuple[int, bool]]
) -> None:
    spec = StoredSchedule(target="x", data="{}", every_ms=1_000, catchup=catchup)  # type: ignore[arg-type]

    # Down from tick 1 s; back at 10.5 s: ticks up to 8 s are more than 2 s late (missed).
    assert plan_ticks(spec, 1_000, 10_500) == (fired, 11_000)


# -- on every backend ------------------------------------------------------------------------


async def test_a_one_second_schedule_fires_each_tick_once_across_two_instances(
    open_provider: OpenProvider, prefix: str, clock: Clock
) -> None:
    seen: list[dict[str, str]] = []
    first = await open_provider(recording(seen))
    await open_provider(recording(seen))

    info = await first.schedule(
        "every-second", report, {"name": "r"}, every=timedelta(seconds=1), catchup="all"
    )

    async def four_ticks() -> bool:
        return len({run["scheduled_at"] for run in seen}) >= 4

    for _ in range(20):  # a tick a second (at once on memory://)
        if await four_ticks():
            break
        await clock.advance(timedelta(seconds=1))
    await eventually(four_ticks, timeout=10, what="four ticks fired")
    await first.schedules.pause("every-second")
    ticks = sorted({datetime.fromisoformat(run["scheduled_at"]) for run in seen})
    runs_per_tick = {
        tick: sum(1 for run in seen if run["scheduled_at"] == tick)
        for tick in {run["scheduled_at"] for run in seen}
    }
    assert set(runs_per_tick.values()) == {1}
    assert [b - a for a, b in itertools.pairwise(ticks)] == [timedelta(seconds=1)] * (
        len(ticks) - 1
    )
    assert {run["schedule_id"] for run in seen} == {"every-second"}
    assert info.every == timedelta(seconds=1)
    assert len(info.next_fire_times) == 3


async def test_a_paused_schedule_fires_nothing_until_resumed(
    open_provider: OpenProvider, prefix: str, clock: Clock
) -> None:
    seen: list[dict[str, str]] = []
    workflows = await open_provider(recording(seen))
    await workflows.schedule("paused", report, {"name": "p"}, every=timedelta(seconds=1))
    await workflows.schedules.pause("paused")
    paused_at = clock.now()  # a tick may have fired before the pause: its run may still come

    def fired_after(moment: datetime) -> list[dict[str, str]]:
        return [run for run in seen if datetime.fromisoformat(run["scheduled_at"]) > moment]

    await clock.advance(timedelta(seconds=2.5))  # ticks pass: none may fire
    paused = await workflows.schedules.get("paused")
    assert paused is not None
    assert (fired_after(paused_at), paused.paused, paused.next_fire_times) == ([], True, ())

    assert await workflows.schedules.resume("paused")
    resumed_at = clock.now()
    await clock.advance(timedelta(seconds=1))

    async def fired() -> bool:
        return bool(fired_after(resumed_at))

    await eventually(fired, timeout=10, what="the resumed schedule fired")
    assert {run["catch_up"] for run in seen} == {"0"}  # the paused ticks are not caught up
    assert fired_after(paused_at) == fired_after(resumed_at)


async def test_schedules_are_listed_replaced_and_deleted_from_any_instance(
    open_provider: OpenProvider, prefix: str
) -> None:
    one = await open_provider()
    other = await open_provider()
    await one.schedule("nightly", report, {"name": "n"}, cron="0 3 * * *", timezone="Europe/Paris")
    await other.schedule("often", report, {"name": "o"}, every=timedelta(minutes=5))
    await other.schedule(
        "nightly", report, {"name": "n2"}, cron="30 4 * * *", timezone="Europe/Paris"
    )

    listed = await other.schedules.list()
    nightly = await one.schedules.get("nightly")
    assert [info.schedule_id for info in listed] == ["nightly", "often"]
    assert nightly is not None and nightly.cron == "30 4 * * *"
    assert all(
        (when.astimezone(_paris()).hour, when.minute) == (4, 30) for when in nightly.next_fire_times
    )
    assert await one.schedules.delete("nightly")
    assert not await one.schedules.delete("nightly")
    assert await other.schedules.get("nightly") is None
    assert not await other.schedules.pause("nightly")


def _paris() -> ZoneInfo:
    return ZoneInfo("Europe/Paris")


async def test_a_bad_schedule_is_refused_before_anything_is_written(
    open_provider: OpenProvider,
) -> None:
    workflows = await open_provider()
    bad: list[dict[str, Any]] = [
        {"cron": "61 * * * *"},
        {"cron": "0 3 * * *", "timezone": "Mars/Olympus"},
        {"every": timedelta(milliseconds=10)},
        {},
        {"cron": "0 3 * * *", "every": timedelta(minutes=1)},
        {"every": timedelta(minutes=1), "overlap": "sometimes"},
    ]
    for arguments in bad:
        with pytest.raises(InvalidDefinitionError):
            await workflows.schedule("bad", report, {"name": "b"}, **arguments)
    with pytest.raises(InvalidInputError):
        await workflows.schedule("bad", report, {"nom": "b"}, every=timedelta(minutes=1))
    assert await workflows.schedules.list() == []


async def test_skip_fires_no_tick_while_the_previous_run_goes_on(
    open_provider: OpenProvider,
) -> None:
    seen: list[dict[str, str]] = []
    workflows = await open_provider(recording(seen, hold=2.6))
    await workflows.schedule("slow", report, {"name": "s"}, every=timedelta(seconds=1))

    async def two_runs() -> bool:
        return len(seen) >= 2

    await eventually(two_runs, timeout=20, what="two runs of a slow schedule")
    await workflows.schedules.pause("slow")
    first, second = (datetime.fromisoformat(run["scheduled_at"]) for run in seen[:2])
    assert second - first >= timedelta(seconds=3)  # the ticks while the first ran were skipped


async def test_cancel_previous_cancels_and_compensates_the_previous_run(
    open_provider: OpenProvider,
) -> None:
    undone: list[str] = []
    started: list[str] = []
    long: Workflow[Report, Any] = Workflow("sched-long", input=Report).step("book").step("wait")
    consumer: WorkflowConsumer[Report, Any] = WorkflowConsumer(long)

    @consumer.step("book")
    async def book(ctx: StepContext[Report]) -> str:
        started.append(ctx.run_id)
        return "B"

    @consumer.rollback("book")
    async def unbook(ctx: StepContext[Report]) -> None:
        undone.append(ctx.run_id)

    @consumer.step("wait")
    async def wait(ctx: StepContext[Report]) -> None:
        await anyio.sleep(3600)

    workflows = await open_provider(consumer)
    await workflows.schedule(
        "replace", long, {"name": "c"}, every=timedelta(seconds=1), overlap="cancel_previous"
    )

    async def one_cancelled() -> bool:
        return len(started) >= 2 and bool(undone)

    await eventually(one_cancelled, timeout=20, what="a run replaced by the next tick's")
    await workflows.schedules.pause("replace")
    handle = await workflows.get_handle(undone[0], long)
    assert undone[0] == started[0]
    assert (await handle.status()).value == "CANCELLED"


async def test_a_ticks_run_carries_its_idempotency_key_and_the_keys_are_documented(
    open_provider: OpenProvider, prefix: str
) -> None:
    seen: list[dict[str, str]] = []
    workflows = await open_provider(recording(seen))
    await workflows.schedule("keyed", report, {"name": "k"}, every=timedelta(seconds=1))

    async def fired() -> bool:
        return bool(seen)

    await eventually(fired, timeout=10, what="a tick fired")
    keys = ScheduleKeys(prefix, "workflows")
    client = workflows._connection.client
    stored = {key: (await client.type(key)).decode() for key in (keys.specs, keys.due, keys.state)}
    await workflows.schedules.pause("keyed")
    record = await workflows._connection.client.hgetall(
        WorkflowKeys(prefix, report.name).run(seen[0]["run"])
    )
    tick = int(datetime.fromisoformat(seen[0]["scheduled_at"]).timestamp() * 1000)
    assert record[b"ikey"].decode() == f"schedule:keyed:{tick}"
    assert {key: getattr(pattern_of(key, prefix), "type", None) for key in stored} == stored


async def test_a_schedule_fires_on_an_instance_that_never_saw_its_definition(
    url: str, prefix: str, open_provider: OpenProvider
) -> None:
    seen: list[dict[str, str]] = []
    runner = await open_provider(recording(seen))
    async with RedisWorkflowProvider.from_url(url, prefix=prefix) as maker:
        await maker.schedule("elsewhere", report, {"name": "e"}, every=timedelta(seconds=1))
    # the maker is gone: only the runner, which was told nothing, is left to fire it

    async def fired() -> bool:
        return bool(seen)

    await eventually(fired, timeout=10, what="the runner fired a schedule it did not make")
    await runner.schedules.delete("elsewhere")
    assert seen[0]["name"] == "e"


reminder = Event("sched.reminder", data=Report)


async def test_an_event_schedule_emits_each_tick_once_across_two_instances(
    url: str, prefix: str, clock: Clock
) -> None:
    seen: list[dict[str, str]] = []
    options: dict[str, Any] = {"prefix": prefix, "shutdown_timeout": timedelta(seconds=1)}
    async with (
        RedisEventProvider.from_url(url, group="mail", **options) as one,
        RedisEventProvider.from_url(url, group="mail", **options) as two,
    ):
        for events in (one, two):

            @events.on(reminder)
            async def remind(ctx: EventContext[Report]) -> None:
                seen.append({**ctx.meta, "name": ctx.data.name})

        await one.ready()
        await two.ready()
        info = await one.schedule("remind", reminder, {"name": "r"}, every=timedelta(seconds=1))

        async def three_ticks() -> bool:
            return len(seen) >= 3

        for _ in range(20):  # a tick a second (at once on memory://)
            if await three_ticks():
                break
            await clock.advance(timedelta(seconds=1))
        await eventually(three_ticks, timeout=10, what="three ticks emitted")
        assert await two.schedules.pause("remind")
        listed = await two.schedules.list()

    ticks = [run["scheduled_at"] for run in seen]
    assert len(set(ticks)) == len(ticks)
    assert {run["schedule_id"] for run in seen} == {"remind"}
    assert (info.target, [entry.schedule_id for entry in listed]) == ("sched.reminder", ["remind"])


async def test_buffer_one_fires_one_run_once_the_previous_one_ended(
    open_provider: OpenProvider,
) -> None:
    seen: list[dict[str, str]] = []
    spans: list[tuple[float, float]] = []
    consumer: WorkflowConsumer[Report, Any] = WorkflowConsumer(report)

    @consumer.step("write")
    async def write(ctx: StepContext[Report]) -> None:
        start = anyio.current_time()
        seen.append(dict(ctx.meta))
        await anyio.sleep(2.5)
        spans.append((start, anyio.current_time()))

    workflows = await open_provider(consumer)
    await workflows.schedule(
        "buffered", report, {"name": "b"}, every=timedelta(seconds=1), overlap="buffer_one"
    )

    async def two_ran() -> bool:
        return len(spans) >= 2

    await eventually(two_ran, timeout=30, what="two runs of a buffered schedule")
    await workflows.schedules.pause("buffered")
    first, second = sorted(spans)[:2]
    ticks = [datetime.fromisoformat(run["scheduled_at"]) for run in seen[:2]]

    assert second[0] >= first[1]  # the buffered run started after the previous one ended
    assert second[0] - first[1] < 1.5  # ... soon after it, not at a later tick
    assert ticks[1] - ticks[0] >= timedelta(seconds=2)  # one run for the ticks meanwhile
