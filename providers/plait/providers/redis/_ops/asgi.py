"""A provider's health served as a tiny ASGI application (no framework needed).

Mount it under ``/health`` in any ASGI server or framework::

    app = health_app(workflows)   # GET -> 200 {"ok": true, ...} or 503 when not ok
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from .health import Health

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class SupportsHealth(Protocol):
    """Anything with an async ``health()`` (both providers)."""

    async def health(self) -> Health:
        """The current health report."""
        ...


def health_app(provider: SupportsHealth) -> ASGIApp:
    """A minimal ASGI application serving ``provider``'s health (no framework needed).

    ``GET`` (or ``HEAD``) on any path answers the report as JSON with status 200 when it is ok
    and 503 when it is not; other methods get 405. Mount it under ``/health`` in any ASGI
    server or framework, or run it alone (it answers the lifespan protocol).

    Args:
        provider: a started :class:`RedisWorkflowProvider` or :class:`RedisEventProvider`.
    """

    async def app(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _respond(send, 405, {"error": "method not allowed"}, head=False)
            return
        report = await provider.health()
        status = 200 if report.ok else 503
        await _respond(send, status, report.to_json(), head=scope.get("method") == "HEAD")

    return app


async def _respond(
    send: Callable[[Any], Awaitable[None]], status: int, data: Any, *, head: bool
) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
