"""What callers may hand plait to store: valid Unicode text, JSON nested at most 200 deep.

Run inputs and event data are stored as JSON that a worker parses again (workflow inputs with
pydantic's JSON parser, which refuses values nested inside more than 200 objects and arrays),
and every command argument is packed as strict UTF-8, which a ``str`` holding a lone surrogate
has no form in. ``execute``, ``emit`` and ``request`` check their payloads here, before anything
is written, so such input is refused up front instead of failing at the worker or in the
command packer. The providers turn :class:`UnstorableError` into their own typed error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pydantic_core

DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""The default largest payload plait stores (bytes of JSON): an input, a result, progress or
event data; ``max_payload_bytes`` on either provider changes it."""

MAX_DEPTH = 200
"""No value of a stored payload may lie inside more than this many objects and arrays (the
payload's own top-level object counts): pydantic's JSON parser refuses deeper ones."""


class UnstorableError(ValueError):
    """A payload plait could not write or read back (the message says why)."""


def check_text(value: str, what: str) -> None:
    """Refuse text with no UTF-8 form (a lone surrogate such as ``"\\ud800"``).

    Raises:
        UnstorableError: ``value`` is not valid Unicode.
    """
    if value.isascii():  # O(1) in CPython: no pass over the text
        return
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise UnstorableError(_not_unicode(what, error)) from None


def stored_json(serialize: Callable[[], str], what: str, *, limit: int) -> str:
    """``serialize()``'s JSON text, checked to be writable and readable back by a worker: one
    pass over the text by pydantic's own parser (no validation), and at most ``limit`` bytes.

    Raises:
        UnstorableError: the value does not serialize (a value of an unknown type, or nesting
            past the serializer's own limit of 255 levels), the text is not valid Unicode, it
            nests deeper than :data:`MAX_DEPTH`, or it is larger than ``limit``.
    """
    try:
        text = serialize()
        raw = text if text.isascii() else text.encode()
        check_size(len(raw), what, limit)
        pydantic_core.from_json(raw)
    except UnicodeEncodeError as error:
        raise UnstorableError(_not_unicode(what, error)) from None
    except ValueError as error:
        raise UnstorableError(f"{what} cannot be stored as JSON: {error}{_LIMITS}") from None
    return text


def check_size(size: int, what: str, limit: int) -> None:
    """Refuse a payload of ``size`` bytes larger than ``limit``.

    Raises:
        UnstorableError: ``size`` is over ``limit``.
    """
    if size > limit:
        raise UnstorableError(
            f"{what} is {size:,} bytes of JSON, more than max_payload_bytes ({limit:,})"
        )


def check_key(key: object) -> None:
    """Refuse an idempotency key that is not a string of valid Unicode.

    Raises:
        UnstorableError: ``key`` is not such a string.
    """
    if not isinstance(key, str):
        raise UnstorableError(f"idempotency_key must be a string, not {_kind(key)}")
    check_text(key, "the idempotency key")


def check_meta(meta: object) -> dict[str, str]:
    """The caller's meta as a dict, checked: a mapping of valid Unicode strings to strings.

    Raises:
        UnstorableError: ``meta`` is not such a mapping.
    """
    if not isinstance(meta, Mapping):
        raise UnstorableError(f"meta must be a mapping of strings to strings, not {_kind(meta)}")
    checked = dict(meta)
    for key, value in checked.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UnstorableError(
                f"meta must map strings to strings, not {_kind(key)} to {_kind(value)}"
            )
        if not (key.isascii() and value.isascii()):
            check_text(key, "a meta key")
            check_text(value, f"meta {key!r}")
    return checked


_LIMITS = (
    f" (text must be valid Unicode, and values may nest at most {MAX_DEPTH} objects and arrays"
    " deep)"
)


def _not_unicode(what: str, error: UnicodeEncodeError) -> str:
    surrogate = error.object[error.start : error.end]
    return f"{what} is not valid Unicode: it holds a lone surrogate {surrogate!r} (no UTF-8 form)"


def _kind(value: object) -> str:
    return type(value).__name__
