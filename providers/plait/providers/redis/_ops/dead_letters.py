"""Dead letters: listing, replaying and purging the entries that could not be processed.

Workflow dead letters (``<prefix>:{<wf>}:dead``) hold a step-stream entry that was malformed or
named a job no consumer had a handler for: ``source``, ``entry``, ``reason`` and the entry's
``fields``. Replaying one adds its fields back to the step stream as a new entry; the run's
fencing token decides what happens next: an attempt that is still the live one runs, an attempt
that was superseded meanwhile (the worker failed it and a retry was scheduled, or the reconciler
re-queued it) is acknowledged as stale and dropped, so a replay never runs a step twice.

Event dead letters (``<prefix>:ev:{<event>}:dead``) hold a delivery one group gave up on:
``entry``, ``group``, ``reason``, ``error``, ``attempts`` and the entry's ``fields``. The event
itself stays in its stream until it is trimmed (``retention``), so replaying redelivers it to
the failing group only: the entry is made pending in that group again (``XCLAIM ... FORCE``),
its attempt count is reset and it is put in the group's retry set, due now, where the timer of
any live instance of the group claims it (within about a second). An event already trimmed
from its stream cannot be redelivered to one group; :meth:`DeadLetters.reemit` adds it to the
stream again instead, for every group subscribed to the event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import exceptions as redis_errors

from .._core.keys import EventKeys, WorkflowKeys
from .._core.wire import text
from .catalog import event_names, workflow_names

REPLAY_CONSUMER = "plait-replay"
"""The consumer a replayed event is parked on when its group has no consumer yet."""


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """One entry of a dead-letter stream."""

    kind: str
    """``workflow`` or ``event``."""
    name: str
    """The workflow or event name."""
    id: str
    """The id of the dead-letter entry (in the dead-letter stream)."""
    at: datetime
    """When it was dead-lettered."""
    reason: str
    entry: str
    """The id the entry had in its source stream."""
    fields: dict[str, str]
    """The source entry's fields (a step job: ``r`` run, ``j`` job, ``t`` token)."""
    group: str | None = None
    """The event group that gave up (events only)."""
    attempts: int | None = None
    """Attempts made (events only)."""
    error: Any = None
    """The last handler error as stored (events only)."""

    def to_json(self) -> dict[str, Any]:
        """The dead letter as JSON-able data."""
        return {
            "kind": self.kind,
            "name": self.name,
            "id": self.id,
            "at": self.at.isoformat(),
            "reason": self.reason,
            "entry": self.entry,
            "group": self.group,
            "attempts": self.attempts,
            "error": self.error,
            "fields": self.fields,
        }


