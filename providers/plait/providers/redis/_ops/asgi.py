"""A provider's health served as a tiny ASGI application (no framework needed).

Mount it under ``/health`` in any ASGI server or framework::

    app = health_app(workflows)
    # GET /health/live     200 while the provider's loops run, else 503 (no Redis call)
    # GET /health/ready    200 while alive and Redis answers PING, else 503 (also /health)
    # GET /health/backlog  200 and the backlog report (503 only when Redis is unreachable)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from .health import Health, Readiness

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class SupportsHealth(Protocol):
    """Anything with ``alive``, ``readiness()`` and ``health()`` (both providers)."""

    @property
    def alive(self) -> bool:
        """Whether the provider's background work runs (local, no Redis call)."""
        ...

    async def readiness(self) -> Readiness:
        """Whether the provider may take traffic (alive, and Redis answers)."""
        ...

    async def health(self) -> Health:
        """The backlog report."""
        ...


def health_app(provider: SupportsHealth) -> ASGIApp:
    """A minimal ASGI application serving ``provider``'s health (no framework needed).

    ``GET`` (or ``HEAD``) answers JSON, by the path's last segment:

    - ``/live``: liveness, ``{"alive": ...}``, 200 while the provider's loops run and 503 once
      one died or the provider stopped. No Redis call.
    - ``/ready`` (and any other path, such as the mount point itself): readiness
      (:meth:`~plait.providers.redis.RedisWorkflowProvider.readiness`), 200 when the provider is
      alive and Redis answers a ``PING`` within ``connect_timeout``, else 503. Never reads the
      backlog, so no queue decides whether an instance takes traffic.
    - ``/backlog``: the backlog report (``provider.health()``), 200 whatever it says (its
      ``ok`` and ``problems`` are for alerting), 503 only when Redis is unreachable.

    Other methods get 405. Mount it under ``/health`` in any ASGI server or framework, or run
    it alone (it answers the lifespan protocol).

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
        head = scope.get("method") == "HEAD"
        what = str(scope.get("path") or "/").rstrip("/").rpartition("/")[2]
        if what == "live":
            alive = provider.alive
            await _respond(send, 200 if alive else 503, {"alive": alive}, head=head)
        elif what == "backlog":
            report = await provider.health()
            await _respond(send, 200 if report.reachable else 503, report.to_json(), head=head)
        else:
            ready = await provider.readiness()
            await _respond(send, 200 if ready.ok else 503, ready.to_json(), head=head)

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
