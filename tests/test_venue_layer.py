"""The shared venue layer: wire converters, the total parse driver, the HTTP client, opening a WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from uuid import uuid4

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from statekeeper.events import Event, FillBody, Source
from statekeeper.venues.base import FrameContext, FrameRejection, parse_frame_with
from statekeeper.venues.errors import FatalVenueError, NonRetryableVenueError, RetryableVenueError
from statekeeper.venues.http import RetryPolicy, VenueHttpClient, retry_after_seconds
from statekeeper.venues.wire import (
    NeedsExactNumbers,
    WireError,
    amount,
    dump_item,
    field,
    loads_exact,
    parse_json_with,
    timestamp,
    venue_id,
)
from statekeeper.venues.ws import open_websocket
from tests.factories import fill

SECRET = "xk-live-4d1c9e7f2a6b"

# ---------------------------------------------------------------------------------------------- converters


def test_amounts() -> None:
    assert amount("58853.4000000000000000", "p") == Decimal("58853.4000000000000000")
    assert str(amount("58853.4000000000000000", "p")) == "58853.4000000000000000"
    assert amount(12, "p") == Decimal(12)
    assert amount(Decimal("1.10"), "p") == Decimal("1.10")
    with pytest.raises(NeedsExactNumbers):
        amount(0.1, "p")
    bad_amounts: list[object] = [True, None, [], "abc", "NaN", "Infinity", "-inf"]
    for bad in bad_amounts:
        with pytest.raises(WireError, match="p"):
            amount(bad, "p")


def test_ids() -> None:
    assert venue_id(2**63, "id") == "9223372036854775808"
    assert venue_id(2**70, "id") == str(2**70)
    assert venue_id("0x495d", "id") == "0x495d"
    with pytest.raises(NeedsExactNumbers):
        venue_id(1.8e19, "id")
    bad_ids: list[object] = ["", "  ", True, None, {}]
    for bad in bad_ids:
        with pytest.raises(WireError):
            venue_id(bad, "id")


def test_timestamps() -> None:
    assert timestamp(1715885888571, "t") == datetime(2024, 5, 16, 18, 58, 8, 571000, tzinfo=UTC)
    assert timestamp("1715885888571", "t") == timestamp(1715885888571, "t")
    assert timestamp(1701563440, "t") == datetime(2023, 12, 3, 0, 30, 40, tzinfo=UTC)  # seconds (REST balance)
    bad_times: list[object] = [-1, "x", None, {}, 10**30]
    for bad in bad_times:
        with pytest.raises(WireError):
            timestamp(bad, "t")


def test_alternate_spellings() -> None:
    assert field({"expiryTime": 5}, "expireTime", "expiryTime") == 5
    assert field({"expireTime": 4, "expiryTime": 5}, "expireTime", "expiryTime") == 4
    with pytest.raises(WireError, match=r"order\.expireTime/expiryTime: missing"):
        field({}, "expireTime", "expiryTime", where="order")


def test_numbers_beyond_64_bits_and_fractions_are_parsed_exactly() -> None:
    text = '{"id": 18446744073709551616, "price": 58853.40, "qty": "0.09"}'

    def mapper(data: Any) -> tuple[str, Decimal, Decimal]:
        return venue_id(data["id"], "id"), amount(data["price"], "price"), amount(data["qty"], "qty")

    assert parse_json_with(text, mapper) == ("18446744073709551616", Decimal("58853.40"), Decimal("0.09"))


def test_dump_item_keeps_every_digit() -> None:
    item = loads_exact('{"id": 18446744073709551616, "price": 1.10, "tiny": -1E-21, "s": "x"}')
    dumped = dump_item(item)
    assert loads_exact(dumped) == item
    assert '"price":1.10' in dumped
    assert dump_item({"a": 1}) == '{"a":1}'


# ---------------------------------------------------------------------------------------------- driver

CTX = FrameContext(account="acc-1", venue="extended", session=uuid4(), received_at=datetime(2026, 1, 1, tzinfo=UTC))


def _fill_mapper(data: Any, text: str) -> Event:
    record = fill(venue_id(data["id"], "id"), qty=str(amount(data["qty"], "qty")))
    return Event(account=CTX.account, venue=CTX.venue, source=Source.STREAM, body=FillBody(fills=(record,)),
                 venue_time=CTX.received_at, received_at=CTX.received_at, session=CTX.session,
                 seq=data["seq"], raw=text)  # fmt: skip


def _seq(data: Any) -> int | None:
    return data.get("seq") if isinstance(data, dict) else None


def test_driver_maps_a_good_frame() -> None:
    outcome = parse_frame_with('{"id": 7, "qty": "0.5", "seq": 3}', _fill_mapper, seq_of=_seq)
    assert isinstance(outcome, Event)
    assert outcome.key == f"seq:{CTX.session}:3"
    assert outcome.raw == '{"id": 7, "qty": "0.5", "seq": 3}'


@pytest.mark.parametrize(
    ("raw", "reason", "seq"),
    [
        ("not json", "not JSON", None),
        (b"\xff\xfe", "not UTF-8", None),
        ('{"qty": "0.5", "seq": 9}', "KeyError", 9),  # a mapper bug is a rejection, never an exception
        ('{"id": 7, "qty": "lots", "seq": 4}', "qty", 4),
        ('{"id": 7, "qty": "0.5", "seq": -1}', "seq", -1),  # the model refuses it: a validation message
    ],
)
def test_driver_rejects_with_a_reason(raw: str | bytes, reason: str, seq: int | None) -> None:
    outcome = parse_frame_with(raw, _fill_mapper, seq_of=_seq)
    assert isinstance(outcome, FrameRejection)
    assert reason in outcome.reason
    assert outcome.seq == seq


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_driver_never_raises(raw: bytes | str) -> None:
    assert isinstance(parse_frame_with(raw, _fill_mapper, seq_of=_seq), Event | FrameRejection)


def test_rejection_keeps_the_frame_byte_for_byte() -> None:
    raw = b'{"type":"ORDER"\x00\xff'
    row = FrameRejection("not UTF-8", seq=None).to_rejected_frame(CTX, raw)
    assert row.raw == raw
    assert (row.account, row.session, row.source) == ("acc-1", CTX.session, Source.STREAM)
    text_row = FrameRejection("bad").to_rejected_frame(CTX, '{"a":"\ud800"}')  # a lone surrogate survives too
    assert text_row.raw == '{"a":"\ud800"}'.encode("utf-8", errors="surrogatepass")


# ------------------------------------------------------------------------------------------ HTTP client


def test_retry_after_forms() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(" 0.5 ") == 0.5
    later = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(later, usegmt=True), now=later.timestamp() - 30) == pytest.approx(30)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/api/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


class Sleeps:
    """Records the delays the client would have waited, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client(base_url: str, sleeps: Sleeps, **kwargs: Any) -> VenueHttpClient:
    return VenueHttpClient(venue="testvenue", base_url=base_url, headers={"X-Api-Key": SECRET}, sleep=sleeps,
                           **kwargs)  # fmt: skip


