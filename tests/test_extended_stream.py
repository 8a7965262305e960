"""ExtendedAccountStream against a local WebSocket server on Extended's path, never a mock.

The server (``websockets.asyncio.server.serve`` on 127.0.0.1:0) refuses a handshake without the right ``X-Api-Key``
and a ``User-Agent``, as Extended does. Tests wait on conditions with deadlines, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from statekeeper.events import Event
from statekeeper.venues.base import FrameContext
from statekeeper.venues.errors import FatalVenueError, RetryableVenueError
from statekeeper.venues.extended import ExtendedAccountStream, parse_frame
from statekeeper.venues.ws import Frame

API_KEY = "ext-key-0d9c8b7a6f5e4d3c"
PATH = "/stream.extended.exchange/v1/account"
DEADLINE = 10.0
EXAMPLES = Path(__file__).parent / "fixtures" / "protocols" / "extended"
CONNECT = [(EXAMPLES / f"ws_v1_{name}.live.json").read_text() for name in ("order_snapshot", "balance_snapshot",
                                                                          "position_snapshot")]  # fmt: skip

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def extended_stream(handler: Handler, headers_seen: list[dict[str, str]] | None = None) -> AsyncIterator[str]:
    """A local account stream; yields its URL."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        if request.path != PATH:
            return connection.respond(404, "Not Found\n")
        if request.headers.get("X-Api-Key") != API_KEY:
            return connection.respond(401, "Unauthorized\n")
        if not request.headers.get("User-Agent", "").startswith("statekeeper/"):
            return connection.respond(400, "User-Agent is mandatory\n")
        if headers_seen is not None:
            headers_seen.append(dict(request.headers.raw_items()))
        return None

    async with serve(handler, "127.0.0.1", 0, process_request=check) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}{PATH}"


async def collect(stream: ExtendedAccountStream) -> list[str | bytes]:
    async with asyncio.timeout(DEADLINE):
        return [frame.data async for frame in stream]


async def test_frames_arrive_in_order_and_a_clean_close_ends_the_stream() -> None:
    deltas = [
        '{"type":"TRADE","data":{"trades":[]},"ts":1763797803000,"seq":4}',
        '{"type":"BALANCE","data":{"balance":{"collateralName":"USD","balance":"7.5"}},"ts":1763797803001,"seq":5}',
    ]

    async def send_all(connection: ServerConnection) -> None:
        for message in [*CONNECT, *deltas]:
            await connection.send(message)
        await connection.close()  # 1000: the venue ends the session cleanly

    headers: list[dict[str, str]] = []
    async with extended_stream(send_all, headers) as url, ExtendedAccountStream(url, SecretStr(API_KEY)) as stream:
        before = datetime.now(UTC)
        frames = [frame async for frame in _frames(stream)]
        assert stream.close_code == 1000
    assert [frame.data for frame in frames] == [*CONNECT, *deltas]
    times = [frame.received_at for frame in frames]
    assert times == sorted(times)
    assert all(before <= at <= datetime.now(UTC) for at in times)
    assert headers[0]["X-Api-Key"] == API_KEY
    assert headers[0]["User-Agent"].startswith("statekeeper/")

    # what the ingest daemon will do with them: one event per frame, seq 1..5, the first three snapshots
    session = FrameContext("ext-main", "extended", uuid4(), frames[0].received_at)
    events = [parse_frame(frame.data, session) for frame in frames]
    assert all(isinstance(event, Event) for event in events)
    assert [(e.seq, e.snapshot) for e in events if isinstance(e, Event)] == [
        (1, True), (2, True), (3, True), (4, False), (5, False)
    ]  # fmt: skip


async def _frames(stream: ExtendedAccountStream) -> AsyncIterator[Frame]:
    async with asyncio.timeout(DEADLINE):
        async for frame in stream:
            yield frame


async def test_server_pings_are_answered() -> None:
    """Extended pings every 15 s and drops a client that does not pong within 10 s."""
    ponged = asyncio.Event()

    async def ping_first(connection: ServerConnection) -> None:
        pong = await connection.ping()
        await asyncio.wait_for(pong, timeout=DEADLINE)  # answered without the client reading a frame
        ponged.set()
        await connection.send(CONNECT[0])
        await connection.close()

    async with extended_stream(ping_first) as url, ExtendedAccountStream(url, SecretStr(API_KEY)) as stream:
        await asyncio.wait_for(ponged.wait(), timeout=DEADLINE)
        assert await collect(stream) == [CONNECT[0]]


async def test_leaving_the_context_closes_cleanly() -> None:
    closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def hold(connection: ServerConnection) -> None:
        await connection.send(CONNECT[0])
        await connection.wait_closed()
        closed.set_result(connection.close_code)

    async with extended_stream(hold) as url:
        async with ExtendedAccountStream(url, SecretStr(API_KEY)) as stream:
            async with asyncio.timeout(DEADLINE):
                async for frame in stream:
                    assert frame.data == CONNECT[0]
                    break
        assert await asyncio.wait_for(closed, timeout=DEADLINE) == 1000
        assert stream.close_code == 1000


async def test_a_broken_connection_is_retryable() -> None:
    async def fail(connection: ServerConnection) -> None:
        await connection.send(CONNECT[0])
        await connection.close(code=1011, reason="internal error")

    async with extended_stream(fail) as url, ExtendedAccountStream(url, SecretStr(API_KEY)) as stream:
        received: list[str | bytes] = []

        async def read() -> None:
            async with asyncio.timeout(DEADLINE):
                async for frame in stream:
                    received.append(frame.data)

        with pytest.raises(RetryableVenueError, match="the connection broke"):
            await read()
        assert received == [CONNECT[0]]
        assert stream.close_code == 1011


async def test_refused_handshakes() -> None:
    async def never(connection: ServerConnection) -> None:
        raise AssertionError("no connection should get through")

    async with extended_stream(never) as url:
        wrong = ExtendedAccountStream(url, SecretStr("not-the-key"))
        with pytest.raises(FatalVenueError, match="HTTP 401") as info:
            await wrong.open()
        assert "not-the-key" not in str(info.value)
        assert "not-the-key" not in repr(wrong)
        with pytest.raises(RetryableVenueError, match="HTTP 404"):
            await ExtendedAccountStream(url.removesuffix("/account"), SecretStr(API_KEY)).open()


def test_construction() -> None:
    stream = ExtendedAccountStream("wss://example/stream.extended.exchange/v1/account", SecretStr(API_KEY))
    assert API_KEY not in repr(stream)
    assert "new" in repr(stream)
    with pytest.raises(RuntimeError, match="never opened"):
        aiter(stream)
    with pytest.raises(TypeError, match="SecretStr"):
        ExtendedAccountStream("wss://example", API_KEY)  # type: ignore[arg-type]
