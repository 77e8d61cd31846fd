"""Typed calls of the event scripts (``lua/event_*.lua``) and the plain stream commands.

Every state change of a delivery is one atomic Lua call, which declares every key its script
touches (Redis Cluster checks them before running it); reads and acknowledgements are plain
commands (an acknowledgement is one pipeline round trip). Answering a request is one Lua call
that acknowledges, keeps the reply and publishes it.
"""

from __future__ import annotations

import json
from typing import Any

from redis import exceptions as redis_errors

from .._core.connection import Connection
from .._core.keys import EventKeys
from .._core.lua import register
from .._core.wire import text
from .codec import MALFORMED, Delivery, MalformedEntryError, ReplyTo, flat_fields

LIBRARY = "event_lib"
DEAD_LETTER_CAP = 10_000
"""Approximate length the dead-letter stream of an event is capped at."""


def _fields(flat: Any) -> dict[str, str]:
    # An entry that does not decode still becomes a delivery, so it is dead-lettered with
    # the reason instead of stopping the loop that read it.
    try:
        return flat_fields(flat or {})
    except MalformedEntryError as error:
        return {MALFORMED: str(error)}


def _deliveries(rows: Any) -> list[Delivery]:
    return [Delivery(text(row[0]), int(row[1]), _fields(row[2])) for row in rows or ()]


