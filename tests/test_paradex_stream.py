"""The Paradex account stream against a local JSON-RPC WebSocket server: auth, subscriptions, frames in order."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import SecretStr
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers

from statekeeper.venues.errors import FatalVenueError, NonRetryableVenueError, RetryableVenueError
from statekeeper.venues.paradex.auth import SdkTokenProvider, StaticTokenProvider
from statekeeper.venues.paradex.stream import ParadexAccountStream
from statekeeper.venues.paradex.wire import DEFAULT_CHANNELS, auth_request, subscribe_request, unsubscribe_request

PROTOCOLS = Path(__file__).parent / "fixtures" / "protocols" / "paradex"
DEADLINE = 10.0


def fixture(name: str) -> dict[str, Any]:
    value = json.loads((PROTOCOLS / name).read_text())
    assert isinstance(value, dict)
    return value


def token() -> str:
    return f"eyJ.{uuid4().hex}.{uuid4().hex}"


def notification(channel: str, n: int) -> str:
    return json.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": {"n": n}}})


def answer(request_id: int, result: Any = None, error: tuple[int, str] | None = None) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "usIn": 1710522972729581, "usDiff": 37, "id": request_id}
    if error is None:
        message["result"] = result
    else:
        message["error"] = {"code": error[0], "message": error[1]}
    return json.dumps(message)


@dataclass
class RpcVenue:
    """A scriptable Paradex WebSocket: answers auth and subscribe, sends notifications where told to."""

    accepted: set[str]
    auth_error: tuple[int, str] = (40111, "Invalid Bearer Token")
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)
    silent_on: str | None = None
    before_auth_answer: list[str] = field(default_factory=list)
    before_subscribe_answer: dict[str, list[str]] = field(default_factory=dict)
    after_handshake: list[str] = field(default_factory=list)
    expected_channels: int = len(DEFAULT_CHANNELS)
    ping_after_handshake: bool = False
    close_code: int = 1000
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    headers: list[Headers] = field(default_factory=list)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def send(self, connection: ServerConnection, frame: str) -> None:
        self.sent.append(frame)
        await connection.send(frame)

    async def handler(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        self.headers.append(connection.request.headers)
        subscribed = 0
        async for raw in connection:
            message = json.loads(raw)
            self.received.append(message)
            method, request_id = message["method"], message["id"]
            if method == "auth":
                for frame in self.before_auth_answer:
                    await self.send(connection, frame)
                if message["params"]["bearer"] in self.accepted:
                    await self.send(connection, answer(request_id, {"node_id": "node-7"}))
                else:
                    await self.send(connection, answer(request_id, error=self.auth_error))
            elif method in ("subscribe", "unsubscribe"):
                channel = message["params"]["channel"]
                if method == "subscribe" and channel == self.silent_on:
                    continue
                for frame in self.before_subscribe_answer.get(channel, []):
                    await self.send(connection, frame)
                refused = self.refuse.get(channel)
                await self.send(connection, answer(request_id, None if refused else {"channel": channel}, refused))
                subscribed += method == "subscribe"
                if method == "subscribe" and subscribed == self.expected_channels:
                    await self.after(connection)
        self.done.set()

    async def after(self, connection: ServerConnection) -> None:
        for frame in self.after_handshake:
            await self.send(connection, frame)
        if self.ping_after_handshake:
            pong_waiter = await connection.ping()
            await asyncio.wait_for(pong_waiter, DEADLINE)
            self.pong.set()
            await self.send(connection, notification("account", 999))
        if self.close_code != 1000:
            await connection.close(self.close_code, "server going away")
        elif self.after_handshake or self.ping_after_handshake:
            await connection.close()


@pytest.fixture
async def start_venue() -> AsyncIterator[Callable[[RpcVenue], Awaitable[RpcVenue]]]:
    servers: list[Any] = []

    async def start(venue: RpcVenue) -> RpcVenue:
        server = await serve(venue.handler, "127.0.0.1", 0, ping_interval=None)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        venue.url = f"ws://127.0.0.1:{port}/v1"
        return venue

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def collect(stream: ParadexAccountStream) -> list[str | bytes]:
    async with asyncio.timeout(DEADLINE):
        return [frame.data async for frame in stream]


# ---------------------------------------------------------------------------------------------- handshake


async def test_auth_and_subscriptions(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    secret = token()
    venue = await start_venue(RpcVenue(accepted={secret}))
    async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, StaticTokenProvider(secret)) as stream:
        assert stream.subscribed == list(DEFAULT_CHANNELS)
        assert stream.node_id == "node-7"
        assert secret not in repr(stream)
    assert venue.headers[0]["Authorization"] == f"Bearer {secret}"
    assert venue.headers[0]["User-Agent"].startswith("statekeeper/")
    assert venue.received[0] == auth_request(secret, 0)
    assert venue.received[1:] == [subscribe_request(channel, n) for n, channel in enumerate(DEFAULT_CHANNELS, 1)]
    assert [frame.data for frame in stream.handshake_frames] == venue.sent
    assert len(stream.handshake_frames) == 1 + len(DEFAULT_CHANNELS)


async def test_requests_have_the_documented_shape(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    """The docs' auth, subscribe and unsubscribe requests are what the client sends, id for id."""
    secret = token()
    venue = await start_venue(RpcVenue(accepted={secret}, expected_channels=1))
    async with asyncio.timeout(DEADLINE):
        async with ParadexAccountStream(venue.url, StaticTokenProvider(secret), channels=["orders.ALL"]) as stream:
            assert await stream.unsubscribe("orders.ALL") == 2
            frame = await anext(stream)
        assert json.loads(frame.data) == {
            "jsonrpc": "2.0",
            "result": {"channel": "orders.ALL"},
            "usIn": 1710522972729581,
            "usDiff": 37,
            "id": 2,
        }
    documented_auth = fixture("ws_auth_request.docs.json")
    documented_auth["params"]["bearer"] = secret
    assert venue.received == [
        documented_auth,
        fixture("ws_subscribe_request.docs.json"),
        fixture("ws_unsubscribe_request.docs.json"),
    ]


