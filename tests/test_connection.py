"""Script calls on a server plait connects to: replies, error replies, reloads, closing."""

from __future__ import annotations

import uuid

import pytest
from conftest import REDIS_URL
from redis import exceptions as redis_errors

from plait.providers.redis._core.connection import connect

pytestmark = [pytest.mark.anyio, pytest.mark.redis_only, pytest.mark.timeout(30)]


async def test_a_script_the_server_never_saw_is_loaded_and_run() -> None:
    connection = connect(REDIS_URL, connect_timeout=5)
    try:
        # a body no one loaded before: the first EVALSHA gets NOSCRIPT and the call reloads it
        script = connection.client.register_script(
            f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}}"
        )

        reply = await connection.run(script, keys=["plait-test:k"], args=["value", 41])

        assert reply == [b"plait-test:k", b"value", 42]
    finally:
        await connection.aclose()


async def test_an_error_reply_raises_and_the_next_call_reuses_the_connection() -> None:
    connection = connect(REDIS_URL, connect_timeout=5)
    try:
        failing = connection.client.register_script("return redis.error_reply('refused here')")
        echo = connection.client.register_script("return ARGV[1]")

        with pytest.raises(redis_errors.ResponseError, match="refused here"):
            await connection.run(failing, keys=[], args=[])
        reply = await connection.run(echo, keys=[], args=["again"])

        assert reply == b"again"
        assert connection.direct is not None
        assert len(connection.direct._idle) == 1  # the one connection, kept after the error
    finally:
        await connection.aclose()


async def test_a_script_connection_the_server_closed_is_replaced_without_an_error() -> None:
    connection = connect(REDIS_URL, connect_timeout=5)
    try:
        echo = connection.client.register_script("return ARGV[1]")
        await connection.run(echo, keys=[], args=["first"])
        assert connection.direct is not None
        [idle] = connection.direct._idle
        await idle.send_command("CLIENT", "ID")
        client_id = await idle.read_response()
        await connection.client.client_kill_filter(_id=client_id)

        reply = await connection.run(echo, keys=[], args=["second"])

        assert reply == b"second"
        assert connection.direct._idle != [idle]
    finally:
        await connection.aclose()


async def test_closing_closes_the_idle_script_connections() -> None:
    connection = connect(REDIS_URL, connect_timeout=5)
    echo = connection.client.register_script("return ARGV[1]")
    await connection.run(echo, keys=[], args=["x"])
    assert connection.direct is not None
    idle = list(connection.direct._idle)

    await connection.aclose()

    assert [held.is_connected for held in idle] == [False]