class EventScripts:
    """The event transitions of one connection."""

    def __init__(self, connection: Connection) -> None:
        client = connection.client
        self._connection = connection
        self._client = client
        self._emit = register(client, "event_emit", LIBRARY)
        self._promote = register(client, "event_promote", LIBRARY)
        self._cancel = register(client, "event_cancel", LIBRARY)
        self._claim = register(client, "event_claim", LIBRARY)
        self._fail = register(client, "event_fail", LIBRARY)
        self._dead = register(client, "event_dead", LIBRARY)
        self._reclaim = register(client, "event_reclaim", LIBRARY)
        self._renew = register(client, "event_renew", LIBRARY)
        self._trim = register(client, "event_trim", LIBRARY)
        self._reply = register(client, "event_reply", LIBRARY)

    async def emit(
        self,
        keys: EventKeys,
        event_id: str,
        *,
        idempotency_key: str,
        retention_ms: int,
        delay_ms: int,
        data: str,
        meta: str,
        reply: str,
    ) -> tuple[bool, str]:
        """Add the event (or schedule it); returns (created, event id owning the key)."""
        args: list[str | int] = [
            event_id, idempotency_key, retention_ms, delay_ms, data, meta, reply
        ]  # fmt: skip
        declared = [keys.stream, keys.delayed, keys.delayed_data]
        if idempotency_key:
            declared.append(keys.idempotency(idempotency_key))
        created, owner, due = await self._connection.run(self._emit, keys=declared, args=args)
        if created and not int(due):
            self._connection.kick(keys.stream)
        return bool(int(created)), text(owner)

    async def promote(self, keys: EventKeys, limit: int = 200) -> tuple[int, int, int]:
        """Move due delayed events to the stream; returns (moved, next due ms or -1, now ms)."""
        moved, next_due, now = await self._connection.run(
            self._promote,
            keys=[keys.stream, keys.delayed, keys.delayed_data, keys.dead],
            args=[limit, DEAD_LETTER_CAP, keys.idempotency("")],
        )
        if int(moved):
            self._connection.kick(keys.stream)
        return int(moved), int(next_due), int(now)

    async def cancel(self, keys: EventKeys, idempotency_key: str) -> bool:
        """Cancel the delayed event of ``idempotency_key``; False when none is waiting."""
        return bool(
            await self._connection.run(
                self._cancel,
                keys=[keys.delayed, keys.delayed_data, keys.idempotency(idempotency_key)],
                args=[idempotency_key],
            )
        )

    async def claim(
        self, keys: EventKeys, group: str, consumer: str, limit: int
    ) -> tuple[int, int, list[Delivery]]:
        """Take due retries of ``group``; returns (next due ms or -1, now ms, deliveries)."""
        next_due, now, rows = await self._connection.run(
            self._claim,
            keys=[keys.stream, keys.retry(group), keys.attempts(group)],
            args=[group, consumer, limit],
        )
        return int(next_due), int(now), _deliveries(rows)

    async def fail(
        self, keys: EventKeys, group: str, consumer: str, delivery: Delivery, delay_ms: int
    ) -> int:
        """Schedule the retry of a failed delivery; returns its due ms (0: no longer ours)."""
        args: list[str | int] = [group, consumer, delivery.entry, delivery.attempt, delay_ms]
        declared = [keys.stream, keys.retry(group), keys.attempts(group)]
        return int(await self._connection.run(self._fail, keys=declared, args=args))

    async def dead(
        self,
        keys: EventKeys,
        group: str,
        consumer: str,
        delivery: Delivery,
        *,
        reason: str,
        error: dict[str, Any] | None,
    ) -> bool:
        """Dead-letter a delivery and acknowledge it; False when it was no longer ours."""
        args: list[str | int] = [
            group,
            consumer,
            delivery.entry,
            reason,
            json.dumps(error) if error else "",
            json.dumps(delivery.fields),
            delivery.attempt,
            DEAD_LETTER_CAP,
        ]
        declared = [keys.stream, keys.dead, keys.retry(group), keys.attempts(group)]
        return bool(await self._connection.run(self._dead, keys=declared, args=args))

    async def reclaim(
        self,
        keys: EventKeys,
        group: str,
        consumer: str,
        *,
        min_idle_ms: int,
        cursor: str,
        limit: int,
        max_attempts: int,
    ) -> tuple[str, list[Delivery], int]:
        """Take over stalled entries; returns (next cursor, deliveries, dead-lettered)."""
        args: list[str | int] = [group, consumer, min_idle_ms, cursor, limit, max_attempts]
        reply = await self._connection.run(
            self._reclaim,
            keys=[keys.stream, keys.dead, keys.retry(group), keys.attempts(group)],
            args=[*args, DEAD_LETTER_CAP],
        )
        return text(reply[0]), _deliveries(reply[1]), int(reply[2])

    async def renew(self, keys: EventKeys, group: str, consumer: str, entries: list[str]) -> int:
        """Reset the idle time of the entries this consumer still holds."""
        return int(
            await self._connection.run(
                self._renew, keys=[keys.stream], args=[group, consumer, *entries]
            )
        )

    async def trim(self, keys: EventKeys, cutoff_ms: int) -> int:
        """Trim entries older than ``cutoff_ms`` that every group acknowledged."""
        return int(await self._connection.run(self._trim, keys=[keys.stream], args=[cutoff_ms]))

    async def create_group(self, keys: EventKeys, group: str, start: str = "$") -> bool:
        """Create ``group`` at ``start`` (and the stream); False when it already exists."""
        try:
            await self._client.xgroup_create(keys.stream, group, id=start, mkstream=True)
        except redis_errors.ResponseError as error:
            if "BUSYGROUP" in str(error):
                return False
            raise
        return True

    async def read(
        self, keys: EventKeys, group: str, consumer: str, *, count: int, block_ms: int | None
    ) -> list[Delivery]:
        """New entries for ``consumer`` in ``group`` (blocking up to ``block_ms`` when given)."""
        reply: Any = await self._client.xreadgroup(
            group, consumer, {keys.stream: ">"}, count=count, block=block_ms
        )
        out: list[Delivery] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                out.append(Delivery(text(entry_id), 1, _fields(fields)))
        return out

    async def ack(self, keys: EventKeys, group: str, delivery: Delivery) -> None:
        """Acknowledge a handled delivery (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.xack(keys.stream, group, delivery.entry)
        if delivery.attempt > 1:
            pipe.hdel(keys.attempts(group), delivery.entry)
        await pipe.execute()

    async def answer(
        self, keys: EventKeys, group: str, delivery: Delivery, reply_to: ReplyTo, message: str
    ) -> None:
        """Acknowledge a handled request, keep its reply and publish it (one atomic call)."""
        await self._call_reply(keys, group, delivery.entry, reply_to, message)

    async def reply(self, keys: EventKeys, reply_to: ReplyTo, message: str) -> None:
        """Keep and publish the reply to a request whose delivery was dead-lettered."""
        await self._call_reply(keys, "", "", reply_to, message)

    async def _call_reply(
        self, keys: EventKeys, group: str, entry: str, reply_to: ReplyTo, message: str
    ) -> None:
        declared = [keys.stream, keys.answer(reply_to.request_id)]
        if group:
            declared.append(keys.attempts(group))
        args: list[str | int] = [group, entry, reply_to.lifetime_ms, reply_to.channel, message]
        await self._connection.run(self._reply, keys=declared, args=args)

    async def kept_reply(self, keys: EventKeys, request_id: str) -> str | None:
        """The reply kept for request ``request_id``, if one was written."""
        raw = await self._client.get(keys.answer(request_id))
        return None if raw is None else text(raw)
