"""How events are written to and read from Redis: ids, stream entries, replies, errors.

A stream entry holds ``id`` (the event id), ``data`` (JSON), ``meta`` (a JSON object of
strings) and, for requests, ``reply`` (``"<channel>|<request id>|<lifetime ms>"``: where to
publish the reply, and how long to keep it for a requester that was reconnecting). An entry
that does not decode is a :class:`MalformedEntryError`: it is dead-lettered with the reason,
never retried.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import BaseModel, ValidationError

from plait.events import Event
from plait.workflows import InvalidResultError

from .._core.codecs import PLAIN, Payloads, UndecodableError
from .._core.wire import text

REQUIRED_FIELDS = ("id", "data", "meta")
MALFORMED = "~malformed"
"""Field set (instead of the entry's own fields) when an entry could not even be read."""


class MalformedEntryError(Exception):
    """A stream entry or payload that cannot be decoded (the message is the reason)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to this consumer, with the attempt it starts."""

    entry: str
    attempt: int
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where the reply to a request goes."""

    channel: str
    request_id: str
    lifetime_ms: int
    """How long the reply is kept for the requester to read (0: published only)."""

    def address(self) -> str:
        """The ``reply`` field of the request's stream entry."""
        return f"{self.channel}|{self.request_id}|{self.lifetime_ms}"

    @classmethod
    def parse(cls, address: str) -> ReplyTo:
        """The reply address of a stream entry (also the older ``"<channel>|<request id>"``).

        Raises:
            MalformedEntryError: the address is not one.
        """
        head, _, last = address.rpartition("|")
        if last.isdigit() and len(last) <= 12:  # a lifetime (a request id has 28 characters)
            channel, _, request_id = head.rpartition("|")
            lifetime_ms = int(last)
        else:
            channel, request_id, lifetime_ms = head, last, 0
        if not channel or not request_id:
            raise MalformedEntryError(f"invalid reply address {address!r}")
        return cls(channel, request_id, lifetime_ms)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A stream entry decoded for its event."""

    event_id: str
    data: BaseModel
    meta: dict[str, str]
    reply_to: ReplyTo | None


def new_event_id() -> str:
    """A time-ordered event id: 12 hex digits of milliseconds, then 16 random hex digits."""
    return f"{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


def flat_fields(flat: Any) -> dict[str, str]:
    """Stream entry fields, from a flat ``[name, value, ...]`` list or a mapping.

    Raises:
        MalformedEntryError: a field name or value is not UTF-8.
    """
    try:
        if isinstance(flat, Mapping):
            return {text(k): text(v) for k, v in flat.items()}
        items = list(flat)
        return {text(items[i]): text(items[i + 1]) for i in range(0, len(items) - 1, 2)}
    except UnicodeDecodeError as error:
        raise MalformedEntryError(f"entry is not UTF-8: {error}") from error


def encode_json(value: Any) -> str:
    """Compact JSON of a pydantic model or any JSON-able value."""
    return pydantic_core.to_json(value).decode()


def decode_entry(
    event: Event[Any, Any], fields: Mapping[str, str], payloads: Payloads = PLAIN
) -> Decoded:
    """Decode and validate a stream entry of ``event`` (its data through ``payloads``).

    Raises:
        MalformedEntryError: a field is missing or does not decode, or the data does not validate.
    """
    if MALFORMED in fields:
        raise MalformedEntryError(fields[MALFORMED])
    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise MalformedEntryError(f"entry lacks field(s) {', '.join(missing)}")
    try:
        raw_data = json.loads(payloads.open(fields["data"], "the data"))
        meta = json.loads(fields["meta"])
    except UndecodableError as error:
        raise MalformedEntryError(str(error)) from error
    except ValueError as error:
        raise MalformedEntryError(f"undecodable payload: {error}") from error
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MalformedEntryError("meta is not a JSON object of strings")
    try:
        data = event.data.model_validate(raw_data)
    except ValidationError as error:
        raise MalformedEntryError(f"data does not match {event.data.__name__}: {error}") from error
    reply = fields.get("reply")
    reply_to = ReplyTo.parse(reply) if reply else None
    return Decoded(fields["id"], data, meta, reply_to)


def check_result(event: Event[Any, Any], value: Any) -> Any:
    """Validate a handler's non-None reply into ``event.result``.

    Raises:
        InvalidResultError: the reply does not match, or is not JSON-able.
    """
    try:
        checked = event.validate_result(value)
        encode_json(checked)
    except (ValidationError, pydantic_core.PydanticSerializationError) as error:
        expected = event.result.__name__ if event.result is not None else "JSON"
        raise InvalidResultError(
            f"handler of {event.name!r} returned {type(value).__name__}, "
            f"which does not validate as {expected}: {error}"
        ) from error
    return checked


def reply_message(
    request_id: str, group: str, *, result: Any = None, payloads: Payloads = PLAIN
) -> str:
    """The pub/sub message answering a request with a result (with a codec: the result in
    ``sealed``, see :func:`opened_reply`)."""
    if payloads.codec is None:
        return encode_json({"request": request_id, "group": group, "ok": True, "result": result})
    return _sealed(request_id, group, True, encode_json({"result": result}), payloads)


def failure_message(
    request_id: str, group: str, *, error: dict[str, Any], payloads: Payloads = PLAIN
) -> str:
    """The pub/sub message answering a request with a handler failure."""
    if payloads.codec is None:
        return json.dumps({"request": request_id, "group": group, "ok": False, "error": error})
    return _sealed(request_id, group, False, json.dumps({"error": error}), payloads)


def _sealed(request_id: str, group: str, ok: bool, body: str, payloads: Payloads) -> str:
    message = {"request": request_id, "group": group, "ok": ok, "sealed": payloads.seal(body)}
    return json.dumps(message)


def opened_reply(message: dict[str, Any], payloads: Payloads) -> dict[str, Any]:
    """A reply message with its ``sealed`` part (the result or error) decoded into it.

    Raises:
        UndecodableError: the payload codec could not decode it.
    """
    sealed = message.get("sealed")
    if sealed is None:
        return message
    try:
        body = json.loads(payloads.open(str(sealed), "the reply"))
    except ValueError as error:  # UndecodableError too
        raise UndecodableError(str(error)) from None
    if not isinstance(body, dict):
        raise UndecodableError(f"the reply decodes to {type(body).__name__}, not an object")
    return {**message, **body}
