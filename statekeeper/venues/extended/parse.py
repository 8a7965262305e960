"""Extended's parse boundary: v1 account-stream frames and REST bodies in, canonical events and records out. Pure.

Stream frames (:func:`parse_frame`) are total: any input gives an :class:`~statekeeper.events.Event` or a
:class:`~statekeeper.venues.base.FrameRejection` with the reason, never an exception. The envelope is
``{type, data, error?, ts, seq}``:

=================  ==============================================================================================
``type``           event body
=================  ==============================================================================================
``ORDER``          :class:`OrderBody`, one :class:`Order` per ``data.orders`` item
``TRADE``          :class:`FillBody`, one :class:`Fill` per ``data.trades`` item
``BALANCE``        :class:`BalanceBody` with the one ``data.balance``
``SPOT_BALANCE``   :class:`BalanceBody` with one balance per ``data.spotBalances`` item
``POSITION``       :class:`PositionBody`, one :class:`Position` per ``data.positions`` item
``DEPOSIT``,       :class:`TransferBody` when ``data`` holds asset operations shaped like the REST ones
``TRANSFER``,      (``data.deposit``/``data.transfer``/``data.withdrawal``/``data.assetOperations``, one object or a
``WITHDRAWAL``     list, each with ``id``, ``status``, ``amount``, ``time``); otherwise :class:`VenueMessage`,
                   whatever ``data`` is: the v1 shape is undocumented, so the message is kept, never guessed at
``SNAPSHOT``,      :class:`VenueMessage` (in the SDK's enum, never documented or seen)
``DELTA``
anything else      rejected: ``unknown message type``
=================  ==============================================================================================

Decisions:

* **Snapshots.** ``data.isSnapshot: true`` makes the event a snapshot (ORDER, BALANCE, SPOT_BALANCE and POSITION):
  the full replacement of that state, so an empty ``orders: []`` snapshot means "no open orders" and is kept as
  such. Fills are a ledger and never a snapshot: a TRADE frame flagged ``isSnapshot`` (never seen) is kept as a
  plain fill event, the flag stays in the raw frame. ``isSnapshot`` must be a boolean when present (on the types
  whose shape is known).
* **Error frames.** A frame whose ``error`` is set (not null, not empty) is not account state: it becomes a
  :class:`ProtocolMessage` event (``method`` = the frame's ``type``, ``error_message`` = the error text, or the
  ``code``/``message`` of an error object; ``result`` = its ``data`` when there is one). It keeps its ``seq``, so
  the contiguous sequence stays checkable, and nothing is projected from it.
* **Numbers.** Amounts are decimal strings and become :class:`~decimal.Decimal`; ids become strings (they reach
  2**63 and beyond); a number orjson could only give as a float makes the frame be parsed again exactly
  (:mod:`statekeeper.venues.wire`). In a :class:`VenueMessage` or :class:`ProtocolMessage` (JSON kept as data),
  a number with a fraction and an integer outside 64 bits are written as strings, so that nothing is rounded and
  the payload can always be stored; the raw frame keeps the original text.
* **Vocabulary.** Status words, order types, time-in-force and trade types are kept as sent, known or not
  (:mod:`.wire` lists the documented ones); sides must be ``BUY``/``SELL`` and ``LONG``/``SHORT``.

Extended fields with no place in the canonical records (they stay in ``Event.raw``): order ``accountId``,
``cancelledQty``, ``rfqStartPrice``, ``chaseOrder``, ``tpSlType``, ``takeProfit``, ``stopLoss`` and the trigger's
type/direction/execution type; trade ``accountId``; balance ``spotEquity``, ``spotEquityForAvailableForTrade``,
``collateralReservedForSpotOrders``; spot balance ``indexPrice``, ``notionalValue``, ``contributionFactor``,
``equityContribution``, ``absolutePnl``, ``pnlPercentage``, ``averageEntryPrice``; position ``accountId``,
``tpPrice``/``slPrice``, ``tpTriggerPrice``, ``tpLimitPrice``, ``slTriggerPrice``, ``slLimitPrice``, ``adl``,
``maxPositionSize``; funding ``accountId``, ``positionId``; asset operation ``fee``, ``accountId``,
``counterpartyAccountId``, ``chain``.

**Funding sign.** Extended documents ``fundingFee`` only as "Funding payment size" and its example is ``"0"``; the
sign convention is not documented, and second-hand readings disagree (a third-party client reads a positive fee as
received; statekeeper's simulator assumes it was paid). ``FundingPayment.amount`` keeps the venue's sign unchanged;
whether it matches the model's "negative = the account paid" must be checked against a real payment.

REST parsers take a response body and raise :class:`~statekeeper.venues.errors.VenueResponseError` for anything
malformed and for an ``ERROR`` envelope: a failure is never an empty result (invariant 8).

Speed: the canonical models are built with :func:`_build`, which skips pydantic's validation. Every value it is
given comes from a converter here or in :mod:`statekeeper.venues.wire` that enforces what the model's validation
would (types, finite decimals, aware UTC datetimes, string lengths, non-negative size); the tests re-validate
every event this module produces and compare it with the original.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, TypeVar
from uuid import UUID

from pydantic import BaseModel, TypeAdapter

from statekeeper.events import (
    AccountName,
    Balance,
    BalanceBody,
    BalanceScope,
    Event,
    EventKind,
    Fill,
    FillBody,
    FundingPayment,
    Order,
    OrderBody,
    Position,
    PositionBody,
    PositionSide,
    ProtocolMessage,
    Side,
    Source,
    Transfer,
    TransferBody,
    VenueMessage,
    VenueName,
)
from statekeeper.venues import wire as w
from statekeeper.venues.base import FrameContext, FrameRejection, Item, Page, parse_frame_with
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.extended import wire as x

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

NAME_MAX = 100  # events.Name
ID_MAX = 200  # events.VenueId
SEQ_LIMIT = 2**63  # events.seq is a BIGINT
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
FLOAT_EXACT_MS = 4_102_444_800_000  # 2100-01-01: below it, datetime.fromtimestamp(ms / 1000) is exact to the µs
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1  # what orjson (and so the log's payload) can write

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_fromtimestamp = datetime.fromtimestamp
_SIDES: Final = {"BUY": Side.BUY, "SELL": Side.SELL}
_POSITION_SIDES: Final = {"LONG": PositionSide.LONG, "SHORT": PositionSide.SHORT}

# ------------------------------------------------------------------------------------ building models fast

_setattr = object.__setattr__
_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}


def _build(cls: type[M], values: dict[str, Any]) -> M:
    """An instance of ``cls`` from ``values`` (every field, already valid), without pydantic's validation.

    What :meth:`pydantic.BaseModel.model_construct` does, minus its per-field alias and default handling, which
    costs more than the rest of a frame's parse. Callers give every field of the model, converted by the
    functions of this module; the tests check that validating the result gives an equal model.
    """
    fields = _ALL_FIELDS.get(cls)
    if fields is None:
        fields = _ALL_FIELDS[cls] = set(cls.model_fields)
    instance = cls.__new__(cls)
    _setattr(instance, "__dict__", values)
    # Every field is given, so the set of fields set is all of them; one set per class is shared (pydantic copies it
    # before changing it, and these models are frozen).
    _setattr(instance, "__pydantic_fields_set__", fields)
    _setattr(instance, "__pydantic_extra__", None)
    _setattr(instance, "__pydantic_private__", None)
    return instance


# --------------------------------------------------------------------------------------------- converters
# Fast paths for the common case (a str, an int); everything else goes to the shared converters, which raise
# WireError with a clear message (or NeedsExactNumbers for a float, which triggers the exact re-parse).


def _missing(where: str) -> w.WireError:
    return w.WireError(f"{where}: missing")


def _amount(value: Any, where: str) -> Decimal:
    if type(value) is str:
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise w.WireError(f"{where}: {value[:40]!r} is not a decimal number") from None
        if result.is_finite():
            return result
        raise w.WireError(f"{where}: {value[:40]!r} is not a finite number")
    if value is None:
        raise _missing(where)
    return w.amount(value, where)


def _opt_amount(value: Any, where: str) -> Decimal | None:
    if type(value) is str:
        if not value:  # the docs: averagePrice is "empty if not filled"
            return None
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise w.WireError(f"{where}: {value[:40]!r} is not a decimal number") from None
        if result.is_finite():
            return result
        raise w.WireError(f"{where}: {value[:40]!r} is not a finite number")
    if value is None:
        return None
    return w.amount(value, where)


def _id(value: Any, where: str) -> str:
    if type(value) is int:
        result = str(value)
    elif type(value) is str and value and not value.isspace():
        result = value
    elif value is None:
        raise _missing(where)
    else:
        result = w.venue_id(value, where)
    if len(result) > ID_MAX:
        raise w.WireError(f"{where}: an id of {len(result)} characters is too long")
    return result


def _opt_id(value: Any, where: str) -> str | None:
    return None if value is None or value == "" else _id(value, where)


def _name(value: Any, where: str) -> str:
    if type(value) is str and 0 < len(value) <= NAME_MAX:
        return value
    if value is None:
        raise _missing(where)
    if type(value) is str:
        raise w.WireError(f"{where}: expected a name of 1 to {NAME_MAX} characters, got {len(value)}")
    raise w.WireError(f"{where}: expected a string, got {_type(value)}")


def _opt_text(value: Any, where: str) -> str | None:
    if type(value) is str:
        return value or None
    return w.optional_text(value, where)


def _time(value: Any, where: str) -> datetime:
    if type(value) is int and w.SECONDS_LIMIT <= value <= MAX_MS:
        if value < FLOAT_EXACT_MS:
            return _fromtimestamp(value / 1000, UTC)
        return _EPOCH + timedelta(milliseconds=value)
    if value is None:
        raise _missing(where)
    return w.timestamp(value, where)


def _opt_time(value: Any, where: str) -> datetime | None:
    if value is None or (type(value) in (str, int) and not value):  # null, "" and 0 mean "not set"
        return None
    return _time(value, where)


def _bool(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if type(value) is bool:
        return value
    raise w.WireError(f"{where}: expected true or false, got {_type(value)}")


def _side(value: Any, where: str) -> Side:
    side = _SIDES.get(value) if type(value) is str else None
    if side is None:
        raise _missing(where) if value is None else w.WireError(f"{where}: expected BUY or SELL, got {_short(value)}")
    return side


def _position_side(value: Any, where: str) -> PositionSide:
    side = _POSITION_SIDES.get(value) if type(value) is str else None
    if side is None:
        raise (
            _missing(where) if value is None else w.WireError(f"{where}: expected LONG or SHORT, got {_short(value)}")
        )
    return side


def _first(data: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first spelling present and not null (fields the docs and the SDK spell differently)."""
    for name in names:
        value = data.get(name)
        if value is not None:
            return value
    return None


