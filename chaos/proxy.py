"""A TCP proxy between the daemon and the simulated venue, which the harness can sever (a network cut)."""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    """Forwards connections on ``127.0.0.1:port`` to ``target_host:target_port``.

    :meth:`cut` closes every connection at once and refuses new ones (accepted, then closed before a byte is
    forwarded) until :meth:`restore`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.severed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.severed:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for task in pipes:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self._pipes.discard(task)
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def cut(self) -> None:
        """Sever every connection now (both ends see a reset) and refuse new ones."""
        self.severed = True
        self.cuts += 1
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.severed = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
