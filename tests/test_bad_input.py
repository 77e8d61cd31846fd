"""Every input error is a typed error, raised before anything is written (both engines).

What a caller passes to ``execute``, ``emit`` or ``request`` is stored as JSON that a worker
parses again and is packed as strict UTF-8 on the way to Redis. Input that either would choke on
(nesting past the documented depth, lone surrogates) or that has the wrong type is refused up
front with ``InvalidInputError`` / ``InvalidEventError``, on every backend.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import OpenProvider, keys_under, only_provider_keys
from pydantic import BaseModel

from plait.events import Event, EventContext, InvalidEventError
from plait.providers.redis import RedisEventProvider
from plait.providers.redis._core.payload import MAX_DEPTH
from plait.workflows import (
    InvalidInputError,
    Workflow,
    WorkflowConsumer,
    WorkflowContext,
    WorkflowStepError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

SURROGATE = "\ud800"
"""A lone surrogate: a Python ``str`` that has no UTF-8 form."""


class Tree(BaseModel):
    tree: Any = None
    label: str = ""


class Depth(BaseModel):
    levels: int


def nested(depth: int) -> dict[str, Any]:
    """A ``Tree`` input whose innermost value lies inside ``depth`` objects and arrays."""
    value: Any = 0
    for _ in range(depth - 1):
        value = [value]
    return {"tree": value}


def depth_of(value: Any) -> int:
    """How many objects and arrays enclose the innermost value."""
    depth = 0
    while isinstance(value, list | dict):
        depth += 1
        value = value[0] if isinstance(value, list) else value["tree"]
    return depth


TOO_DEEP = [MAX_DEPTH + 1, 254, 255, 5_000]
"""Just past the limit, past it up to pydantic's serializer limit (255), and far past both."""

deep_flow = Workflow("deep", input=Tree)
deep_event = Event("deep.made", data=Tree)
deep_question = Event("deep.asked", data=Tree, result=Depth)


def deep_consumer() -> WorkflowConsumer[Tree, Any]:
    consumer: WorkflowConsumer[Tree, Any] = WorkflowConsumer(deep_flow)

    @consumer.on_complete
    async def measure(ctx: WorkflowContext[Tree]) -> int:
        return depth_of(ctx.input.model_dump(mode="json"))

    return consumer


def events(url: str, prefix: str, group: str = "tests") -> RedisEventProvider:
    return RedisEventProvider.from_url(
        url, group=group, prefix=prefix, shutdown_timeout=timedelta(seconds=1)
    )


# -- workflows -----------------------------------------------------------------------------


async def test_input_nested_to_the_limit_runs(open_provider: OpenProvider) -> None:
    workflows = await open_provider(deep_consumer())

    handle = await workflows.execute(deep_flow, nested(MAX_DEPTH))

    assert await handle.result(timeout=10) == MAX_DEPTH


