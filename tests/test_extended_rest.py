"""ExtendedRestClient against a local Extended-like REST server (aiohttp on 127.0.0.1:0), never a mock.

The server checks ``X-Api-Key`` and ``User-Agent`` on every request, serves the documented envelopes and cursor
pagination (newest first, the cursor is the last item's id), and can be scripted to fail (429, 5xx, garbage).
Retries never wait: the HTTP client gets a ``sleep`` that records the delays it was asked for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from statekeeper.events import Balance
from statekeeper.venues.errors import (
    FatalVenueError,
    NonRetryableVenueError,
    RetryableVenueError,
    VenueResponseError,
)
from statekeeper.venues.extended import ExtendedRestClient
from statekeeper.venues.http import RetryPolicy, VenueHttpClient

API_KEY = "ext-key-5f0c2a9e81d4b7c3"
TRADE_IDS = [1811328331296018438 - n for n in range(7)]  # newest first, as the venue serves them


def trade(trade_id: int) -> dict[str, Any]:
    return {
        "id": trade_id, "accountId": 3004, "market": "BTC-USD", "orderId": trade_id - 9000, "side": "BUY",
        "price": "58249.8000000000000000", "qty": "0.0010000000000000", "value": "58.2498000000000000",
        "fee": "0.0291240000000000", "isTaker": True, "tradeType": "TRADE", "createdTime": 1720689301691,
    }  # fmt: skip


def funding(payment_id: int, paid: int) -> dict[str, Any]:
    return {"id": payment_id, "accountId": 3137, "market": "BNB-USD", "positionId": 1821237954501148672,
            "side": "LONG", "size": "1.116", "value": "560.77401888", "markPrice": "502.48568",
            "fundingFee": "-0.0123", "fundingRate": "0.00001", "paidTime": paid}  # fmt: skip


ORDER = {
    "id": 1775511783722512384, "accountId": 3017, "externalId": "ext-9", "market": "ETH-USD", "type": "LIMIT",
    "side": "BUY", "status": "PARTIALLY_FILLED", "price": "3300", "qty": "0.2", "filledQty": "0.1",
    "reduceOnly": False, "postOnly": False, "createdTime": 1701563440000, "updatedTime": 1701563440000,
    "timeInForce": "GTT", "expireTime": 1712754771819,
}  # fmt: skip
BALANCE = {"collateralName": "USD", "balance": "13500", "equity": "12000", "availableForTrade": "1200",
           "availableForWithdrawal": "100", "unrealisedPnl": "-10.1", "initialMargin": "160",
           "marginRatio": "1.5", "exposure": "12751.859629", "leverage": "1275.1860",
           "updatedTime": 1701563440000}  # fmt: skip
POSITION = {"id": 1, "accountId": 1, "market": "BTC-USD", "side": "LONG", "leverage": "10", "size": "0.1",
            "value": "4000", "openPrice": "39000", "markPrice": "40000", "createdAt": 1701563440000,
            "updatedAt": 1701563440000}  # fmt: skip
OPERATION = {"id": "1951255127004282880", "type": "TRANSFER", "status": "COMPLETED", "amount": "-3.0",
             "fee": "0", "asset": 1, "time": 1754050449502, "accountId": 100009}  # fmt: skip
ACCOUNT = {"status": "ACTIVE", "l2Key": "0x123", "l2Vault": 321, "accountId": 123, "description": "abc",
           "bridgeStarknetAddress": "0x21be"}  # fmt: skip


def ok(data: Any, **extra: Any) -> web.Response:
    return web.Response(body=orjson.dumps({"status": "OK", "data": data, **extra}), content_type="application/json")


def paginated(items: list[dict[str, Any]], request: web.Request) -> web.Response:
    """Cursor pagination as Extended documents it: items after the cursor's id, ``limit`` of them."""
    if "cursor" in request.query:
        cursor = int(request.query["cursor"])
        items = [item for item in items if int(item["id"]) < cursor]
    items = items[: int(request.query.get("limit", "50"))]
    return ok(items, pagination={"cursor": items[-1]["id"] if items else None, "count": len(items)})


