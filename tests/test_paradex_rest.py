"""The Paradex REST client against a local aiohttp venue: bearer on every call, refresh on 401, pagination, retries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiohttp import web
from pydantic import SecretStr

from statekeeper.venues.base import Item
from statekeeper.venues.errors import (
    FatalVenueError,
    NonRetryableVenueError,
    RetryableVenueError,
    VenueResponseError,
)
from statekeeper.venues.http import RetryPolicy, VenueHttpClient
from statekeeper.venues.paradex import parse
from statekeeper.venues.paradex.auth import SdkTokenProvider, StaticTokenProvider, TokenProvider
from statekeeper.venues.paradex.rest import ParadexRestClient
from statekeeper.venues.wire import epoch_ms

PROTOCOLS = Path(__file__).parent / "fixtures" / "protocols" / "paradex"
START = datetime(2026, 11, 1, tzinfo=UTC)


def fixture(name: str) -> str:
    return (PROTOCOLS / name).read_text()


def token() -> str:
    return f"eyJ.{uuid4().hex}.{uuid4().hex}"


Answer = tuple[int, str, dict[str, str]]
Route = Callable[[web.Request], Awaitable[web.Response]] | list[Answer]


class Venue:
    """A local Paradex REST API: checks the bearer, answers per path (a script or a handler), records requests."""

    def __init__(self, *accepted: str) -> None:
        self.accepted = set(accepted)
        self.routes: dict[str, Route] = {}
        self.seen: list[web.Request] = []
        self.base_url = ""

    def bearers(self) -> list[str]:
        return [request.headers.get("Authorization", "") for request in self.seen]

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.accepted:
            return web.json_response({"error": "INVALID_TOKEN", "message": "invalid bearer token"}, status=401)
        route = self.routes[request.match_info["tail"]]
        if callable(route):
            return await route(request)
        status, body, headers = route.pop(0) if len(route) > 1 else route[0]
        return web.Response(status=status, text=body, headers=headers, content_type="application/json")


@pytest.fixture
async def start_venue() -> AsyncIterator[Callable[..., Awaitable[Venue]]]:
    runners: list[web.AppRunner] = []

    async def start(*accepted: str) -> Venue:
        venue = Venue(*accepted)
        app = web.Application()
        app.router.add_get("/v1/{tail:.*}", venue.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        venue.base_url = f"http://127.0.0.1:{port}/v1"
        return venue

    yield start
    for runner in runners:
        await runner.cleanup()


class Sleeps:
    """Records the delays the client would have waited, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client(venue: Venue, tokens: TokenProvider, sleeps: Sleeps | None = None, **http: Any) -> ParadexRestClient:
    transport = VenueHttpClient(
        venue="paradex", base_url="http://unused.invalid", sleep=sleeps or Sleeps(), retry=RetryPolicy(**http)
    )
    return ParadexRestClient(venue.base_url, tokens, http=transport, page_size=2)


class Minter:
    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.tokens.pop(0)


# --------------------------------------------------------------------------------------------- snapshots


