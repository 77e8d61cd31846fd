"""Following runs from any instance: status, results, cancellation, snapshots and live events.

``result()`` waits on the workflow's ``finished`` pub/sub channel and re-reads the run record
after subscribing, so it wakes within milliseconds of the run's end on any instance; a periodic
re-read covers notifications lost during an outage.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio

from plait.workflows import (
    PayloadDecodeError,
    ProviderClosedError,
    RunEvent,
    RunInfo,
    RunNotFoundError,
    WorkflowStatus,
)

from .._core.codecs import PLAIN, Payloads, UndecodableError
from .._core.connection import Connection
from .._core.errors import CONNECTION_ERRORS, WORKFLOW_KINDS, translated
from .._core.keys import WorkflowKeys
from .._core.notify import Notifications
from .._core.retry import call_until
from .codec import decode_record, decode_result, outcome_error, run_info
from .jobs import display_name
from .scripts import RunScripts

#: How often a waiting ``result()`` re-reads the run in case a notification was lost.
RECHECK = 5.0


class Runs:
    """The :class:`~plait.workflows.RunBackend` of a provider."""

    def __init__(
        self,
        connection: Connection,
        scripts: RunScripts,
        notifications: Notifications,
        *,
        prefix: str,
        connect_timeout: float,
        payloads: Payloads = PLAIN,
    ) -> None:
        self._payloads = payloads
        self._client: Any = connection.client
        self._scripts = scripts
        self._notifications = notifications
        self._prefix = prefix
        self._timeout = connect_timeout
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._listening: set[str] = set()
        self._closed = False

    def close(self) -> None:
        """Make every waiting and future call raise :class:`ProviderClosedError`."""
        self._closed = True
        for events in self._waiters.values():
            for event in events:
                event.set()

    def open(self) -> None:
        """Accept calls again (the provider was started)."""
        self._closed = False

    def keys(self, workflow: str) -> WorkflowKeys:
        """The keys of ``workflow`` under this provider's prefix."""
        return WorkflowKeys(self._prefix, workflow)

    async def record(self, workflow: str, run_id: str) -> dict[str, str]:
        """The run hash as text (:class:`RunNotFoundError` when it does not exist)."""
        self._check_open()
        raw = await call_until(
            lambda: self._client.hgetall(self.keys(workflow).run(run_id)),
            timeout=self._timeout,
            what=f"read run {run_id}",
            kinds=WORKFLOW_KINDS,
        )
        if not raw:
            raise RunNotFoundError(run_id)
        return decode_record(raw)

    async def run_status(self, workflow: str, run_id: str) -> WorkflowStatus:
        """The run's status."""
        self._check_open()
        raw = await call_until(
            lambda: self._client.hget(self.keys(workflow).run(run_id), "status"),
            timeout=self._timeout,
            what=f"read run {run_id}",
            kinds=WORKFLOW_KINDS,
        )
        if raw is None:
            raise RunNotFoundError(run_id)
        return WorkflowStatus(raw.decode())

    async def run_result(
        self, workflow: str, run_id: str, output: type[Any] | None, timeout: float | None
    ) -> Any:
        """Wait for the run's end; return its result or raise its error."""
        self._check_open()
        keys = self.keys(workflow)
        with translated(WORKFLOW_KINDS, f"wait for run {run_id}"):
            await self._listen(keys)
        with anyio.fail_after(timeout):
            while True:
                woken = anyio.Event()
                self._waiters.setdefault(run_id, set()).add(woken)
                try:
                    record = await self._read_waiting(keys, run_id)
                    if record is not None:
                        status = WorkflowStatus(record["status"])
                        if status is WorkflowStatus.COMPLETED:
                            return decode_result(self._result_of(run_id, record), output)
                        if status.is_final:
                            raise outcome_error(run_id, record)
                    with anyio.move_on_after(RECHECK):
                        await woken.wait()
                    self._check_open()
                finally:
                    self._forget(run_id, woken)

    def _result_of(self, run_id: str, record: Mapping[str, str]) -> str:
        """The run's result as JSON (decoded by the payload codec).

        Raises:
            PayloadDecodeError: the codec could not decode it.
        """
        try:
            return self._payloads.open(record.get("result", "null"), f"the result of {run_id}")
        except UndecodableError as error:
            raise PayloadDecodeError(str(error)) from None

    async def cancel_run(self, workflow: str, run_id: str) -> bool:
        """Cancel the run; False when it had already ended."""
        self._check_open()
        call = self._scripts.call_id()
        outcome, _ = await call_until(
            lambda: self._scripts.cancel(self.keys(workflow), run_id, call=call),
            timeout=self._timeout,
            what=f"cancel run {run_id}",
            kinds=WORKFLOW_KINDS,
        )
        if outcome < 0:
            raise RunNotFoundError(run_id)
        return outcome == 1

    async def describe_run(self, workflow: str, run_id: str) -> RunInfo:
        """Snapshot of the run."""
        return run_info(run_id, workflow, await self.record(workflow, run_id))

    async def watch_run(
        self, workflow: str, run_id: str, *, after: str | None = None
    ) -> AsyncIterator[RunEvent]:
        """The run's events from its start (or after the event ``after``), then live, until
        ``finished``.

        Keeps waiting while Redis is unreachable, like :meth:`run_result`.

        Raises:
            ValueError: ``after`` is not an event id.
        """
        keys = self.keys(workflow)
        last = b"0-0" if after is None else _event_id(after)
        await self.record(workflow, run_id)
        while True:
            self._check_open()
            with translated(WORKFLOW_KINDS, f"watch run {run_id}"):
                try:
                    reply = await self._client.xread(
                        {keys.events(run_id): last}, count=200, block=1000
                    )
                    if not reply and not await self._client.exists(keys.run(run_id)):
                        return  # expired after the retention period
                except CONNECTION_ERRORS:
                    await anyio.sleep(0.5)
                    continue
            if not reply:
                continue
            for entry, fields in reply[0][1]:
                last = entry
                event = _run_event(entry, fields, self._payloads)
                yield event
                if event.kind == "finished":
                    return

    async def _listen(self, keys: WorkflowKeys) -> None:
        if keys.workflow in self._listening:
            return
        self._listening.add(keys.workflow)
        await self._notifications.listen(keys.finished_channel, self._on_finished)

    def _on_finished(self, message: str) -> None:
        run_id, _, _ = message.partition("|")
        for event in self._waiters.get(run_id, ()):
            event.set()

    def _forget(self, run_id: str, event: anyio.Event) -> None:
        events = self._waiters.get(run_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[run_id]

    async def _read_waiting(self, keys: WorkflowKeys, run_id: str) -> dict[str, str] | None:
        """The run record, or None while Redis is unreachable (waiters keep waiting)."""
        with translated(WORKFLOW_KINDS, f"read run {run_id}"):
            try:
                raw = await self._client.hgetall(keys.run(run_id))
            except CONNECTION_ERRORS:
                return None
        if not raw:
            raise RunNotFoundError(run_id)
        return decode_record(raw)

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderClosedError("the workflow provider is stopped")


def _event_id(text: str) -> bytes:
    millis, dash, sequence = text.partition("-")
    if not (millis.isdigit() and dash and sequence.isdigit()):
        raise ValueError(f"not a run event id: {text!r}")
    return text.encode()


def _run_event(entry: bytes, fields: Mapping[bytes, bytes], payloads: Payloads = PLAIN) -> RunEvent:
    """A run event from its stream entry (progress decoded by ``payloads``; progress it cannot
    decode is given as ``undecodable``, the reason, so a watch goes on)."""
    kind = fields.get(b"k", b"").decode()
    job = fields.get(b"j", b"").decode()
    attempt = fields.get(b"a", b"").decode()
    raw = fields.get(b"d", b"").decode()
    data: dict[str, Any] = {}
    if kind in ("step.failed", "step.retrying") and raw:
        data["error"] = json.loads(raw)
    elif kind == "step.progress" and raw:
        try:
            data["progress"] = json.loads(payloads.open(raw, "the progress"))
        except UndecodableError as error:
            data["undecodable"] = str(error)
    elif kind == "finished":
        data["status"] = raw
    elif kind == "compensating":
        data["reason"] = raw
    elif kind in ("wait.signalled", "wait.kept") and raw:
        data["signal_id"] = raw
    elif kind == "wait.waiting" and raw:
        data["due"] = datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
    millis = int(entry.split(b"-")[0])
    return RunEvent(
        kind=kind,
        step=display_name(job) if job else None,
        attempt=int(attempt) if attempt else None,
        at=datetime.fromtimestamp(millis / 1000, tz=UTC),
        data=data,
        id=entry.decode(),
    )
