"""The dashboard's HTML, rendered on the server from Python string templates.

Every value that comes from Redis or the request goes through :func:`html` (escaped with
:func:`html.escape`, quotes included); only fragments this module built are trusted, as
:class:`Safe`. One stylesheet and one small script (server-sent events replacing the ``live``
part of the page) are inlined: the pages load nothing from elsewhere.
"""

from __future__ import annotations

import html as _html
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from plait.workflows import RunEvent, RunInfo, StepInfo, WorkflowStatus, WorkflowStepError

from .._ops.dead_letters import DeadLetter
from .._ops.health import Health
from .queries import GroupRow, RunFilter, RunPage, WorkflowSummary


class Safe(str):
    """Text that is already HTML (built here from escaped parts)."""

    __slots__ = ()


def html(template: str, *values: Any) -> Safe:
    """``template`` with ``{}`` filled by ``values``, each escaped unless it is :class:`Safe`."""
    return Safe(template.format(*(_escaped(value) for value in values)))


def _escaped(value: Any) -> str:
    if isinstance(value, Safe):
        return value
    return _html.escape("" if value is None else str(value), quote=True)


def join(parts: Iterable[Safe]) -> Safe:
    """Fragments one after the other."""
    return Safe("".join(parts))


NAV: tuple[tuple[str, str], ...] = (
    ("/", "Workflows"),
    ("/events", "Event groups"),
    ("/dead-letters", "Dead letters"),
    ("/health", "Health"),
    # Waits (signals) and schedules get their pages here: ("/waits", "Waits"),
    # ("/schedules", "Schedules"), with their routes in app.py's ROUTES.
)

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#234;padding:.5em 1em}nav a{color:#fff;margin-right:1.5em;text-decoration:none}
main{padding:1em}table{border-collapse:collapse;margin:.5em 0}
td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right}pre{background:#f8f8f8;padding:.5em;overflow:auto}
.COMPLETED,.completed{color:#170}.FAILED,.failed,.TIMED_OUT{color:#b00}
.CANCELLED,.cancelled,.skipped{color:#777}.RUNNING,.running,.COMPENSATING,.retrying{color:#a60}
form.inline{display:inline-block;margin-right:1em}.muted{color:#777}
"""

SCRIPT = """
(function(){
  var live=document.getElementById('live');
  if(!live||!window.EventSource){return;}
  var url=location.pathname+(location.search?location.search+'&':'?')+'stream=1';
  if(live.dataset.after){url+='&after='+encodeURIComponent(live.dataset.after);}
  var source=new EventSource(url);
  source.addEventListener('fragment',function(e){live.innerHTML=e.data;});
  source.addEventListener('end',function(){source.close();});
})();
"""


def layout(title: str, body: Safe, *, prefix: str, nonce: str) -> Safe:
    """A whole page: navigation, ``body`` (whose ``live`` part follows the server's updates)."""
    links = join(html('<a href="{}">{}</a>', href, name) for href, name in NAV)
    return html(
        "<!doctype html><html><head><meta charset=utf-8><title>{} - plait</title>"
        "<style>{}</style></head><body><nav>{}<span style=color:#9ab>prefix {}</span></nav>"
        '<main><h1>{}</h1>{}</main><script nonce="{}">{}</script></body></html>',
        title,
        Safe(STYLE),
        links,
        prefix,
        title,
        body,
        nonce,
        Safe(SCRIPT),
    )


def moment(value: datetime | None) -> str:
    """A time as UTC text to the millisecond."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def took(start: datetime | None, end: datetime | None) -> str:
    """The time between two moments, or ``-``."""
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def run_link(run_id: str) -> Safe:
    """A link to a run's page."""
    return html('<a href="/runs/{}">{}</a>', quote(run_id, safe=""), run_id)


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, empty: str) -> Safe:
    body = join(
        html("<tr>{}</tr>", join(html("<td>{}</td>", cell) for cell in row)) for row in rows
    )
    if not body:
        return html('<p class="muted">{}</p>', empty)
    head = join(html("<th>{}</th>", name) for name in headers)
    return html("<table><tr>{}</tr>{}</table>", head, body)


def _status(value: str) -> Safe:
    return html('<span class="{}">{}</span>', value, value)


# -- workflows -------------------------------------------------------------------------------


def overview(found: list[WorkflowSummary], report: Health | None) -> Safe:
    """The workflows with their counts, and the live instances."""
    finals = [status.value for status in WorkflowStatus if status.is_final]
    rows = [
        [
            html('<a href="/workflows/{}">{}</a>', quote(item.name, safe=""), item.name),
            item.live,
            *[item.ended.get(status, 0) for status in finals],
            item.stored,
            item.queued,
            item.fenced,
        ]
        for item in found
    ]
    headers = ["workflow", "live", *finals, "stored", "job stream", "fenced"]
    instances: Safe = html('<p class="muted">{}</p>', "no health report yet")
    if report is not None:
        instances = _table(
            ["instance", "last heartbeat", "live"],
            [[i.provider_id, moment(i.last_seen), "yes" if i.live else "stale"]
             for i in report.instances],
            empty="no instance sent a heartbeat recently",
        )  # fmt: skip
    return html(
        "{}<h2>Instances</h2>{}",
        _table(headers, rows, empty="no workflows under this prefix"),
        instances,
    )


def runs_form(workflow: str, where: RunFilter) -> Safe:
    """The filters of a runs page."""
    options = join(
        html(
            '<option value="{}"{}>{}</option>',
            value,
            Safe(" selected" if where.status is not None and where.status.value == value else ""),
            value or "any status",
        )
        for value in ["", *[status.value for status in WorkflowStatus]]
    )
    meta = f"{where.meta[0]}={where.meta[1]}" if where.meta else ""

    def stamp(value: datetime | None) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") if value else ""

    return html(
        '<form method="get" action="/workflows/{}">'
        '<select name="status">{}</select> '
        'since <input type="datetime-local" step="1" name="since" value="{}"> '
        'until <input type="datetime-local" step="1" name="until" value="{}"> (UTC) '
        '<input name="key" placeholder="idempotency key" value="{}"> '
        '<input name="meta" placeholder="meta field=value" value="{}"> '
        '<button type="submit">filter</button></form>'
        '<form method="get" action="/runs"><input name="id" placeholder="run id" size="40"> '
        '<button type="submit">open run</button></form>',
        quote(workflow, safe=""),
        options,
        stamp(where.since),
        stamp(where.until),
        where.idempotency_key or "",
        meta,
    )


def runs(workflow: str, page: RunPage, query: Mapping[str, str]) -> Safe:
    """One page of runs, with the link to the next."""
    rows = [
        [run_link(row.run_id), _status(row.status), moment(row.created),
         took(row.created, row.finished),
         " ".join(f"{key}={value}" for key, value in sorted(row.meta.items())
                  if key not in ("traceparent", "tracestate"))]
        for row in page.rows
    ]  # fmt: skip
    more = Safe("")
    following = {}
    if page.next_offset is not None:
        following = {"offset": str(page.next_offset)}
    elif page.next_cursor is not None:
        following = {"cursor": page.next_cursor}
    if following:
        link = urlencode({**query, **following})
        more = html(
            '<p><a id="next" href="/workflows/{}?{}">next page</a></p>',
            quote(workflow, safe=""),
            link,
        )
    if page.index == "runs":
        summary = html(
            '<p class="muted">{} runs in the {} index and time range; '
            "runs {}-{} examined, {} shown</p>",
            page.total,
            page.index,
            page.offset + 1 if page.examined else page.offset,
            page.offset + page.examined,
            len(page.rows),
        )
    else:
        summary = html(
            '<p class="muted">{} runs in the {} index and time range; '
            "{} examined on this page, {} shown</p>",
            page.total,
            page.index,
            page.examined,
            len(page.rows),
        )
    return html(
        "{}{}{}",
        summary,
        _table(["run", "status", "created", "took", "meta"], rows, empty="no runs match"),
        more,
    )


# -- one run ---------------------------------------------------------------------------------


def _error(error: WorkflowStepError | None) -> Safe:
    if error is None:
        return Safe("")
    return html(
        "<details><summary>{}: {} (attempt {})</summary><pre>{}</pre></details>",
        error.cause_type,
        error.cause_message,
        error.attempt,
        error.cause_traceback or "(no traceback)",
    )


def _step_rows(steps: Iterable[StepInfo], progress: Mapping[str, Any]) -> list[list[Any]]:
    return [
        [step.name, _status(step.state), step.attempts, moment(step.started_at),
         took(step.started_at, step.finished_at),
         "" if step.name not in progress else str(progress[step.name]), _error(step.error)]
        for step in steps
    ]  # fmt: skip


def trace_id(meta: Mapping[str, str]) -> str:
    """The trace id of a W3C ``traceparent`` in ``meta``, or ``-``."""
    parts = meta.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 else "-"


def run(info: RunInfo, events: list[RunEvent]) -> Safe:
    """A run's header, steps, rollbacks, errors and events."""
    progress = {
        event.step: json.dumps(event.data.get("progress"))
        for event in events
        if event.kind == "step.progress" and event.step
    }
    steps = [step for step in info.steps.values() if not step.name.startswith("rollback:")]
    rollbacks = [step for step in info.steps.values() if step.name.startswith("rollback:")]
    headers = ["step", "state", "attempts", "started", "took", "progress", "last error"]
    meta = " ".join(f"{key}={value}" for key, value in sorted(info.meta.items())) or "-"
    facts = _table(
        ["field", "value"],
        [
            ["status", _status(info.status.value)],
            ["created", moment(info.created_at)],
            ["finished", moment(info.finished_at)],
            ["took", took(info.created_at, info.finished_at)],
            ["deadline", moment(info.deadline)],
            ["trace id", trace_id(info.meta)],
            ["meta", meta],
            ["completed in order", ", ".join(info.completion_order) or "-"],
        ],
        empty="",
    )
    failure = Safe("")
    if info.error is not None:
        failure = html("<h2>Error</h2>{}", _error(info.error))
    failure = join(
        [failure, *[html("<p>rollback of {} failed</p>{}", error.step, _error(error))
                    for error in info.rollback_errors]]
    )  # fmt: skip
    log = _table(
        ["id", "at", "event", "step", "attempt", "data"],
        [[event.id, moment(event.at), event.kind, event.step or "", event.attempt or "",
          _event_data(event.data)] for event in events],
        empty="no events",
    )  # fmt: skip
    return html(
        '{}<h2>Steps</h2>{}<h2>Rollbacks</h2><div id="rollbacks">{}</div>{}<h2>Events</h2>{}',
        facts,
        _table(headers, _step_rows(steps, progress), empty="no steps scheduled yet"),
        _table(headers, _step_rows(rollbacks, progress), empty="no rollbacks ran"),
        failure,
        log,
    )


def _event_data(data: Mapping[str, Any]) -> str:
    """What a run event carries, short: an error's type and message, progress as JSON."""
    error = data.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type', '?')}: {error.get('message', '')}"
    if "progress" in data:
        return json.dumps(data["progress"])
    return ", ".join(f"{key}={value}" for key, value in data.items())


def action_form(path: str, label: str) -> Safe:
    """A button doing ``label`` (a POST to ``path``), with the token it needs."""
    return html(
        '<form class="inline" method="post" action="{}">'
        '<input type="password" name="token" placeholder="token" autocomplete="off"> '
        '<button type="submit" name="action" value="{}">{}</button></form>',
        path,
        label,
        label,
    )


# -- events, dead letters, health ------------------------------------------------------------


def event_groups(rows: list[GroupRow]) -> Safe:
    """Every consumer group of every event stream, with its lag."""
    return _table(
        ["event", "group", "lag", "pending", "consumers", "last delivered"],
        [[row.event, row.group, "?" if row.lag is None else row.lag, row.pending, row.consumers,
          row.last_delivered] for row in rows],
        empty="no event groups under this prefix",
    )  # fmt: skip


def dead_letters(letters: list[DeadLetter], *, actions: bool) -> Safe:
    """Dead letters, with a replay button each when actions are allowed."""
    rows = []
    for letter in letters:
        run_id = letter.fields.get("r")
        source = run_link(run_id) if letter.kind == "workflow" and run_id else letter.entry
        row: list[Any] = [f"{letter.kind} {letter.name}", letter.id, moment(letter.at),
                          letter.group or "", letter.reason, source]  # fmt: skip
        if actions:
            path = f"/dead-letters/{letter.kind}/{quote(letter.name, safe='')}/{letter.id}/replay"
            row.append(action_form(path, "replay"))
        rows.append(row)
    headers = ["source", "id", "at", "group", "reason", "entry or run"]
    return _table([*headers, *(["action"] if actions else [])], rows, empty="no dead letters")


def health(report: Health | None) -> Safe:
    """The health report: ok, problems, queues, instances."""
    if report is None:
        return html('<p class="muted">{}</p>', "no health report yet")
    queues = [
        [f"{queue.kind} {queue.name}", queue.length, group.name if group else "-",
         group.lag if group else "-", group.pending if group else "-",
         group.stalled if group else "-", group.retrying if group else "-", queue.dead_letters]
        for queue in report.queues
        for group in (queue.groups or (None,))
    ]  # fmt: skip
    problems = join(html("<li>{}</li>", problem) for problem in report.problems)
    latency = "-" if report.latency_ms is None else f"{report.latency_ms:.2f} ms"
    return html(
        '<p><b class="{}">{}</b> as of {}, Redis ping {}</p><ul>{}</ul>{}',
        "COMPLETED" if report.ok else "FAILED",
        "OK" if report.ok else "NOT OK",
        moment(report.checked_at),
        latency,
        problems,
        _table(
            ["queue", "length", "group", "lag", "pending", "stalled", "retrying", "dead"],
            queues,
            empty="no queues",
        ),
    )


def message(text: str) -> Safe:
    """A sentence on its own."""
    return html("<p>{}</p>", text)
