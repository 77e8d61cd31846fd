"""Network faults between plait and Redis: a TCP proxy of the test's own.

``async with Proxy(port) as proxy`` listens on a free local port and forwards every connection
to the Redis server on ``port`` (``proxy.url``); ``Proxy(*ports, listen=[...])`` forwards each
of the listening ports to its server (the nodes of a cluster that announces the proxy's ports),
one fault plan for all. The test can then:

- ``proxy.lose_reply(match)``: the next command whose bytes contain ``match`` (a script's
  SHA, say) goes through to Redis, which runs it; its reply is dropped and the client's
  connection reset, so the client sees a connection error for a command that was executed.
  A ``NOSCRIPT`` reply (the command did not run) is passed on and the next matching command
  is taken instead.
- ``proxy.delay_reply(match, seconds)``: the same, but the reply reaches the client
  ``seconds`` late (a slow Redis) instead of being lost.
- ``proxy.reset()``: reset every client connection now (mid-command or idle).
- ``proxy.down()`` / ``proxy.up()``: the path breaks (every connection reset, new ones refused)
  and mends again.
- ``proxy.black_hole()`` / ``proxy.heal()``: the path goes silent: connections stay open (new
  ones are accepted too) but no byte is forwarded either way, no FIN, no RST, as when a
  firewall or a partition drops packets; what was sent meanwhile waits in the socket buffers
  and is forwarded on heal (the way TCP retransmits), unless a side closed its connection;
  ``proxy.black_hole(drop=True)`` loses it instead (bytes lost in a partition).
- ``proxy.delay(seconds)``: every byte is forwarded ``seconds`` late in each direction (a
  one-way latency: the round trip grows by twice that); ``delay(0)`` ends it.

``proxy.lost`` counts the replies dropped, ``proxy.resets`` the connections reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from plait.providers.redis._core.lua import source


def script_sha(name: str, library: str | None = "run_lib") -> bytes:
    """The SHA plait calls ``lua/<name>.lua`` by (with its library), as it appears on the wire."""
    return hashlib.sha1(source(name, library).encode()).hexdigest().encode()


@dataclass(frozen=True)
class _Fault:
    match: bytes
    delay: float | None
    """How late the reply arrives; None: it is lost and the connection reset."""


class _Link:
    """One client connection and its connection to Redis."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.fault: _Fault | None = None
        """What happens to the reply to the command just forwarded."""
        self.tail = b""

    def reset(self) -> None:
        """Reset the client connection (RST, not FIN) and close the one to Redis."""
        sock = self.client_writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client_writer.transport.abort()
        self.server_writer.transport.abort()


class Proxy:
    """A TCP proxy to the Redis servers on ``127.0.0.1:ports`` that can lose replies."""

    def __init__(self, *ports: int, listen: Sequence[int] = ()) -> None:
        self._upstreams = ports
        self._listen = list(listen) or [0] * len(ports)
        self._servers: list[asyncio.Server] = []
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._armed: _Fault | None = None
        self.port = 0
        self.lost = 0
        self.resets = 0
        self._down = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._dropping = False
        self.latency = 0.0
        """Seconds each byte takes through the proxy, each way (see :meth:`delay`)."""

    @property
    def url(self) -> str:
        """A ``redis://`` URL reaching the (first) server through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Proxy:
        for upstream, listen in zip(self._upstreams, self._listen, strict=True):
            server = await asyncio.start_server(
                functools.partial(self._accept, upstream), "127.0.0.1", listen
            )
            self._servers.append(server)
        self.port = self._servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in self._servers:
            server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def lose_reply(self, match: bytes) -> None:
        """Lose the reply to the next command containing ``match`` (after Redis ran it)."""
        self._armed = _Fault(match, None)

    def delay_reply(self, match: bytes, seconds: float) -> None:
        """Pass on the reply to the next command containing ``match`` ``seconds`` late."""
        self._armed = _Fault(match, seconds)

    @property
    def armed(self) -> bool:
        """Whether a fault waits for its command still."""
        return self._armed is not None

    def down(self) -> None:
        """Break the path: reset every client connection, and refuse new ones until :meth:`up`."""
        self._down = True
        self.reset()

    def up(self) -> None:
        """Mend the path: accept and forward new connections again."""
        self._down = False

    def black_hole(self, *, drop: bool = False) -> None:
        """Forward nothing either way from now on, keeping every connection open.

        What is sent meanwhile waits and is forwarded on :meth:`heal`; with ``drop``, it is
        lost instead (read and thrown away: the sender's TCP sees it delivered).
        """
        if drop:
            self._dropping = True
        else:
            self._flowing.clear()

    def heal(self) -> None:
        """Forward again (what waited in the buffers first)."""
        self._dropping = False
        self._flowing.set()

    def delay(self, seconds: float) -> None:
        """Forward every byte ``seconds`` late in each direction (0: at once)."""
        self.latency = seconds

    def reset(self) -> int:
        """Reset every client connection now; returns how many."""
        links, self._links = self._links, set()
        for link in links:
            link.reset()
        self.resets += len(links)
        return len(links)

    async def _accept(
        self, upstream: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._down:
            writer.transport.abort()
            return
        try:
            server = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link((reader, writer), server)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._to_server(link)),
            asyncio.create_task(self._to_client(link)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._links.discard(link)
            link.reset()
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)

    async def _to_server(self, link: _Link) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sending = asyncio.create_task(self._send(queue, link.server_writer))
        try:
            while True:
                await self._flowing.wait()
                data = await link.client_reader.read(65536)
                if not data:
                    break
                if self._dropping:
                    continue
                armed = self._armed
                if armed is not None and armed.match in link.tail + data:
                    self._armed = None
                    link.fault = armed  # before Redis can answer
                if armed is not None:
                    link.tail = data[-len(armed.match) :]
                queue.put_nowait((time.monotonic() + self.latency, data))
            queue.put_nowait(None)
            await sending
        finally:
            sending.cancel()

    async def _to_client(self, link: _Link) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sending = asyncio.create_task(self._send(queue, link.client_writer))
        try:
            while True:
                await self._flowing.wait()
                data = await link.server_reader.read(65536)
                if not data:
                    break
                if self._dropping:
                    continue
                fault, link.fault = link.fault, None
                if fault is not None and data.startswith(b"-NOSCRIPT"):
                    self._armed = fault  # not run: the client loads the script and sends it again
                elif fault is not None and fault.delay is not None:
                    await asyncio.sleep(fault.delay)
                elif fault is not None:
                    self.lost += 1
                    self.resets += 1
                    self._links.discard(link)
                    link.reset()
                    return
                queue.put_nowait((time.monotonic() + self.latency, data))
            queue.put_nowait(None)
            await sending
        finally:
            sending.cancel()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        """Write what ``queue`` holds, each chunk when it is due and the path flows."""
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if self._dropping:
                continue
            writer.write(data)
            await writer.drain()
