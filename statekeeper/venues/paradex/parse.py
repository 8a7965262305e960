"""Paradex frames and REST answers to canonical events and records. Pure: no I/O, no asyncio.

:func:`parse_frame` is total (it returns a :class:`~statekeeper.venues.base.FrameRejection` instead of raising);
the REST parsers raise :class:`~statekeeper.venues.errors.VenueResponseError` and nothing else on bad input, and
never return an empty result for a failure.

Decisions, with where they come from (``protocols/README.md`` section 2 unless said otherwise):

* **Keys.** Paradex numbers no frame, so every notification gets a :func:`~statekeeper.events.natural_key`
  built from the venue's own ids and nothing local: the same notification received twice (on two connections,
  or after a reconnect) is one event with one content hash. Orders ``("order", id, seq_no)``, fills
  ``("fill", id, fill_type)`` (ids are unique per fill type), positions ``("position", id, seq_no)``, account
  ``("account", seq_no)``, balance events ``("balance_event", fill_id, type, status)``, funding
  ``("funding", id)``, transfers ``("transfer", id, status, last_updated_at)``, tradebusts
  ``("tradebust", busted_fill_id)``, transactions ``("transaction", id, state)``. Where a ``seq_no`` (or a fill
  id) is missing the key falls back to the entity's time, tagged ``"at"`` so it can never equal a seq key:
  ``("order", id, "at", last_updated_at_ms, status, remaining_size)``, ``("position", id, "at", ms)``,
  ``("account", "at", ms)``, ``("balance_event", "at", created_at_ms, type, status)``.
* **JSON-RPC answers** (``{"id", "result"}`` or ``{"id", "error"}``) become ``protocol`` events keyed by
  ``("rpc", session, id)`` (``("rpc", session, "sha256", <digest>)`` without an id): request ids restart on
  every connection, so the session belongs in their key. Their ``venue_time`` is ``usIn``, the server's receive
  time in microseconds; the docs' auth and subscribe examples carry 19-digit values that only make sense as
  nanoseconds, so a value of 10**17 or more is read as nanoseconds. Without a usable ``usIn`` the local receive
  time stands in.
* **venue_time** of a notification is the entity's ``last_updated_at`` (orders, positions, transfers),
  ``updated_at`` (account) or ``created_at`` (fills, balance events, funding, tradebusts); transactions use
  ``completed_at`` once set, else ``created_at``.
* **Fill types.** The REST enum calls ``UNWIND_TRANSFER`` ``TRANSFER`` (section 2.5): the canonical fill type is
  the stream's name, so the same fill from the stream and from a REST backfill has one key ``(id, fill_type)``.
* **Orders.** ``filled_qty`` is ``size - remaining_size``, computed exactly (no decimal context rounding).
  ``price`` ``"0"`` of a market-type order, ``trigger_price`` ``"0"`` and ``avg_fill_price`` ``""``/``"0"``
  mean "none". ``instruction`` is kept as ``time_in_force``; POST_ONLY sets ``post_only``; the REDUCE_ONLY
  flag sets ``reduce_only``; ``cancel_reason`` is ``status_reason``; ``seq_no`` is ``venue_seq``.
* **Positions.** ``size`` is signed on the wire (negative short) in the spec; third-party captures show an
  unsigned size beside ``side``. The canonical size is the absolute value and the side is ``side`` (from the
  sign when ``side`` is absent); a negative size said to be LONG is a contradiction and is rejected.
  ``realized_positional_pnl`` is ``realised_pnl`` (captured answers spell it ``realized_pnl``).
* **Funding.** Paradex's ``payment`` is the account's funding PnL, the same sign as a fill's
  ``realized_funding`` (the funding docs define it as ``-size x (index delta)``: negative when a long pays),
  which is statekeeper's convention (negative = the account paid). It is kept as it comes, never flipped.
  Payments that name a ``fill_id`` are the same money as that fill's ``realized_funding``.
* **Transfers.** ``amount`` arrives unsigned with ``direction`` IN/OUT; the canonical amount is signed
  (OUT negative). Answers without ``direction`` fall back to the kind (DEPOSIT/AIRDROP in,
  WITHDRAWAL/AUTO_WITHDRAWAL out); vault and unwinding kinds then need ``direction`` and are rejected.
* **Balance events** carry the settlement asset's balance after the change: one :class:`Balance`.
* Values kept as received but not modeled: orders' ``stp``, ``timestamp``, ``received_at``, ``published_at``,
  ``request_info``, ``account``; fills' ``remaining_size``, ``underlying_price``, ``flags``,
  ``orderbook_seq_no``; positions' cost, USD prices, exit price, funding index and PnL split; balance events'
  before-balance, price, index, PnL and fees; account's ``account``, ``last_seen_notification``; transfers'
  bridge and counterparty details. All of it stays in ``Event.raw``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact
from typing import Any, Final, TypeVar

from pydantic import JsonValue

from statekeeper.events import (
    AccountBody,
    AccountSummary,
    Balance,
    BalanceBody,
    BalanceScope,
    Body,
    Event,
    Fill,
    FillBody,
    FillBust,
    FillBustBody,
    FundingBody,
    FundingPayment,
    Order,
    OrderBody,
    Position,
    PositionBody,
    PositionSide,
    ProtocolMessage,
    Side,
    Transfer,
    TransferBody,
    VenueMessage,
    natural_key,
)
from statekeeper.venues.base import FrameContext, Item, Page, ParseOutcome, parse_frame_with
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.paradex.wire import (
    FLAG_REDUCE_ONLY,
    INSTRUCTION_POST_ONLY,
    MARKET_ORDER_TYPES,
    TRANSFER_KIND_DIRECTIONS,
    VENUE,
    ChannelFamily,
    Liquidity,
    Method,
    PositionStatus,
    TransferDirection,
    channel_family,
)
from statekeeper.venues.wire import (
    NeedsExactNumbers,
    WireError,
    amount,
    arr,
    dump_item,
    field,
    integer,
    obj,
    optional_amount,
    optional_text,
    optional_timestamp,
    parse_json_with,
    text,
    venue_id,
)

T = TypeVar("T")

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
NANOSECONDS_FROM: Final = 10**17
"""``usIn`` at or above this is nanoseconds (10**17 microseconds is the year 5138)."""
MAX_SEQ_NO: Final = 2**63 - 1
"""A ``seq_no`` must fit a signed BIGINT (Paradex's look like nanosecond times: about 1.7e18)."""
MAX_EXACT_DIGITS: Final = 200
"""Exact arithmetic on amounts needing more digits than this is refused instead of exhausting memory."""
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what the event log's JSON encoder can write as a number
_SHOW: Final = 60
_UNESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# --------------------------------------------------------------------------------------------- stream


def parse_frame(raw: str | bytes, ctx: FrameContext) -> ParseOutcome:
    """One frame of the Paradex stream: a notification or a JSON-RPC answer. Never raises."""
    return parse_frame_with(raw, lambda data, frame_text: _frame_event(data, frame_text, ctx))


def _frame_event(data: Any, frame_text: str, ctx: FrameContext) -> Event:
    if "\\u0000" in frame_text and _UNESCAPED_NUL.search(frame_text):
        raise WireError("frame contains a NUL character (\\u0000), which the event log cannot store")
    message = obj(data, "frame")
    if "method" in message:
        body, key, venue_time = _notification(message)
    elif "result" in message or "error" in message:
        body, key, venue_time = _rpc_answer(message, frame_text, ctx)
    else:
        raise WireError("frame: neither a notification (method) nor a JSON-RPC answer (result or error)")
    return Event(
        account=ctx.account,
        venue=ctx.venue,
        source=ctx.source,
        body=body,
        venue_time=venue_time,
        received_at=ctx.received_at,
        session=ctx.session,
        key=key,
        raw=frame_text,
    )


Mapped = tuple[Body, str, datetime]


def _notification(message: Mapping[str, Any]) -> Mapped:
    method = message.get("method")
    if method != Method.SUBSCRIPTION:
        raise WireError(f"frame.method: expected 'subscription', got {_show(method)}")
    params = obj(field(message, "params", where="frame"), "frame.params")
    channel = text(field(params, "channel", where="frame.params"), "frame.params.channel")
    family = channel_family(channel)
    if family is None:
        raise WireError(f"unknown channel {_show(channel)}")
    data = obj(field(params, "data", where="frame.params"), "frame.params.data")
    return _NOTIFICATIONS[family](data, f"{family.value} data")


def _order_notification(data: Mapping[str, Any], where: str) -> Mapped:
    order = order_record(data, where)
    if order.venue_seq is not None:
        key = natural_key("order", order.order_id, order.venue_seq)
    else:
        key = natural_key("order", order.order_id, "at", _ms(order.updated_at), order.status, str(order.remaining_qty))
    return OrderBody(orders=(order,)), key, order.updated_at


def _fill_notification(data: Mapping[str, Any], where: str) -> Mapped:
    fill = fill_record(data, where)
    return FillBody(fills=(fill,)), natural_key("fill", fill.fill_id, fill.fill_type), fill.created_at


def _position_notification(data: Mapping[str, Any], where: str) -> Mapped:
    position = position_record(data, where)
    position_id = position.position_id
    if position_id is None:
        raise WireError(f"{where}.id: missing")
    if position.venue_seq is not None:
        key = natural_key("position", position_id, position.venue_seq)
    else:
        key = natural_key("position", position_id, "at", _ms(position.updated_at))
    return PositionBody(positions=(position,)), key, position.updated_at


def _account_notification(data: Mapping[str, Any], where: str) -> Mapped:
    summary = account_record(data, where)
    assert summary.updated_at is not None  # account_record requires it
    if summary.venue_seq is not None:
        key = natural_key("account", summary.venue_seq)
    else:
        key = natural_key("account", "at", _ms(summary.updated_at))
    return AccountBody(summary=summary), key, summary.updated_at


def _balance_event_notification(data: Mapping[str, Any], where: str) -> Mapped:
    balance = balance_event_record(data, where)
    assert balance.updated_at is not None  # balance_event_record requires it
    event_type = _opt_text(data, "type", where) or ""
    status = _opt_text(data, "status", where) or ""
    fill_id = _opt_id(data, "fill_id", where)
    if fill_id is not None:
        key = natural_key("balance_event", fill_id, event_type, status)
    else:
        key = natural_key("balance_event", "at", _ms(balance.updated_at), event_type, status)
    return BalanceBody(balances=(balance,), scope=BalanceScope.TOKEN), key, balance.updated_at


def _funding_notification(data: Mapping[str, Any], where: str) -> Mapped:
    payment = funding_record(data, where)
    return FundingBody(payments=(payment,)), natural_key("funding", payment.payment_id), payment.paid_at


def _transfer_notification(data: Mapping[str, Any], where: str) -> Mapped:
    transfer = transfer_record(data, where)
    key = natural_key("transfer", transfer.transfer_id, transfer.status, _ms(transfer.updated_at))
    return TransferBody(transfers=(transfer,)), key, transfer.updated_at


def _tradebust_notification(data: Mapping[str, Any], where: str) -> Mapped:
    bust = tradebust_record(data, where)
    return FillBustBody(busts=(bust,)), natural_key("tradebust", bust.fill_id), bust.busted_at


def _transaction_notification(data: Mapping[str, Any], where: str) -> Mapped:
    transaction_id = _id(data, "id", where)
    state = _text(data, "state", where)
    created_at = _time(data, "created_at", where)
    completed_at = _opt_time(data, "completed_at", where)
    updated_at = completed_at or created_at
    body = VenueMessage(message_type="transaction", data=_json_value(data, where), updated_at=updated_at)
    return body, natural_key("transaction", transaction_id, state), updated_at


_NOTIFICATIONS: Final[dict[ChannelFamily, Callable[[Mapping[str, Any], str], Mapped]]] = {
    ChannelFamily.ORDERS: _order_notification,
    ChannelFamily.FILLS: _fill_notification,
    ChannelFamily.POSITIONS: _position_notification,
    ChannelFamily.ACCOUNT: _account_notification,
    ChannelFamily.BALANCE_EVENTS: _balance_event_notification,
    ChannelFamily.FUNDING_PAYMENTS: _funding_notification,
    ChannelFamily.TRANSFERS: _transfer_notification,
    ChannelFamily.TRADEBUSTS: _tradebust_notification,
    ChannelFamily.TRANSACTION: _transaction_notification,
}


def _rpc_answer(message: Mapping[str, Any], frame_text: str, ctx: FrameContext) -> Mapped:
    request_id = _rpc_id(message.get("id"))
    error = message.get("error")
    if error is not None:
        details = obj(error, "frame.error")
        message_text = details.get("message")
        if message_text is not None and not isinstance(message_text, str):
            raise WireError(f"frame.error.message: expected a string, got {type(message_text).__name__}")
        body = ProtocolMessage(
            request_id=request_id,
            error_code=_error_code(details.get("code")),
            error_message=message_text,
            error_data=_json_value(details.get("data"), "frame.error.data"),
        )
    else:
        body = ProtocolMessage(request_id=request_id, result=_json_value(message.get("result"), "frame.result"))
    if request_id is not None:
        key = natural_key("rpc", str(ctx.session), request_id)
    else:
        digest = hashlib.sha256(frame_text.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]
        key = natural_key("rpc", str(ctx.session), "sha256", digest)
    return body, key, _rpc_time(message.get("usIn")) or ctx.received_at


def _rpc_id(value: Any) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise WireError("frame.id: expected a number or a string, got a boolean")
    if isinstance(value, float):
        raise NeedsExactNumbers("frame.id")
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, Decimal):
        return str(value)
    raise WireError(f"frame.id: expected a number or a string, got {type(value).__name__}")


