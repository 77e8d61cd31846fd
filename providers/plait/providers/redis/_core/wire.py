"""Plain values as they travel to and from Redis: reply bytes as text, and instance names.

Clients are not decoding (bytes in, bytes out), so every reply value plait reads as text goes
through :func:`text` (what plait wrote itself: UTF-8, anything else is a bug worth raising)
or :func:`lenient_text` (what anyone may have written, such as a foreign stream entry).
"""

from __future__ import annotations

import os
import socket
from typing import Any


def text(value: Any) -> str:
    """A Redis reply value as text (strict UTF-8: invalid bytes raise ``UnicodeDecodeError``)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def lenient_text(value: Any) -> str:
    """A Redis reply value as text, invalid UTF-8 replaced by U+FFFD (for foreign data)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def default_provider_id() -> str:
    """A name for a provider instance: host, process id and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