async def test_input_nested_past_the_limit_is_refused_and_nothing_is_written(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider()

    for depth in TOO_DEEP:
        with pytest.raises(InvalidInputError, match="nest") as raised:
            await workflows.execute(deep_flow, nested(depth), idempotency_key=f"k{depth}")
        assert raised.value.workflow == "deep"

    assert only_provider_keys(await keys_under(workflows, prefix), prefix)


async def test_text_with_a_lone_surrogate_is_refused_and_nothing_is_written(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider()
    broken_instance = Tree(label="fine")
    broken_instance.label = SURROGATE  # models do not validate assignments

    calls: list[dict[str, Any]] = [
        {"data": {"label": SURROGATE}},
        {"data": broken_instance},
        {"data": {"tree": {SURROGATE: 1}}},
        {"data": {}, "idempotency_key": "order-" + SURROGATE},
        {"data": {}, "meta": {"source": SURROGATE}},
        {"data": {}, "meta": {SURROGATE: "x"}},
    ]
    for call in calls:
        data = call.pop("data")
        with pytest.raises(InvalidInputError, match="Unicode"):
            await workflows.execute(deep_flow, data, **call)

    assert only_provider_keys(await keys_under(workflows, prefix), prefix)


async def test_options_of_the_wrong_type_are_refused_and_nothing_is_written(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider()
    unserializable = Tree()
    unserializable.tree = object()

    calls: list[dict[str, Any]] = [
        {"meta": [("source", "web")]},
        {"meta": "source=web"},
        {"meta": 5},
        {"meta": {"attempt": 1}},
        {"idempotency_key": 42},
        {"idempotency_key": b"order-42"},
        {"timeout": "10s"},
        {"timeout": timedelta(seconds=-1)},
        {"timeout": timedelta(0)},
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            await workflows.execute(deep_flow, {}, **call)
    with pytest.raises(InvalidInputError):
        await workflows.execute(deep_flow, unserializable)

    assert only_provider_keys(await keys_under(workflows, prefix), prefix)


# -- events --------------------------------------------------------------------------------


async def test_event_data_nested_to_the_limit_is_delivered(url: str, prefix: str) -> None:
    seen: list[int] = []
    async with events(url, prefix) as provider:

        @provider.on(deep_question)
        async def answer(ctx: EventContext[Tree]) -> Depth:
            seen.append(depth_of(ctx.data.model_dump(mode="json")))
            return Depth(levels=seen[-1])

        await provider.ready()
        reply = await provider.request(deep_question, nested(MAX_DEPTH), timeout=10)

    assert (reply, seen) == (Depth(levels=MAX_DEPTH), [MAX_DEPTH])


async def test_event_data_nested_past_the_limit_is_refused_and_nothing_is_written(
    url: str, prefix: str
) -> None:
    async with events(url, prefix) as provider:
        for depth in TOO_DEEP:
            with pytest.raises(InvalidEventError, match="nest") as raised:
                await provider.emit(deep_event, nested(depth), idempotency_key=f"k{depth}")
            assert raised.value.event == "deep.made"
            with pytest.raises(InvalidEventError, match="nest"):
                await provider.request(deep_question, nested(depth), timeout=1)

        assert only_provider_keys(await keys_under(provider, prefix), prefix)


async def test_event_text_with_a_lone_surrogate_is_refused_and_nothing_is_written(
    url: str, prefix: str
) -> None:
    calls: list[dict[str, Any]] = [
        {"data": {"label": SURROGATE}},
        {"data": {"tree": [SURROGATE]}},
        {"data": {}, "idempotency_key": SURROGATE},
        {"data": {}, "meta": {"source": SURROGATE}},
        {"data": {}, "meta": {SURROGATE: "x"}},
    ]
    async with events(url, prefix) as provider:
        for call in calls:
            data = call.pop("data")
            with pytest.raises(InvalidEventError, match="Unicode"):
                await provider.emit(deep_event, data, **call)
            if "idempotency_key" not in call:
                with pytest.raises(InvalidEventError, match="Unicode"):
                    await provider.request(deep_question, data, timeout=1, **call)

        assert only_provider_keys(await keys_under(provider, prefix), prefix)


async def test_event_options_of_the_wrong_type_are_refused_and_nothing_is_written(
    url: str, prefix: str
) -> None:
    unserializable = Tree()
    unserializable.tree = object()
    async with events(url, prefix) as provider:
        for meta in ([("source", "web")], "source=web", 5, {"attempt": 1}):
            with pytest.raises(InvalidEventError):
                await provider.emit(deep_event, {}, meta=meta)  # type: ignore[arg-type]
            with pytest.raises(InvalidEventError):
                await provider.request(deep_question, {}, timeout=1, meta=meta)  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError):
            await provider.emit(deep_event, unserializable)
        with pytest.raises(InvalidEventError):
            await provider.request(deep_question, unserializable, timeout=1)
        for timeout in ("1s", None, timedelta(seconds=-1), 0):
            with pytest.raises(InvalidEventError):
                await provider.request(deep_question, {}, timeout=timeout)  # type: ignore[arg-type]

        assert only_provider_keys(await keys_under(provider, prefix), prefix)


# -- sizes ---------------------------------------------------------------------------------

big_flow = Workflow("big", input=Tree)
big_event = Event("big.made", data=Tree)


async def test_an_input_over_max_payload_bytes_is_refused_and_nothing_is_written(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider(max_payload_bytes=10_000)
    fits = {"label": "x" * 9_000}

    with pytest.raises(InvalidInputError, match="max_payload_bytes"):
        await workflows.execute(big_flow, {"label": "x" * 10_001}, idempotency_key="too-big")
    assert only_provider_keys(await keys_under(workflows, prefix), prefix)
    assert (await workflows.execute(big_flow, fits)).run_id


async def test_the_default_limit_refuses_a_ten_megabyte_input(
    open_provider: OpenProvider, prefix: str
) -> None:
    workflows = await open_provider()

    with pytest.raises(InvalidInputError, match="max_payload_bytes"):
        await workflows.execute(big_flow, {"label": "x" * 10_000_000})
    assert only_provider_keys(await keys_under(workflows, prefix), prefix)


async def test_a_result_over_max_payload_bytes_fails_the_step_as_not_serializable(
    open_provider: OpenProvider,
) -> None:
    consumer: WorkflowConsumer[Tree, Any] = WorkflowConsumer(
        Workflow("big-out", input=Tree).step("a")
    )
    consumer.step("a")(lambda ctx: "y" * 20_000)
    workflows = await open_provider(consumer, max_payload_bytes=10_000)

    handle = await workflows.execute(consumer.definition, {})
    with pytest.raises(WorkflowStepError) as failed:
        await handle.result(timeout=10)
    assert failed.value.cause_type == "plait.ResultNotSerializable"
    assert "max_payload_bytes" in failed.value.cause_message


async def test_event_data_over_max_payload_bytes_is_refused_and_nothing_is_written(
    url: str, prefix: str
) -> None:
    async with RedisEventProvider.from_url(
        url, group="tests", prefix=prefix, max_payload_bytes=10_000
    ) as provider:
        with pytest.raises(InvalidEventError, match="max_payload_bytes"):
            await provider.emit(big_event, {"label": "x" * 10_001}, idempotency_key="too-big")
        assert only_provider_keys(await keys_under(provider, prefix), prefix)
        assert await provider.emit(big_event, {"label": "x" * 9_000})