def _error_code(value: Any) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise WireError("frame.error.code: expected a number, got a boolean")
    if isinstance(value, float):
        raise NeedsExactNumbers("frame.error.code")
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, Decimal):
        return str(value)
    raise WireError(f"frame.error.code: expected a number, got {type(value).__name__}")


def _rpc_time(value: Any) -> datetime | None:
    """``usIn`` as a time: microseconds, or nanoseconds at and above :data:`NANOSECONDS_FROM`."""
    if isinstance(value, float):
        raise NeedsExactNumbers("frame.usIn")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    micros = value // 1000 if value >= NANOSECONDS_FROM else value
    try:
        return EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None


# -------------------------------------------------------------------------------------------- records


def order_record(data: Mapping[str, Any], where: str) -> Order:
    """An ``OrderResp`` (``orders.*`` and the ``/orders`` endpoints)."""
    order_type = _text(data, "type", where)
    qty = _amount(data, "size", where)
    remaining = _amount(data, "remaining_size", where)
    filled = _exact_difference(qty, remaining, f"{where}.size - remaining_size")
    if filled < 0:
        raise WireError(f"{where}.remaining_size {remaining} exceeds size {qty}")
    price = _opt_amount(data, "price", where)
    if price is not None and price == 0 and order_type in MARKET_ORDER_TYPES:
        price = None
    instruction = _opt_text(data, "instruction", where)
    flags = _flags(data, where)
    return Order(
        order_id=_id(data, "id", where),
        client_order_id=_opt_text(data, "client_id", where),
        market=_text(data, "market", where),
        side=_side(data, where),
        order_type=order_type,
        status=_text(data, "status", where),
        status_reason=_opt_text(data, "cancel_reason", where),
        price=price,
        average_price=_nonzero(_opt_amount(data, "avg_fill_price", where)),
        qty=qty,
        filled_qty=filled,
        remaining_qty=remaining,
        trigger_price=_nonzero(_opt_amount(data, "trigger_price", where)),
        reduce_only=None if flags is None else FLAG_REDUCE_ONLY in flags,
        post_only=None if instruction is None else instruction == INSTRUCTION_POST_ONLY,
        time_in_force=instruction,
        created_at=_opt_time(data, "created_at", where),
        updated_at=_time(data, "last_updated_at", where, fallback="created_at"),
        venue_seq=_seq_no(data, where),
    )


