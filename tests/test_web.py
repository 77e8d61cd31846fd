"""What a web service built on plait relies on: JSON-able run reports, resumable run events,
one mapping of errors to HTTP statuses, and a lifespan that runs the providers."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

import anyio
import pytest
from conftest import FAST_RETRY, OpenProvider
from pydantic import BaseModel
from starlette.applications import Starlette

from plait.events import EventTimeoutError, InvalidEventError
from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider, http_status, lifespan
from plait.workflows import (
    IdempotencyConflictError,
    InvalidInputError,
    InvalidRunStateError,
    ProviderUnavailableError,
    RedisCommandError,
    RunNotFoundError,
    StepContext,
    Workflow,
    WorkflowConsumer,
    WorkflowStepError,
)

pytestmark = pytest.mark.timeout(30)


class Order(BaseModel):
    order_id: str


saga = Workflow("web-saga", input=Order).step("reserve").step("charge")


def saga_consumer() -> WorkflowConsumer[Order, Any]:
    consumer: WorkflowConsumer[Order, Any] = WorkflowConsumer(saga)
    consumer.step("reserve")(lambda ctx: {"held": ctx.input.order_id})
    consumer.rollback("reserve")(lambda ctx: None)

    @consumer.step("charge")
    def charge(ctx: StepContext[Order]) -> None:
        raise ValueError("card declined")

    return consumer


@pytest.mark.anyio
async def test_a_compensated_runs_report_and_events_serialise_to_json(
    open_provider: OpenProvider,
) -> None:
    workflows = await open_provider(saga_consumer(), retry=FAST_RETRY)
    handle = await workflows.execute(saga, Order(order_id="7"))
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)

    info = json.loads(json.dumps((await handle.describe()).to_json()))
    events = [json.loads(json.dumps(event.to_json())) async for event in handle.watch()]

    assert info["status"] == "FAILED"
    assert info["error"]["type"] == "ValueError"
    assert info["steps"]["rollback:reserve"]["state"] == "completed"
    assert info["created_at"].endswith("+00:00")
    assert events[-1]["kind"] == "finished"
    assert all(event["id"] for event in events)


@pytest.mark.anyio
async def test_watch_after_an_event_id_resumes_just_after_it(open_provider: OpenProvider) -> None:
    workflows = await open_provider(saga_consumer(), retry=FAST_RETRY)
    handle = await workflows.execute(saga, Order(order_id="8"))
    with pytest.raises(WorkflowStepError):
        await handle.result(timeout=10)
    everything = [event async for event in handle.watch()]

    middle = len(everything) // 2
    resumed = [event async for event in handle.watch(after=everything[middle].id)]

    assert resumed == everything[middle + 1 :]
    assert [e.id for e in everything] == sorted(e.id for e in everything)  # ids increase
    with pytest.raises(ValueError, match="not a run event id"):
        await anext(handle.watch(after="yesterday"))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInputError("w", "bad"), 422),
        (InvalidEventError("e", "bad"), 422),
        (IdempotencyConflictError("k", "r"), 409),
        (InvalidRunStateError("r", "COMPLETED"), 409),
        (RunNotFoundError("r"), 404),
        (ProviderUnavailableError("down"), 503),
        (EventTimeoutError("e", "id", timedelta(seconds=1)), 504),
        (RedisCommandError("execute", "WRONGTYPE"), 500),
        (ValueError("not plait's"), 500),
    ],
)
def test_each_error_has_its_http_status(error: BaseException, status: int) -> None:
    assert http_status(error) == status


@pytest.mark.anyio
async def test_lifespan_runs_the_providers_while_the_application_serves(
    url: str, prefix: str
) -> None:
    workflows = RedisWorkflowProvider.from_url(url, prefix=prefix)
    events = RedisEventProvider.from_url(url, prefix=prefix, group="web")
    app = Starlette(lifespan=lifespan(workflows, events))
    started, shutdown = anyio.Event(), anyio.Event()
    sent: list[str] = []

    async def receive() -> MutableMapping[
        str, Any
    ]:  # the ASGI server's side of the lifespan protocol
        if not sent:
            return {"type": "lifespan.startup"}
        await shutdown.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with anyio.create_task_group() as server:
        server.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        with anyio.fail_after(10):
            await started.wait()
        serving = workflows.alive and events.alive
        shutdown.set()

    assert serving
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not (workflows.alive or events.alive)
