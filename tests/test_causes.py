"""plait's own failure causes have fixed public names: users match them, Redis stores them."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import OpenProvider
from pydantic import BaseModel

import plait.workflows
from plait.workflows import (
    PLAIT_CAUSES,
    NonRetryableError,
    RetryPolicy,
    StepContext,
    StepTimeoutError,
    Workflow,
    WorkflowConsumer,
    WorkflowStepError,
)
from plait.workflows._errors import cause_name

README = Path(__file__).resolve().parents[1] / "docs" / "concepts.md"
"""Where the table of failure causes is documented (Errors > Failure causes)."""

PINNED = {
    "plait.AttemptSuperseded": "AttemptSupersededError",
    "plait.CorruptRun": "CorruptRunError",
    "plait.InvalidResult": "InvalidResultError",
    "plait.InvalidStoredInput": "InvalidStoredInputError",
    "plait.PayloadDecode": "PayloadDecodeError",
    "plait.ResultNotSerializable": "ResultNotSerializableError",
    "plait.RunStopped": "RunStoppedError",
    "plait.StepTimeout": "StepTimeoutError",
    "plait.UnknownJob": "UnknownJobError",
    "plait.WaitTimeout": "WaitTimeoutError",
    "plait.WorkerLost": "WorkerLostError",
}


class Job(BaseModel):
    n: int = 0


def test_every_plait_cause_has_its_pinned_name_and_is_exported() -> None:
    assert {name: kind.__name__ for name, kind in PLAIT_CAUSES.items()} == PINNED
    for name, kind in PLAIT_CAUSES.items():
        assert cause_name(kind) == name
        assert getattr(plait.workflows, kind.__name__) is kind


def test_the_readme_lists_every_plait_cause_in_one_table() -> None:
    listed = set(re.findall(r"^\| `(plait\.[A-Za-z]+)` \|", README.read_text(), re.MULTILINE))
    assert listed == set(PINNED)


def test_a_subclass_of_a_plait_cause_keeps_its_own_module_path() -> None:
    class RefusedError(NonRetryableError):
        pass

    assert cause_name(RefusedError) == f"{__name__}.{RefusedError.__qualname__}"
    assert cause_name(ValueError) == "ValueError"


def test_a_cause_whose_str_raises_is_still_captured_by_type() -> None:
    class UnprintableError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    error = WorkflowStepError.from_exception("charge", 2, UnprintableError())
    assert error.cause_type.endswith("UnprintableError")
    assert "UnprintableError" in error.cause_message
    assert WorkflowStepError.from_wire(error.to_wire()).cause_type == error.cause_type


@pytest.mark.anyio
async def test_non_retryable_may_name_a_plait_cause(open_provider: OpenProvider) -> None:
    once = RetryPolicy(max_attempts=3, non_retryable=("plait.StepTimeout",))
    flow = Workflow("once", input=Job).step("nap", timeout=timedelta(milliseconds=50), retry=once)
    consumer: WorkflowConsumer[Job, Any] = WorkflowConsumer(flow)
    attempts: list[int] = []

    @consumer.step("nap")
    async def nap(ctx: StepContext[Job]) -> None:
        attempts.append(ctx.attempt)
        await anyio.sleep(30)

    workflows = await open_provider(consumer)
    handle = await workflows.execute(flow, Job())
    with pytest.raises(WorkflowStepError) as caught:
        await handle.result(timeout=10)
    assert attempts == [1]
    assert caught.value.cause_type == "plait.StepTimeout"
    assert not RetryPolicy(non_retryable=(StepTimeoutError,)).is_retryable(StepTimeoutError())
