"""Faults a test injects between plait and Redis: a TCP proxy of its own.

``async with Proxy(port) as proxy`` listens on a free local port and forwards every connection
to ``127.0.0.1:<port>``; point a provider at :attr:`Proxy.url`. :meth:`Proxy.cut` drops every
client connection at once (a network path that broke); while :meth:`Proxy.down` holds, new
connections are closed as soon as they are accepted (the path stays broken), until
:meth:`Proxy.up`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self


class Proxy:
    """Forwards bytes between local clients and one Redis; can cut them all."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._down = False
        self.accepted = 0
        """Client connections accepted so far (also those refused while down)."""

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """The URL of database 0 through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Close every client connection (and its upstream) now."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def down(self) -> None:
        """Cut every connection, and close new ones at once until :meth:`up`."""
        self._down = True
        self.cut()

    def up(self) -> None:
        """Forward new connections again."""
        self._down = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._down:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink, (writer, upstream_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in pair:  # one side ended: end both, as a broken path does
                self._writers.discard(writer)
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    writer.close()
