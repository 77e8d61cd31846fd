"""The pub/sub listener comes back quickly after every outage, not only after the first.

Its reconnect backoff grows while Redis stays away and starts small again once a session was
up, so a provider that lost its pub/sub connection many times over its life still hears a
cancel (or a run's end) a moment after the next one.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
import redis as sync_redis
from conftest import standalone_redis

from plait.providers.redis._core.connection import connect
from plait.providers.redis._core.notify import Notifications

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

OUTAGES = 6
QUICK = 1.0
"""Seconds a reconnect after a good session may take (the first backoff step is 0.05 s; the
rest is this loaded machine). A backoff that kept doubling waits 1.6 s after the sixth."""


async def test_each_lost_pubsub_connection_is_replaced_quickly(tmp_path: Path) -> None:
    with standalone_redis(tmp_path) as port:
        admin = sync_redis.Redis(port=port)
        connection = connect(f"redis://127.0.0.1:{port}/0", connect_timeout=2.0)
        notifications = Notifications(connection)
        subscribed = anyio.Event()

        def again() -> None:
            subscribed.set()

        took: list[float] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(notifications.run)
                await notifications.listen("plait-test:channel", lambda _: None, subscribed=again)
                with anyio.fail_after(10):
                    await subscribed.wait()
                for _ in range(OUTAGES):
                    subscribed = anyio.Event()
                    lost = time.monotonic()
                    assert admin.client_kill_filter(_type="pubsub") == 1
                    with anyio.fail_after(10):
                        await subscribed.wait()
                    took.append(time.monotonic() - lost)
                tg.cancel_scope.cancel()
        finally:
            await connection.aclose()
            admin.close()
    assert max(took) < QUICK, took
