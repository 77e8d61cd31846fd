"""The notifier service: its own consumer group on ``order.confirmed``.

plait worker --url redis://127.0.0.1:6379/0 --prefix multi-instance notifier:events
"""

from __future__ import annotations

from shared import PREFIX, URL, OrderConfirmed, order_confirmed

from plait.events import EventContext
from plait.providers.redis import RedisEventProvider

events = RedisEventProvider.from_url(URL, prefix=PREFIX, group="notifications")


@events.on(order_confirmed)
async def notify(ctx: EventContext[OrderConfirmed]) -> None:
    trace = ctx.meta.get("traceparent", "").split("-")[1]
    print(f"notifier confirmed {ctx.data.order_id} trace {trace}", flush=True)
