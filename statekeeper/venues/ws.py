"""Opening a venue's WebSocket: headers, timeouts, keepalive, and handshake failures as typed errors.

``websockets`` answers the server's pings by itself (Extended pings every 15 s and wants a pong within 10 s;
Paradex every 55 s, within 5 s) while frames are being read; the client also pings the server, so that a dead
connection is noticed even when the venue stays silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from statekeeper.venues.errors import FatalVenueError, RetryableVenueError
from statekeeper.venues.http import USER_AGENT

MAX_FRAME_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    """One message as received, with the local receive time."""

    data: str | bytes
    received_at: datetime

    @classmethod
    def now(cls, data: str | bytes) -> Frame:
        return cls(data, datetime.now(UTC))


async def open_websocket(
    url: str,
    *,
    venue: str,
    headers: Mapping[str, str] | None = None,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    max_queue: int | None = 1024,
) -> ClientConnection:
    """Connect; a refused handshake is :class:`FatalVenueError` (401/403) or :class:`RetryableVenueError`."""
    try:
        return await connect(
            url,
            additional_headers=dict(headers or {}),
            user_agent_header=USER_AGENT,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            max_queue=max_queue,
            max_size=MAX_FRAME_BYTES,
            compression="deflate",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise FatalVenueError(
                f"{venue} stream {url}: HTTP {status}, the credentials were refused", venue=venue, status=status
            ) from None
        raise RetryableVenueError(
            f"{venue} stream {url}: HTTP {status} on connect", venue=venue, status=status
        ) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise RetryableVenueError(f"{venue} stream {url}: cannot connect: {exc}", venue=venue) from None