def test_request_builders_match_the_docs() -> None:
    assert auth_request("<JWT from POST /v1/auth>") == fixture("ws_auth_request.docs.json")
    assert subscribe_request("orders.ALL", 1) == fixture("ws_subscribe_request.docs.json")
    assert unsubscribe_request("orders.ALL", 2) == fixture("ws_unsubscribe_request.docs.json")


async def test_frames_during_the_handshake_are_kept_in_order(
    start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]],
) -> None:
    secret = token()
    venue = await start_venue(
        RpcVenue(
            accepted={secret},
            before_auth_answer=["not json at all", notification("account", 1)],
            before_subscribe_answer={
                "orders.ALL": [notification("account", 2), notification("orders.ALL", 3)],
                "positions": [notification("orders.ALL", 4), answer(99, {"stray": True})],
                "tradebusts": [notification("fills.ALL", 5)],
            },
            after_handshake=[notification("positions", 6), notification("fills.ALL", 7)],
        )
    )
    async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, StaticTokenProvider(secret)) as stream:
        handshake = [frame.data for frame in stream.handshake_frames]
        later = await collect(stream)
    assert handshake + later == venue.sent
    assert handshake[:3] == ["not json at all", notification("account", 1), answer(0, {"node_id": "node-7"})]
    assert later == [notification("positions", 6), notification("fills.ALL", 7)]
    times = [frame.received_at for frame in stream.handshake_frames]
    assert times == sorted(times)
    assert all(moment.tzinfo is not None for moment in times)


async def test_a_server_ping_is_answered(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    secret = token()
    venue = await start_venue(RpcVenue(accepted={secret}, ping_after_handshake=True))
    async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, StaticTokenProvider(secret)) as stream:
        later = await collect(stream)
    assert venue.pong.is_set()
    assert later == [notification("account", 999)]
    assert stream.close_code == 1000


async def test_an_abnormal_close_is_retryable(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    secret = token()
    venue = await start_venue(
        RpcVenue(accepted={secret}, after_handshake=[notification("account", 1)], close_code=1011)
    )
    async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, StaticTokenProvider(secret)) as stream:
        first = await anext(stream)
        with pytest.raises(RetryableVenueError, match="connection lost"):
            await anext(stream)
    assert first.data == notification("account", 1)
    assert stream.close_code == 1011


# ---------------------------------------------------------------------------------------------- failures


