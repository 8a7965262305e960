"""The simulated Paradex venue: the JSON-RPC 2.0 WebSocket at ``/v1`` and the REST API under ``/v1``.

Stream: ``auth`` with a bearer JWT (40110 malformed, 40111 invalid), then ``subscribe`` per channel (a second
subscription to the same channel is an error; unknown methods answer -32601); notifications
``{"jsonrpc": "2.0", "method": "subscription", "params": {"channel": …, "data": {…}}}`` for the subscribed
channels only; no envelope seq and no snapshot on subscribe; server pings every 55 s by default.

REST: ``Authorization: Bearer <jwt>``; lists as ``{"results": […]}``, histories paginated
``{"next", "prev", "results"}`` newest first with an opaque cursor; ``/funding/payments`` requires ``market``.
Amounts are decimal strings; ids are strings; times are epoch milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from statekeeper.simulator.engine import (
    LEVERAGE,
    ZERO,
    Change,
    ChangeKind,
    SimAccount,
    SimFill,
    SimFunding,
    SimOrder,
    SimPosition,
    SimTransfer,
    q,
)
from statekeeper.simulator.server import StreamConnection
from statekeeper.simulator.venue import VenueServer

PREFIX = "/v1"
MAX_PAGE = 5000
PER_MARKET = ("orders", "fills", "funding_payments")  # channels that take a market or ALL
SINGLE = ("account", "positions", "balance_events", "tradebusts", "transaction", "transfers")
NODE_ID = "sim-node-1"


def _address(account: SimAccount) -> str:
    return "0x" + hashlib.sha256(f"paradex/{account.name}".encode()).hexdigest()[:63]


class ParadexServer(VenueServer):
    venue = "paradex"
    default_ping_interval = 55.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rest_seq = itertools.count(1)

    def as_rest(self, item: dict[str, Any]) -> dict[str, Any]:
        """An order, position or account as a REST answer gives it: "WebSocket and REST responses use
        independently generated seq_no per event" (protocols/README 2.6), so REST numbers its own, from 1."""
        item["seq_no"] = next(self._rest_seq)
        return item

    # ------------------------------------------------------------------------------------------ render

    def order_json(self, account: SimAccount, order: SimOrder) -> dict[str, Any]:
        status = {"NEW": "NEW", "PARTIALLY_FILLED": "OPEN"}.get(order.status, "CLOSED")
        reason = "" if order.status in ("NEW", "PARTIALLY_FILLED", "FILLED") else (order.status_reason or "")
        return {
            "id": str(order.order_id),
            "account": _address(account),
            "market": order.market,
            "side": order.side.value,
            "type": "LIMIT",
            "size": str(order.qty),
            "remaining_size": str(order.remaining),
            "price": str(order.price),
            "avg_fill_price": "" if order.average_price is None else str(order.average_price),
            "status": status,
            "created_at": order.created_ms,
            "last_updated_at": order.updated_ms,
            "timestamp": order.created_ms,
            "received_at": order.created_ms,
            "published_at": order.updated_ms,
            "cancel_reason": reason,
            "client_id": order.client_id,
            "seq_no": order.seq_no,
            "instruction": "POST_ONLY" if order.post_only else "GTC",
            "stp": "EXPIRE_MAKER",
            "flags": ["REDUCE_ONLY"] if order.reduce_only else [],
            "trigger_price": "0",
            "request_info": {"id": "", "message": "", "request_type": "", "status": ""},
        }

    def fill_json(self, account: SimAccount, fill: SimFill) -> dict[str, Any]:
        order = account.orders[fill.order_id]
        return {
            "id": str(fill.fill_id),
            "account": _address(account),
            "market": fill.market,
            "order_id": str(fill.order_id),
            "client_id": fill.client_id,
            "side": fill.side.value,
            "liquidity": "TAKER" if fill.is_taker else "MAKER",
            "price": str(fill.price),
            "size": str(fill.qty),
            "remaining_size": str(order.remaining),
            "fee": str(fill.fee),
            "fee_currency": "USDC",
            "fill_type": "FILL",
            "realized_pnl": str(fill.realized_pnl),
            "realized_funding": "0",
            "underlying_price": str(self.engine.marks[fill.market]),
            "flags": [],
            "orderbook_seq_no": fill.fill_id % 1_000_000,
            "created_at": fill.created_ms,
        }

    def position_json(self, account: SimAccount, position: SimPosition) -> dict[str, Any]:
        record = self.engine.position_record(position)
        assert record.value is not None
        cost = q(position.size * position.entry_price)
        liquidation = (
            q(position.entry_price * (1 - 1 / LEVERAGE if position.size > 0 else 1 + 1 / LEVERAGE))
            if position.size
            else ZERO
        )
        return {
            "id": str(position.position_id),
            "account": _address(account),
            "market": position.market,
            "status": "OPEN" if position.size else "CLOSED",
            "side": record.side.value,
            "size": str(position.size),
            "average_entry_price": str(position.entry_price),
            "average_entry_price_usd": str(position.entry_price),
            "average_exit_price": "0",
            "unrealized_pnl": str(record.unrealised_pnl),
            "unrealized_funding_pnl": "0",
            "cost": str(cost),
            "cost_usd": str(cost),
            "cached_funding_index": str(self.engine.funding_index[position.market]),
            "last_fill_id": "",
            "seq_no": position.seq_no,
            "liquidation_price": str(liquidation),
            "leverage": str(LEVERAGE),
            "realized_positional_pnl": str(q(position.realised_pnl)),
            "realized_positional_funding_pnl": "0",
            "created_at": position.created_ms,
            "last_updated_at": position.updated_ms,
            "closed_at": 0 if position.size else position.updated_ms,
        }

    def account_json(self, account: SimAccount, seq_no: int | None = None) -> dict[str, Any]:
        summary = self.engine.summary_of(account)
        assert summary.updated_at is not None

        def s(value: Any) -> str:
            return str(value if value is not None else ZERO)

        return {
            "account": _address(account),
            "account_value": s(summary.equity),
            "free_collateral": s(summary.free_collateral),
            "initial_margin_requirement": s(summary.initial_margin),
            "maintenance_margin_requirement": s(summary.maintenance_margin),
            "margin_cushion": s(summary.margin_cushion),
            "total_collateral": s(summary.total_collateral),
            "settlement_asset": "USDC",
            "status": "ACTIVE",
            "seq_no": account.summary_seq_no if seq_no is None else seq_no,
            "updated_at": int(summary.updated_at.timestamp() * 1000),
        }

    def balance_event_json(self, account: SimAccount, fill: SimFill) -> dict[str, Any]:
        after = q(fill.wallet_after)
        return {
            "type": "TRANSACTION_FILL",
            "fill_id": str(fill.fill_id),
            "market": fill.market,
            "status": "ON_BLOCKCHAIN",
            "settlement_asset_name": "USDC",
            "settlement_asset_address": "0x" + "0" * 62 + "1",
            "settlement_asset_balance_before": str(q(after - fill.realized_pnl + fill.fee)),
            "settlement_asset_balance_after": str(after),
            "settlement_asset_price": "1",
            "funding_index": str(self.engine.funding_index[fill.market]),
            "realized_pnl": str(fill.realized_pnl),
            "fees": str(fill.fee),
            "realized_funding": "0",
            "created_at": fill.created_ms,
        }

    def funding_json(self, account: SimAccount, payment: SimFunding) -> dict[str, Any]:
        return {
            "id": str(payment.payment_id),
            "account": _address(account),
            "market": payment.market,
            "payment": str(payment.amount),  # signed from the account's side: negative when it paid
            "index": str(payment.funding_index),
            "fill_id": "",
            "created_at": payment.paid_ms,
        }

    def transfer_json(self, account: SimAccount, transfer: SimTransfer) -> dict[str, Any]:
        return {
            "id": str(transfer.transfer_id),
            "account": _address(account),
            "kind": transfer.transfer_type,
            "direction": "IN" if transfer.amount >= 0 else "OUT",
            "status": transfer.status,
            "token": "USDC",
            "amount": str(abs(transfer.amount)),
            "bridge": "STARKGATE",
            "counterparty": _address(account),
            "external_account": _address(account),
            "external_chain": "ETHEREUM",
            "external_txn_hash": transfer.tx_hash,
            "txn_hash": transfer.tx_hash,
            "auto_withdrawal_fee": "0",
            "socialized_loss_factor": "0",
            "failure_reason": "",
            "vault_address": "",
            "vault_unwind_completion_percentage": "0",
            "created_at": transfer.created_ms,
            "last_updated_at": transfer.updated_ms,
        }

    def tradebust_json(self, account: SimAccount, fill: SimFill) -> dict[str, Any]:
        return {"account": _address(account), "busted_fill_id": str(fill.fill_id), "created_at": fill.busted_ms}

    # ------------------------------------------------------------------------------------------ stream

    def notifications(self, change: Change) -> list[tuple[str, str | None, dict[str, Any]]]:  # noqa: PLR0911
        """(channel family, market or None, data) for each notification that publishes ``change``."""
        account = self.engine.accounts[change.account]
        payload = change.payload
        match change.kind:
            case ChangeKind.ORDER:
                assert isinstance(payload, SimOrder)
                return [("orders", payload.market, self.order_json(account, payload))]
            case ChangeKind.FILL:
                assert isinstance(payload, SimFill)
                return [
                    ("fills", payload.market, self.fill_json(account, payload)),
                    ("balance_events", None, self.balance_event_json(account, payload)),
                ]
            case ChangeKind.POSITION:
                assert isinstance(payload, SimPosition)
                return [("positions", None, self.position_json(account, payload))]
            case ChangeKind.BALANCE:
                return [("account", None, self.account_json(account, change.seq_no))]
            case ChangeKind.FUNDING:
                assert isinstance(payload, SimFunding)
                return [("funding_payments", payload.market, self.funding_json(account, payload))]
            case ChangeKind.TRANSFER:
                assert isinstance(payload, SimTransfer)
                return [("transfers", None, self.transfer_json(account, payload))]
            case ChangeKind.BUST:
                assert isinstance(payload, SimFill)
                return [("tradebusts", None, self.tradebust_json(account, payload))]

    def messages(self, change: Change) -> list[dict[str, Any]]:
        raise NotImplementedError("Paradex publishes per subscription: see publish()")

    def frames_for(self, change: Change) -> int:
        return len(self.notifications(change))

    def publish(self, changes: Any) -> None:
        for change in changes:
            targets = self.connections.get(change.account)
            if not targets:
                continue
            for family, market, data in self.notifications(change):
                for connection in targets:
                    channel = self._subscribed(connection, family, market)
                    if channel is not None:
                        connection.offer(
                            {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
                        )

    @staticmethod
    def _subscribed(connection: StreamConnection, family: str, market: str | None) -> str | None:
        if market is None:
            return family if family in connection.channels else None
        for channel in (f"{family}.{market}", f"{family}.ALL"):
            if channel in connection.channels:
                return channel
        return None

    def credential_of(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        return header.removeprefix("Bearer ").strip() or None

    async def stream(self, request: web.Request) -> web.StreamResponse:
        socket, connection = await self.accept(request, "", numbering=None)
        await self.serve_connection(socket, connection)
        return socket

    def _answer(self, connection: StreamConnection, request_id: Any, *, result: Any = None,
                error: tuple[int, str] | None = None) -> None:  # fmt: skip
        now_ns = time.time_ns()
        message: dict[str, Any] = {"jsonrpc": "2.0"}
        if error is not None:
            message["error"] = {"code": error[0], "message": error[1]}
            message.update({"usIn": now_ns // 1000, "usOut": now_ns // 1000 + 37, "usDiff": 37})
        else:
            message["result"] = result
            message.update({"usIn": now_ns // 1000, "usDiff": 1291})
        message["id"] = request_id
        connection.offer(message, faults=False)

    async def on_text(self, connection: StreamConnection, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._answer(connection, None, error=(-32700, "Parse error"))
            return
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            self._answer(connection, None, error=(-32600, "Invalid Request"))
            return
        request_id = request.get("id")
        raw_params = request.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        method = request["method"]
        if method == "auth":
            self._auth(connection, request_id, params.get("bearer"))
        elif method in ("subscribe", "unsubscribe"):
            self._subscription(connection, request_id, method, params.get("channel"))
        else:
            self._answer(connection, request_id, error=(-32601, "method does not exist"))

    def _auth(self, connection: StreamConnection, request_id: Any, bearer: Any) -> None:
        if not isinstance(bearer, str) or bearer.count(".") != 2:
            self._answer(connection, request_id, error=(40110, "Malformed Bearer Token"))
            return
        account = self.accounts_by_credential.get(bearer)
        if account is None:
            self._answer(connection, request_id, error=(40111, "Invalid Bearer Token"))
            return
        if connection.account and connection.account != account:
            self._answer(connection, request_id, error=(40111, "Invalid Bearer Token"))
            return
        self._answer(connection, request_id, result={"node_id": NODE_ID})
        if not connection.account:
            connection.account = account
            self.register(connection)

    def _subscription(self, connection: StreamConnection, request_id: Any, method: str, channel: Any) -> None:
        if not connection.account:
            self._answer(connection, request_id, error=(40100, "authentication required"))
            return
        if not isinstance(channel, str) or not self._known(channel):
            self._answer(connection, request_id, error=(-32602, f"invalid channel {channel!r}"))
            return
        if method == "subscribe":
            if channel in connection.channels:
                self._answer(connection, request_id, error=(-32600, f"already subscribed to {channel}"))
                return
            connection.channels.add(channel)
        else:
            connection.channels.discard(channel)
        self._answer(connection, request_id, result={"channel": channel})

    def _known(self, channel: str) -> bool:
        family, _, market = channel.partition(".")
        if family in SINGLE:
            return not market
        return family in PER_MARKET and (market == "ALL" or market in self.engine.markets)

    # -------------------------------------------------------------------------------------------- REST

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX, self.stream),
            web.get(f"{PREFIX}/balance", self.rest(self.get_balance)),
            web.get(f"{PREFIX}/positions", self.rest(self.get_positions)),
            web.get(f"{PREFIX}/orders", self.rest(self.get_open_orders)),
            web.get(f"{PREFIX}/orders-history", self.rest(self.get_orders_history)),
            web.get(f"{PREFIX}/orders/{{order_id}}", self.rest(self.get_order)),
            web.get(f"{PREFIX}/fills", self.rest(self.get_fills)),
            web.get(f"{PREFIX}/funding/payments", self.rest(self.get_funding_payments)),
            web.get(f"{PREFIX}/account", self.rest(self.get_account)),
            web.get(f"{PREFIX}/transfers", self.rest(self.get_transfers)),
            web.get(f"{PREFIX}/tradebusts", self.rest(self.get_tradebusts)),
            web.get(f"{PREFIX}/transactions", self.rest(self.get_transactions)),
        ]

    def error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": code, "message": message}, status=status)

    def page(self, request: web.Request, keyed: list[tuple[int, int, dict[str, Any]]]) -> web.Response:
        """Newest first; ``keyed`` is (time ms, id, item); filters start_at/end_at; an opaque cursor."""
        try:
            size = min(int(request.query.get("page_size", "100")), MAX_PAGE)
            start = int(request.query.get("start_at", "0"))
            end = int(request.query.get("end_at", str(2**62)))
            after = _decode_cursor(request.query["cursor"]) if request.query.get("cursor") else None
        except ValueError:
            return self.error(400, "VALIDATION_ERROR", "invalid pagination parameters")
        if size <= 0:
            return self.error(400, "VALIDATION_ERROR", "page_size must be positive")
        rows = sorted((k for k in keyed if start <= k[0] <= end), key=lambda k: (k[0], k[1]), reverse=True)
        if after is not None:
            rows = [k for k in rows if (k[0], k[1]) < after]
        chosen, more = rows[:size], len(rows) > size
        cursor = _encode_cursor(chosen[-1][0], chosen[-1][1]) if more and chosen else None
        body = {"next": cursor, "prev": request.query.get("cursor") or None, "results": [k[2] for k in chosen]}
        return self.json(body)

    async def get_balance(self, request: web.Request, account: SimAccount) -> web.Response:
        return self.json({"results": [{
            "token": "USDC", "size": str(q(account.wallet)), "last_updated_at": account.balance_updated_ms,
        }]})  # fmt: skip

    async def get_positions(self, request: web.Request, account: SimAccount) -> web.Response:
        results = [self.as_rest(self.position_json(account, p)) for p in account.positions.values() if p.size != 0]
        return self.json({"results": results})

    async def get_open_orders(self, request: web.Request, account: SimAccount) -> web.Response:
        market = request.query.get("market")
        results = [
            self.as_rest(self.order_json(account, o)) for o in account.open_orders() if market in (None, o.market)
        ]
        return self.json({"results": sorted(results, key=lambda o: int(o["id"]), reverse=True)})

    async def get_order(self, request: web.Request, account: SimAccount) -> web.Response:
        order = self.order_of(request, account)
        if order is None:
            return self.error(404, "ORDER_NOT_FOUND", "order not found")
        return self.json(self.as_rest(self.order_json(account, order)))

    async def get_orders_history(self, request: web.Request, account: SimAccount) -> web.Response:
        market = request.query.get("market")
        keyed = [(o.updated_ms, o.order_id, self.as_rest(self.order_json(account, o)))
                 for o in account.orders.values() if not o.is_open and market in (None, o.market)]  # fmt: skip
        return self.page(request, keyed)

    async def get_fills(self, request: web.Request, account: SimAccount) -> web.Response:
        market = request.query.get("market")
        keyed = [(f.created_ms, f.fill_id, self.fill_json(account, f)) for f in account.fills
                 if market in (None, f.market)]  # fmt: skip
        return self.page(request, keyed)

    async def get_funding_payments(self, request: web.Request, account: SimAccount) -> web.Response:
        market = request.query.get("market")
        if not market:
            return self.error(400, "VALIDATION_ERROR", "market is required")
        keyed = [(p.paid_ms, p.payment_id, self.funding_json(account, p)) for p in account.funding
                 if p.market == market]  # fmt: skip
        return self.page(request, keyed)

    async def get_account(self, request: web.Request, account: SimAccount) -> web.Response:
        return self.json(self.as_rest(self.account_json(account)))

    async def get_transfers(self, request: web.Request, account: SimAccount) -> web.Response:
        keyed = [(t.updated_ms, t.transfer_id, self.transfer_json(account, t)) for t in account.transfers]
        return self.page(request, keyed)

    async def get_transactions(self, request: web.Request, account: SimAccount) -> web.Response:
        """The on-chain settlement of each fill: accepted, or reverted when the fill was busted."""
        keyed = [
            (f.created_ms, f.fill_id, {
                "id": str(f.fill_id),
                "type": "TRANSACTION_FILL",
                "state": "REVERTED" if f.busted else "ACCEPTED_ON_L2",
                "hash": "0x" + hashlib.sha256(f"tx/{f.fill_id}".encode()).hexdigest()[:63],
                "created_at": f.created_ms,
                "completed_at": f.busted_ms if f.busted else f.created_ms + 1500,
            })
            for f in account.fills
        ]  # fmt: skip
        return self.page(request, keyed)

    async def get_tradebusts(self, request: web.Request, account: SimAccount) -> web.Response:
        keyed = [(f.busted_ms or 0, f.fill_id, self.tradebust_json(account, f)) for f in account.fills if f.busted]
        return self.page(request, keyed)


def _encode_cursor(at_ms: int, item_id: int) -> str:
    return base64.urlsafe_b64encode(f"{at_ms}:{item_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        at_ms, _, item_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        return int(at_ms), int(item_id)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("invalid cursor") from None
