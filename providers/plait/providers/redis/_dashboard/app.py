"""The dashboard's ASGI application (starlette): routes, live updates, actions and their token.

Pages are read straight from Redis through one connection opened at startup (the dashboard is
no provider: it sends no heartbeat, runs no timers and no reconciler). The names of the
workflows and events under the prefix (the registry of ``_ops/catalog.py``, read once before
the first page) and the backlog report are refreshed in the background every
``catalog_interval``, so no page waits for them. Everything else is read when the page is
asked for, through the indexes plait keeps.

A page asked for with ``?stream=1`` answers server-sent events instead: a run's page follows
``handle.watch(after=...)`` (each event carries its id, so a reconnecting browser resumes with
``Last-Event-ID``) and lists are rendered again every ``refresh_interval``; each ``fragment``
event holds the new HTML of the page's live part.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from plait.workflows import (
    InvalidRunStateError,
    RunNotFoundError,
    WorkflowHandle,
    WorkflowStatus,
)

from .._core.connection import Connection, connect
from .._core.keys import WorkflowKeys, workflow_of
from .._core.notify import Notifications
from .._ops.catalog import event_names, workflow_names
from .._ops.dead_letters import DeadLetters
from .._ops.health import Health, check_health
from .._workflows.runs import Runs
from .._workflows.scripts import RunScripts
from . import pages, queries
from .pages import Safe, html

logger = logging.getLogger("plait.dashboard")


@dataclass(frozen=True, kw_only=True)
class DashboardOptions:
    """How a dashboard reads and what it lets its users do."""

    prefix: str = "plait"
    """The key prefix of the providers to show."""
    allow_actions: bool = False
    """Whether retry, cancel and replay are offered (each still needs :attr:`token`)."""
    token: str | None = None
    """The secret an action must carry (form field ``token`` or ``Authorization: Bearer``)."""
    refresh_interval: float = 2.0
    """Seconds between two renderings of a list followed live."""
    catalog_interval: float = 5.0
    """Seconds between two refreshes of the names under the prefix and the health report."""
    connect_timeout: float = 5.0
    """How long a page waits for Redis."""


class Catalog:
    """The names under the prefix and the latest health report, refreshed in the background."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self.workflows: list[str] = []
        self.events: list[str] = []
        self.health: Health | None = None

    async def refresh_names(self) -> None:
        """Read the names again, from the registry of names under the prefix."""
        self.workflows = await workflow_names(self._client, self._prefix)
        self.events = await event_names(self._client, self._prefix)

    async def refresh(self) -> None:
        """Read the health report, then the names, again."""
        self.health = await check_health(self._client, self._prefix)
        await self.refresh_names()

    async def serve(self, interval: float) -> None:
        """Refresh now, then every ``interval`` seconds, for good (errors are logged)."""
        while True:
            try:
                await self.refresh()
            except Exception:
                logger.exception("refreshing the names and the health report failed")
            await anyio.sleep(interval)


class Dashboard:
    """The state of one dashboard application: its connection, catalog and options."""

    def __init__(self, connection: Connection, options: DashboardOptions) -> None:
        self.options = options
        self.client: Any = connection.client
        self.catalog = Catalog(self.client, options.prefix)
        self.runs = Runs(
            connection,
            RunScripts(connection),
            Notifications(connection),
            prefix=options.prefix,
            connect_timeout=options.connect_timeout,
        )
        self.scripts = RunScripts(connection)
        self.dead = DeadLetters(self.client, options.prefix)

    def keys(self, workflow: str) -> WorkflowKeys:
        """The keys of ``workflow`` under the dashboard's prefix."""
        return WorkflowKeys(self.options.prefix, workflow)

    def handle(self, run_id: str) -> WorkflowHandle[Any]:
        """A handle on ``run_id`` (describe, watch, cancel)."""
        return WorkflowHandle(self.runs, run_id, workflow_of(run_id), created=False)


Render = Callable[[Dashboard, Request], Awaitable[tuple[str, Safe]]]
"""A page: its title and the HTML of its live part."""