class DeadLetters:
    """The dead-letter streams of every workflow and event under a prefix."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def find(
        self,
        *,
        workflow: str | None = None,
        event: str | None = None,
        ids: tuple[str, ...] = (),
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Dead letters, oldest first per stream, of one workflow or event or of all of them.

        Args:
            workflow: only this workflow's.
            event: only this event's.
            ids: only these dead-letter entry ids.
            limit: at most this many per stream.
        """
        found: list[DeadLetter] = []
        for kind, name, key in await self._streams(workflow, event):
            if ids:
                rows = [
                    row for entry in ids for row in await self._client.xrange(key, entry, entry)
                ]
            else:
                rows = await self._client.xrange(key, "-", "+", count=limit)
            found.extend(_letter(kind, name, entry, raw) for entry, raw in rows)
        return found

    async def replay(self, letter: DeadLetter) -> str:
        """Send ``letter`` back to be processed and remove it from its dead-letter stream.

        Returns:
            ``requeued`` (a workflow step entry added to its stream), ``redelivered`` (an event
            handed back to its group), or ``expired`` (the event was trimmed from its stream:
            nothing was changed; see :meth:`reemit`).
        """
        if letter.kind == "workflow":
            keys = WorkflowKeys(self._prefix, letter.name)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(keys.jobs, letter.fields)
                pipe.xdel(keys.dead, letter.id)
                await pipe.execute()
            return "requeued"
        events = EventKeys(self._prefix, letter.name)
        group = letter.group or ""
        consumer = await self._consumer(events.stream, group)
        try:
            claimed = await self._client.xclaim(
                events.stream, group, consumer, 0, [letter.entry], force=True, justid=True
            )
        except redis_errors.ResponseError as error:
            if "NOGROUP" in str(error):
                return "expired"
            raise
        if not claimed:
            return "expired"
        seconds, micros = await self._client.time()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hdel(events.attempts(group), letter.entry)
            pipe.zadd(
                events.retry(group), {letter.entry: int(seconds) * 1000 + int(micros) // 1000}
            )
            pipe.xdel(events.dead, letter.id)
            await pipe.execute()
        return "redelivered"

    async def reemit(self, letter: DeadLetter) -> str:
        """Add an event dead letter's entry to its stream again, for every subscribed group.

        Returns:
            The new stream entry id.
        """
        keys = EventKeys(self._prefix, letter.name)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.stream, letter.fields)
            pipe.xdel(keys.dead, letter.id)
            entry, _ = await pipe.execute()
        return text(entry)

    async def purge(self, letter: DeadLetter) -> None:
        """Delete ``letter`` for good."""
        await self._client.xdel(self._dead_key(letter.kind, letter.name), letter.id)

    async def purge_all(self, *, workflow: str | None = None, event: str | None = None) -> int:
        """Delete every dead letter (of one workflow or event); returns how many went."""
        removed = 0
        for _, _, key in await self._streams(workflow, event):
            removed += int(await self._client.xlen(key))
            await self._client.delete(key)
        return removed

    async def _streams(self, workflow: str | None, event: str | None) -> list[tuple[str, str, str]]:
        if workflow is not None:
            return [("workflow", workflow, self._dead_key("workflow", workflow))]
        if event is not None:
            return [("event", event, self._dead_key("event", event))]
        client, prefix = self._client, self._prefix
        return [
            *[("workflow", name, self._dead_key("workflow", name))
              for name in await workflow_names(client, prefix)],
            *[("event", name, self._dead_key("event", name))
              for name in await event_names(client, prefix)],
        ]  # fmt: skip

    def _dead_key(self, kind: str, name: str) -> str:
        if kind == "workflow":
            return WorkflowKeys(self._prefix, name).dead
        return EventKeys(self._prefix, name).dead

    async def _consumer(self, stream: str, group: str) -> str:
        """A consumer that exists in ``group`` (so a replay creates none), or the replay one."""
        try:
            consumers = await self._client.xinfo_consumers(stream, group)
        except redis_errors.ResponseError:
            return REPLAY_CONSUMER
        return text(consumers[0]["name"]) if consumers else REPLAY_CONSUMER


def _letter(kind: str, name: str, entry: Any, raw: dict[bytes, bytes]) -> DeadLetter:
    data = {text(key): text(value) for key, value in raw.items()}
    try:
        fields = json.loads(data.get("fields") or "{}")
    except ValueError:
        fields = {"raw": data.get("fields", "")}
    if not isinstance(fields, dict):
        fields = {"raw": data.get("fields", "")}
    error: Any = None
    if data.get("error"):
        try:
            error = json.loads(data["error"])
        except ValueError:
            error = data["error"]
    entry_id = text(entry)
    millis = entry_id.partition("-")[0]
    attempts = data.get("attempts")
    return DeadLetter(
        kind=kind,
        name=name,
        id=entry_id,
        at=datetime.fromtimestamp(int(millis) / 1000 if millis.isdigit() else 0, tz=UTC),
        reason=data.get("reason", ""),
        entry=data.get("entry", ""),
        fields={str(key): str(value) for key, value in fields.items()},
        group=data.get("group") if kind == "event" else None,
        attempts=int(attempts) if attempts and attempts.isdigit() else None,
        error=error,
    )
