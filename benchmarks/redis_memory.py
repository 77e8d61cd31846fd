"""Redis memory per finished run and per event, and what is left once ``retention`` has expired.

Runs ``--n`` workflows of each kind (``saga3``: three steps, the last one fails, the first two
are compensated) through an in-process provider on a dedicated database and key prefix, waits
until the runs are recorded as ended (COMPLETED; FAILED for ``saga3``), then reports:

- ``MEMORY USAGE`` summed over every key of the prefix (exact, unaffected by other clients of
  a shared Redis), per run and per kind of key (run record, results, events, stream...);
- the change of ``INFO memory`` ``used_memory`` (server-wide, so noisy on a shared server).

Phase 1 keeps runs for a day (the default) to measure a finished run. Phase 2 runs with
``retention=2s``, keeps the provider running ``--wait`` seconds (its reconciler, which trims
the index of runs, every second) and reports what remains. Then ``--n`` events are emitted to
an event name with no consumer group, and to one whose group handles (and acknowledges) every
one, and the bytes of each event name's keys are reported per event::

    /tmp/pv/bin/python benchmarks/redis_memory.py --n 1000
    python benchmarks/redis_memory.py --n 1000 --kinds chain3,saga3 --server redis://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

if __package__ in (None, ""):  # run as a script: make ``benchmarks.workload`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workload import (
    IN_FLIGHT,
    REDIS_URL,
    WORKFLOWS,
    CountingMarker,
    Unit,
    delete_prefix,
    machine,
    noop,
    provider,
    submit_all,
)
from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.workflows import RetryPolicy, StepContext, Workflow, WorkflowConsumer

saga3 = (
    Workflow("saga3", input=Unit)
    .step("s1")
    .step("s2")
    .step("s3", retry=RetryPolicy(max_attempts=1))
)
"""Three steps; the last fails on its only attempt, so the first two are rolled back."""


class Note(BaseModel):
    """The data of a benchmark event (a small JSON object, as a typical event)."""

    order_id: str
    amount_cents: int


noted = Event("bench.noted", data=Note)
"""Emitted with no consumer group."""
handled = Event("bench.handled", data=Note)
"""Emitted to a group that handles every event."""


async def refuse(ctx: StepContext[Unit]) -> None:
    """The failing last step of :data:`saga3`."""
    raise RuntimeError("declined")


def saga_provider(url: str, prefix: str, *, retention: timedelta) -> RedisWorkflowProvider:
    """A provider that runs :data:`saga3` (no-op steps and rollbacks, ``s3`` fails)."""
    made = RedisWorkflowProvider.from_url(
        url,
        prefix=prefix,
        concurrency=10,
        retention=retention,
        reconcile_interval=timedelta(seconds=1),
    )
    consumer: WorkflowConsumer[Unit, Any] = WorkflowConsumer(saga3)
    consumer.step("s1")(noop)
    consumer.step("s2")(noop)
    consumer.step("s3")(refuse)
    consumer.rollback("s1")(noop)
    consumer.rollback("s2")(noop)
    made.register(consumer)
    return made


KIND_OF_KEY = re.compile(r":run:[^:]+(:results|:events)?$|:idem:.*$|:[a-z]+$")


def key_kind(key: bytes) -> str:
    """``run``, ``run:results``, ``run:events``, ``idem``, or the key's last part."""
    text = key.decode(errors="replace")
    found = KIND_OF_KEY.search(text)
    if found is None:
        return "other"
    part = found.group(0)
    if part.startswith(":run:"):
        return "run" + (found.group(1) or "")
    return "idem" if part.startswith(":idem:") else part[1:]


async def footprint(client: aioredis.Redis, prefix: str) -> tuple[int, Counter[str], Counter[str]]:
    """(total bytes, bytes by key kind, keys by key kind) of ``prefix``'s keys."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    sizes: list[Any] = []
    for start in range(0, len(keys), 500):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 500]:
            pipe.memory_usage(key, samples=0)
        sizes += await pipe.execute()
    by_bytes: Counter[str] = Counter()
    by_count: Counter[str] = Counter()
    for key, size in zip(keys, sizes, strict=True):
        by_bytes[key_kind(key)] += size or 0
        by_count[key_kind(key)] += 1
    return sum(by_bytes.values()), by_bytes, by_count


async def used_memory(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


async def ended(client: aioredis.Redis, prefix: str, kind: str) -> int:
    """Runs of ``kind`` that ended as they should (COMPLETED; FAILED, compensated, for saga3)."""
    status = "FAILED" if kind == "saga3" else "COMPLETED"
    value = await client.hget(f"{prefix}:{{{kind}}}:stats", status)
    return int(value or 0)


async def run_phase(
    client: aioredis.Redis,
    url: str,
    prefix: str,
    kind: str,
    *,
    n: int,
    retention: timedelta,
    linger: float = 0.0,
) -> int:
    """Execute ``n`` runs of ``kind`` and wait until all ended (:func:`ended`); then keep the
    provider (and its reconciler, every second) running for ``linger`` seconds. Returns the
    bytes of the prefix's keys right after the runs ended."""
    if kind == "saga3":
        made = saga_provider(url, prefix, retention=retention)
    else:
        made = provider(
            url,
            prefix,
            mark=CountingMarker(),
            retention=retention,
            reconcile_interval=timedelta(seconds=1),
            kinds=[kind],
        )
    async with made as workflows:
        if kind == "saga3":
            await submit(workflows, saga3, n)
        else:
            await submit_all(workflows, kind, (f"t{i}" for i in range(n)))
        deadline = time.monotonic() + max(60.0, n / 20)
        while await ended(client, prefix, kind) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind}: runs did not end")
            await asyncio.sleep(0.05)
        total, _, _ = await footprint(client, prefix)
        await asyncio.sleep(linger)
    return total