FILL_TYPE_ALIASES: Final = {"TRANSFER": "UNWIND_TRANSFER"}
"""The REST enum's names for the stream's fill types: one fill, whichever way it came, is one row."""


def _fill_type(data: Mapping[str, Any], where: str) -> str:
    fill_type = _text(data, "fill_type", where)
    return FILL_TYPE_ALIASES.get(fill_type, fill_type)


def fill_record(data: Mapping[str, Any], where: str) -> Fill:
    """A ``FillResult`` (``fills.*`` and ``/fills``)."""
    return Fill(
        fill_id=_id(data, "id", where),
        fill_type=_fill_type(data, where),
        order_id=_opt_id(data, "order_id", where),
        client_order_id=_opt_text(data, "client_id", where),
        market=_text(data, "market", where),
        side=_side(data, where),
        price=_amount(data, "price", where),
        qty=_amount(data, "size", where),
        fee=_amount(data, "fee", where),
        fee_asset=_opt_text(data, "fee_currency", where),
        is_taker=_is_taker(data, where),
        realized_pnl=_opt_amount(data, "realized_pnl", where),
        realized_funding=_opt_amount(data, "realized_funding", where),
        created_at=_time(data, "created_at", where),
    )


def position_record(data: Mapping[str, Any], where: str) -> Position:
    """A ``PositionResp`` (``positions`` and ``/positions``): absolute size, direction in ``side``."""
    signed_size = _amount(data, "size", where)
    stated = _opt_text(data, "side", where)
    if stated is None:
        side = PositionSide.SHORT if signed_size < 0 else PositionSide.LONG
    else:
        try:
            side = PositionSide(stated)
        except ValueError:
            raise WireError(f"{where}.side: {_show(stated)} is not LONG or SHORT") from None
        if signed_size < 0 and side is PositionSide.LONG:
            raise WireError(f"{where}: a negative size ({signed_size}) cannot be a LONG position")
    return Position(
        position_id=_opt_id(data, "id", where),
        market=_text(data, "market", where),
        side=side,
        size=signed_size.copy_abs(),
        entry_price=_opt_amount(data, "average_entry_price", where),
        liquidation_price=_opt_amount(data, "liquidation_price", where),
        unrealised_pnl=_opt_amount(data, "unrealized_pnl", where),
        realised_pnl=_first_amount(data, where, "realized_positional_pnl", "realized_pnl"),
        leverage=_opt_amount(data, "leverage", where),
        status=_opt_text(data, "status", where),
        created_at=_opt_time(data, "created_at", where),
        updated_at=_time(data, "last_updated_at", where, fallback="created_at"),
        venue_seq=_seq_no(data, where),
    )


