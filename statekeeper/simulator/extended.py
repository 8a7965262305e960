"""The simulated Extended venue: the v1 account stream and the REST API under ``/api/v1``, as the venue serves them.

Stream (``/stream.extended.exchange/v1/account``): ``X-Api-Key`` and ``User-Agent`` headers; on every connect
three snapshots (ORDER, BALANCE, POSITION with ``isSnapshot: true``) with seq 1, 2, 3, then deltas with seq + 1
per frame across all types; no TRADE snapshot; no funding on the stream; server pings (15 s by default).

REST: the ``{status, data, error, pagination}`` envelope, cursor pagination newest first (the cursor is the last
item's id), ``GET /user/balance`` answering 404 when the balance is zero, ``fromTime`` required on the funding
history. Field names follow the official SDK where docs and SDK disagree (``expiryTime``, ``tpSlType``,
``createdTime`` on orders and trades, ``createdAt``/``updatedAt`` on positions); trades carry ``externalOrderId``
on the stream and ``externalId`` over REST, as in the docs' examples.

Assumption to verify against the live venue: ``fundingFee`` is signed from the account's side (positive: the
account received funding), as a third-party client reads it; Extended's docs only call it the "funding payment
size" and show ``"0"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from statekeeper.events import Balance
from statekeeper.simulator.engine import (
    LEVERAGE,
    ZERO,
    Change,
    ChangeKind,
    ClosedPosition,
    Engine,
    SimAccount,
    SimFill,
    SimFunding,
    SimOrder,
    SimPosition,
    SimTransfer,
    q,
)
from statekeeper.simulator.venue import VenueServer

STREAM_PATH = "/stream.extended.exchange/v1/account"
REST_PREFIX = "/api/v1"
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED", "UNTRIGGERED")
EXPIRY_MS = 30 * 24 * 3600 * 1000
STATUS_REASONS = frozenset({
    "NONE", "UNKNOWN_MARKET", "DISABLED_MARKET", "NOT_ENOUGH_FUNDS", "NO_LIQUIDITY", "INVALID_FEE", "INVALID_QTY",
    "INVALID_PRICE", "INVALID_VALUE", "UNKNOWN_ACCOUNT", "SELF_TRADE_PROTECTION", "POST_ONLY_FAILED",
    "REDUCE_ONLY_FAILED", "INVALID_EXPIRE_TIME", "POSITION_TPSL_CONFLICT", "INVALID_LEVERAGE", "PREV_ORDER_NOT_FOUND",
    "PREV_ORDER_TRIGGERED", "TPSL_OTHER_SIDE_FILLED", "PREV_ORDER_CONFLICT", "ORDER_REPLACED", "POST_ONLY_MODE",
    "REDUCE_ONLY_MODE", "TRADING_OFF_MODE",
})  # fmt: skip
MAX_LIMIT = 10_000


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


class ExtendedServer(VenueServer):
    venue = "extended"
    default_ping_interval = 15.0

    # ------------------------------------------------------------------------------------------ render

    def account_id(self, account: SimAccount) -> int:
        return 3016 + account.number

    def order_json(self, account: SimAccount, order: SimOrder) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": order.order_id,
            "accountId": self.account_id(account),
            "externalId": order.client_id,
            "market": order.market,
            "type": "LIMIT",
            "side": order.side.value,
            "status": order.status,
            "price": str(order.price),
            "averagePrice": None if order.average_price is None else str(order.average_price),
            "qty": str(order.qty),
            "filledQty": str(order.filled),
            "cancelledQty": str(order.remaining if order.status == "CANCELLED" else ZERO),
            "payedFee": str(q(order.fee_paid)),
            "reduceOnly": order.reduce_only,
            "postOnly": order.post_only,
            "createdTime": order.created_ms,
            "updatedTime": order.updated_ms,
            "expiryTime": order.created_ms + EXPIRY_MS,
            "timeInForce": "GTT",
        }
        if order.status_reason in STATUS_REASONS:  # a user's cancel has no reason in Extended's vocabulary
            data["statusReason"] = order.status_reason
        return data

    def trade_json(self, account: SimAccount, fill: SimFill, *, stream: bool) -> dict[str, Any]:
        return {
            "id": fill.fill_id,
            "accountId": self.account_id(account),
            "market": fill.market,
            "orderId": fill.order_id,
            ("externalOrderId" if stream else "externalId"): fill.client_id,
            "side": fill.side.value,
            "price": str(fill.price),
            "qty": str(fill.qty),
            "value": str(fill.value),
            "fee": str(fill.fee),
            "tradeType": self.engine.config.fill_type,
            "createdTime": fill.created_ms,
            "isTaker": fill.is_taker,
        }

    def balance_json(self, balance: Balance) -> dict[str, Any]:
        def s(value: Decimal | None) -> str:
            return str(value if value is not None else ZERO)

        return {
            "collateralName": balance.asset,
            "balance": s(balance.balance),
            "status": balance.status or "ACTIVE",
            "equity": s(balance.equity),
            "availableForTrade": s(balance.available_for_trade),
            "availableForWithdrawal": s(balance.available_for_withdrawal),
            "unrealisedPnl": s(balance.unrealised_pnl),
            "initialMargin": s(balance.initial_margin),
            "marginRatio": s(balance.margin_ratio),
            "updatedTime": _ms(balance.updated_at),
            "exposure": s(balance.exposure),
            "leverage": s(balance.leverage),
        }

    def position_json(self, account: SimAccount, position: SimPosition) -> dict[str, Any]:
        record = self.engine.position_record(position)
        assert record.value is not None
        liquidation = (
            q(position.entry_price * (1 - 1 / LEVERAGE if position.size > 0 else 1 + 1 / LEVERAGE))
            if position.size
            else None
        )
        return {
            "id": position.position_id,
            "accountId": self.account_id(account),
            "market": position.market,
            "status": record.status,
            "side": record.side.value,
            "leverage": str(LEVERAGE),
            "size": str(record.size),
            "value": str(record.value),
            "openPrice": str(position.entry_price),
            "markPrice": str(record.mark_price),
            "liquidationPrice": None if liquidation is None else str(liquidation),
            "margin": str(q(record.value / LEVERAGE)),
            "unrealisedPnl": str(record.unrealised_pnl),
            "realisedPnl": str(record.realised_pnl),
            "adl": 1,
            "createdAt": position.created_ms,
            "updatedAt": position.updated_ms,
        }

    def position_history_json(self, account: SimAccount, closed: ClosedPosition) -> dict[str, Any]:
        return {
            "id": closed.position_id,
            "accountId": self.account_id(account),
            "market": closed.market,
            "side": closed.side.value,
            "leverage": str(LEVERAGE),
            "size": "0",
            "maxPositionSize": str(closed.max_size),
            "openPrice": str(closed.open_price),
            "exitType": "TRADE",
            "exitPrice": str(closed.exit_price),
            "realisedPnl": str(q(closed.realised_pnl - closed.fees + closed.funding)),
            "realisedPnlBreakdown": {
                "tradePnl": str(closed.realised_pnl),
                "fundingFees": str(closed.funding),
                "openFees": str(-closed.fees),
                "closeFees": "0",
            },
            "createdTime": closed.created_ms,
            "closedTime": closed.closed_ms,
        }

    def funding_json(self, account: SimAccount, payment: SimFunding) -> dict[str, Any]:
        return {
            "id": payment.payment_id,
            "accountId": self.account_id(account),
            "market": payment.market,
            "positionId": payment.position_id,
            "side": "LONG" if payment.position_size > 0 else "SHORT",
            "size": str(abs(payment.position_size)),
            "value": str(q(abs(payment.position_size) * payment.mark_price)),
            "markPrice": str(payment.mark_price),
            "fundingFee": str(payment.amount),  # signed from the account's side: negative when it paid
            "fundingRate": str(payment.rate),
            "paidTime": payment.paid_ms,
        }

    def asset_operation_json(self, account: SimAccount, transfer: SimTransfer) -> dict[str, Any]:
        return {
            "id": transfer.tx_hash if transfer.transfer_type == "DEPOSIT" else str(transfer.transfer_id),
            "type": transfer.transfer_type,
            "status": transfer.status,
            "amount": str(transfer.amount),
            "fee": "0",
            "asset": 1,
            "time": transfer.created_ms,
            "accountId": self.account_id(account),
        }

    # ------------------------------------------------------------------------------------------ stream

    def snapshot(self, account: SimAccount) -> list[dict[str, Any]]:
        orders = [self.order_json(account, o) for o in account.open_orders()]
        positions = [self.position_json(account, p) for p in account.positions.values() if p.size != 0]
        balance = self.balance_json(self.engine.balance_of(account))
        ts = self.engine.now_ms
        return [
            {"type": "ORDER", "data": {"isSnapshot": True, "orders": orders}, "ts": ts},
            {"type": "BALANCE", "data": {"isSnapshot": True, "balance": balance}, "ts": ts},
            {"type": "POSITION", "data": {"isSnapshot": True, "positions": positions}, "ts": ts},
        ]

    def messages(self, change: Change) -> list[dict[str, Any]]:
        account = self.engine.accounts[change.account]
        payload = change.payload
        data: dict[str, Any]
        match change.kind:
            case ChangeKind.ORDER:
                assert isinstance(payload, SimOrder)
                kind, data = "ORDER", {"orders": [self.order_json(account, payload)]}
            case ChangeKind.FILL:
                assert isinstance(payload, SimFill)
                kind, data = "TRADE", {"trades": [self.trade_json(account, payload, stream=True)]}
            case ChangeKind.POSITION:
                assert isinstance(payload, SimPosition)
                kind, data = "POSITION", {"positions": [self.position_json(account, payload)]}
            case ChangeKind.BALANCE:
                kind, data = "BALANCE", {"balance": self.balance_json(self.engine.balance_of(account))}
            case ChangeKind.TRANSFER:
                assert isinstance(payload, SimTransfer)
                kind = "DEPOSIT" if payload.transfer_type == "DEPOSIT" else "TRANSFER"
                data = {"deposit": {"assetId": 1, "amount": str(payload.amount), "timestamp": payload.created_ms,
                                    "status": "PROCESSED"}}  # fmt: skip
            case _:
                return []  # funding is not on Extended's stream; busts do not happen there
        data["isSnapshot"] = False
        return [{"type": kind, "data": data, "ts": change.at_ms}]

    @staticmethod
    def number(message: dict[str, Any], seq: int) -> dict[str, Any]:
        return {**message, "seq": seq}

    def credential_of(self, request: web.Request) -> str | None:
        return request.headers.get("X-Api-Key") or request.query.get("X-API-KEY")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        account = self.authenticate(request)
        if account is None:
            return self.error(401, "UNAUTHORIZED", "invalid API key")
        socket, connection = await self.accept(request, account, numbering=self.number)
        # Snapshots first, then deltas: registered in the same instant, so nothing falls between.
        for message in self.snapshot(self.engine.accounts[account]):
            connection.offer(message)
        self.register(connection)
        await self.serve_connection(socket, connection)
        return socket

    # -------------------------------------------------------------------------------------------- REST

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(STREAM_PATH, self.stream),
            web.get(f"{REST_PREFIX}/user/balance", self.rest(self.get_balance)),
            web.get(f"{REST_PREFIX}/user/positions", self.rest(self.get_positions)),
            web.get(f"{REST_PREFIX}/user/positions/history", self.rest(self.get_positions_history)),
            web.get(f"{REST_PREFIX}/user/orders", self.rest(self.get_open_orders)),
            web.get(f"{REST_PREFIX}/user/orders/history", self.rest(self.get_orders_history)),
            web.get(f"{REST_PREFIX}/user/orders/{{order_id}}", self.rest(self.get_order)),
            web.get(f"{REST_PREFIX}/user/trades", self.rest(self.get_trades)),
            web.get(f"{REST_PREFIX}/user/funding/history", self.rest(self.get_funding_history)),
            web.get(f"{REST_PREFIX}/user/assetOperations", self.rest(self.get_asset_operations)),
            web.get(f"{REST_PREFIX}/user/account/info", self.rest(self.get_account_info)),
        ]

    def error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"status": "ERROR", "error": {"code": code, "message": message}}, status=status)

    def ok(self, data: Any, *, pagination: Mapping[str, Any] | None = None) -> web.Response:
        body: dict[str, Any] = {"status": "OK", "data": data}
        if pagination is not None:
            body["pagination"] = pagination
        return self.json(body)

    def page(
        self,
        request: web.Request,
        keyed: list[tuple[int, Any]],
        render: Callable[[Any], dict[str, Any]] | None = None,
    ) -> web.Response:
        """Newest first by id; ``cursor`` is the last id of the previous page; ``limit`` at most 10,000.

        ``render`` turns the chosen items into JSON (only the page's, so a long history costs one page's work).
        """
        try:
            limit = min(int(request.query.get("limit", "100")), MAX_LIMIT)
            cursor = int(request.query["cursor"]) if "cursor" in request.query else None
        except ValueError:
            return self.error(400, "INVALID_PARAMETER", "cursor and limit must be integers")
        if limit <= 0:
            return self.error(400, "INVALID_PARAMETER", "limit must be positive")
        keyed = sorted(keyed, key=lambda pair: pair[0], reverse=True)
        if cursor is not None:
            keyed = [pair for pair in keyed if pair[0] < cursor]
        chosen = keyed[:limit]
        pagination = {"cursor": chosen[-1][0] if chosen else cursor, "count": len(chosen)}
        return self.ok([render(item) if render else item for _, item in chosen], pagination=pagination)

    async def get_balance(self, request: web.Request, account: SimAccount) -> web.Response:
        balance = self.engine.balance_of(account)
        if balance.balance == 0 and balance.equity == 0:
            return self.error(404, "NOT_FOUND", "balance not found")  # the venue's way of saying zero
        return self.ok(self.balance_json(balance))

    async def get_positions(self, request: web.Request, account: SimAccount) -> web.Response:
        market, side = request.query.get("market"), request.query.get("side")
        positions = [
            self.position_json(account, p)
            for p in account.positions.values()
            if p.size != 0 and market in (None, p.market) and side in (None, p.side.value)
        ]
        return self.ok(positions)

    async def get_positions_history(self, request: web.Request, account: SimAccount) -> web.Response:
        market, side = request.query.get("market"), request.query.get("side")
        closed = [
            (c.position_id, self.position_history_json(account, c))
            for c in account.closed_positions
            if market in (None, c.market) and side in (None, c.side.value)
        ]
        return self.page(request, closed)

    async def get_open_orders(self, request: web.Request, account: SimAccount) -> web.Response:
        market, side = request.query.get("market"), request.query.get("side")
        orders = [
            self.order_json(account, o)
            for o in account.open_orders()
            if market in (None, o.market) and side in (None, o.side.value)
        ]
        return self.ok(sorted(orders, key=lambda o: o["id"], reverse=True))

    async def get_order(self, request: web.Request, account: SimAccount) -> web.Response:
        order = self.order_of(request, account)
        if order is None:
            return self.error(404, "NOT_FOUND", "order not found")
        return self.ok(self.order_json(account, order))

    async def get_orders_history(self, request: web.Request, account: SimAccount) -> web.Response:
        market = request.query.get("market")
        orders = [
            (o.order_id, self.order_json(account, o))
            for o in account.orders.values()
            if not o.is_open and market in (None, o.market)
        ]
        return self.page(request, orders)

    async def get_trades(self, request: web.Request, account: SimAccount) -> web.Response:
        market = request.query.get("market")
        trades = [(f.fill_id, f) for f in account.fills if market in (None, f.market)]
        return self.page(request, trades, lambda fill: self.trade_json(account, fill, stream=False))

    async def get_funding_history(self, request: web.Request, account: SimAccount) -> web.Response:
        if "fromTime" not in request.query:
            return self.error(400, "INVALID_PARAMETER", "fromTime is required")
        try:
            since = int(request.query["fromTime"])
        except ValueError:
            return self.error(400, "INVALID_PARAMETER", "fromTime must be epoch milliseconds")
        market = request.query.get("market")
        payments = [
            (p.payment_id, self.funding_json(account, p))
            for p in account.funding
            if p.paid_ms >= since and market in (None, p.market)
        ]
        return self.page(request, payments)

    async def get_asset_operations(self, request: web.Request, account: SimAccount) -> web.Response:
        operations = [(t.transfer_id, self.asset_operation_json(account, t)) for t in account.transfers]
        return self.page(request, operations)

    async def get_account_info(self, request: web.Request, account: SimAccount) -> web.Response:
        return self.ok(
            {
                "status": "ACTIVE",
                "l2Key": f"0x{account.number:064x}",
                "l2Vault": str(100_000 + account.number),
                "accountId": self.account_id(account),
                "accountIndex": account.number - 1,
                "description": account.name,
                "bridgeStarknetAddress": f"0x{account.number:063x}1",
            }
        )


def build(engine: Engine, **kwargs: Any) -> ExtendedServer:
    return ExtendedServer(engine, **kwargs)