async def submit(workflows: RedisWorkflowProvider, definition: Workflow[Unit, Any], n: int) -> None:
    """``execute`` ``n`` runs of ``definition``, ``IN_FLIGHT`` calls outstanding."""
    pending = iter(range(n))

    async def lane() -> None:
        for i in pending:
            await workflows.execute(definition, Unit(tag=f"t{i}"))

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))


async def event_phase(client: aioredis.Redis, url: str, prefix: str, *, n: int) -> None:
    """Emit ``n`` events to an event with no group and to one whose group handles them all;
    print the bytes of each event name's keys per event."""
    count = 0
    done = asyncio.Event()
    events = RedisEventProvider.from_url(url, prefix=prefix, group="bench")

    @events.on(handled)
    async def handle(ctx: EventContext[Note]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    async with events:
        await events.ready()
        for event in (noted, handled):
            pending = iter(range(n))

            async def lane(event: Event[Note, Any] = event, pending: Any = pending) -> None:
                for i in pending:
                    await events.emit(event, Note(order_id=f"order-{i}", amount_cents=1990))

            before = await used_memory(client)
            await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
            if event is handled:
                await asyncio.wait_for(done.wait(), timeout=max(60.0, n / 20))
                stream = f"{prefix}:ev:{{{event.name}}}:stream"
                deadline = time.monotonic() + 30
                while (await client.xpending(stream, "bench"))["pending"]:  # acks still to land
                    if time.monotonic() > deadline:
                        raise TimeoutError("the group's acknowledgements did not land")
                    await asyncio.sleep(0.01)
            grown = await used_memory(client) - before
            keys = [key async for key in client.scan_iter(match=f"{prefix}:ev:{{{event.name}}}:*")]
            sizes = {
                key.decode().rpartition(":")[2]: await client.memory_usage(key, samples=0) or 0
                for key in keys
            }
            label = "a group handled each" if event is handled else "no group"
            print(
                f"event    {label:20}: {sum(sizes.values()) / n:5.0f} B/event by MEMORY USAGE "
                f"({', '.join(f'{k} {v / n:.0f}' for k, v in sizes.items())}), "
                f"{grown / n:5.0f} B/event by used_memory"
            )


def describe(by_bytes: Counter[str], by_count: Counter[str], n: int) -> str:
    return ", ".join(
        f"{kind} {size / n:.0f} B ({by_count[kind]} keys)" for kind, size in by_bytes.most_common()
    )


async def main(args: argparse.Namespace) -> None:
    url = f"{args.server}/{args.db}"
    client = aioredis.Redis.from_url(url)
    server = (await client.info("server"))["redis_version"]
    print(f"Redis {server} at {url}, prefix {args.prefix}, {args.n} runs per kind; {machine()}")
    try:
        for kind in args.kinds.split(","):
            await delete_prefix(client, args.prefix)
            before = await used_memory(client)
            await run_phase(client, url, args.prefix, kind, n=args.n, retention=timedelta(days=1))
            total, by_bytes, by_count = await footprint(client, args.prefix)
            grown = await used_memory(client) - before
            print(
                f"{kind:8} finished, retention 1 day: {total / args.n:7.0f} B/run by MEMORY "
                f"USAGE, {grown / args.n:7.0f} B/run by used_memory"
            )
            print(f"         by key: {describe(by_bytes, by_count, args.n)}")

            await delete_prefix(client, args.prefix)
            before = await used_memory(client)
            total_now = await run_phase(
                client,
                url,
                args.prefix,
                kind,
                n=args.n,
                retention=timedelta(seconds=2),
                linger=args.wait,
            )
            left, by_bytes, by_count = await footprint(client, args.prefix)
            grown = await used_memory(client) - before
            print(
                f"{kind:8} retention 2 s: {total_now / args.n:7.0f} B/run at the end, "
                f"{args.wait:g} s later (provider still running) {left} B left in total "
                f"({left / args.n:.1f} B/run), "
                f"used_memory {grown:+d} B"
            )
            print(f"         left: {describe(by_bytes, by_count, 1).replace(' B (', ' B total (')}")
        if args.events:
            await delete_prefix(client, args.prefix)
            await event_phase(client, url, args.prefix, n=args.n)
    finally:
        await delete_prefix(client, args.prefix)
        await client.aclose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="runs per kind")
    parser.add_argument(
        "--kinds",
        default="chain3,single,fanout10,saga3",
        help=f"workflows to measure ({', '.join([*WORKFLOWS, 'saga3'])})",
    )
    parser.add_argument(
        "--no-events", dest="events", action="store_false", help="skip the events' figures"
    )
    parser.add_argument("--wait", type=float, default=6.0, help="seconds to wait past the end")
    parser.add_argument("--db", type=int, default=12, help="Redis database (default 12)")
    parser.add_argument(
        "--server", default=REDIS_URL, help=f"Redis server URL without database ({REDIS_URL})"
    )
    parser.add_argument("--prefix", default="plait-bench-mem", help="key prefix")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