def account_record(data: Mapping[str, Any], where: str) -> AccountSummary:
    """An ``AccountSummaryResponse`` (``account`` and ``/account``)."""
    return AccountSummary(
        equity=_amount(data, "account_value", where),
        free_collateral=_opt_amount(data, "free_collateral", where),
        initial_margin=_opt_amount(data, "initial_margin_requirement", where),
        maintenance_margin=_opt_amount(data, "maintenance_margin_requirement", where),
        total_collateral=_opt_amount(data, "total_collateral", where),
        margin_cushion=_opt_amount(data, "margin_cushion", where),
        settlement_asset=_opt_text(data, "settlement_asset", where),
        status=_opt_text(data, "status", where),
        updated_at=_time(data, "updated_at", where),
        venue_seq=_seq_no(data, where),
    )


def balance_event_record(data: Mapping[str, Any], where: str) -> Balance:
    """A ``BalanceEventResponse``: the settlement asset's balance after the change."""
    return Balance(
        asset=_text(data, "settlement_asset_name", where),
        balance=_amount(data, "settlement_asset_balance_after", where),
        updated_at=_time(data, "created_at", where),
    )


def balance_record(data: Mapping[str, Any], where: str) -> Balance:
    """One entry of ``/balance``: ``{token, size, last_updated_at, …}``."""
    return Balance(
        asset=_text(data, "token", where),
        balance=_amount(data, "size", where),
        updated_at=_opt_time(data, "last_updated_at", where),
    )