def scripted(*answers: tuple[int, str, dict[str, str]]) -> tuple[Handler, list[web.Request]]:
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        status, body, headers = answers[min(len(seen), len(answers)) - 1]
        return web.Response(status=status, text=body, headers=headers)

    return handler, seen


async def test_ok_and_headers(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, seen = scripted((200, '{"status":"OK","data":{}}', {}))
    sleeps = Sleeps()
    async with client(await server(handler), sleeps) as http:
        response = await http.get("/user/balance", {"market": "BTC-USD"})
    assert response.status == 200
    assert response.json() == {"status": "OK", "data": {}}
    assert seen[0].headers["X-Api-Key"] == SECRET
    assert seen[0].headers["User-Agent"].startswith("statekeeper/")
    assert seen[0].query["market"] == "BTC-USD"
    assert sleeps.delays == []


async def test_429_waits_as_the_venue_asks(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, seen = scripted((429, "slow down", {"Retry-After": "3"}), (200, "{}", {}))
    sleeps = Sleeps()
    async with client(await server(handler), sleeps) as http:
        assert (await http.get("/user/trades")).status == 200
    assert sleeps.delays == [3.0]
    assert len(seen) == 2


async def test_429_too_long_to_wait_is_a_retryable_failure(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, _ = scripted((429, "", {"Retry-After": "3600"}))
    sleeps = Sleeps()
    async with client(await server(handler), sleeps) as http:
        with pytest.raises(RetryableVenueError, match="wait 3600 s"):
            await http.get("/user/trades")
    assert sleeps.delays == []


async def test_5xx_is_retried_with_growing_backoff(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, seen = scripted((503, "busy", {}), (502, "bad gateway", {}), (200, "{}", {}))
    sleeps = Sleeps()
    async with client(await server(handler), sleeps, retry=RetryPolicy(base_delay=1.0, jitter=0.0)) as http:
        assert (await http.get("/user/positions")).status == 200
    assert sleeps.delays == [1.0, 2.0]
    assert len(seen) == 3


async def test_5xx_forever_fails_retryable_never_empty(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, seen = scripted((500, "boom", {}))
    sleeps = Sleeps()
    async with client(await server(handler), sleeps, retry=RetryPolicy(attempts=4, max_delay=2.0)) as http:
        with pytest.raises(RetryableVenueError, match="failed after 4 attempts, last: HTTP 500: boom") as info:
            await http.get("/user/positions")
    assert len(seen) == 4
    assert len(sleeps.delays) == 3
    assert max(sleeps.delays) <= 2.0 * 1.25
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, FatalVenueError), (403, FatalVenueError), (404, NonRetryableVenueError), (400, NonRetryableVenueError)],
)
async def test_client_errors_are_not_retried(
    server: Callable[[Handler], Awaitable[str]], status: int, error: type[Exception]
) -> None:
    handler, seen = scripted((status, '{"status":"ERROR","error":{"code":"X","message":"nope"}}', {}))
    sleeps = Sleeps()
    async with client(await server(handler), sleeps) as http:
        with pytest.raises(error, match=f"HTTP {status}") as info:
            await http.get("/user/balance")
    assert len(seen) == 1
    assert SECRET not in str(info.value)


async def test_expected_status_is_returned(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, _ = scripted((404, "", {}))
    async with client(await server(handler), Sleeps()) as http:
        assert (await http.get("/user/balance", ok_statuses=(200, 404))).status == 404


async def test_timeout_is_retryable(server: Callable[[Handler], Awaitable[str]]) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    sleeps = Sleeps()
    async with client(await server(hang), sleeps, timeout=0.2, retry=RetryPolicy(attempts=2)) as http:
        with pytest.raises(RetryableVenueError, match=r"no answer within 0\.2 s"):
            await http.get("/user/balance")
    never.set()  # let the server's handlers finish, so that its shutdown does not wait for them
    assert len(sleeps.delays) == 1


async def test_connection_refused_is_retryable() -> None:
    sleeps = Sleeps()
    async with client("http://127.0.0.1:1/api/v1", sleeps, retry=RetryPolicy(attempts=2)) as http:
        with pytest.raises(RetryableVenueError, match="failed after 2 attempts"):
            await http.get("/user/balance")


async def test_malformed_json_is_a_response_error(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, _ = scripted((200, "<html>maintenance</html>", {}))
    async with client(await server(handler), Sleeps()) as http:
        response = await http.get("/user/balance")
    with pytest.raises(NonRetryableVenueError, match="not JSON"):
        response.json()


# -------------------------------------------------------------------------------------------- WebSocket


async def test_websocket_handshake_outcomes() -> None:
    async def refuse(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/unauthorized":
            return connection.respond(401, "bad key\n")
        if request.path == "/broken":
            return connection.respond(500, "oops\n")
        assert request.headers["User-Agent"].startswith("statekeeper/")
        assert request.headers["X-Api-Key"] == SECRET
        return None

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, process_request=refuse) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        base = f"ws://127.0.0.1:{port}"
        with pytest.raises(FatalVenueError, match="HTTP 401") as info:
            await open_websocket(f"{base}/unauthorized", venue="testvenue", headers={"X-Api-Key": SECRET})
        assert SECRET not in str(info.value)
        with pytest.raises(RetryableVenueError, match="HTTP 500"):
            await open_websocket(f"{base}/broken", venue="testvenue")
        connection = await open_websocket(f"{base}/ok", venue="testvenue", headers={"X-Api-Key": SECRET})
        await connection.send("hello")
        assert await asyncio.wait_for(connection.recv(), timeout=10) == "hello"
        await connection.close()
    with pytest.raises(RetryableVenueError, match="cannot connect"):
        await open_websocket(f"ws://127.0.0.1:{port}/ok", venue="testvenue", open_timeout=2)


async def test_per_call_headers_add_to_the_clients(server: Callable[[Handler], Awaitable[str]]) -> None:
    handler, seen = scripted((200, "{}", {}))
    async with client(await server(handler), Sleeps()) as http:
        await http.get("/user/balance", headers={"Authorization": "Bearer rotating"})
    assert seen[0].headers["Authorization"] == "Bearer rotating"
    assert seen[0].headers["X-Api-Key"] == SECRET
