"""Two services receive the same event; a third asks for a price and gets the reply.

    python examples/events_fanout.py

Runs on the embedded ``memory://`` server. ``billing`` and ``shipping`` are two groups: each
gets every ``order.placed`` event (fan-out). Billing emits ``invoice.sent`` from its handler,
which carries the order's correlation id and trace and names the order event as its cause.
Then the API asks ``pricing`` for a quote with ``request()`` and waits for the reply.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from plait.events import Event, EventContext
from plait.providers.redis import RedisEventProvider

URL = "memory://events-fanout"


class OrderPlaced(BaseModel):
    order_id: str
    amount_cents: int


class InvoiceSent(BaseModel):
    order_id: str
    invoice: str


class QuoteRequest(BaseModel):
    sku: str
    quantity: int


class Quote(BaseModel):
    sku: str
    total_cents: int


order_placed = Event("order.placed", data=OrderPlaced)
invoice_sent = Event("invoice.sent", data=InvoiceSent)
price_quote = Event("price.quote", data=QuoteRequest, result=Quote)


def trace_id(ctx: EventContext[Any]) -> str:
    return ctx.meta["traceparent"].split("-")[1]


async def main() -> None:
    done = asyncio.Event()
    billing = RedisEventProvider.from_url(URL, group="billing")
    shipping = RedisEventProvider.from_url(URL, group="shipping")
    pricing = RedisEventProvider.from_url(URL, group="pricing")
    api = RedisEventProvider.from_url(URL, group="api")

    @billing.on(order_placed)
    async def bill(ctx: EventContext[OrderPlaced]) -> None:
        print(
            f"billing : order {ctx.data.order_id} ({ctx.data.amount_cents} cents) "
            f"correlation={ctx.meta['correlation_id']} trace={trace_id(ctx)}"
        )
        await ctx.emit(invoice_sent, InvoiceSent(order_id=ctx.data.order_id, invoice="INV-1"))

    @shipping.on(order_placed)
    def ship(ctx: EventContext[OrderPlaced]) -> None:  # sync handlers run in a thread
        print(
            f"shipping: order {ctx.data.order_id} "
            f"correlation={ctx.meta['correlation_id']} trace={trace_id(ctx)}"
        )

    @shipping.on(invoice_sent)
    async def attach_invoice(ctx: EventContext[InvoiceSent]) -> None:
        print(
            f"shipping: invoice {ctx.data.invoice} caused by event {ctx.meta['causation_id']} "
            f"correlation={ctx.meta['correlation_id']} trace={trace_id(ctx)}"
        )
        done.set()

    @pricing.on(price_quote)
    async def price(ctx: EventContext[QuoteRequest]) -> Quote:
        return Quote(sku=ctx.data.sku, total_cents=ctx.data.quantity * 250)

    async with billing, shipping, pricing, api:
        event_id = await api.emit(
            order_placed,
            OrderPlaced(order_id="42", amount_cents=990),
            idempotency_key="order-42",
            meta={"request_id": "r-1"},
        )
        print(f"api     : emitted order.placed {event_id}")
        await asyncio.wait_for(done.wait(), timeout=10)
        quote = await api.request(
            price_quote, QuoteRequest(sku="tea", quantity=4), timeout=timedelta(seconds=5)
        )
        print(f"api     : quote for {quote.sku}: {quote.total_cents} cents")


if __name__ == "__main__":
    asyncio.run(main())
