"""Properties of Extended's parse boundary, on inputs nobody wrote by hand.

* ``parse_frame`` never raises: arbitrary text and bytes, and frames with the right keys but random values
  (numbers, floats, huge integers, nulls, nested junk), give an ``Event`` or a ``FrameRejection`` with a reason;
* an event it gives is exactly what pydantic's validation would have built (the parser skips it for speed);
* ids beyond 2**64 and decimal amounts survive digit for digit, whether sent as JSON numbers or strings;
* the REST parsers raise nothing but ``VenueResponseError`` on bad input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statekeeper.errors import InvalidEvent
from statekeeper.events import Event, encode_event
from statekeeper.venues.base import FrameRejection
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.extended import parse as p
from statekeeper.venues.extended import parse_frame
from tests.test_extended_parse import CTX, ORDER, TRADE, frame, parsed

# --------------------------------------------------------------------------------------------- strategies

huge_ints = st.integers(min_value=2**63 - 3, max_value=2**80) | st.integers(max_value=-(2**63) + 3, min_value=-(2**80))
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats()
    | st.text(max_size=12)
    | st.decimals(allow_nan=False, allow_infinity=False).map(str)
)
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
good_decimals = st.decimals(min_value=-(10**12), max_value=10**12, allow_nan=False, allow_infinity=False).map(str)
decimal_strings = good_decimals | st.sampled_from(["", "NaN", "Infinity", "1e5", "abc", " 2 ", "-0"]) | st.floats()
good_ids = st.integers(min_value=0, max_value=2**200) | st.text(min_size=1, max_size=20).filter(str.strip)
ids = good_ids | huge_ints | st.just("")
good_times = st.integers(min_value=10**12, max_value=2 * 10**12)
times = good_times | st.integers(min_value=-5, max_value=2**64) | st.sampled_from([0, "", "1715885884837", 1701563440])
good_names = st.sampled_from(["BTC-USD", "ETH-USD", "SOL-USD"])
names = good_names | st.sampled_from(["", "X" * 101]) | st.text(max_size=5)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value most of the time, junk sometimes."""
    return st.one_of(strategy, strategy, strategy, junk)


Fields = dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]


