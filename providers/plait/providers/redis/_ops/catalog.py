"""What exists under a prefix: the workflows and event names that have keys in Redis.

Tools that run without the application's definitions (``plait`` commands, health checks) find
workflows and events by scanning for one of their keys.
"""

from __future__ import annotations

from typing import Any

from .._core.keys import (
    EventKeys,
    WorkflowKeys,
    event_of_key,
    event_pattern,
    workflow_of_key,
    workflow_pattern,
)
from .._core.wire import text


async def workflow_names(client: Any, prefix: str, *suffixes: str) -> list[str]:
    """Sorted names of the workflows having one of the keys ``<prefix>:{<wf>}:<suffix>``."""
    found: set[str] = set()
    for suffix in suffixes:
        async for raw in client.scan_iter(match=workflow_pattern(prefix, suffix), count=1000):
            key = text(raw)
            name = workflow_of_key(key, prefix)
            if WorkflowKeys(prefix, name).base + suffix == key:
                found.add(name)
    return sorted(found)


async def event_names(client: Any, prefix: str, *suffixes: str) -> list[str]:
    """Sorted names of the events having one of the keys ``<prefix>:ev:{<event>}:<suffix>``."""
    found: set[str] = set()
    for suffix in suffixes:
        async for raw in client.scan_iter(match=event_pattern(prefix, suffix), count=1000):
            key = text(raw)
            name = event_of_key(key, prefix)
            if EventKeys(prefix, name).base + suffix == key:
                found.add(name)
    return sorted(found)
