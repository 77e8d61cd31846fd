"""A separate process for the multi-process event tests: a worker instance, or an emitter.

    python tests/apps/event_worker.py work --url URL --prefix P --group G --id ID [--stall S]
    python tests/apps/event_worker.py emit --url URL --prefix P --count N

A worker counts each event it handles in the hash ``<prefix>:test:handled:<group>`` (event id ->
times handled) and answers ``bulk.quote`` requests; it prints ``ready`` once its groups exist and
stops gracefully on SIGTERM. The emitter prints ``emitted`` when done.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from datetime import timedelta

import redis.asyncio as aioredis
from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider
from plait.workflows import RetryPolicy


class Item(BaseModel):
    n: int


class Answer(BaseModel):
    n: int
    group: str
    worker: str


bulk = Event("bulk.item", data=Item)
bulk_quote = Event("bulk.quote", data=Item, result=Answer)


async def work(args: argparse.Namespace) -> None:
    counter = aioredis.Redis.from_url(args.url)
    handled_key = f"{args.prefix}:test:handled:{args.group}"
    events = RedisEventProvider.from_url(
        args.url,
        group=args.group,
        prefix=args.prefix,
        provider_id=args.id,
        stall_timeout=timedelta(seconds=args.stall),
        concurrency=20,
        retry=RetryPolicy(initial_interval=timedelta(milliseconds=50)),
    )

    @events.on(bulk)
    async def count(ctx: EventContext[Item]) -> None:
        await asyncio.sleep(args.work_ms / 1000)
        await counter.hincrby(handled_key, ctx.event_id, 1)

    @events.on(bulk_quote)
    async def answer(ctx: EventContext[Item]) -> Answer:
        return Answer(n=ctx.data.n * 2, group=args.group, worker=args.id)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with events:
        print("ready", flush=True)
        await stop.wait()
    await counter.aclose()


async def emit(args: argparse.Namespace) -> None:
    async with RedisEventProvider.from_url(args.url, group="emitter", prefix=args.prefix) as events:
        for n in range(args.count):
            await events.emit(bulk, Item(n=n))
    print("emitted", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["work", "emit"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--group", default="workers")
    parser.add_argument("--id", default="worker")
    parser.add_argument("--stall", type=float, default=15.0)
    parser.add_argument("--work-ms", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(work(args) if args.mode == "work" else emit(args))


if __name__ == "__main__":
    main()