async def test_a_refused_static_token_is_fatal(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    secret = token()
    venue = await start_venue(RpcVenue(accepted=set()))
    stream = ParadexAccountStream(venue.url, StaticTokenProvider(secret))
    with pytest.raises(FatalVenueError, match="40111") as info:
        async with asyncio.timeout(DEADLINE), stream:
            pass
    assert secret not in str(info.value)
    assert [message["method"] for message in venue.received] == ["auth"]
    assert [frame.data for frame in stream.handshake_frames] == venue.sent  # the error is kept for the log
    async with asyncio.timeout(DEADLINE):
        await venue.done.wait()  # the client closed the connection


async def test_40111_with_a_minting_provider_retries_once(
    start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]],
) -> None:
    stale, fresh = token(), token()
    venue = await start_venue(RpcVenue(accepted={fresh}, expected_channels=2))
    minted = [stale, fresh]

    async def mint() -> str:
        return minted.pop(0)

    channels = ["orders.ALL", "fills.ALL"]
    async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, SdkTokenProvider(mint), channels) as stream:
        assert stream.subscribed == channels
    assert venue.received == [
        auth_request(stale, 0),
        auth_request(fresh, 1),
        subscribe_request("orders.ALL", 2),
        subscribe_request("fills.ALL", 3),
    ]
    assert json.loads(stream.handshake_frames[0].data)["error"]["code"] == 40111


async def test_40111_twice_is_fatal(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    venue = await start_venue(RpcVenue(accepted=set()))
    minted = [token(), token(), token()]

    async def mint() -> str:
        return minted.pop(0)

    provider = SdkTokenProvider(mint)
    with pytest.raises(FatalVenueError, match="authentication refused"):
        async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, provider):
            pass
    assert [message["method"] for message in venue.received] == ["auth", "auth"]
    assert len(minted) == 1
    await provider.token()  # the refused token was dropped: the next connection gets a new one
    assert minted == []


@pytest.mark.parametrize(("code", "message"), [(40110, "Malformed Bearer Token"), (40112, "Geo IP blocked")])
async def test_other_auth_errors_are_fatal_at_once(
    start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]], code: int, message: str
) -> None:
    venue = await start_venue(RpcVenue(accepted=set(), auth_error=(code, message)))
    minted = [token(), token()]

    async def mint() -> str:
        return minted.pop(0)

    with pytest.raises(FatalVenueError, match=f"{code}: {message}"):
        async with asyncio.timeout(DEADLINE), ParadexAccountStream(venue.url, SdkTokenProvider(mint)):
            pass
    assert len(venue.received) == 1


async def test_a_refused_subscription_names_the_channel(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    secret = token()
    venue = await start_venue(RpcVenue(accepted={secret}, refuse={"positions": (-32602, "Invalid parameters")}))
    stream = ParadexAccountStream(venue.url, StaticTokenProvider(secret))
    with pytest.raises(NonRetryableVenueError, match="subscribing to 'positions' failed, error -32602"):
        async with asyncio.timeout(DEADLINE), stream:
            pass
    assert stream.subscribed == ["account", "orders.ALL", "fills.ALL"]
    assert [message["params"].get("channel") for message in venue.received[1:]] == [*stream.subscribed, "positions"]


async def test_no_answer_in_time_is_retryable(start_venue: Callable[[RpcVenue], Awaitable[RpcVenue]]) -> None:
    secret = token()
    venue = await start_venue(RpcVenue(accepted={secret}, silent_on="fills.ALL"))
    stream = ParadexAccountStream(venue.url, StaticTokenProvider(secret), answer_timeout=0.2)
    with pytest.raises(RetryableVenueError, match=re.escape("no answer to subscribe fills.ALL within 0.2 s")):
        async with asyncio.timeout(DEADLINE), stream:
            pass
    assert len(stream.handshake_frames) == 3  # auth, account, orders.ALL answers


async def test_unreachable_venue_is_retryable() -> None:
    with pytest.raises(RetryableVenueError, match="cannot connect"):
        async with ParadexAccountStream("ws://127.0.0.1:9/v1", StaticTokenProvider(token()), open_timeout=2):
            pass


async def test_the_stream_must_be_opened() -> None:
    stream = ParadexAccountStream("ws://127.0.0.1:9/v1", StaticTokenProvider(SecretStr(token())))
    with pytest.raises(RuntimeError, match="not open"):
        await anext(stream)
    with pytest.raises(ValueError, match="at least one channel"):
        ParadexAccountStream("ws://127.0.0.1:9/v1", StaticTokenProvider(token()), channels=[])
