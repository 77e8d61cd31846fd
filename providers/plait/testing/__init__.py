"""plait's test kit: a virtual clock on ``memory://``, retries without backoff, pytest fixtures.

A test runs its workflows and event handlers on an embedded ``memory://`` server (the same Lua
scripts as production) and moves that server's clock instead of waiting::

    async def test_a_retry_waits_its_backoff(plait_workflows, plait_clock):
        handle = await plait_workflows.execute(charge, Order(order_id="7"))
        await plait_clock.advance(timedelta(minutes=5))
        assert await handle.result(timeout=5) == ...

The fixtures come from a pytest plugin that installing plait registers (the ``pytest11`` entry
point ``plait``; ``-p no:plait`` turns it off):

- ``plait_clock``: a :class:`VirtualClock` on a fresh ``memory://`` server of the test's own.
- ``plait_workflows``: a started :class:`~plait.providers.redis.RedisWorkflowProvider` on it.
- ``plait_events``: a started :class:`~plait.providers.redis.RedisEventProvider` (group
  ``"tests"``) on the same server.

They are anyio fixtures: mark the tests with ``pytest.mark.anyio`` (asyncio backend).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._clock import VirtualClock
    from ._policies import without_backoff

__all__ = ["VirtualClock", "without_backoff"]

_HOMES = {"VirtualClock": "._clock", "without_backoff": "._policies"}
"""Where each name lives: imported on first use, so the pytest plugin (a submodule, loaded by
every pytest run where plait is installed) does not import the engine until a fixture runs."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