@dataclass
class FakeExtended:
    """The venue's state, what it was asked, and scripted answers that take precedence (consumed in order)."""

    balance: dict[str, Any] | None = field(default_factory=lambda: dict(BALANCE))
    trades: list[dict[str, Any]] = field(default_factory=lambda: [trade(i) for i in TRADE_IDS])
    funding: list[dict[str, Any]] = field(
        default_factory=lambda: [funding(8341 - n, 1723147241346 - n * 3_600_000) for n in range(5)]
    )
    scripted: dict[str, list[tuple[int, bytes, dict[str, str]]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    base_url: str = ""

    def script(self, path: str, *answers: tuple[int, bytes | str, dict[str, str]]) -> None:
        self.scripted.setdefault(path, []).extend(
            (status, body.encode() if isinstance(body, str) else body, headers) for status, body, headers in answers
        )

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0911 - one route per return
        if request.headers.get("X-Api-Key") != API_KEY:
            return web.Response(status=401, text='{"status":"ERROR","error":{"code":1006,"message":"Unauthorized"}}')
        if not request.headers.get("User-Agent", "").startswith("statekeeper/"):
            return web.Response(status=400, text="a User-Agent is mandatory")
        path = "/" + request.match_info["tail"]
        self.requests.append((path, dict(request.query)))
        if self.scripted.get(path):
            status, body, headers = self.scripted[path].pop(0)
            return web.Response(status=status, body=body, headers=headers)
        if path == "/user/balance":
            if self.balance is None:
                error = {"status": "ERROR", "error": {"code": "NOT_FOUND", "message": "Balance not found"}}
                return web.Response(status=404, body=orjson.dumps(error), content_type="application/json")
            return ok(self.balance)
        if path == "/user/trades":
            return paginated(self.trades, request)
        if path == "/user/funding/history":
            if "fromTime" not in request.query:
                return web.Response(status=400, text='{"status":"ERROR","error":{"code":400,"message":"fromTime"}}')
            since = int(request.query["fromTime"])
            return paginated([f for f in self.funding if f["paidTime"] >= since], request)
        if path == "/user/positions":
            return ok([POSITION])
        if path == "/user/orders":
            return ok([ORDER])
        if path == "/user/orders/history":
            return paginated([{**ORDER, "status": "FILLED"}], request)
        if path == f"/user/orders/{ORDER['id']}":
            return ok(ORDER)
        if path == "/user/assetOperations":
            return paginated([OPERATION], request)
        if path == "/user/account/info":
            return ok(ACCOUNT)
        return web.Response(status=404, text='{"status":"ERROR","error":{"code":"NOT_FOUND","message":"no route"}}')


class Sleeps:
    """Records the delays the HTTP client asks for, without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def venue() -> AsyncIterator[FakeExtended]:
    fake = FakeExtended()
    app = web.Application()
    app.router.add_get("/api/v1/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.base_url = f"http://127.0.0.1:{port}/api/v1"
    try:
        yield fake
    finally:
        await runner.cleanup()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(venue: FakeExtended, sleeps: Sleeps) -> AsyncIterator[ExtendedRestClient]:
    http = VenueHttpClient(venue="extended", base_url=venue.base_url, sleep=sleeps,
                           retry=RetryPolicy(attempts=3, base_delay=1.0, jitter=0.0))  # fmt: skip
    async with ExtendedRestClient(venue.base_url, SecretStr(API_KEY), http=http) as rest:
        yield rest


# ------------------------------------------------------------------------------------------------- tests


async def test_snapshots_send_the_key_and_user_agent(client: ExtendedRestClient, venue: FakeExtended) -> None:
    balance = await client.balance()
    assert balance.record.balance == Decimal(13500)
    assert orjson.loads(balance.raw) == BALANCE
    positions = await client.positions(market="BTC-USD")
    assert [item.record.position_id for item in positions] == ["1"]
    orders = await client.open_orders()
    assert [item.record.order_id for item in orders] == ["1775511783722512384"]
    assert (await client.order("1775511783722512384")).record.status == "PARTIALLY_FILLED"
    assert (await client.account_info()).record.account_id == "123"
    history = await client.orders_history(limit=10)
    assert [item.record.status for item in history.items] == ["FILLED"]
    operations = await client.asset_operations()
    assert operations.items[0].record.amount == Decimal("-3.0")
    assert [item.record.transfer_id async for item in client.all_asset_operations()] == ["1951255127004282880"]
    assert venue.requests[1] == ("/user/positions", {"market": "BTC-USD"})
    assert venue.paths()[:7] == ["/user/balance", "/user/positions", "/user/orders", "/user/orders/1775511783722512384",
                                 "/user/account/info", "/user/orders/history", "/user/assetOperations"]  # fmt: skip


async def test_a_refused_key_is_fatal_and_never_shown(venue: FakeExtended, sleeps: Sleeps) -> None:
    http = VenueHttpClient(venue="extended", base_url=venue.base_url, sleep=sleeps)
    async with ExtendedRestClient(venue.base_url, SecretStr("wrong-" + API_KEY), http=http) as rest:
        with pytest.raises(FatalVenueError, match="HTTP 401") as info:
            await rest.positions()
        assert "wrong-" not in str(info.value)
        assert API_KEY not in repr(rest)
        assert API_KEY not in repr(http)
    assert venue.requests == []
    assert sleeps.delays == []


async def test_404_balance_is_an_explicit_zero(client: ExtendedRestClient, venue: FakeExtended) -> None:
    venue.balance = None
    zero = await client.balance()
    assert zero.record == Balance(asset="USD", balance=Decimal(0), equity=Decimal(0),
                                  available_for_trade=Decimal(0), available_for_withdrawal=Decimal(0))  # fmt: skip
    assert "Balance not found" in zero.raw  # the venue's answer, kept
    venue.script("/user/balance", (404, "", {}))
    assert (await client.balance()).record.balance == 0


async def test_a_404_that_is_not_the_venue_is_not_zero(client: ExtendedRestClient, venue: FakeExtended) -> None:
    venue.script("/user/balance", (404, "<html><body>Not Found</body></html>", {"Content-Type": "text/html"}))
    with pytest.raises(VenueResponseError, match="not taken as a zero balance"):
        await client.balance()


async def test_429_waits_as_long_as_the_venue_asks(
    client: ExtendedRestClient, venue: FakeExtended, sleeps: Sleeps
) -> None:
    venue.script("/user/positions", (429, "slow down", {"Retry-After": "7"}))
    assert len(await client.positions()) == 1
    assert sleeps.delays == [7.0]
    assert venue.paths() == ["/user/positions", "/user/positions"]


async def test_5xx_then_success(client: ExtendedRestClient, venue: FakeExtended, sleeps: Sleeps) -> None:
    venue.script("/user/orders", (503, "busy", {}), (502, "bad gateway", {}))
    assert len(await client.open_orders()) == 1
    assert sleeps.delays == [1.0, 2.0]


async def test_5xx_forever_is_a_retryable_failure_not_an_empty_answer(
    client: ExtendedRestClient, venue: FakeExtended, sleeps: Sleeps
) -> None:
    venue.script("/user/balance", *[(500, "boom", {})] * 5)
    with pytest.raises(RetryableVenueError, match="failed after 3 attempts") as info:
        await client.balance()
    assert API_KEY not in str(info.value)
    assert len(sleeps.delays) == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>maintenance</html>", "not JSON"),
        (b'{"status":"OK"}', "data: missing"),
        (b'{"status":"OK","data":{"not":"a list"}}', "data: expected an array"),
        (b'{"status":"ERROR","error":{"code":1001,"message":"Invalid request"}}', "ERROR 1001: Invalid request"),
        (b'{"status":"OK","data":[{"id":1,"market":"BTC-USD"}]}', r"data\[0\]\.size: missing"),
    ],
)
async def test_malformed_answers_are_response_errors(
    client: ExtendedRestClient, venue: FakeExtended, body: bytes, reason: str
) -> None:
    venue.script("/user/positions", (200, body, {}))
    with pytest.raises(VenueResponseError, match=reason):
        await client.positions()


async def test_an_unknown_order_is_an_error_not_gone(client: ExtendedRestClient) -> None:
    with pytest.raises(NonRetryableVenueError, match="HTTP 404"):
        await client.order("42")


async def test_trades_over_several_pages(client: ExtendedRestClient, venue: FakeExtended) -> None:
    page = await client.trades(limit=3)
    assert [item.record.fill_id for item in page.items] == [str(i) for i in TRADE_IDS[:3]]
    assert page.cursor == str(TRADE_IDS[2])
    fills = [item.record.fill_id async for item in client.trades_since(None, limit=3)]
    assert fills == [str(i) for i in TRADE_IDS]  # all seven, newest first
    queries = [query for path, query in venue.requests[1:]]
    assert queries == [
        {"limit": "3"},
        {"limit": "3", "cursor": str(TRADE_IDS[2])},
        {"limit": "3", "cursor": str(TRADE_IDS[5])},
        {"limit": "3", "cursor": str(TRADE_IDS[6])},  # a short page is not trusted to be the last: an empty one is
    ]


async def test_trades_since_a_known_id_stop_there(client: ExtendedRestClient, venue: FakeExtended) -> None:
    known = str(TRADE_IDS[4])
    fills = [item.record.fill_id async for item in client.trades_since(known, limit=2)]
    assert fills == [str(i) for i in TRADE_IDS[:4]]
    assert len(venue.requests) == 3  # pages of 2: the third holds the known id; nothing after it is asked for
    assert [item async for item in client.trades_since(str(TRADE_IDS[0]))] == []


async def test_funding_since_a_time(client: ExtendedRestClient, venue: FakeExtended) -> None:
    since = datetime.fromtimestamp(venue.funding[3]["paidTime"] / 1000, UTC)
    payments = [item.record async for item in client.funding_since(since, limit=2)]
    assert [p.payment_id for p in payments] == ["8341", "8340", "8339", "8338"]
    assert payments[0].amount == Decimal("-0.0123")  # the venue's sign, unchanged
    assert venue.requests[0][1] == {"fromTime": str(venue.funding[3]["paidTime"]), "limit": "2"}
    with pytest.raises(ValueError, match="timezone-aware"):
        await client.funding_history(datetime(2026, 1, 1))  # noqa: DTZ001


async def test_a_cursor_that_comes_back_stops_the_iteration(client: ExtendedRestClient, venue: FakeExtended) -> None:
    same = orjson.dumps({"status": "OK", "data": [trade(TRADE_IDS[0])], "pagination": {"cursor": 5, "count": 1}})
    venue.script("/user/trades", (200, same, {}), (200, same, {}), (200, same, {}))
    with pytest.raises(VenueResponseError, match=r"cursor .* came back"):
        _ = [item async for item in client.trades_since(None)]


async def test_the_client_owns_its_http_client_by_default(venue: FakeExtended) -> None:
    async with ExtendedRestClient(venue.base_url, SecretStr(API_KEY)) as rest:
        assert (await rest.account_info()).record.status == "ACTIVE"
    with pytest.raises(ValueError, match="base URL"):
        ExtendedRestClient("http://elsewhere/api/v1", SecretStr(API_KEY),
                           http=VenueHttpClient(venue="extended", base_url=venue.base_url))  # fmt: skip
    with pytest.raises(TypeError, match="SecretStr"):
        ExtendedRestClient(venue.base_url, API_KEY)  # type: ignore[arg-type]
    assert venue.paths() == ["/user/account/info"]
