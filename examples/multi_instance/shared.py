"""What every process of the multi-instance example shares: the definitions and where Redis is.

The processes read ``PLAIT_REDIS_URL`` and ``PLAIT_PREFIX`` (``plait worker --url ... --prefix
...`` sets them for the worker modules; ``run.py`` sets them for every process it starts).
"""

from __future__ import annotations

import os
from datetime import timedelta

from pydantic import BaseModel

from plait.events import Event
from plait.workflows import RetryPolicy, Workflow

URL = os.environ.get("PLAIT_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("PLAIT_PREFIX", "multi-instance")


class Order(BaseModel):
    order_id: str
    amount_cents: int


class OrderConfirmed(BaseModel):
    order_id: str
    charge_id: str


place_order = (
    Workflow("place-order", input=Order)
    .step("reserve")
    .step("charge", retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=50)))
    .step("confirm")
)
order_confirmed = Event("order.confirmed", data=OrderConfirmed)
