"""Payload codecs: what turns a payload's JSON into the bytes stored, and back.

A codec given to a provider (``codec=``) encodes every run input, step and ``on_complete``
result, progress checkpoint, signal payload, event's data and request reply before it is
written, and decodes it when read; handlers and callers see the same models and values as
without one. :class:`Payloads` frames the codec's bytes as text (the scripts and streams hold
strings): ``~a`` and the bytes when they are ASCII (a Fernet token), ``~b`` and their base64
otherwise. No JSON text starts with ``~``, so a payload written before the codec was enabled
is read as it was stored.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from .payload import UnstorableError


@runtime_checkable
class PayloadCodec(Protocol):
    """Encodes payloads before they reach Redis and decodes them when read.

    ``encode`` gets the payload's JSON as UTF-8 bytes; ``decode`` must return exactly those
    bytes from what ``encode`` returned, and raise (any exception) when it cannot: plait turns
    that into a typed error. Both run on the event loop, so they should be fast (microseconds
    per kilobyte, as zlib and Fernet are).
    """

    def encode(self, data: bytes) -> bytes:
        """The stored form of ``data``."""
        ...

    def decode(self, data: bytes) -> bytes:
        """``data`` as ``encode`` was given it.

        Raises:
            Exception: ``data`` was not made by this codec (a wrong key, damaged bytes).
        """
        ...


class FernetCodec:
    """Authenticated encryption (AES-128-CBC with HMAC-SHA256) with ``cryptography``'s
    Fernet, and key rotation with MultiFernet. Needs ``plait[encryption]``.

    The first key encrypts; every key decrypts. To rotate, put a new key first and keep the
    old ones after it on every instance; once every stored payload written with an old key has
    expired (``retention`` after its run or event ended), drop that key.

    Args:
        keys: URL-safe base64 keys of 32 bytes (``Fernet.generate_key()``), newest first.

    Raises:
        ValueError: no key, or a key that is not a Fernet key.
        TypeError: ``keys`` is one key, not a list of them.
        ImportError: the ``cryptography`` package is not installed.
    """

    def __init__(self, keys: Iterable[bytes | str]) -> None:
        from cryptography.fernet import Fernet, InvalidToken, MultiFernet  # noqa: PLC0415 (an extra)

        if isinstance(keys, bytes | str):
            raise TypeError("FernetCodec takes a list of keys: FernetCodec([key])")
        fernets = [Fernet(key) for key in keys]
        if not fernets:
            raise ValueError("FernetCodec needs at least one key")
        self._fernet = MultiFernet(fernets)
        self._invalid = InvalidToken

    def encode(self, data: bytes) -> bytes:
        """``data`` encrypted with the first key (a URL-safe base64 token)."""
        token: bytes = self._fernet.encrypt(data)
        return token

    def decode(self, data: bytes) -> bytes:
        """``data`` decrypted with whichever key encrypted it.

        Raises:
            ValueError: no key decrypts ``data``, or it was altered.
        """
        try:
            plain: bytes = self._fernet.decrypt(data)
        except self._invalid:
            raise ValueError("no key of the FernetCodec decrypts it (or it was altered)") from None
        return plain


class ZlibCodec:
    """Compression with zlib (the standard library), of payloads of ``threshold`` bytes or
    more; smaller ones are stored as they are (one byte says which).

    Args:
        threshold: the smallest payload compressed, in bytes of JSON.
        level: zlib's compression level, 1 (fastest) to 9 (smallest).
    """

    def __init__(self, *, threshold: int = 1024, level: int = 6) -> None:
        if threshold < 0 or not 1 <= level <= 9:
            raise ValueError("threshold must be >= 0 and level between 1 and 9")
        self._threshold = threshold
        self._level = level

    def encode(self, data: bytes) -> bytes:
        """``data`` compressed (``z`` and zlib's bytes), or as it is (``r`` and ``data``)."""
        if len(data) < self._threshold:
            return b"r" + data
        return b"z" + zlib.compress(data, self._level)

    def decode(self, data: bytes) -> bytes:
        """``data`` decompressed.

        Raises:
            ValueError: ``data`` was not made by a :class:`ZlibCodec`.
        """
        kind, body = data[:1], data[1:]
        if kind == b"r":
            return body
        if kind == b"z":
            try:
                return zlib.decompress(body)
            except zlib.error as error:
                raise ValueError(f"not zlib data: {error}") from None
        raise ValueError("not made by a ZlibCodec")


class CodecChain:
    """Codecs applied in order on encode and in reverse on decode:
    ``CodecChain(ZlibCodec(), FernetCodec(keys))`` compresses, then encrypts (encrypted bytes
    do not compress).

    Args:
        *codecs: the codecs, the first applied first.
    """

    def __init__(self, *codecs: PayloadCodec) -> None:
        if not codecs:
            raise ValueError("CodecChain needs at least one codec")
        self._codecs = codecs

    def encode(self, data: bytes) -> bytes:
        """``data`` through each codec's ``encode``, in order."""
        for codec in self._codecs:
            data = codec.encode(data)
        return data

    def decode(self, data: bytes) -> bytes:
        """``data`` through each codec's ``decode``, last first.

        Raises:
            Exception: what a codec raised.
        """
        for codec in reversed(self._codecs):
            data = codec.decode(data)
        return data


class UndecodableError(ValueError):
    """A stored payload the provider's codec could not decode (the message says why)."""


MARK = "~"


class Payloads:
    """A provider's codec applied to payload text: :meth:`seal` before a write, :meth:`open`
    after a read. Without a codec, both cost one comparison."""

    __slots__ = ("_codec",)

    def __init__(self, codec: PayloadCodec | None) -> None:
        if codec is not None and not isinstance(codec, PayloadCodec):
            raise TypeError(f"codec must have encode() and decode(), not {_kind(codec)}")
        self._codec = codec

    @property
    def codec(self) -> PayloadCodec | None:
        """The codec (None: payloads are stored as JSON)."""
        return self._codec

    def seal(self, text: str, what: str = "a payload") -> str:
        """``text`` (a payload's JSON) as stored: encoded and framed, or as it is.

        Raises:
            UnstorableError: the codec failed (or returned no bytes); nothing is written.
        """
        if self._codec is None:
            return text
        try:
            data = self._codec.encode(text.encode())
            if not isinstance(data, bytes):
                raise TypeError(f"encode() returned {_kind(data)}, not bytes")
        except Exception as error:
            raise UnstorableError(
                f"the payload codec could not encode {what}: {type(error).__name__}: {error}"
            ) from None
        if data.isascii():
            return "~a" + data.decode("ascii")
        return "~b" + base64.b64encode(data).decode("ascii")

    def open(self, stored: str, what: str = "a payload") -> str:
        """A payload's JSON from what was stored (JSON written without a codec as it is).

        Raises:
            UndecodableError: the payload is encoded and the codec is missing or fails on it.
        """
        if stored[:1] != MARK:
            return stored
        if self._codec is None:
            raise UndecodableError(
                f"{what} is encoded by a payload codec, and this provider has none (codec=)"
            )
        try:
            kind, body = stored[1:2], stored[2:]
            if kind == "a":
                data = body.encode("ascii")
            elif kind == "b":
                data = base64.b64decode(body.encode("ascii"), validate=True)
            else:
                raise ValueError(f"unknown framing {kind!r}")
            return self._codec.decode(data).decode()
        except (binascii.Error, UnicodeError) as error:
            raise UndecodableError(f"{what}: damaged encoded payload: {error}") from None
        except Exception as error:
            raise UndecodableError(
                f"the payload codec could not decode {what}: {type(error).__name__}: {error}"
            ) from None


PLAIN = Payloads(None)
"""No codec: payloads stored as JSON."""


def _kind(value: Any) -> str:
    return type(value).__name__