def funding_record(data: Mapping[str, Any], where: str) -> FundingPayment:
    """A ``FundingPayment``: ``payment`` is already signed from the account's side (negative = paid)."""
    return FundingPayment(
        payment_id=_id(data, "id", where),
        market=_text(data, "market", where),
        amount=_amount(data, "payment", where),
        funding_index=_opt_amount(data, "index", where),
        fill_id=_opt_id(data, "fill_id", where),
        paid_at=_time(data, "created_at", where),
    )


def transfer_record(data: Mapping[str, Any], where: str) -> Transfer:
    """A ``TransferResult``: the amount signed by direction (OUT negative)."""
    kind = _text(data, "kind", where)
    size = _amount(data, "amount", where)
    if size < 0:
        raise WireError(f"{where}.amount: {size} is negative; the direction gives the sign")
    stated = _opt_text(data, "direction", where)
    if stated is None:
        direction = TRANSFER_KIND_DIRECTIONS.get(kind)
        if direction is None:
            raise WireError(f"{where}.direction: missing, and kind {_show(kind)} does not tell it")
    else:
        try:
            direction = TransferDirection(stated)
        except ValueError:
            raise WireError(f"{where}.direction: {_show(stated)} is not IN or OUT") from None
    return Transfer(
        transfer_id=_id(data, "id", where),
        transfer_type=kind,
        status=_text(data, "status", where),
        asset=_opt_text(data, "token", where),
        amount=size if direction is TransferDirection.IN else size.copy_negate(),
        tx_hash=_opt_text(data, "txn_hash", where) or _opt_text(data, "external_txn_hash", where),
        created_at=_opt_time(data, "created_at", where),
        updated_at=_time(data, "last_updated_at", where, fallback="created_at"),
    )


