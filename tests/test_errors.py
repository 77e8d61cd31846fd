"""The error boundary: what callers see when Redis refuses a command or cannot be reached.

No redis-py exception reaches a caller of a public method: an error reply becomes
:class:`~plait.workflows.RedisCommandError` (on the event provider
:class:`~plait.events.EventCommandError`) naming what plait was doing, an unreachable Redis
:class:`~plait.workflows.ProviderUnavailableError` after ``connect_timeout``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from conftest import OpenProvider
from pydantic import BaseModel
from redis import exceptions as redis_errors

from plait.events import (
    Event,
    EventCommandError,
    EventError,
    EventProviderClosedError,
    EventProviderUnavailableError,
)
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider
from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.keys import EventKeys, WorkflowKeys
from plait.workflows import (
    ProviderClosedError,
    ProviderUnavailableError,
    RedisCommandError,
    Workflow,
    WorkflowHandle,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


class Order(BaseModel):
    order_id: str


class OrderPlaced(BaseModel):
    order_id: str


# no instance of these tests runs the step: every run stays PENDING
place_order = Workflow("place-order", input=Order).step("reserve")
order_placed = Event("order.placed", data=OrderPlaced)

NOWHERE = "redis://127.0.0.1:1/0"
"""A port nothing listens on."""


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    """A plain client on the test's store (it keeps an embedded server alive for the test)."""
    connection = connect(url, connect_timeout=2.0)
    try:
        yield connection.client
    finally:
        await connection.aclose()


async def _pending_run(open_provider: OpenProvider) -> WorkflowHandle[Any]:
    provider = await open_provider()
    return await provider.execute(place_order, Order(order_id="42"))


def _refused(error: pytest.ExceptionInfo[RedisCommandError], purpose: str) -> None:
    assert not isinstance(error.value, redis_errors.RedisError)
    assert error.value.purpose == purpose
    assert "WRONGTYPE" in error.value.reply
    assert purpose in str(error.value)


async def test_status_of_a_run_whose_hash_has_the_wrong_type_raises_redis_command_error(
    open_provider: OpenProvider, store: Any, prefix: str
) -> None:
    handle = await _pending_run(open_provider)
    await store.set(WorkflowKeys(prefix, place_order.name).run(handle.run_id), "not a hash")

    with pytest.raises(RedisCommandError) as error:
        await handle.status()

    _refused(error, f"read run {handle.run_id}")


async def test_describe_of_a_run_whose_hash_has_the_wrong_type_raises_redis_command_error(
    open_provider: OpenProvider, store: Any, prefix: str
) -> None:
    handle = await _pending_run(open_provider)
    await store.set(WorkflowKeys(prefix, place_order.name).run(handle.run_id), "not a hash")

    with pytest.raises(RedisCommandError) as error:
        await handle.describe()

    _refused(error, f"read run {handle.run_id}")


async def test_result_of_a_run_whose_hash_has_the_wrong_type_raises_redis_command_error(
    open_provider: OpenProvider, store: Any, prefix: str
) -> None:
    handle = await _pending_run(open_provider)
    await store.set(WorkflowKeys(prefix, place_order.name).run(handle.run_id), "not a hash")

    with pytest.raises(RedisCommandError) as error:
        await handle.result(timeout=5)

    _refused(error, f"read run {handle.run_id}")


async def test_watch_of_a_run_whose_event_stream_has_the_wrong_type_raises_redis_command_error(
    open_provider: OpenProvider, store: Any, prefix: str, backend: str
) -> None:
    if backend == "memory":
        pytest.skip("fakeredis' XREAD does not check the key's type (AttributeError inside)")
    handle = await _pending_run(open_provider)
    await store.set(WorkflowKeys(prefix, place_order.name).events(handle.run_id), "not a stream")

    with pytest.raises(RedisCommandError) as error:
        async for _ in handle.watch():
            pass

    _refused(error, f"watch run {handle.run_id}")


async def test_execute_with_an_idempotency_key_of_the_wrong_type_raises_redis_command_error(
    open_provider: OpenProvider, store: Any, prefix: str
) -> None:
    provider = await open_provider()
    await store.hset(WorkflowKeys(prefix, place_order.name).idempotency("o-42"), "a", "hash")

    with pytest.raises(RedisCommandError) as error:
        await provider.execute(place_order, Order(order_id="42"), idempotency_key="o-42")

    _refused(error, "execute place-order")


async def test_emit_with_an_idempotency_key_of_the_wrong_type_raises_event_command_error(
    url: str, store: Any, prefix: str
) -> None:
    await store.hset(EventKeys(prefix, order_placed.name).idempotency("o-42"), "a", "hash")

    async with RedisEventProvider.from_url(url, group="billing", prefix=prefix) as events:
        with pytest.raises(EventCommandError) as error:
            await events.emit(order_placed, OrderPlaced(order_id="42"), idempotency_key="o-42")

    assert isinstance(error.value, RedisCommandError)
    assert isinstance(error.value, EventError)
    assert error.value.purpose == "emit order.placed"
    assert "WRONGTYPE" in error.value.reply


async def test_an_event_provider_that_cannot_reach_redis_raises_event_provider_unavailable(
    prefix: str,
) -> None:
    events = RedisEventProvider.from_url(
        NOWHERE, group="billing", prefix=prefix, connect_timeout=timedelta(milliseconds=300)
    )

    with pytest.raises(EventProviderUnavailableError) as error:
        await events.start()

    assert isinstance(error.value, ProviderUnavailableError)
    assert isinstance(error.value, EventError)
    assert not isinstance(error.value.__cause__, EventError)  # the redis-py error, kept as cause


async def test_a_workflow_provider_that_cannot_reach_redis_raises_provider_unavailable(
    prefix: str,
) -> None:
    workflows = RedisWorkflowProvider.from_url(
        NOWHERE, prefix=prefix, connect_timeout=timedelta(milliseconds=300)
    )

    with pytest.raises(ProviderUnavailableError) as error:
        await workflows.start()

    assert not isinstance(error.value, EventError)
    assert isinstance(error.value.__cause__, redis_errors.ConnectionError | OSError)


async def test_emit_on_a_stopped_event_provider_raises_event_provider_closed(
    url: str, prefix: str
) -> None:
    events = RedisEventProvider.from_url(url, group="billing", prefix=prefix)
    await events.start()
    await events.stop()

    with pytest.raises(EventProviderClosedError) as error:
        await events.emit(order_placed, OrderPlaced(order_id="42"))

    assert isinstance(error.value, ProviderClosedError)
    assert isinstance(error.value, EventError)


async def test_ready_on_an_event_provider_never_started_raises_event_provider_closed(
    prefix: str,
) -> None:
    events = RedisEventProvider.from_url(f"memory://{prefix}", group="billing", prefix=prefix)

    try:
        with pytest.raises(EventProviderClosedError):
            await events.ready()
    finally:
        await events.stop()
