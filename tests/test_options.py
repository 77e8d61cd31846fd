"""Each provider's options are one frozen record; its keyword form cannot drift from it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from plait.providers.redis import (
    EventProviderOptions,
    RedisEventProvider,
    RedisWorkflowProvider,
    WorkflowProviderOptions,
)
from plait.providers.redis._events.options import EventProviderKeywords
from plait.providers.redis._workflows.options import WorkflowProviderKeywords
from plait.workflows import RetryPolicy


def test_the_keyword_forms_name_every_option() -> None:
    workflow_fields = {f.name for f in dataclasses.fields(WorkflowProviderOptions)}
    assert set(WorkflowProviderKeywords.__annotations__) == workflow_fields
    event_fields = {f.name for f in dataclasses.fields(EventProviderOptions)}
    assert set(EventProviderKeywords.__annotations__) == event_fields - {"group"}


@pytest.mark.anyio
async def test_a_provider_keeps_its_options_frozen_with_its_id_resolved() -> None:
    policy = RetryPolicy(max_attempts=7)
    workflows = RedisWorkflowProvider.from_url(
        "memory://options", prefix="opt", stall_timeout=timedelta(seconds=3), retry=policy
    )
    events = RedisEventProvider.from_url("memory://options", group="billing", concurrency=4)
    try:
        assert workflows.options.prefix == workflows.prefix == "opt"
        assert workflows.options.stall_timeout == timedelta(seconds=3)
        assert workflows.options.retry is policy
        assert workflows.options.provider_id == workflows.provider_id != ""
        assert events.options.group == events.group == "billing"
        assert events.options.concurrency == events.concurrency == 4
        with pytest.raises(dataclasses.FrozenInstanceError):
            workflows.options.prefix = "other"  # type: ignore[misc]
        workflows.concurrency = 3
        assert workflows.options.concurrency == 3
    finally:
        await workflows.stop()
        await events.stop()


def test_invalid_options_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        WorkflowProviderOptions(concurrency=0)
    with pytest.raises(ValueError, match="concurrency"):
        EventProviderOptions(group="g", concurrency=0)