def _object(value: Any, where: str) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise _missing(where) if value is None else w.WireError(f"{where}: expected an object, got {_type(value)}")


def _items(value: Any, mapper: Callable[[dict[str, Any]], T], where: str) -> tuple[T, ...]:
    if type(value) is not list:
        raise _missing(where) if value is None else w.WireError(f"{where}: expected an array, got {_type(value)}")
    out = []
    for index, item in enumerate(value):
        try:
            out.append(mapper(item if type(item) is dict else _object(item, "item")))
        except w.WireError as exc:
            raise w.WireError(f"{where}[{index}].{exc}") from None
    return tuple(out)


def _one(value: Any, mapper: Callable[[dict[str, Any]], T], where: str) -> T:
    try:
        return mapper(_object(value, "value"))
    except w.WireError as exc:
        raise w.WireError(f"{where}.{exc}") from None


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    return repr(value[:40]) if isinstance(value, str) else _type(value)


def _json(value: Any, where: str) -> Any:
    """JSON data as the log can store it exactly: fractions and integers beyond 64 bits as strings."""
    try:
        return _json_value(value)
    except RecursionError:
        raise w.WireError(f"{where}: nested too deeply") from None


def _json_value(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is str or kind is bool:
        return value
    if kind is int:
        return value if JSON_INT_MIN <= value <= JSON_INT_MAX else str(value)
    if kind is dict:
        return {key: _json_value(item) for key, item in value.items()}
    if kind is list:
        return [_json_value(item) for item in value]
    if kind is float:
        raise w.NeedsExactNumbers("data")
    if kind is Decimal:
        return str(value)
    raise w.WireError(f"unexpected JSON value {kind.__name__}")


# ------------------------------------------------------------------------------------------------ records


def _order(d: dict[str, Any]) -> Order:
    trigger = d.get("trigger")
    trigger_price = None
    if trigger is not None:
        trigger_price = _opt_amount(_object(trigger, "trigger").get(x.TRIGGER_PRICE), "trigger.triggerPrice")
    return _build(
        Order,
        {
            "order_id": _id(d.get(x.O_ID), "id"),
            "client_order_id": _opt_text(d.get(x.O_CLIENT_ID), "externalId"),
            "market": _name(d.get(x.O_MARKET), "market"),
            "side": _side(d.get(x.O_SIDE), "side"),
            "order_type": _name(d.get(x.O_TYPE), "type"),
            "status": _name(d.get(x.O_STATUS), "status"),
            "status_reason": _opt_text(d.get(x.O_STATUS_REASON), "statusReason"),
            "price": _opt_amount(d.get(x.O_PRICE), "price"),
            "average_price": _opt_amount(d.get(x.O_AVERAGE_PRICE), "averagePrice"),
            "qty": _amount(d.get(x.O_QTY), "qty"),
            "filled_qty": _opt_amount(d.get(x.O_FILLED_QTY), "filledQty"),
            "remaining_qty": None,  # not sent; qty - filledQty - cancelledQty would be a guess for closed orders
            "fee_paid": _opt_amount(d.get(x.O_FEE), "payedFee"),
            "trigger_price": trigger_price,
            "reduce_only": _bool(d.get(x.O_REDUCE_ONLY), "reduceOnly"),
            "post_only": _bool(d.get(x.O_POST_ONLY), "postOnly"),
            "time_in_force": _opt_text(d.get(x.O_TIME_IN_FORCE), "timeInForce"),
            "created_at": _opt_time(_first(d, x.O_CREATED), "createdTime"),
            "updated_at": _time(_first(d, x.O_UPDATED), "updatedTime"),
            "expires_at": _opt_time(_first(d, x.O_EXPIRES), "expiryTime"),
            "venue_seq": None,
        },
    )


def _fill(d: dict[str, Any]) -> Fill:
    return _build(
        Fill,
        {
            "fill_id": _id(d.get(x.T_ID), "id"),
            "fill_type": _name(d.get(x.T_TRADE_TYPE), "tradeType"),
            "order_id": _opt_id(d.get(x.T_ORDER_ID), "orderId"),
            "client_order_id": _opt_text(_first(d, x.T_CLIENT_ORDER_ID), "externalOrderId"),
            "market": _name(d.get(x.T_MARKET), "market"),
            "side": _side(d.get(x.T_SIDE), "side"),
            "price": _amount(_first(d, x.T_PRICE), "price"),
            "qty": _amount(_first(d, x.T_QTY), "qty"),
            "value": _opt_amount(d.get(x.T_VALUE), "value"),
            "fee": _amount(d.get(x.T_FEE), "fee"),
            "fee_asset": None,  # the collateral; Extended does not name it per trade
            "is_taker": _bool(d.get(x.T_IS_TAKER), "isTaker"),
            "realized_pnl": None,
            "realized_funding": None,
            "created_at": _time(_first(d, x.T_CREATED), "createdTime"),
        },
    )


def _balance(d: dict[str, Any]) -> Balance:
    return _build(
        Balance,
        {
            "asset": _name(d.get(x.B_ASSET), "collateralName"),
            "balance": _amount(d.get(x.B_BALANCE), "balance"),
            "equity": _opt_amount(d.get(x.B_EQUITY), "equity"),
            "available_for_trade": _opt_amount(d.get(x.B_AVAILABLE_FOR_TRADE), "availableForTrade"),
            "available_for_withdrawal": _opt_amount(d.get(x.B_AVAILABLE_FOR_WITHDRAWAL), "availableForWithdrawal"),
            "unrealised_pnl": _opt_amount(d.get(x.B_UNREALISED_PNL), "unrealisedPnl"),
            "initial_margin": _opt_amount(d.get(x.B_INITIAL_MARGIN), "initialMargin"),
            "maintenance_margin": None,  # not sent (marginRatio = maintenance margin / equity)
            "margin_ratio": _opt_amount(d.get(x.B_MARGIN_RATIO), "marginRatio"),
            "exposure": _opt_amount(d.get(x.B_EXPOSURE), "exposure"),
            "leverage": _opt_amount(d.get(x.B_LEVERAGE), "leverage"),
            "status": _opt_text(d.get(x.B_STATUS), "status"),
            "updated_at": _opt_time(_first(d, x.B_UPDATED), "updatedTime"),
        },
    )


def _spot_balance(d: dict[str, Any]) -> Balance:
    return _build(
        Balance,
        {
            "asset": _name(d.get(x.S_ASSET), "asset"),
            "balance": _amount(d.get(x.S_BALANCE), "balance"),
            "equity": None,
            "available_for_trade": None,
            "available_for_withdrawal": _opt_amount(d.get(x.S_AVAILABLE_FOR_WITHDRAWAL), "availableToWithdraw"),
            "unrealised_pnl": None,
            "initial_margin": None,
            "maintenance_margin": None,
            "margin_ratio": None,
            "exposure": None,
            "leverage": None,
            "status": None,
            "updated_at": _opt_time(_first(d, x.S_UPDATED), "updatedAt"),
        },
    )


def _position(d: dict[str, Any]) -> Position:
    size = _amount(d.get(x.P_SIZE), "size")
    if size < 0:
        raise w.WireError(f"size: {size} is negative (Extended sends the absolute size)")
    return _build(
        Position,
        {
            "position_id": _opt_id(d.get(x.P_ID), "id"),
            "market": _name(d.get(x.P_MARKET), "market"),
            "side": _position_side(d.get(x.P_SIDE), "side"),
            "size": size,
            "entry_price": _opt_amount(d.get(x.P_OPEN_PRICE), "openPrice"),
            "mark_price": _opt_amount(d.get(x.P_MARK_PRICE), "markPrice"),
            "value": _opt_amount(d.get(x.P_VALUE), "value"),
            "liquidation_price": _opt_amount(d.get(x.P_LIQUIDATION_PRICE), "liquidationPrice"),
            "unrealised_pnl": _opt_amount(d.get(x.P_UNREALISED_PNL), "unrealisedPnl"),
            "realised_pnl": _opt_amount(d.get(x.P_REALISED_PNL), "realisedPnl"),
            "leverage": _opt_amount(d.get(x.P_LEVERAGE), "leverage"),
            "margin": _opt_amount(d.get(x.P_MARGIN), "margin"),
            "status": _opt_text(d.get(x.P_STATUS), "status"),
            "created_at": _opt_time(_first(d, x.P_CREATED), "createdAt"),
            "updated_at": _time(_first(d, x.P_UPDATED), "updatedAt"),
            "venue_seq": None,
        },
    )


def _funding(d: dict[str, Any]) -> FundingPayment:
    side = d.get(x.FUNDING_SIDE)
    return _build(
        FundingPayment,
        {
            "payment_id": _id(d.get(x.FUNDING_ID), "id"),
            "market": _name(d.get(x.FUNDING_MARKET), "market"),
            # The venue's sign, unchanged: Extended does not document it (see the module docstring).
            "amount": _amount(d.get(x.FUNDING_FEE), "fundingFee"),
            "asset": None,
            "rate": _opt_amount(d.get(x.FUNDING_RATE), "fundingRate"),
            "position_side": None if side is None else _position_side(side, "side"),
            "position_size": _opt_amount(d.get(x.FUNDING_SIZE), "size"),
            "position_value": _opt_amount(d.get(x.FUNDING_VALUE), "value"),
            "mark_price": _opt_amount(d.get(x.FUNDING_MARK_PRICE), "markPrice"),
            "funding_index": None,
            "fill_id": None,
            "paid_at": _time(d.get(x.FUNDING_PAID), "paidTime"),
        },
    )


def _transfer(d: dict[str, Any], default_type: str | None = None) -> Transfer:
    kind = d.get(x.A_TYPE)
    return _build(
        Transfer,
        {
            "transfer_id": _id(d.get(x.A_ID), "id"),
            "transfer_type": _name(default_type if kind is None else kind, "type"),
            "status": _name(d.get(x.A_STATUS), "status"),
            "asset": _opt_text(d.get(x.A_ASSET), "asset"),  # docs: a name; the example: a number (1)
            "amount": _amount(d.get(x.A_AMOUNT), "amount"),  # signed as sent: negative leaves the account
            "tx_hash": _opt_text(d.get(x.A_TX_HASH), "transactionHash"),
            "created_at": None,
            "updated_at": _time(d.get(x.A_TIME), "time"),  # docs: "when the transaction was updated"
        },
    )


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """``GET /user/account/info``: the sub-account's identity. Not an event kind of its own (yet)."""

    account_id: str
    status: str
    l2_key: str | None = None
    l2_vault: str | None = None
    description: str | None = None
    bridge_starknet_address: str | None = None


def _account_info(d: dict[str, Any]) -> AccountInfo:
    return AccountInfo(
        account_id=_id(d.get(x.I_ACCOUNT_ID), "accountId"),
        status=_name(d.get(x.I_STATUS), "status"),
        l2_key=_opt_text(d.get(x.I_L2_KEY), "l2Key"),
        l2_vault=_opt_id(d.get(x.I_L2_VAULT), "l2Vault"),
        description=_opt_text(d.get(x.I_DESCRIPTION), "description"),
        bridge_starknet_address=_opt_text(d.get(x.I_BRIDGE_ADDRESS), "bridgeStarknetAddress"),
    )


# ------------------------------------------------------------------------------------------ stream frames

Body = OrderBody | FillBody | BalanceBody | PositionBody | TransferBody | VenueMessage | ProtocolMessage


def _payload(value: Any) -> dict[str, Any]:
    return _object(value, "data")


def _is_snapshot(payload: dict[str, Any]) -> bool:
    flag = payload.get(x.F_IS_SNAPSHOT)
    if flag is None:
        return False
    if type(flag) is bool:
        return flag
    raise w.WireError(f"data.isSnapshot: expected true or false, got {_type(flag)}")


def _order_frame(_: str, value: Any) -> tuple[Body, bool]:
    payload = _payload(value)
    snapshot = _is_snapshot(payload)
    orders = _items(payload.get(x.D_ORDERS), _order, "data.orders")
    return _build(OrderBody, {"kind": EventKind.ORDER, "orders": orders}), snapshot


def _trade_frame(_: str, value: Any) -> tuple[Body, bool]:
    payload = _payload(value)
    _is_snapshot(payload)  # checked, but a ledger is never a snapshot
    fills = _items(payload.get(x.D_TRADES), _fill, "data.trades")
    return _build(FillBody, {"kind": EventKind.FILL, "fills": fills}), False


def _balance_frame(_: str, value: Any) -> tuple[Body, bool]:
    payload = _payload(value)
    snapshot = _is_snapshot(payload)
    balance = _one(payload.get(x.D_BALANCE), _balance, "data.balance")
    body = {"kind": EventKind.BALANCE, "balances": (balance,), "scope": BalanceScope.COLLATERAL}
    return _build(BalanceBody, body), snapshot


def _spot_balance_frame(_: str, value: Any) -> tuple[Body, bool]:
    payload = _payload(value)
    snapshot = _is_snapshot(payload)
    balances = _items(payload.get(x.D_SPOT_BALANCES), _spot_balance, "data.spotBalances")
    body = {"kind": EventKind.BALANCE, "balances": balances, "scope": BalanceScope.SPOT}
    return _build(BalanceBody, body), snapshot


def _position_frame(_: str, value: Any) -> tuple[Body, bool]:
    payload = _payload(value)
    snapshot = _is_snapshot(payload)
    positions = _items(payload.get(x.D_POSITIONS), _position, "data.positions")
    return _build(PositionBody, {"kind": EventKind.POSITION, "positions": positions}), snapshot


def _asset_frame(message_type: str, value: Any) -> tuple[Body, bool]:
    """DEPOSIT / TRANSFER / WITHDRAWAL: transfers if the data holds REST-shaped asset operations, else kept as is.

    Their v1 shape is undocumented, so whatever ``data`` is (even null) the message is kept, never rejected.
    """
    if type(value) is dict:
        lower = message_type.lower()
        for key in ("assetOperations", lower, lower + "s"):
            found = value.get(key)
            if found is None:
                continue
            items = [found] if type(found) is dict else found
            if type(items) is list and items:
                try:
                    transfers = tuple(_transfer(_object(item, key), message_type) for item in items)
                except w.WireError:
                    break
                return _build(TransferBody, {"kind": EventKind.TRANSFER, "transfers": transfers}), False
            break
    return VenueMessage(message_type=message_type, data=_json(value, "data")), False


def _opaque_frame(message_type: str, value: Any) -> tuple[Body, bool]:
    return VenueMessage(message_type=message_type, data=_json(value, "data")), False


_FRAMES: Final[dict[str, Callable[[str, Any], tuple[Body, bool]]]] = {
    x.MessageType.ORDER: _order_frame,
    x.MessageType.TRADE: _trade_frame,
    x.MessageType.BALANCE: _balance_frame,
    x.MessageType.SPOT_BALANCE: _spot_balance_frame,
    x.MessageType.POSITION: _position_frame,
    x.MessageType.DEPOSIT: _asset_frame,
    x.MessageType.TRANSFER: _asset_frame,
    x.MessageType.WITHDRAWAL: _asset_frame,
    x.MessageType.SNAPSHOT: _opaque_frame,
    x.MessageType.DELTA: _opaque_frame,
}


def _error_frame(message_type: Any, error: Any, value: Any) -> ProtocolMessage:
    code: int | str | None = None
    if isinstance(error, str):
        message: str | None = error
    elif isinstance(error, dict):
        raw_code, raw_message = error.get("code"), error.get("message")
        code = raw_code if type(raw_code) in (int, str) else None
        if type(code) is int and not JSON_INT_MIN <= code <= JSON_INT_MAX:
            code = str(code)
        message = raw_message if isinstance(raw_message, str) else w.dump_item(_json(error, "error"))
    else:
        message = w.dump_item(_json(error, "error"))
    return ProtocolMessage(
        method=message_type if isinstance(message_type, str) else None,
        error_code=code,
        error_message=message,
        result=None if value is None else _json(value, "data"),
    )


def _seq(value: Any) -> int:
    if type(value) is int and 0 <= value < SEQ_LIMIT:
        return value
    if value is None:
        raise _missing("seq")
    if type(value) is float:
        raise w.NeedsExactNumbers("seq")
    raise w.WireError(f"seq: expected an integer from 0 to 2**63 - 1, got {_short(value)}")


def _seq_of(data: Any) -> int | None:
    seq = data.get(x.F_SEQ) if type(data) is dict else None
    return seq if type(seq) is int and 0 <= seq < SEQ_LIMIT else None


_ACCOUNT_NAME: Final = TypeAdapter(AccountName)
_VENUE_NAME: Final = TypeAdapter(VenueName)


@functools.lru_cache(maxsize=1024)
def _key_prefix(account: str, venue: str, session: UUID) -> str:
    """The context checked once per stream session (a ValidationError becomes the rejection's reason), and the
    start of its events' keys, ``seq:<session>:``."""
    _ACCOUNT_NAME.validate_python(account)
    _VENUE_NAME.validate_python(venue)
    if type(session) is not UUID:
        raise w.WireError(f"the frame context's session is not a UUID: {_type(session)}")
    return f"seq:{session}:"


def _map_frame(data: Any, text: str, ctx: FrameContext) -> Event:
    if type(data) is not dict:
        raise w.WireError(f"frame: expected a JSON object, got {_type(data)}")
    seq = _seq(data.get(x.F_SEQ))
    venue_time = _time(data.get(x.F_TS), "ts")
    message_type = data.get(x.F_TYPE)
    error = data.get(x.F_ERROR)
    if error is not None and error != "":
        body: Body = _error_frame(message_type, error, data.get(x.F_DATA))
        snapshot = False
    else:
        if type(message_type) is not str:
            if message_type is None:
                raise _missing("type")
            raise w.WireError(f"type: expected a string, got {_type(message_type)}")
        handler = _FRAMES.get(message_type)
        if handler is None:
            raise w.WireError(f"unknown message type {_short(message_type)}")
        body, snapshot = handler(message_type, data.get(x.F_DATA))

    key_prefix = _key_prefix(ctx.account, ctx.venue, ctx.session)
    received_at = ctx.received_at
    if received_at.utcoffset() is None:
        raise w.WireError("the frame context's received_at is a naive datetime")
    if received_at.tzinfo is not UTC:
        received_at = received_at.astimezone(UTC)
    source = ctx.source if type(ctx.source) is Source else Source(ctx.source)
    return _build(
        Event,
        {
            "account": ctx.account,
            "venue": ctx.venue,
            "source": source,
            "body": body,
            "venue_time": venue_time,
            "received_at": received_at,
            "snapshot": snapshot,
            "session": ctx.session,
            "seq": seq,
            "key": key_prefix + str(seq),
            "raw": text,
        },
    )


def parse_frame(raw: str | bytes, ctx: FrameContext) -> Event | FrameRejection:
    """One v1 account-stream frame as an event, or the reason it cannot be one. Never raises."""
    return parse_frame_with(raw, functools.partial(_map_frame, ctx=ctx), seq_of=_seq_of)


# ---------------------------------------------------------------------------------------------------- REST


class _ErrorEnvelope(w.WireError):
    """The venue answered ``status: ERROR``: a well-formed refusal, reported as it is."""


def _rest(body: bytes | str, what: str, mapper: Callable[[Any], T]) -> T:
    try:
        return w.parse_json_with(body, mapper)
    except _ErrorEnvelope as exc:
        raise VenueResponseError(f"extended {what}: the venue answered ERROR {exc}"[:500], venue=x.VENUE) from None
    except w.WireError as exc:
        raise VenueResponseError(f"extended {what}: {exc}"[:500], venue=x.VENUE) from None
    except Exception as exc:  # a parser bug must still read as a failed call, never as a result
        raise VenueResponseError(
            f"extended {what}: parser error: {type(exc).__name__}: {exc}"[:500], venue=x.VENUE
        ) from exc


def _envelope(data: Any) -> tuple[Any, Any]:
    """``data`` and ``pagination`` of an OK envelope; an ERROR envelope raises :class:`_ErrorEnvelope`."""
    envelope = _object(data, "response")
    status = envelope.get("status")
    if type(status) is not str:
        raise _missing("status") if status is None else w.WireError(f"status: expected a string, got {_type(status)}")
    if status.upper() == x.R_STATUS_ERROR:
        error = envelope.get("error")
        code = message = None
        if type(error) is dict:
            code, message = error.get("code"), error.get("message")
        code_text = code[:40] if type(code) is str else str(code) if type(code) is int else "(no code)"
        raise _ErrorEnvelope(f"{code_text}: {message if isinstance(message, str) else _short(message)}")
    if status.upper() != x.R_STATUS_OK:
        raise w.WireError(f"status: expected OK or ERROR, got {_short(status)}")
    payload = envelope.get("data")
    if payload is None:
        raise _missing("data")
    return payload, envelope.get("pagination")


def _item(record: T, item: Any) -> Item[T]:
    return Item(record, w.dump_item(item))


def _list(payload: Any, mapper: Callable[[dict[str, Any]], T]) -> tuple[Item[T], ...]:
    if type(payload) is not list:
        raise w.WireError(f"data: expected an array, got {_type(payload)}")
    out = []
    for index, item in enumerate(payload):
        try:
            out.append(_item(mapper(_object(item, "item")), item))
        except w.WireError as exc:
            raise w.WireError(f"data[{index}].{exc}") from None
    return tuple(out)


def _cursor(pagination: Any, items: tuple[Item[Any], ...], limit: int | None) -> str | None:
    """The cursor of the next page, or None on the last (no pagination, no items, or fewer than ``limit``)."""
    if pagination is None or not items or (limit is not None and len(items) < limit):
        return None
    cursor = _object(pagination, "pagination").get("cursor")
    return _opt_id(cursor, "pagination.cursor")


def _page(body: bytes | str, what: str, mapper: Callable[[dict[str, Any]], T], limit: int | None) -> Page[T]:
    def build(data: Any) -> Page[T]:
        payload, pagination = _envelope(data)
        items = _list(payload, mapper)
        return Page(items, _cursor(pagination, items, limit))

    return _rest(body, what, build)


def _items_of(body: bytes | str, what: str, mapper: Callable[[dict[str, Any]], T]) -> tuple[Item[T], ...]:
    return _rest(body, what, lambda data: _list(_envelope(data)[0], mapper))


def _single(body: bytes | str, what: str, mapper: Callable[[dict[str, Any]], T]) -> Item[T]:
    def build(data: Any) -> Item[T]:
        payload = _envelope(data)[0]
        return _item(_one(payload, mapper, "data"), payload)

    return _rest(body, what, build)


def parse_balance(body: bytes | str) -> Item[Balance]:
    """``GET /user/balance`` (a 200 answer; the 404 that means zero is the REST client's business)."""
    return _single(body, "balance", _balance)


def parse_positions(body: bytes | str) -> tuple[Item[Position], ...]:
    """``GET /user/positions``: every open position."""
    return _items_of(body, "positions", _position)


def parse_open_orders(body: bytes | str) -> tuple[Item[Order], ...]:
    """``GET /user/orders``: every open order."""
    return _items_of(body, "open orders", _order)


def parse_order(body: bytes | str) -> Item[Order]:
    """``GET /user/orders/{id}``."""
    return _single(body, "order", _order)


def parse_orders_history(body: bytes | str, *, limit: int | None = None) -> Page[Order]:
    """``GET /user/orders/history``: one page; ``limit`` (as requested) tells a short last page."""
    return _page(body, "orders history", _order, limit)


def parse_trades(body: bytes | str, *, limit: int | None = None) -> Page[Fill]:
    """``GET /user/trades``: one page, newest first."""
    return _page(body, "trades", _fill, limit)


def parse_funding_history(body: bytes | str, *, limit: int | None = None) -> Page[FundingPayment]:
    """``GET /user/funding/history``: one page. ``amount`` keeps the venue's (undocumented) sign."""
    return _page(body, "funding history", _funding, limit)


def parse_asset_operations(body: bytes | str, *, limit: int | None = None) -> Page[Transfer]:
    """``GET /user/assetOperations``: deposits, withdrawals and transfers, one page, newest first."""
    return _page(body, "asset operations", _transfer, limit)


def parse_account_info(body: bytes | str) -> Item[AccountInfo]:
    """``GET /user/account/info``."""
    return _single(body, "account info", _account_info)
