"""The HTTP API service: emitter-only (it runs no step), any number of copies behind a balancer.

    uvicorn api:app --port 8000

``POST /orders`` executes ``place-order`` with the request's ``Idempotency-Key`` (a retried
request gets the same run, ``created: false``); ``GET /orders/{run_id}`` describes the run;
``GET /orders/{run_id}/events`` streams its events as server-sent events whose ids resume a
dropped stream (``Last-Event-ID``). plait's errors map to HTTP statuses with ``http_status``
(422 invalid input, 409 conflict, 404 unknown run, 503 Redis unavailable).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from shared import PREFIX, URL, Order, place_order
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from plait.providers.redis import RedisWorkflowProvider, http_status, lifespan
from plait.workflows import InvalidInputError, WorkflowError, WorkflowHandle

workflows = RedisWorkflowProvider.from_url(URL, prefix=PREFIX)


def failure(error: Exception) -> JSONResponse:
    return JSONResponse(
        {"error": type(error).__name__, "message": str(error)}, status_code=http_status(error)
    )


async def create_order(request: Request) -> Response:
    try:
        body: Any = await request.json()
        order = Order.model_validate(body)
    except (ValueError, ValidationError) as error:
        return failure(InvalidInputError(place_order.name, str(error)))
    try:
        handle = await workflows.execute(
            place_order, order, idempotency_key=request.headers.get("Idempotency-Key")
        )
        info = await handle.describe()
    except WorkflowError as error:
        return failure(error)
    trace = info.meta.get("traceparent", "").split("-")[1]
    body = {"run_id": handle.run_id, "created": handle.created, "trace_id": trace}
    return JSONResponse(body, status_code=201 if handle.created else 200)


async def show_order(request: Request) -> Response:
    try:
        handle: WorkflowHandle[Any] = await workflows.get_handle(request.path_params["run_id"])
        return JSONResponse((await handle.describe()).to_json())
    except WorkflowError as error:
        return failure(error)


async def order_events(request: Request) -> Response:
    try:
        handle: WorkflowHandle[Any] = await workflows.get_handle(request.path_params["run_id"])
    except WorkflowError as error:
        return failure(error)
    after = request.headers.get("Last-Event-ID")

    async def stream() -> AsyncIterator[str]:
        async for event in handle.watch(after=after):
            yield f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(event.to_json())}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


app = Starlette(
    routes=[
        Route("/orders", create_order, methods=["POST"]),
        Route("/orders/{run_id}", show_order),
        Route("/orders/{run_id}/events", order_events),
    ],
    lifespan=lifespan(workflows),
)