def record(fields: Fields) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the right keys: all good values (often), or some keys missing and some values junk."""
    clean = st.fixed_dictionaries({name: good for name, (good, _) in fields.items()})
    dirty = st.fixed_dictionaries({}, optional={name: maybe(good | bad) for name, (good, bad) in fields.items()})
    return st.one_of(clean, clean, dirty)


def flags(*values: str) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    return st.sampled_from(values), st.text(max_size=5)


DECIMAL = (good_decimals, decimal_strings)
ID = (good_ids, ids)
TIME = (good_times, times)
NAME = (good_names, names)
BOOL = (st.booleans(), junk)
TEXT = (st.text(max_size=8), junk)

orders = record({
    "id": ID, "accountId": ID, "externalId": TEXT, "market": NAME, "type": flags("LIMIT", "TPSL", "MARKET"),
    "side": flags("BUY", "SELL"), "status": flags("NEW", "FILLED", "CANCELLED", "SOMETHING_NEW"),
    "statusReason": TEXT, "price": DECIMAL, "averagePrice": DECIMAL, "qty": DECIMAL, "filledQty": DECIMAL,
    "payedFee": DECIMAL, "reduceOnly": BOOL, "postOnly": BOOL, "timeInForce": flags("GTT", "IOC"),
    "createdTime": TIME, "updatedTime": TIME, "updatedAt": TIME, "expireTime": TIME, "expiryTime": TIME,
    "trigger": (st.fixed_dictionaries({"triggerPrice": good_decimals, "direction": st.sampled_from(["UP"])}), junk),
})  # fmt: skip
trades = record({
    "id": ID, "orderId": ID, "externalOrderId": TEXT, "market": NAME, "side": flags("BUY", "SELL"),
    "price": DECIMAL, "qty": DECIMAL, "value": DECIMAL, "fee": DECIMAL, "isTaker": BOOL,
    "tradeType": flags("TRADE", "LIQUIDATION", "DELEVERAGE"), "createdTime": TIME,
})  # fmt: skip
balances = record({
    "collateralName": NAME, "balance": DECIMAL, "equity": DECIMAL, "availableForTrade": DECIMAL,
    "marginRatio": DECIMAL, "status": TEXT, "updatedTime": TIME,
})  # fmt: skip
positions = record({
    "id": ID, "market": NAME, "side": flags("LONG", "SHORT"), "size": (good_decimals.filter(lambda v: "-" not in v),
    decimal_strings), "openPrice": DECIMAL, "markPrice": DECIMAL, "leverage": DECIMAL, "adl": (junk, junk),
    "createdAt": TIME, "updatedAt": TIME, "updatedTime": TIME,
})  # fmt: skip
spot_balances = record({"asset": NAME, "balance": DECIMAL, "availableToWithdraw": DECIMAL, "updatedAt": TIME})
operations = record({
    "id": ID, "type": flags("DEPOSIT", "WITHDRAWAL", "TRANSFER"), "status": flags("COMPLETED", "CREATED"),
    "amount": DECIMAL, "asset": (st.integers() | st.text(min_size=1, max_size=4), junk), "time": TIME,
})  # fmt: skip


def lists(strategy: st.SearchStrategy[Any]) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    return st.lists(strategy, max_size=3), junk


payload_fields: Fields = {
    "isSnapshot": BOOL,
    "orders": lists(orders),
    "trades": lists(trades),
    "balance": (balances, junk),
    "positions": lists(positions),
    "spotBalances": lists(spot_balances),
    "deposit": (operations, junk),
    "withdrawals": lists(operations),
    "assetOperations": lists(operations),
}
payloads = record(payload_fields)  # every data key at once, often: the parser reads the one its type names
message_types = st.sampled_from([
    "ORDER", "TRADE", "BALANCE", "POSITION", "SPOT_BALANCE", "DEPOSIT", "TRANSFER", "WITHDRAWAL", "SNAPSHOT",
    "DELTA", "FUNDING", "ACCOUNT.ORDER", "order",
])  # fmt: skip
error_objects = {"code": st.integers() | st.text(max_size=4) | junk, "message": st.text(max_size=8) | junk}
errors = st.none() | st.text(max_size=10) | st.just("") | st.fixed_dictionaries({}, optional=error_objects)
envelopes = record({
    "type": (message_types, junk),
    "data": (payloads, junk),
    "ts": TIME,
    "seq": (st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=-2, max_value=2**64)),
    "error": (st.none(), errors),
})  # fmt: skip


def as_frame(envelope: dict[str, Any], as_bytes: bool) -> str | bytes:
    text = json.dumps(envelope)  # NaN and Infinity come out as non-JSON literals: they must be rejected too
    return text.encode() if as_bytes else text


# -------------------------------------------------------------------------------------------- properties


def check_outcome(raw: str | bytes, outcome: Event | FrameRejection) -> None:
    if isinstance(outcome, FrameRejection):
        assert outcome.reason
        assert not outcome.reason.startswith("parser error"), outcome.reason  # a clean reason, not a bug
        return
    assert isinstance(outcome, Event)
    text = raw if isinstance(raw, str) else raw.decode()
    assert outcome.raw == text
    twin = Event.model_validate(outcome.model_dump())
    assert twin == outcome
    try:
        assert encode_event(outcome).content_hash == encode_event(twin).content_hash
    except InvalidEvent:
        assert "\\u0000" in text  # only a NUL, which the log refuses: the caller stores the frame as rejected


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_arbitrary_input_never_raises(raw: str | bytes) -> None:
    check_outcome(raw, parse_frame(raw, CTX))


@settings(max_examples=400)
@given(envelopes, st.booleans())
def test_plausible_frames_never_raise(envelope: dict[str, Any], as_bytes: bool) -> None:
    raw = as_frame(envelope, as_bytes)
    outcome = parse_frame(raw, CTX)
    check_outcome(raw, outcome)
    assert parse_frame(raw.decode() if isinstance(raw, bytes) else raw.encode(), CTX) == outcome


@given(st.integers(min_value=2**64, max_value=10**120), st.integers(min_value=2**64, max_value=10**120), st.booleans())
def test_ids_beyond_64_bits_survive_exactly(order_id: int, trade_id: int, as_string: bool) -> None:
    value: int | str = str(order_id) if as_string else order_id
    order = parsed(frame("ORDER", {"orders": [{**ORDER, "id": value}]})).body.orders[0]  # type: ignore[union-attr]
    assert order.order_id == str(order_id)
    fill = parsed(frame("TRADE", {"trades": [{**TRADE, "id": trade_id, "orderId": order_id}]})).body.fills[0]  # type: ignore[union-attr]
    assert (fill.fill_id, fill.order_id) == (str(trade_id), str(order_id))


@given(
    st.decimals(min_value=-(10**30), max_value=10**30, allow_nan=False, allow_infinity=False, places=None),
    st.booleans(),
)
def test_amounts_survive_exactly(value: Decimal, as_number: bool) -> None:
    text = format(value, "f")
    raw = frame("TRADE", {"trades": [{**TRADE, "price": "@", "fee": "@"}]})
    raw = raw.replace('"@"', text if as_number else json.dumps(text))
    fill = parsed(raw).body.fills[0]  # type: ignore[union-attr]
    assert fill.price == value
    assert str(fill.price) == str(Decimal(text))  # the digits as sent, trailing zeros included
    assert fill.fee == value


REST_PARSERS: list[Callable[[bytes], object]] = [
    p.parse_balance,
    p.parse_positions,
    p.parse_open_orders,
    p.parse_order,
    p.parse_orders_history,
    p.parse_trades,
    p.parse_funding_history,
    p.parse_asset_operations,
    p.parse_account_info,
]
rest_items = orders | trades | balances | positions | operations | junk
rest_bodies = record({
    "status": (st.sampled_from(["OK", "ok"]), st.sampled_from(["ERROR", "error", "WAT"]) | junk),
    "data": (st.lists(rest_items, max_size=3) | rest_items, junk),
    "error": (st.none(), errors),
    "pagination": (st.fixed_dictionaries({"cursor": good_ids, "count": st.integers()}), junk),
})  # fmt: skip


@pytest.mark.parametrize("parser", REST_PARSERS, ids=lambda parser: parser.__name__)
@given(body=st.binary(max_size=200) | rest_bodies.map(lambda d: json.dumps(d).encode()))
def test_rest_parsers_raise_only_response_errors(parser: Callable[[bytes], object], body: bytes) -> None:
    try:
        parser(body)
    except VenueResponseError as exc:
        error = exc
    else:
        return
    assert "parser error" not in str(error), str(error)
