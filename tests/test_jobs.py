"""Job names (``_workflows.jobs``) and which of them a consumer can run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from plait.providers.redis._workflows.handlers import Handlers
from plait.providers.redis._workflows.jobs import (
    COMPLETE,
    ERROR,
    ROLLBACK,
    compensates,
    display_name,
    error_step_name,
    is_step,
    rollback_of,
    step_of,
)
from plait.workflows import RetryPolicy, StepContext, Workflow, WorkflowConsumer


class Order(BaseModel):
    order_id: str = "o"


@pytest.mark.parametrize(
    ("job", "rollback", "step", "display", "error_step"),
    [
        ("charge", None, "charge", "charge", "charge"),
        (ROLLBACK + "charge", "charge", "charge", "rollback:charge", "charge"),
        (COMPLETE, None, COMPLETE, "on_complete", "on_complete"),
        (ERROR, None, ERROR, "on_error", "on_error"),
    ],
)
def test_each_kind_of_job_name_is_taken_apart_the_same_way_everywhere(
    job: str, rollback: str | None, step: str, display: str, error_step: str
) -> None:
    assert (rollback_of(job), step_of(job), display_name(job), error_step_name(job)) == (
        rollback,
        step,
        display,
        error_step,
    )


def test_only_rollbacks_and_on_error_belong_to_the_compensation() -> None:
    jobs = ["charge", ROLLBACK + "charge", COMPLETE, ERROR]
    assert [job for job in jobs if compensates(job)] == [ROLLBACK + "charge", ERROR]
    assert [job for job in jobs if is_step(job)] == ["charge"]


def _handlers(*, rollback: bool) -> Handlers:
    flow = Workflow("jobs", input=Order).step("charge").step("ship")
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)

    def noop(ctx: StepContext[Order]) -> None:
        return None

    consumer.step("charge")(noop)
    consumer.step("ship")(noop)
    if rollback:
        consumer.rollback("charge")(noop)
    return Handlers(consumer, RetryPolicy())


@pytest.mark.parametrize("rollback", [True, False])
def test_a_consumer_knows_exactly_the_handlers_it_has(rollback: bool) -> None:
    handlers = _handlers(rollback=rollback)
    jobs = ["charge", "ship", ROLLBACK + "charge", ROLLBACK + "ship", COMPLETE, ERROR]
    # A rollback or hook it lacks is put back for an instance that has it, never a no-op.
    expected = ["charge", "ship", *([ROLLBACK + "charge"] if rollback else [])]
    assert [job for job in jobs if handlers.knows(job)] == expected
    assert handlers.jobs() == expected


def test_a_consumer_does_not_know_foreign_job_names() -> None:
    handlers = _handlers(rollback=True)
    foreign = ["pack", ROLLBACK + "pack", "~other", "~xyzcharge", "~rb", ""]
    assert [job for job in foreign if handlers.knows(job)] == []


def test_a_rollback_uses_its_own_policy_then_its_steps_then_the_default() -> None:
    step_policy, rollback_policy, default = (RetryPolicy(max_attempts=n) for n in (2, 7, 3))
    flow = (
        Workflow("policies", input=Order)
        .step("charge", retry=step_policy, rollback_retry=rollback_policy)
        .step("ship", retry=step_policy)
        .step("pack")
    )
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(flow)
    handlers = Handlers(consumer, default)
    jobs = ["charge", ROLLBACK + "charge", ROLLBACK + "ship", ROLLBACK + "pack", COMPLETE]
    assert [handlers.policy(job).max_attempts for job in jobs] == [2, 7, 2, 3, 3]
