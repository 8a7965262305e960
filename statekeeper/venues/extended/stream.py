"""Extended's v1 private account stream as a WebSocket client: frames in, nothing parsed.

::

    async with ExtendedAccountStream(url, api_key) as stream:
        async for frame in stream:  # Frame(data, received_at), in the order the venue sent them
            ...

The connection sends ``X-Api-Key`` and the ``User-Agent`` Extended requires. The server pings every 15 s and wants a
pong within 10 s; ``websockets`` answers its pings by itself, whether or not frames are being read. A refused
handshake raises :class:`FatalVenueError` (401/403) or :class:`RetryableVenueError`; a connection that breaks
while frames are read raises :class:`RetryableVenueError`; a clean close by the server ends the iteration.
Parsing and appending are the ingest daemon's business (``parse.parse_frame``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Self

from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedError

from statekeeper.venues.errors import RetryableVenueError
from statekeeper.venues.extended import wire as x
from statekeeper.venues.ws import Frame, open_websocket


class ExtendedAccountStream:
    """One connection to the account stream of one sub-account: one stream session, opened once."""

    def __init__(
        self,
        url: str,
        api_key: SecretStr,
        *,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        max_queue: int | None = 1024,
    ) -> None:
        if not isinstance(api_key, SecretStr):
            raise TypeError("api_key must be a pydantic SecretStr, so that it never shows in a repr or a log")
        if not api_key.get_secret_value():
            raise ValueError("the Extended API key is empty")
        self.url = url
        self._api_key = api_key
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._max_queue = max_queue
        self._connection: ClientConnection | None = None

    def __repr__(self) -> str:
        state = "new" if self._connection is None else self._connection.state.name.lower()
        return f"ExtendedAccountStream({self.url!r}, api_key=SecretStr('**********'), {state})"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._connection is not None:
            raise RuntimeError("a stream is opened once: make a new one to reconnect (a new stream session)")
        self._connection = await open_websocket(
            self.url,
            venue=x.VENUE,
            headers={x.API_KEY_HEADER: self._api_key.get_secret_value()},
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
            ping_timeout=self._ping_timeout,
            max_queue=self._max_queue,
        )

    async def close(self) -> None:
        """Close the connection cleanly (close frame, wait for the server's), if it is open."""
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> ClientConnection:
        if self._connection is None:
            raise RuntimeError("the stream was never opened: use `async with ExtendedAccountStream(...)`")
        return self._connection

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed (1000 for a clean close), else None."""
        return None if self._connection is None else self._connection.close_code

    @property
    def close_reason(self) -> str | None:
        return None if self._connection is None else self._connection.close_reason

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames(self.connection)

    async def _frames(self, connection: ClientConnection) -> AsyncIterator[Frame]:
        try:
            async for message in connection:
                yield Frame.now(message)
        except ConnectionClosedError as exc:
            raise RetryableVenueError(
                f"{x.VENUE} stream {self.url}: the connection broke: {exc}", venue=x.VENUE
            ) from None