def tradebust_record(data: Mapping[str, Any], where: str) -> FillBust:
    """A ``TradebustResult``: the fill it reverts, by id (a tradebust names no fill type)."""
    return FillBust(fill_id=_id(data, "busted_fill_id", where), busted_at=_time(data, "created_at", where))


# ----------------------------------------------------------------------------------------------- REST


def parse_account(body: bytes) -> Item[AccountSummary]:
    """``GET /account``: the summary object itself (not wrapped)."""
    return _rest(body, "GET /account", lambda data: _item(data, "account", account_record))


def parse_balances(body: bytes) -> tuple[Item[Balance], ...]:
    """``GET /balance``: ``{"results": [...]}``."""
    return _rest(body, "GET /balance", lambda data: _results(data, "balance", balance_record))


def parse_positions(body: bytes) -> tuple[Item[Position], ...]:
    """``GET /positions``: open positions only (the model has CLOSED too, so closed ones are dropped)."""

    def mapper(data: Any) -> tuple[Item[Position], ...]:
        items = _results(data, "positions", position_record)
        return tuple(item for item in items if item.record.status in (None, PositionStatus.OPEN))

    return _rest(body, "GET /positions", mapper)


def parse_open_orders(body: bytes) -> tuple[Item[Order], ...]:
    """``GET /orders``: the open orders, ``{"results": [...]}``."""
    return _rest(body, "GET /orders", lambda data: _results(data, "orders", order_record))


def parse_order(body: bytes) -> Item[Order]:
    """``GET /orders/{id}``: one order object."""
    return _rest(body, "GET /orders/{id}", lambda data: _item(data, "order", order_record))


def parse_orders_history(body: bytes) -> Page[Order]:
    """``GET /orders-history``: a page of orders."""
    return _rest(body, "GET /orders-history", lambda data: _page(data, "orders-history", order_record))


def parse_fills(body: bytes) -> Page[Fill]:
    return _rest(body, "GET /fills", lambda data: _page(data, "fills", fill_record))


def parse_funding_payments(body: bytes) -> Page[FundingPayment]:
    return _rest(body, "GET /funding/payments", lambda data: _page(data, "funding/payments", funding_record))


def parse_transfers(body: bytes) -> Page[Transfer]:
    return _rest(body, "GET /transfers", lambda data: _page(data, "transfers", transfer_record))


def parse_tradebusts(body: bytes) -> Page[FillBust]:
    return _rest(body, "GET /tradebusts", lambda data: _page(data, "tradebusts", tradebust_record))


def _rest(body: bytes, where: str, mapper: Callable[[Any], T]) -> T:
    try:
        return parse_json_with(body, mapper)
    except WireError as exc:
        raise VenueResponseError(f"{VENUE} {where}: {exc}"[:1000], venue=VENUE) from None
    except Exception as exc:  # noqa: BLE001 - the REST boundary raises one documented error, whatever the input
        raise VenueResponseError(
            f"{VENUE} {where}: the answer cannot be read ({type(exc).__name__}: {exc})"[:1000], venue=VENUE
        ) from None


def _item(data: Any, where: str, record: Callable[[Mapping[str, Any], str], T]) -> Item[T]:
    return Item(record(obj(data, where), where), dump_item(data))


def _results(data: Any, where: str, record: Callable[[Mapping[str, Any], str], T]) -> tuple[Item[T], ...]:
    results = arr(field(obj(data, where), "results", where=where), f"{where}.results")
    return tuple(_item(entry, f"{where}.results[{index}]", record) for index, entry in enumerate(results))


def _page(data: Any, where: str, record: Callable[[Mapping[str, Any], str], T]) -> Page[T]:
    cursor = obj(data, where).get("next")
    if cursor is not None and not isinstance(cursor, str):
        raise WireError(f"{where}.next: expected a cursor string or null, got {type(cursor).__name__}")
    return Page(_results(data, where, record), cursor or None)