def dashboard_app(url: str, options: DashboardOptions | None = None) -> Starlette:
    """The dashboard as an ASGI application reading the Redis at ``url``.

    Args:
        url: a ``redis://``, ``rediss://``, ``unix://`` or ``redis+cluster://`` URL.
        options: prefix, actions and token, intervals.

    Raises:
        ValueError: actions are allowed without a token.
    """
    options = options or DashboardOptions()
    if options.allow_actions and not options.token:
        raise ValueError("actions need a token (--token or PLAIT_DASHBOARD_TOKEN)")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connection = connect(url, connect_timeout=options.connect_timeout)
        dashboard = Dashboard(connection, options)
        app.state.dashboard = dashboard
        try:
            await dashboard.catalog.refresh_names()  # the health report follows at once
            async with anyio.create_task_group() as tg:
                tg.start_soon(dashboard.catalog.serve, options.catalog_interval)
                yield
                tg.cancel_scope.cancel()
        finally:
            dashboard.runs.close()
            await connection.aclose()

    routes = [
        Route("/", _page(overview)),
        Route("/workflows/{workflow}", _page(runs_page)),
        Route("/runs", find_run),
        Route("/runs/{run_id}", _page(run_page)),
        Route("/events", _page(events_page)),
        Route("/dead-letters", _page(dead_letters_page)),
        Route("/health", _page(health_page)),
        Route("/health.json", health_json),
        # Waits (signals) and schedules get their routes here, next to their pages.
        Route("/runs/{run_id}/retry", _action(retry), methods=["POST"]),
        Route("/runs/{run_id}/cancel", _action(cancel), methods=["POST"]),
        Route("/dead-letters/{kind}/{name}/{letter}/replay", _action(replay), methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


# -- pages -----------------------------------------------------------------------------------


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _headers(nonce: str) -> dict[str, str]:
    policy = (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'nonce-{nonce}'; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "cache-control": "no-store",
    }


def _page(render: Render) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        dashboard = _dashboard(request)
        if request.query_params.get("stream"):
            if render is run_page:
                return _stream(_follow_run(dashboard, request))
            return _stream(_follow(dashboard, request, render))
        try:
            title, fragment = await render(dashboard, request)
        except RunNotFoundError as error:
            return _message(dashboard, 404, "Run not found", f"run {error.run_id} not found")
        except ValueError as error:
            return _message(dashboard, 400, "Bad request", str(error))
        extra = getattr(request.state, "above", Safe(""))
        after = getattr(request.state, "after", "")
        body = html('{}<div id="live" data-after="{}">{}</div>', extra, after, fragment)
        nonce = secrets.token_urlsafe(12)
        text = pages.layout(title, body, prefix=dashboard.options.prefix, nonce=nonce)
        return HTMLResponse(text, headers=_headers(nonce))

    return endpoint


def _message(dashboard: Dashboard, status: int, title: str, text: str) -> HTMLResponse:
    nonce = secrets.token_urlsafe(12)
    body = pages.layout(title, pages.message(text), prefix=dashboard.options.prefix, nonce=nonce)
    return HTMLResponse(body, status_code=status, headers=_headers(nonce))


async def overview(dashboard: Dashboard, request: Request) -> tuple[str, Safe]:
    """Every workflow with its counts, and the live instances."""
    catalog = dashboard.catalog
    found = await queries.summaries(dashboard.client, dashboard.options.prefix, catalog.workflows)
    return "Workflows", pages.overview(found, catalog.health)


def _filter(request: Request) -> queries.RunFilter:
    query = request.query_params
    status = query.get("status") or None
    meta = query.get("meta") or None
    if meta is not None and "=" not in meta:
        raise ValueError("meta filter must be field=value")
    return queries.RunFilter(
        status=WorkflowStatus(status.upper()) if status else None,
        since=_when(query.get("since")),
        until=_when(query.get("until")),
        meta=tuple(meta.split("=", 1)) if meta else None,  # type: ignore[arg-type]
        idempotency_key=query.get("key") or None,
    )


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def runs_page(dashboard: Dashboard, request: Request) -> tuple[str, Safe]:
    """A page of one workflow's runs, filtered."""
    workflow = request.path_params["workflow"]
    where = _filter(request)
    offset = max(0, int(request.query_params.get("offset") or 0))
    cursor = request.query_params.get("cursor") or None
    page = await queries.run_page(
        dashboard.client, dashboard.keys(workflow), where, offset=offset, cursor=cursor
    )
    query = {
        key: value for key, value in request.query_params.items() if key not in ("offset", "cursor")
    }
    request.state.above = pages.runs_form(workflow, where)
    return f"Runs of {workflow}", pages.runs(workflow, page, query)


async def find_run(request: Request) -> Response:
    """``/runs?id=...``: the run's page."""
    run_id = request.query_params.get("id", "").strip()
    return RedirectResponse(f"/runs/{quote(run_id, safe='')}", status_code=303)


async def run_page(dashboard: Dashboard, request: Request) -> tuple[str, Safe]:
    """A run's timeline: steps, attempts, errors, rollbacks, progress, events."""
    run_id = request.path_params["run_id"]
    fragment, events = await _run_fragment(dashboard, run_id)
    request.state.after = events[-1].id if events else ""
    request.state.above = _run_actions(dashboard, run_id)
    return f"Run {run_id}", fragment


async def _run_fragment(dashboard: Dashboard, run_id: str) -> tuple[Safe, list[Any]]:
    handle = dashboard.handle(run_id)
    if not handle.workflow:
        raise RunNotFoundError(run_id)
    # The events first: the snapshot read after them is as new as the last of them or newer,
    # so a stream following the page from that event misses nothing.
    events = await queries.run_events(dashboard.client, dashboard.keys(handle.workflow), run_id)
    info = await handle.describe()
    return pages.run(info, events), events


def _run_actions(dashboard: Dashboard, run_id: str) -> Safe:
    if not dashboard.options.allow_actions:
        return Safe("")
    path = f"/runs/{quote(run_id, safe='')}"
    return html(
        "<p>{}{}</p>",
        pages.action_form(f"{path}/retry", "retry"),
        pages.action_form(f"{path}/cancel", "cancel"),
    )


async def events_page(dashboard: Dashboard, request: Request) -> tuple[str, Safe]:
    """Every event stream's consumer groups with their lag."""
    names = dashboard.catalog.events
    rows = await queries.event_groups(dashboard.client, dashboard.options.prefix, names)
    return "Event groups", pages.event_groups(rows)


async def dead_letters_page(dashboard: Dashboard, request: Request) -> tuple[str, Safe]:
    """The oldest dead letters of every workflow and event."""
    letters = []
    for name in dashboard.catalog.workflows:
        letters += await dashboard.dead.find(workflow=name, limit=queries.PAGE_SIZE)
    for name in dashboard.catalog.events:
        letters += await dashboard.dead.find(event=name, limit=queries.PAGE_SIZE)
    return "Dead letters", pages.dead_letters(letters, actions=dashboard.options.allow_actions)


async def health_page(dashboard: Dashboard, request: Request) -> tuple[str, Safe]:
    """The latest health report (refreshed in the background)."""
    return "Health", pages.health(dashboard.catalog.health)


async def health_json(request: Request) -> Response:
    """The latest health report as JSON (``Health.to_json()``)."""
    report = _dashboard(request).catalog.health
    if report is None:
        return JSONResponse({"error": "no health report yet"}, status_code=503)
    return JSONResponse(report.to_json(), headers={"cache-control": "no-store"})


# -- live updates ----------------------------------------------------------------------------


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def _event(name: str, data: str, event_id: str | None = None) -> str:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    prefix = f"id: {event_id}\n" if event_id else ""
    return f"{prefix}event: {name}\n{lines}\n"


async def _follow(dashboard: Dashboard, request: Request, render: Render) -> AsyncIterator[str]:
    """A list page rendered again every ``refresh_interval``, sent when it changed."""
    last = None
    while True:
        _, fragment = await render(dashboard, request)
        if fragment != last:
            yield _event("fragment", fragment)
            last = fragment
        else:
            yield ": unchanged\n\n"
        await anyio.sleep(dashboard.options.refresh_interval)


async def _follow_run(dashboard: Dashboard, request: Request) -> AsyncIterator[str]:
    """A run's page after each of its events, from the event the browser saw last."""
    run_id = request.path_params["run_id"]
    after = request.headers.get("last-event-id") or request.query_params.get("after") or None
    handle = dashboard.handle(run_id)
    if after is None:  # else the browser shows the run as of that event already
        fragment, _ = await _run_fragment(dashboard, run_id)
        yield _event("fragment", fragment)
    if (await handle.status()).is_final:
        events = await _events(dashboard, handle)
        if after is None or not events or events[-1].id == after:
            yield _event("end", "")  # nothing more will happen until someone retries it
            return
    async for event in handle.watch(after=after):
        logger.debug("run %s: event %s %s", run_id, event.id, event.kind)
        fragment, _ = await _run_fragment(dashboard, run_id)
        yield _event("fragment", fragment, event.id)
        if event.kind == "finished":
            yield _event("end", "", event.id)
            return


async def _events(dashboard: Dashboard, handle: WorkflowHandle[Any]) -> list[Any]:
    return await queries.run_events(
        dashboard.client, dashboard.keys(handle.workflow), handle.run_id
    )


# -- actions ---------------------------------------------------------------------------------

Action = Callable[[Dashboard, Request], Awaitable[tuple[str, str]]]
"""An action: what it did (logged) and where the browser goes next."""


def _action(act: Action) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        dashboard = _dashboard(request)
        who = request.client.host if request.client else "?"
        what = f"{act.__name__} {request.url.path}"
        if not dashboard.options.allow_actions:
            logger.warning("refused %s from %s: actions are not allowed", what, who)
            return _message(dashboard, 403, "Forbidden", "actions are not allowed on this "
                            "dashboard (start it with --allow-actions and a token)")  # fmt: skip
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = given or bearer[7:]
        expected = dashboard.options.token or ""
        if not (expected and hmac.compare_digest(given.encode(), expected.encode())):
            logger.warning("refused %s from %s: wrong or missing token", what, who)
            return _message(dashboard, 403, "Forbidden", "a valid token is needed")
        try:
            done, location = await act(dashboard, request)
        except RunNotFoundError as error:
            logger.info("%s from %s: run %s not found", what, who, error.run_id)
            return _message(dashboard, 404, "Run not found", f"run {error.run_id} not found")
        except InvalidRunStateError as error:
            logger.info("%s from %s: %s", what, who, error)
            return _message(dashboard, 409, "Conflict", str(error))
        logger.info("%s from %s: %s", what, who, done)
        return RedirectResponse(location, status_code=303)

    endpoint.__name__ = act.__name__
    return endpoint


async def retry(dashboard: Dashboard, request: Request) -> tuple[str, str]:
    """Resume a FAILED or TIMED_OUT run."""
    run_id = request.path_params["run_id"]
    keys = dashboard.keys(workflow_of(run_id))
    outcome, status = await dashboard.scripts.retry(keys, run_id, call=dashboard.scripts.call_id())
    if outcome == "unknown" or not keys.workflow:
        raise RunNotFoundError(run_id)
    if outcome == "invalid":
        raise InvalidRunStateError(run_id, WorkflowStatus(status))
    return f"run {run_id} resumed ({status})", f"/runs/{quote(run_id, safe='')}"


async def cancel(dashboard: Dashboard, request: Request) -> tuple[str, str]:
    """Cancel a live run (its completed steps are rolled back)."""
    run_id = request.path_params["run_id"]
    cancelled = await dashboard.handle(run_id).cancel()
    done = "cancelled" if cancelled else "not live: nothing to cancel"
    return f"run {run_id} {done}", f"/runs/{quote(run_id, safe='')}"


async def replay(dashboard: Dashboard, request: Request) -> tuple[str, str]:
    """Send a dead letter back to be processed."""
    kind, name, letter_id = (request.path_params[key] for key in ("kind", "name", "letter"))
    if kind not in ("workflow", "event"):
        raise ValueError(f"unknown kind {kind!r}")
    found = await dashboard.dead.find(
        workflow=name if kind == "workflow" else None,
        event=name if kind == "event" else None,
        ids=(letter_id,),
    )
    if not found:
        return f"dead letter {kind} {name} {letter_id} not found", "/dead-letters"
    outcome = await dashboard.dead.replay(found[0])
    return f"dead letter {kind} {name} {letter_id}: {outcome}", "/dead-letters"
