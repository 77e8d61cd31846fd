"""Loading the Lua scripts shipped in ``lua/``.

Each ``.lua`` file starts with a KEYS/ARGV/returns header. Files may be prefixed with a shared
library file (``run_lib.lua``, ``event_lib.lua``) so several scripts use the same functions;
the concatenation is registered once per client and called by SHA (reloaded after a
``NOSCRIPT``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


@cache
def source(name: str, library: str | None = None) -> str:
    """The text of ``lua/<name>.lua``, preceded by ``lua/<library>.lua`` when given."""
    folder = resources.files("plait.providers.redis") / "lua"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if library is None:
        return body
    return (folder / f"{library}.lua").read_text(encoding="utf-8") + "\n" + body


def register(client: aioredis.Redis, name: str, library: str | None = None) -> AsyncScript:
    """Register ``lua/<name>.lua`` (with its library) on ``client``."""
    return client.register_script(source(name, library))