# ----------------------------------------------------------------------------------------------- helpers


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOW else shown[: _SHOW - 3] + "..."


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (integer arithmetic on a timedelta)."""
    return (moment - EPOCH) // _MS


def _id(data: Mapping[str, Any], name: str, where: str) -> str:
    return venue_id(field(data, name, where=where), f"{where}.{name}")


def _opt_id(data: Mapping[str, Any], name: str, where: str) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    return venue_id(value, f"{where}.{name}")


def _text(data: Mapping[str, Any], name: str, where: str) -> str:
    return text(field(data, name, where=where), f"{where}.{name}")


def _opt_text(data: Mapping[str, Any], name: str, where: str) -> str | None:
    return optional_text(data.get(name), f"{where}.{name}")


def _amount(data: Mapping[str, Any], name: str, where: str) -> Decimal:
    return amount(field(data, name, where=where), f"{where}.{name}")


def _opt_amount(data: Mapping[str, Any], name: str, where: str) -> Decimal | None:
    return optional_amount(data.get(name), f"{where}.{name}")


def _first_amount(data: Mapping[str, Any], where: str, *names: str) -> Decimal | None:
    """The first of ``names`` that holds an amount (a zero included), or None."""
    for name in names:
        value = _opt_amount(data, name, where)
        if value is not None:
            return value
    return None


def _nonzero(value: Decimal | None) -> Decimal | None:
    return None if value is None or value == 0 else value


def _time(data: Mapping[str, Any], name: str, where: str, *, fallback: str | None = None) -> datetime:
    """A required time; 0 or null counts as missing, and ``fallback`` names the field to use then."""
    moment = _opt_time(data, name, where)
    if moment is None and fallback is not None:
        moment = _opt_time(data, fallback, where)
    if moment is None:
        raise WireError(f"{where}.{name if fallback is None else f'{name}/{fallback}'}: missing")
    return moment


def _opt_time(data: Mapping[str, Any], name: str, where: str) -> datetime | None:
    return optional_timestamp(data.get(name), f"{where}.{name}")


def _side(data: Mapping[str, Any], where: str) -> Side:
    value = _text(data, "side", where)
    try:
        return Side(value)
    except ValueError:
        raise WireError(f"{where}.side: {_show(value)} is not BUY or SELL") from None


def _is_taker(data: Mapping[str, Any], where: str) -> bool | None:
    value = _opt_text(data, "liquidity", where)
    if value is None:
        return None
    if value == Liquidity.TAKER:
        return True
    if value == Liquidity.MAKER:
        return False
    raise WireError(f"{where}.liquidity: {_show(value)} is not MAKER or TAKER")


def _flags(data: Mapping[str, Any], where: str) -> list[str] | None:
    value = data.get("flags")
    if value is None:
        return None
    flags = arr(value, f"{where}.flags")
    for flag in flags:
        if not isinstance(flag, str):
            raise WireError(f"{where}.flags: expected strings, got {type(flag).__name__}")
    return flags


def _seq_no(data: Mapping[str, Any], where: str) -> int | None:
    value = data.get("seq_no")
    if value is None:
        return None
    seq = integer(value, f"{where}.seq_no")
    if not 0 <= seq <= MAX_SEQ_NO:
        raise WireError(f"{where}.seq_no: {seq} is out of range")
    return seq


def _exact_difference(minuend: Decimal, subtrahend: Decimal, where: str) -> Decimal:
    """``minuend - subtrahend`` with no rounding (the default decimal context keeps only 28 digits)."""
    exponent = min(_exponent(minuend), _exponent(subtrahend))
    digits = max(minuend.adjusted(), subtrahend.adjusted()) - exponent + 2
    if digits > MAX_EXACT_DIGITS:
        raise WireError(f"{where}: needs {digits} digits, more than {MAX_EXACT_DIGITS}")
    try:
        return Context(prec=max(digits, 1), traps=[Inexact]).subtract(minuend, subtrahend)
    except ArithmeticError:  # cannot happen with the precision above; never round silently all the same
        raise WireError(f"{where}: cannot be computed exactly") from None


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # amounts are finite
    return exponent


def _json_value(value: Any, where: str) -> JsonValue:
    """A JSON value the event log can store: exact numbers with a fraction and integers beyond 64 bits become
    strings (digit for digit); a float means the frame must be parsed again, exactly."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, float):
        raise NeedsExactNumbers(where)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return [_json_value(entry, where) for entry in value]
    if isinstance(value, Mapping):
        return {str(name): _json_value(entry, where) for name, entry in value.items()}
    raise WireError(f"{where}: unexpected JSON value of type {type(value).__name__}")