async def test_snapshots_carry_the_bearer(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    venue.routes = {
        "account": [(200, fixture("rest_account.schema_example.json"), {})],
        "balance": [(200, fixture("rest_balance.schema_example.json"), {})],
        "positions": [(200, fixture("rest_positions.schema_example.json"), {})],
        "orders": [(200, fixture("rest_open_orders.schema_example.json"), {})],
    }
    order = json.loads(fixture("rest_open_orders.schema_example.json"))["results"][0]
    venue.routes["orders/1681462103821101699438490000"] = [(200, json.dumps(order), {})]
    async with client(venue, StaticTokenProvider(secret)) as rest:
        account = await rest.account()
        balances = await rest.balances()
        positions = await rest.positions()
        orders = await rest.open_orders(market="BTC-USD-PERP")
        single = await rest.order("1681462103821101699438490000")
        assert secret not in repr(rest)
    assert account == parse.parse_account(fixture("rest_account.schema_example.json").encode())
    assert balances == parse.parse_balances(fixture("rest_balance.schema_example.json").encode())
    assert positions == parse.parse_positions(fixture("rest_positions.schema_example.json").encode())
    assert orders == parse.parse_open_orders(fixture("rest_open_orders.schema_example.json").encode())
    assert single.record == orders[0].record
    assert venue.bearers() == [f"Bearer {secret}"] * 5
    assert [request.path for request in venue.seen] == [
        "/v1/account",
        "/v1/balance",
        "/v1/positions",
        "/v1/orders",
        "/v1/orders/1681462103821101699438490000",
    ]
    assert venue.seen[3].query["market"] == "BTC-USD-PERP"
    assert all(request.headers["User-Agent"].startswith("statekeeper/") for request in venue.seen)


async def test_order_ids_are_escaped_in_the_path(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    venue.routes["orders/a/b"] = [(404, '{"error":"NOT_FOUND"}', {})]  # the server matches the decoded path
    async with client(venue, StaticTokenProvider(secret)) as rest:
        with pytest.raises(NonRetryableVenueError, match="HTTP 404") as info:
            await rest.order("a/b")
    assert info.value.status == 404
    assert venue.seen[0].raw_path == "/v1/orders/a%2Fb"


# -------------------------------------------------------------------------------------------------- 401


async def test_a_refused_token_is_refreshed_once(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    stale, fresh = token(), token()
    venue = await start_venue(fresh)
    venue.routes["balance"] = [(200, fixture("rest_balance.schema_example.json"), {})]
    minter = Minter(stale, fresh)
    async with client(venue, SdkTokenProvider(minter)) as rest:
        (balance,) = await rest.balances()
    assert balance.record.asset == "USDC"
    assert venue.bearers() == [f"Bearer {stale}", f"Bearer {fresh}"]
    assert minter.calls == 2


async def test_refused_twice_is_fatal(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    first, second = token(), token()
    venue = await start_venue()
    minter = Minter(first, second)
    sleeps = Sleeps()
    async with client(venue, SdkTokenProvider(minter), sleeps) as rest:
        with pytest.raises(FatalVenueError, match="HTTP 401 twice") as info:
            await rest.account()
    assert info.value.status == 401
    assert venue.bearers() == [f"Bearer {first}", f"Bearer {second}"]
    assert minter.calls == 2
    assert first not in str(info.value)
    assert second not in str(info.value)
    assert sleeps.delays == []


async def test_a_refused_static_token_is_fatal(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue("another-token")

    async def echo_token(request: web.Request) -> web.Response:  # a venue that quotes the refused token back
        return web.Response(status=401, text=request.headers["Authorization"])

    venue.routes["account"] = echo_token
    async with client(venue, StaticTokenProvider(secret)) as rest:
        with pytest.raises(FatalVenueError) as info:
            await rest.account()
    assert len(venue.seen) == 2
    assert secret not in str(info.value)


# ---------------------------------------------------------------------------------------------- retries


async def test_429_waits_as_the_venue_asks(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    venue.routes["account"] = [
        (429, '{"error":"RATE_LIMITED"}', {"Retry-After": "3"}),
        (200, fixture("rest_account.schema_example.json"), {}),
    ]
    sleeps = Sleeps()
    async with client(venue, StaticTokenProvider(secret), sleeps) as rest:
        await rest.account()
    assert sleeps.delays == [3.0]
    assert len(venue.seen) == 2


async def test_5xx_is_retried(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    venue.routes["positions"] = [
        (503, "unavailable", {}),
        (502, "bad gateway", {}),
        (200, fixture("rest_positions.schema_example.json"), {}),
    ]
    sleeps = Sleeps()
    async with client(venue, StaticTokenProvider(secret), sleeps, jitter=0.0) as rest:
        (position,) = await rest.positions()
    assert position.record.position_id == "1234234"
    assert sleeps.delays == [0.25, 0.5]


async def test_failure_is_never_an_empty_answer(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    venue.routes["balance"] = [(500, "down", {})]
    venue.routes["orders"] = [(200, "<html>maintenance</html>", {})]
    venue.routes["positions"] = [(200, '{"results": {"BTC-USD-PERP": {}}}', {})]
    async with client(venue, StaticTokenProvider(secret), attempts=2) as rest:
        with pytest.raises(RetryableVenueError, match="failed after 2 attempts"):
            await rest.balances()
        with pytest.raises(VenueResponseError, match="not JSON"):
            await rest.open_orders()
        with pytest.raises(VenueResponseError, match="expected an array"):
            await rest.positions()


# -------------------------------------------------------------------------------------------- pagination


def paged(
    items: list[dict[str, Any]], seen_cursors: list[str | None]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Serve ``items`` two per page, cursor = index of the next page."""

    async def handler(request: web.Request) -> web.Response:
        cursor = request.query.get("cursor")
        seen_cursors.append(cursor)
        start = int(cursor or 0)
        size = int(request.query["page_size"])
        end = start + size
        following = str(end) if end < len(items) else None
        return web.json_response({"next": following, "prev": None, "results": items[start:end]})

    return handler


def fills(count: int) -> list[dict[str, Any]]:
    template = json.loads(fixture("rest_fills.schema_example.json"))["results"][0]
    return [{**template, "id": str(1000 + n)} for n in range(count)]


async def test_history_pages_follow_next(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    cursors: list[str | None] = []
    venue.routes["fills"] = paged(fills(5), cursors)
    async with client(venue, StaticTokenProvider(secret)) as rest:
        items = [item async for item in rest.fills_since(START, market="BTC-USD-PERP")]
    assert [item.record.fill_id for item in items] == [str(1000 + n) for n in range(5)]
    assert cursors == [None, "2", "4"]  # three pages of 2, 2 and 1
    for request in venue.seen:
        assert request.query["start_at"] == str(epoch_ms(START)) == "1793491200000"
        assert request.query["market"] == "BTC-USD-PERP"
        assert request.query["page_size"] == "2"


async def test_a_repeating_cursor_stops_the_walk(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    venue.routes["transfers"] = [(200, json.dumps({"next": "same", "prev": None, "results": []}), {})]
    items: list[Item[Any]] = []

    async def walk(rest: ParadexRestClient) -> None:
        async for item in rest.transfers_since(START):
            items.append(item)

    async with client(venue, StaticTokenProvider(secret)) as rest:
        with pytest.raises(VenueResponseError, match=r"cursor .* came back"):
            await walk(rest)
    assert items == []
    assert len(venue.seen) == 2


async def test_funding_payments_are_fetched_per_market(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    payment = json.loads(fixture("rest_funding_payments.schema_example.json"))["results"][0]

    async def by_market(request: web.Request) -> web.Response:
        market = request.query["market"]
        return web.json_response({"next": None, "prev": None, "results": [{**payment, "market": market}]})

    venue.routes["funding/payments"] = by_market
    async with client(venue, StaticTokenProvider(secret)) as rest:
        markets = ["BTC-USD-PERP", "ETH-USD-PERP", "BTC-USD-PERP"]
        items = [
            item async for item in rest.funding_payments_since(START, markets, end_at=datetime(2026, 11, 2, tzinfo=UTC))
        ]
        with pytest.raises(ValueError, match="requires a market"):
            rest.funding_payments_since(START, [])
    assert [item.record.market for item in items] == ["BTC-USD-PERP", "ETH-USD-PERP"]
    assert [request.query["end_at"] for request in venue.seen] == ["1793577600000"] * 2


async def test_transfers_tradebusts_and_orders_history(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    secret = token()
    venue = await start_venue(secret)
    transfer = json.loads(fixture("ws_transfers_notification.schema_example.json"))["params"]["data"]
    bust = json.loads(fixture("ws_tradebusts_notification.schema_example.json"))["params"]["data"]
    order = json.loads(fixture("rest_open_orders.schema_example.json"))["results"][0]
    venue.routes["transfers"] = [(200, json.dumps({"next": None, "prev": None, "results": [transfer]}), {})]
    venue.routes["tradebusts"] = [(200, json.dumps({"next": None, "prev": None, "results": [bust]}), {})]
    venue.routes["orders-history"] = [(200, json.dumps({"next": "n2", "prev": None, "results": [order]}), {})]
    async with client(venue, StaticTokenProvider(secret)) as rest:
        (transfer,) = [item async for item in rest.transfers_since(START)]
        (bust,) = [item async for item in rest.tradebusts_since(START)]
        history = await rest.orders_history_page(start_at=START, cursor="n1")
    assert transfer.record.transfer_id == "123456789"
    assert bust.record.fill_id == "12342345"
    assert history.cursor == "n2"
    assert venue.seen[-1].query["cursor"] == "n1"


def test_times_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        epoch_ms(datetime(2026, 11, 1))  # noqa: DTZ001 - the point of the test


async def test_the_token_is_asked_for_every_request(start_venue: Callable[..., Awaitable[Venue]]) -> None:
    first, second = token(), token()
    venue = await start_venue(first, second)
    venue.routes["account"] = [(200, fixture("rest_account.schema_example.json"), {})]

    class Rotating:
        refreshable = True

        def __init__(self) -> None:
            self.values = [first, second]

        async def token(self) -> SecretStr:
            return SecretStr(self.values.pop(0))

        def invalidate(self) -> None:
            raise AssertionError("no token was refused")

    async with client(venue, Rotating()) as rest:
        await rest.account()
        await rest.account()
    assert venue.bearers() == [f"Bearer {first}", f"Bearer {second}"]
