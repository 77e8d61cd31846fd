"""Workflow definitions shared by the multi-process tests and their worker application."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from plait.workflows import RetryPolicy, Workflow


class Job(BaseModel):
    n: int


chain: Workflow[Job, Any] = Workflow("chain", input=Job).step("s1").step("s2").step("s3")
hold: Workflow[Job, Any] = Workflow("hold", input=Job).step("work")
booking: Workflow[Job, Any] = Workflow("booking", input=Job).step("book").step("wait")
crunch: Workflow[Job, Any] = Workflow("crunch", input=Job).step("crunch")
capped: Workflow[Job, Any] = Workflow("capped", input=Job, concurrency=2).step("work")
stuck: Workflow[Job, Any] = Workflow("stuck", input=Job).parallel("done", "hang")
napper: Workflow[Job, Any] = (
    Workflow("napper", input=Job).step("before").sleep("nap", timedelta(seconds=2)).step("after")
)

ONCE = RetryPolicy(max_attempts=1)
shipping_v1: Workflow[Job, Any] = (
    Workflow("shipping", input=Job).step("pack", retry=ONCE).step("label", retry=ONCE)
)
"""Version 1 of a workflow deployed in place: version 2 adds the step ``ship``."""
shipping_v2: Workflow[Job, Any] = shipping_v1.step("ship", retry=ONCE)
ticked: Workflow[Job, Any] = Workflow("ticked", input=Job).step("record")


class Keyed(BaseModel):
    key: str
    n: int


keyed: Workflow[Keyed, Any] = Workflow(
    "keyed", input=Keyed, concurrency_key=lambda job: job.key, per_key_limit=1
).step("work")
