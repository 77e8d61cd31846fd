"""Serving a dashboard for a test: uvicorn on a free port in a thread of its own."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from plait.providers.redis._dashboard.app import DashboardOptions, dashboard_app


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, headers, body text."""

    status: int
    headers: dict[str, str]
    text: str


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """GET (or POST ``data``) ``url`` without following redirects."""
    call = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _OPENER.open(call, timeout=10) as answer:
            body = answer.read().decode()
            return Reply(answer.status, {k.lower(): v for k, v in answer.headers.items()}, body)
    except urllib.error.HTTPError as error:
        body = error.read().decode()
        return Reply(error.code, {k.lower(): v for k, v in error.headers.items()}, body)


@contextmanager
def serve(redis_url: str, options: DashboardOptions, *, startup: float = 15) -> Iterator[str]:
    """The dashboard of ``redis_url`` served until the block ends; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        dashboard_app(redis_url, options),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
