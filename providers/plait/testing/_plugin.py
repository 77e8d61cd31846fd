"""The pytest plugin of the test kit (entry point ``pytest11: plait``): fixtures only.

Nothing here runs unless a test asks for a fixture (no hook, nothing autouse), and plait's
providers are imported only then: every pytest run of a project that has plait installed
loads this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from plait.providers.redis import RedisEventProvider, RedisWorkflowProvider

    from ._clock import VirtualClock


@pytest.fixture
async def plait_clock(anyio_backend: str | tuple[str, Any]) -> AsyncIterator[VirtualClock]:
    """A :class:`~plait.testing.VirtualClock` on a fresh ``memory://`` server of the test's own
    (``plait_clock.url``), held for the test and dropped with its data afterwards.

    ``memory://`` runs on asyncio: under another anyio backend the test is skipped."""
    name = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if name != "asyncio":
        pytest.skip(f"memory:// runs on asyncio, not {name}")
    from ._clock import VirtualClock  # noqa: PLC0415 (imported when used: see the module)

    async with VirtualClock() as clock:
        yield clock


@pytest.fixture
async def plait_workflows(plait_clock: VirtualClock) -> AsyncIterator[RedisWorkflowProvider]:
    """A started workflow provider on ``plait_clock``'s server (default options); register
    consumers on it in the test. Stopped afterwards."""
    from plait.providers.redis import RedisWorkflowProvider  # noqa: PLC0415

    async with RedisWorkflowProvider.from_url(plait_clock.url) as workflows:
        yield workflows


@pytest.fixture
async def plait_events(plait_clock: VirtualClock) -> AsyncIterator[RedisEventProvider]:
    """A started event provider (group ``"tests"``) on ``plait_clock``'s server, beside
    ``plait_workflows``; add handlers with ``on()`` in the test. Stopped afterwards."""
    from plait.providers.redis import RedisEventProvider  # noqa: PLC0415

    async with RedisEventProvider.from_url(plait_clock.url, group="tests") as events:
        yield events
