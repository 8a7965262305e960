"""Paradex parse boundary: golden outputs for every documented example, the mapping rules, keys, and totality.

Golden files (``tests/fixtures/golden/paradex``) were generated once by this code and reviewed field by field
against the protocol notes; set ``STATEKEEPER_UPDATE_GOLDEN=1`` to rewrite them after a deliberate change.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statekeeper.events import (
    AccountBody,
    BalanceBody,
    Event,
    FillBody,
    FillBustBody,
    FundingBody,
    OrderBody,
    PositionBody,
    PositionSide,
    ProtocolMessage,
    Source,
    TransferBody,
    VenueMessage,
    encode_event,
)
from statekeeper.venues import venue_spec
from statekeeper.venues.base import FrameContext, FrameRejection, Item, Page, SequenceKind
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.paradex import SPEC, parse
from statekeeper.venues.paradex.parse import parse_frame
from statekeeper.venues.paradex.wire import DEFAULT_CHANNELS, Channel, channel_family

FIXTURES = Path(__file__).parent / "fixtures"
PROTOCOLS = FIXTURES / "protocols" / "paradex"
GOLDEN = FIXTURES / "golden" / "paradex"
UPDATE_GOLDEN = os.environ.get("STATEKEEPER_UPDATE_GOLDEN") == "1"

SESSION = UUID("6f1c2a54-8d0e-4b7f-9a3c-2e5d7b9c1f40")
RECEIVED = datetime(2026, 11, 22, 9, 30, 0, 123456, tzinfo=UTC)
CTX = FrameContext(account="pdx-main", venue="paradex", session=SESSION, received_at=RECEIVED)
OTHER_CTX = FrameContext(
    account="pdx-main", venue="paradex", session=UUID(int=7), received_at=RECEIVED + timedelta(seconds=3)
)

WS_GOLDEN = (
    "ws_account_notification.schema_example.json",
    "ws_balance_events_notification.schema_example.json",
    "ws_fills_notification.schema_example.json",
    "ws_funding_payments_notification.schema_example.json",
    "ws_orders_notification.schema_example.json",
    "ws_positions_notification.schema_example.json",
    "ws_tradebusts_notification.schema_example.json",
    "ws_transaction_notification.schema_example.json",
    "ws_transfers_notification.schema_example.json",
    "ws_auth_response.docs.json",
    "ws_auth_error.docs.json",
    "ws_subscribe_response.docs.json",
)
REST_GOLDEN: dict[str, Callable[[bytes], Any]] = {
    "rest_account.schema_example.json": parse.parse_account,
    "rest_balance.schema_example.json": parse.parse_balances,
    "rest_fills.schema_example.json": parse.parse_fills,
    "rest_funding_payments.schema_example.json": parse.parse_funding_payments,
    "rest_open_orders.schema_example.json": parse.parse_open_orders,
    "rest_positions.schema_example.json": parse.parse_positions,
}
REQUESTS = (  # what the client sends: asserted in test_paradex_stream.py
    "ws_auth_request.docs.json",
    "ws_subscribe_request.docs.json",
    "ws_unsubscribe_request.docs.json",
)
NOT_CANONICAL = {
    # POST /auth's answer is consumed by paradex-py when it mints a JWT (SdkTokenProvider); it is no account
    # state and never reaches the log. test_paradex_auth.py reads its token's expiry.
    "rest_auth_response.schema_example.json",
}


def fixture_text(name: str) -> str:
    return (PROTOCOLS / name).read_text()


def fixture_json(name: str) -> dict[str, Any]:
    value = json.loads(fixture_text(name))
    assert isinstance(value, dict)
    return value


def parsed(frame: dict[str, Any] | str, ctx: FrameContext = CTX) -> Event:
    outcome = parse_frame(frame if isinstance(frame, str) else json.dumps(frame), ctx)
    assert isinstance(outcome, Event), outcome
    return outcome


def rejected(frame: dict[str, Any] | str | bytes) -> str:
    outcome = parse_frame(frame if isinstance(frame, str | bytes) else json.dumps(frame), CTX)
    assert isinstance(outcome, FrameRejection), outcome
    return outcome.reason


def notification(name: str, **changes: Any) -> dict[str, Any]:
    """The fixture's notification with fields of ``params.data`` replaced (None removes one)."""
    frame = fixture_json(name)
    data = frame["params"]["data"]
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return frame


def compare_golden(name: str, actual: Any) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert actual == expected


def dump_rest(result: Any) -> Any:
    if isinstance(result, Page):
        return {"cursor": result.cursor, "items": [dump_rest(item) for item in result.items]}
    if isinstance(result, tuple):
        return [dump_rest(item) for item in result]
    assert isinstance(result, Item)
    return {"record": result.record.model_dump(mode="json"), "raw": result.raw}


# ------------------------------------------------------------------------------------------------ golden


def test_every_example_is_covered() -> None:
    names = {path.name for path in PROTOCOLS.glob("*.json")}
    covered = set(WS_GOLDEN) | set(REST_GOLDEN) | set(REQUESTS) | NOT_CANONICAL
    assert names == covered


@pytest.mark.parametrize("name", WS_GOLDEN)
def test_ws_golden(name: str) -> None:
    frame = fixture_text(name)
    event = parsed(frame)
    assert event.raw == frame
    assert event.account == "pdx-main"
    assert event.venue == "paradex"
    assert event.source is Source.STREAM
    assert event.session == SESSION
    assert event.seq is None
    assert event.received_at == RECEIVED
    assert not event.snapshot
    encode_event(event)  # the log can store it
    compare_golden(name, event.model_dump(mode="json", exclude={"raw"}))


@pytest.mark.parametrize("name", sorted(REST_GOLDEN))
def test_rest_golden(name: str) -> None:
    result = REST_GOLDEN[name]((PROTOCOLS / name).read_bytes())
    compare_golden(name, dump_rest(result))


def test_golden_values_read_against_the_docs() -> None:
    """The points of the mapping the golden files fix, spelled out."""
    order = parsed(fixture_text("ws_orders_notification.schema_example.json"))
    assert isinstance(order.body, OrderBody)
    (o,) = order.body.orders
    assert (o.qty, o.remaining_qty, o.filled_qty) == (Decimal("0.05"), Decimal("0.05"), Decimal(0))
    assert o.average_price is None  # avg_fill_price ""
    assert o.trigger_price is None  # trigger_price "0"
    assert o.status_reason is None  # cancel_reason ""
    assert (o.reduce_only, o.post_only, o.time_in_force) == (False, False, "GTC")
    assert o.venue_seq == 1681471234972000000
    assert order.key == "order:1681462103821101699438490000:1681471234972000000"
    assert order.venue_time == datetime(2023, 4, 14, 17, 35, 46, 16000, tzinfo=UTC)  # last_updated_at

    position = parsed(fixture_text("ws_positions_notification.schema_example.json"))
    assert isinstance(position.body, PositionBody)
    (p,) = position.body.positions
    assert (p.side, p.size) == (PositionSide.SHORT, Decimal("0.345"))  # size "-0.345"

    auth = parsed(fixture_text("ws_auth_response.docs.json"))
    assert isinstance(auth.body, ProtocolMessage)
    # usIn 1682556415569005368 has 19 digits: nanoseconds, in the docs' example
    assert auth.venue_time == datetime(2023, 4, 27, 0, 46, 55, 569005, tzinfo=UTC)
    error = parsed(fixture_text("ws_auth_error.docs.json"))
    assert isinstance(error.body, ProtocolMessage)
    assert (error.body.error_code, error.body.error_message) == (40111, "Invalid Bearer Token")
    assert error.venue_time == datetime(2024, 3, 15, 17, 16, 12, 729581, tzinfo=UTC)  # usIn in microseconds
    assert error.key == f"rpc:{SESSION}:0"


# -------------------------------------------------------------------------------------------------- keys

NOTIFICATIONS = [name for name in WS_GOLDEN if "notification" in name]


@pytest.mark.parametrize("name", NOTIFICATIONS)
def test_the_same_notification_on_two_connections_is_one_event(name: str) -> None:
    first, second = parsed(fixture_text(name), CTX), parsed(fixture_text(name), OTHER_CTX)
    assert first.key == second.key
    assert not first.key.startswith("rpc:")
    assert SESSION.hex not in first.key.replace("-", "")
    assert encode_event(first).content_hash == encode_event(second).content_hash


def test_keys_of_each_channel() -> None:
    keys = {name.split("_notification")[0]: parsed(fixture_text(name)).key for name in NOTIFICATIONS}
    assert keys == {
        "ws_account": "account:1681471234972000000",
        "ws_balance_events": "balance_event:8615262148007718462:TRANSACTION_FILL:ON_BLOCKCHAIN",
        "ws_fills": "fill:8615262148007718462:FILL",
        "ws_funding_payments": "funding:1681375578221101699352320000",
        "ws_orders": "order:1681462103821101699438490000:1681471234972000000",
        "ws_positions": "position:1234234:1681471234972000000",
        "ws_tradebusts": "tradebust:12342345",
        "ws_transaction": "transaction:12342423:ACCEPTED_ON_L2",
        "ws_transfers": "transfer:123456789:COMPLETED:1681497002041",
    }


def test_updates_of_one_entity_get_their_own_keys() -> None:
    orders = "ws_orders_notification.schema_example.json"
    first = parsed(notification(orders))
    update = parsed(notification(orders, seq_no=1681471234972000001, remaining_size="0.01"))
    assert first.key != update.key
    fills = "ws_fills_notification.schema_example.json"
    assert parsed(notification(fills)).key != parsed(notification(fills, fill_type="LIQUIDATION")).key
    transfers = "ws_transfers_notification.schema_example.json"
    pending = parsed(notification(transfers, status="PENDING"))
    assert pending.key != parsed(notification(transfers)).key


def test_fallback_keys_without_seq_no() -> None:
    order = parsed(notification("ws_orders_notification.schema_example.json", seq_no=None))
    assert order.key == "order:1681462103821101699438490000:at:1681493746016:OPEN:0.05"
    position = parsed(notification("ws_positions_notification.schema_example.json", seq_no=None))
    assert position.key == "position:1234234:at:1681493939981"
    account = parsed(notification("ws_account_notification.schema_example.json", seq_no=None))
    assert account.key == "account:at:1681471234972"
    balance = parsed(notification("ws_balance_events_notification.schema_example.json", fill_id=None))
    assert balance.key == "balance_event:at:1681497002041:TRANSACTION_FILL:ON_BLOCKCHAIN"


def test_rpc_answers_are_keyed_by_session_and_id() -> None:
    frame = fixture_text("ws_subscribe_response.docs.json")
    assert parsed(frame, CTX).key == f"rpc:{SESSION}:1"
    assert parsed(frame, OTHER_CTX).key == f"rpc:{UUID(int=7)}:1"
    no_id = '{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
    keyed = parsed(no_id)
    assert keyed.key.startswith(f"rpc:{SESSION}:sha256:")
    assert parsed(no_id).key == keyed.key
    assert parsed(no_id.replace("Parse", "parse")).key != keyed.key
    assert isinstance(keyed.body, ProtocolMessage)
    assert keyed.body.request_id is None
    assert keyed.body.error_code == -32700
    assert keyed.venue_time == RECEIVED  # no usIn
    assert parsed('{"jsonrpc":"2.0","result":{},"id":"abc","usIn":1710522972729581}').key == f"rpc:{SESSION}:abc"


def test_rpc_venue_time() -> None:
    def at(us_in: object) -> datetime:
        return parsed({"jsonrpc": "2.0", "result": {"channel": "x"}, "id": 3, "usIn": us_in}).venue_time

    assert at(1710522972729581) == datetime(2024, 3, 15, 17, 16, 12, 729581, tzinfo=UTC)
    assert at(1710522972729581000) == datetime(2024, 3, 15, 17, 16, 12, 729581, tzinfo=UTC)
    for unusable in (None, "1710522972729581", -5, 0, True, 10**40):
        assert at(unusable) == RECEIVED


# ------------------------------------------------------------------------------------------------ orders


def order_of(frame: dict[str, Any]) -> Any:
    event = parsed(frame)
    assert isinstance(event.body, OrderBody)
    return event.body.orders[0]


ORDERS = "ws_orders_notification.schema_example.json"


def test_market_order_price_zero_is_no_price() -> None:
    assert order_of(notification(ORDERS, type="MARKET", price="0")).price is None
    assert order_of(notification(ORDERS, type="STOP_MARKET", price="0")).price is None
    assert order_of(notification(ORDERS, type="LIMIT", price="0")).price == Decimal(0)
    assert order_of(notification(ORDERS, type="MARKET", price="26000.5")).price == Decimal("26000.5")


def test_order_fields() -> None:
    order = order_of(
        notification(
            ORDERS,
            status="CLOSED",
            cancel_reason="USER_CANCELED",
            avg_fill_price="26001.25",
            remaining_size="0.02",
            flags=["REDUCE_ONLY", "INTERACTIVE"],
            instruction="POST_ONLY",
            trigger_price="25000",
            client_id="",
        )
    )
    assert order.status == "CLOSED"
    assert order.status_reason == "USER_CANCELED"
    assert order.average_price == Decimal("26001.25")
    assert order.filled_qty == Decimal("0.03")
    assert order.reduce_only is True
    assert order.post_only is True
    assert order.time_in_force == "POST_ONLY"
    assert order.trigger_price == Decimal(25000)
    assert order.client_order_id is None
    assert order_of(notification(ORDERS, flags=None, instruction=None)).reduce_only is None


def test_filled_quantity_is_exact() -> None:
    size, remaining = "0.1234567890123456789012345678901234", "0.0000000000000000000000000000000001"
    order = order_of(notification(ORDERS, size=size, remaining_size=remaining))
    assert order.filled_qty == Decimal("0.1234567890123456789012345678901233")
    assert str(order.filled_qty) == "0.1234567890123456789012345678901233"
    huge = order_of(notification(ORDERS, size="123456789012345678901234567890.5", remaining_size="0.25"))
    assert huge.filled_qty == Decimal("123456789012345678901234567890.25")


def test_impossible_orders_are_rejected() -> None:
    assert "exceeds size" in rejected(notification(ORDERS, remaining_size="0.06"))
    assert "side" in rejected(notification(ORDERS, side="LONG"))
    assert "digits" in rejected(notification(ORDERS, size="1E+500", remaining_size="1E-500"))
    assert "seq_no" in rejected(notification(ORDERS, seq_no=2**64))


# ------------------------------------------------------------------------------------- other channels

POSITIONS = "ws_positions_notification.schema_example.json"
TRANSFERS = "ws_transfers_notification.schema_example.json"
FILLS = "ws_fills_notification.schema_example.json"


def position_of(frame: dict[str, Any]) -> Any:
    event = parsed(frame)
    assert isinstance(event.body, PositionBody)
    return event.body.positions[0]


def test_position_size_is_absolute_and_side_gives_direction() -> None:
    short = position_of(notification(POSITIONS))
    assert (short.side, short.size) == (PositionSide.SHORT, Decimal("0.345"))
    # third-party captures show an unsigned size beside the side
    unsigned = position_of(notification(POSITIONS, size="0.345"))
    assert (unsigned.side, unsigned.size) == (PositionSide.SHORT, Decimal("0.345"))
    long = position_of(notification(POSITIONS, size="1.5", side="LONG"))
    assert (long.side, long.size) == (PositionSide.LONG, Decimal("1.5"))
    by_sign = position_of(notification(POSITIONS, side=None))
    assert (by_sign.side, by_sign.size) == (PositionSide.SHORT, Decimal("0.345"))
    closed = position_of(notification(POSITIONS, size="0", status="CLOSED", closed_at=1681493999999))
    assert (closed.side, closed.size, closed.status) == (PositionSide.SHORT, Decimal(0), "CLOSED")
    flat = position_of(notification(POSITIONS, realized_positional_pnl="0", realized_pnl="5"))
    assert flat.realised_pnl == Decimal(0)
    precise = position_of(notification(POSITIONS, size="-0.12345678901234567890123456789012"))
    assert str(precise.size) == "0.12345678901234567890123456789012"
    assert "LONG" in rejected(notification(POSITIONS, side="LONG"))


def test_transfer_amount_is_signed_by_direction() -> None:
    def amount_of(frame: dict[str, Any]) -> Decimal:
        event = parsed(frame)
        assert isinstance(event.body, TransferBody)
        return event.body.transfers[0].amount

    assert amount_of(notification(TRANSFERS)) == Decimal(100)
    assert amount_of(notification(TRANSFERS, kind="WITHDRAWAL", direction="OUT", amount="2.5")) == Decimal("-2.5")
    assert amount_of(notification(TRANSFERS, kind="WITHDRAWAL", direction=None, amount="2.5")) == Decimal("-2.5")
    assert amount_of(notification(TRANSFERS, kind="VAULT_DEPOSIT", direction="OUT")) == Decimal(-100)
    assert "does not tell" in rejected(notification(TRANSFERS, kind="VAULT_DEPOSIT", direction=None))
    assert "negative" in rejected(notification(TRANSFERS, amount="-100"))
    assert "IN or OUT" in rejected(notification(TRANSFERS, direction="SIDEWAYS"))


def test_funding_payment_sign_is_kept() -> None:
    event = parsed(notification("ws_funding_payments_notification.schema_example.json", payment="-0.0421"))
    assert isinstance(event.body, FundingBody)
    assert event.body.payments[0].amount == Decimal("-0.0421")


def test_fill_fields() -> None:
    event = parsed(notification(FILLS, liquidity="TAKER", order_id="", fee="-0.01"))
    assert isinstance(event.body, FillBody)
    fill = event.body.fills[0]
    assert fill.is_taker is True
    assert fill.order_id is None
    assert fill.fee == Decimal("-0.01")
    assert (fill.qty, fill.fee_asset, fill.fill_type) == (Decimal("0.5"), "USDC", "FILL")
    assert "liquidity" in rejected(notification(FILLS, liquidity="BOTH"))


def test_every_channel_maps_to_its_body() -> None:
    kinds = {name: type(parsed(fixture_text(name)).body) for name in NOTIFICATIONS}
    assert kinds == {
        "ws_account_notification.schema_example.json": AccountBody,
        "ws_balance_events_notification.schema_example.json": BalanceBody,
        "ws_fills_notification.schema_example.json": FillBody,
        "ws_funding_payments_notification.schema_example.json": FundingBody,
        "ws_orders_notification.schema_example.json": OrderBody,
        "ws_positions_notification.schema_example.json": PositionBody,
        "ws_tradebusts_notification.schema_example.json": FillBustBody,
        "ws_transaction_notification.schema_example.json": VenueMessage,
        "ws_transfers_notification.schema_example.json": TransferBody,
    }


def test_market_channels_are_recognised() -> None:
    frame = fixture_json(FILLS)
    frame["params"]["channel"] = "fills.BTC-USD-PERP"
    assert isinstance(parsed(frame).body, FillBody)
    assert channel_family("fills.") is None
    assert channel_family("fills") is None
    assert channel_family("positions.ALL") is None
    assert all(channel_family(channel) is not None for channel in Channel)
    assert Channel.TRANSACTION not in DEFAULT_CHANNELS


def test_transaction_keeps_its_data_exactly() -> None:
    frame = '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"transaction","data":{"id":"9",'
    frame += '"type":"TRANSACTION_FILL","state":"REVERTED","hash":"0x1","created_at":1681497002041,'
    frame += '"completed_at":0,"fee":0.10000000000000000001,"n":123456789012345678901234567890}}}'
    event = parsed(frame)
    assert isinstance(event.body, VenueMessage)
    assert event.body.data == {
        "id": "9",
        "type": "TRANSACTION_FILL",
        "state": "REVERTED",
        "hash": "0x1",
        "created_at": 1681497002041,
        "completed_at": 0,
        "fee": "0.10000000000000000001",
        "n": "123456789012345678901234567890",
    }
    assert event.venue_time == datetime(2023, 4, 14, 18, 30, 2, 41000, tzinfo=UTC)  # completed_at 0: created_at
    encode_event(event)


def test_numbers_sent_as_json_numbers_are_read_exactly() -> None:
    frame = fixture_text(FILLS).replace('"size": "0.5"', '"size": 0.10000000000000000000001')
    frame = frame.replace('"id": "8615262148007718462"', '"id": 123456789012345678901234567890')
    event = parsed(frame)
    assert isinstance(event.body, FillBody)
    assert event.body.fills[0].qty == Decimal("0.10000000000000000000001")
    assert event.body.fills[0].fill_id == "123456789012345678901234567890"


def test_shapes_seen_in_third_party_captures() -> None:
    """Answers quoted by a third-party client (ccxt's paradex.ts): fields missing, older spellings."""
    position = {
        "id": "0x49ddd7a564c978f6e4089ff8355b56a42b7e2d48ba282cb5aad60f04bea0ec3-BTC-USD-PERP",
        "market": "BTC-USD-PERP",
        "status": "OPEN",
        "side": "LONG",
        "size": "0.01",
        "average_entry_price": "64839.96053748",
        "realized_pnl": "0",
        "unrealized_pnl": "-2.39677214",
        "last_updated_at": 1718950074249,
        "seq_no": 1718950074249176253,
        "liquidation_price": "",
    }
    (item,) = parse.parse_positions(json.dumps({"results": [position]}).encode())
    assert (item.record.side, item.record.size, item.record.realised_pnl) == (
        PositionSide.LONG,
        Decimal("0.01"),
        Decimal(0),
    )
    assert (item.record.liquidation_price, item.record.created_at) == (None, None)
    transfer = {
        "id": "1718940471200201703989430000",
        "kind": "DEPOSIT",
        "status": "COMPLETED",
        "amount": "100000",
        "token": "USDC",
        "created_at": 1718940471208,
        "last_updated_at": 1718941455546,
        "txn_hash": "0x73a415ca558a97bbdcd1c43e52b45f1e0486a0a84b3bb4958035ad6c59cb866",
        "external_txn_hash": "",
        "socialized_loss_factor": "",
    }
    (deposit,) = parse.parse_transfers(json.dumps({"next": None, "prev": None, "results": [transfer]}).encode()).items
    assert deposit.record.amount == Decimal(100000)  # no direction: a DEPOSIT comes in
    fill = {
        "id": "1718947571560201703986670001",
        "side": "BUY",
        "liquidity": "TAKER",
        "market": "BTC-USD-PERP",
        "order_id": "1718947571540201703992340000",
        "price": "64852.9",
        "size": "0.01",
        "fee": "0.1945587",
        "fee_currency": "USDC",
        "created_at": 1718947571569,
        "remaining_size": "0",
        "client_id": "",
        "fill_type": "FILL",
    }
    (taker,) = parse.parse_fills(json.dumps({"next": None, "results": [fill]}).encode()).items
    assert (taker.record.is_taker, taker.record.client_order_id, taker.record.realized_pnl) == (True, None, None)


def test_an_unwind_transfer_has_one_fill_type_on_the_stream_and_over_rest() -> None:
    """The REST enum names UNWIND_TRANSFER "TRANSFER" (protocols/README 2.5): one fill, one key (id, fill_type)."""
    streamed = parsed(notification(FILLS, fill_type="UNWIND_TRANSFER"))
    assert isinstance(streamed.body, FillBody)
    answer = json.loads(fixture_text("rest_fills.schema_example.json"))
    answer["results"] = [dict(answer["results"][0], fill_type="TRANSFER")]
    (fetched,) = parse.parse_fills(json.dumps(answer).encode()).items
    assert streamed.body.fills[0].fill_type == fetched.record.fill_type == "UNWIND_TRANSFER"
    assert '"TRANSFER"' in fetched.raw  # the venue's own word stays in the raw message


# -------------------------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ("[1, 2]", "expected an object"),
        ('{"jsonrpc":"2.0"}', "neither a notification"),
        ('{"method":"heartbeat"}', "expected 'subscription'"),
        ('{"method":"subscription","params":{"channel":"bbo.BTC-USD-PERP","data":{}}}', "unknown channel"),
        ('{"method":"subscription","params":{"channel":"orders.ALL","data":[]}}', "expected an object"),
        ('{"method":"subscription","params":{"channel":"orders.ALL"}}', "frame.params.data: missing"),
        ('{"method":"subscription"}', "frame.params: missing"),
        ('{"result":{},"id":true}', "frame.id"),
        ('{"error":"nope","id":1}', "frame.error"),
    ],
)
def test_rejections_say_why(frame: str | bytes, reason: str) -> None:
    assert reason in rejected(frame)


def test_missing_fields_are_named() -> None:
    assert rejected(notification(FILLS, price=None)) == "fills data.price: missing"
    assert rejected(notification(ORDERS, size="abc")) == "orders data.size: 'abc' is not a decimal number"
    tradebust = notification("ws_tradebusts_notification.schema_example.json", created_at=None)
    assert "created_at: missing" in rejected(tradebust)
    assert "last_updated_at/created_at: missing" in rejected(
        notification(ORDERS, last_updated_at=None, created_at=None)
    )


def test_a_nul_character_is_rejected_not_stored() -> None:
    frame = fixture_text(FILLS).replace('"market": "BTC-USD-PERP"', '"market": "BTC\\u0000"')
    assert "NUL" in rejected(frame)
    escaped = fixture_text(FILLS).replace('"client_id": "x1234"', '"client_id": "a\\\\u0000"')
    event = parsed(escaped)  # a backslash followed by the text u0000 is no NUL
    assert isinstance(event.body, FillBody)
    assert event.body.fills[0].client_order_id == "a\\u0000"


def test_spec() -> None:
    assert venue_spec("paradex") is SPEC
    assert SPEC.name == "paradex"
    assert SPEC.sequence is SequenceKind.SPARSE
    assert SPEC.ws_url == "wss://ws.api.prod.paradex.trade/v1"
    assert SPEC.rest_url == "https://api.prod.paradex.trade/v1"
    assert SPEC.parse_frame is parse_frame


# ---------------------------------------------------------------------------------------------- REST


def test_positions_endpoint_keeps_open_positions_only() -> None:
    body = fixture_json("rest_positions.schema_example.json")
    closed = {**body["results"][0], "id": "2", "status": "CLOSED", "size": "0"}
    unknown = {**body["results"][0], "id": "3"}
    del unknown["status"]
    items = parse.parse_positions(json.dumps({"results": [body["results"][0], closed, unknown]}).encode())
    assert [item.record.position_id for item in items] == ["1234234", "3"]


def test_rest_items_keep_their_json() -> None:
    (item,) = parse.parse_balances(b'{"results":[{"token":"USDC","size":0.1000000000000000000001}]}')
    assert item.record.balance == Decimal("0.1000000000000000000001")
    assert item.raw == '{"token":"USDC","size":0.1000000000000000000001}'
    assert item.record.updated_at is None


def test_pages() -> None:
    page = parse.parse_fills((PROTOCOLS / "rest_fills.schema_example.json").read_bytes())
    assert page.cursor == "eyJmaWx0ZXIiMsIm1hcmtlciI6eyJtYXJrZXIiOiIxNjc1NjUwMDE3NDMxMTAxNjk5N="
    assert parse.parse_fills(b'{"next":"","results":[]}') == Page((), None)
    assert parse.parse_tradebusts(b'{"results":[]}') == Page((), None)
    busts = parse.parse_tradebusts(b'{"next":null,"results":[{"busted_fill_id":"7","created_at":1681497002041}]}')
    assert busts.items[0].record.fill_id == "7"


@pytest.mark.parametrize(
    ("parser", "body", "reason"),
    [
        (parse.parse_balances, b"<html>502</html>", "not JSON"),
        (parse.parse_balances, b'{"results":{}}', "balance.results: expected an array"),
        (parse.parse_balances, b"{}", "balance.results: missing"),
        (parse.parse_balances, b'{"results":[{"token":"USDC"}]}', "balance.results[0].size: missing"),
        (parse.parse_fills, b'{"next":5,"results":[]}', "fills.next"),
        (parse.parse_account, b"[]", "account: expected an object"),
        (parse.parse_order, b'{"error":"NOT_FOUND"}', "order.type: missing"),
        (parse.parse_transfers, b"\xff", "not UTF-8"),
    ],
)
def test_malformed_rest_answers_are_response_errors(parser: Callable[[bytes], Any], body: bytes, reason: str) -> None:
    with pytest.raises(VenueResponseError, match="paradex GET") as info:
        parser(body)
    assert reason in str(info.value)


# ------------------------------------------------------------------------------------------ properties

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 5, max_value=2**90),
    st.floats(),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "0",
            "-0",
            "1e400",
            "NaN",
            "BUY",
            "SELL",
            "LONG",
            "SHORT",
            "MAKER",
            "TAKER",
            "IN",
            "OUT",
            "OPEN",
            "CLOSED",
            "MARKET",
            "LIMIT",
            "FILL",
            "REDUCE_ONLY",
            "POST_ONLY",
            "DEPOSIT",
            "VAULT_DEPOSIT",
            "\x00",
        ]
    ),
    st.integers(min_value=0, max_value=2**64),
    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_NOTIFICATION_EXAMPLES = [fixture_json(name) for name in NOTIFICATIONS]
_RPC_EXAMPLES = [fixture_json(name) for name in WS_GOLDEN if "notification" not in name]


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A documented frame with some of its fields replaced, removed or added: plausible, often invalid."""
    frame = json.loads(json.dumps(draw(st.sampled_from(_NOTIFICATION_EXAMPLES + _RPC_EXAMPLES))))
    target = frame["params"]["data"] if "params" in frame else frame
    for key in draw(st.lists(st.sampled_from([*target, "extra"]), max_size=4, unique=True)):
        if draw(st.booleans()):
            target[key] = draw(_VALUES)
        else:
            target.pop(key, None)
    if "params" in frame and draw(st.integers(0, 9)) == 0:
        frame["params"]["channel"] = draw(st.sampled_from([*(c.value for c in Channel), "fills.ETH-USD-PERP", "x"]))
    return json.dumps(frame)


@st.composite
def random_notifications(draw: st.DrawFn) -> str:
    """The right channel and keys, every value random."""
    example = draw(st.sampled_from(_NOTIFICATION_EXAMPLES))
    keys = list(example["params"]["data"])
    data = {key: draw(_VALUES) for key in keys if draw(st.integers(0, 9)) > 0}
    frame = {
        "jsonrpc": "2.0",
        "method": "subscription",
        "params": {"channel": example["params"]["channel"], "data": data},
    }
    return json.dumps(frame)


def check_outcome(frame: str | bytes) -> None:
    outcome = parse_frame(frame, CTX)
    if isinstance(outcome, FrameRejection):
        assert outcome.reason
        return
    assert isinstance(outcome, Event)
    assert outcome.raw == (frame if isinstance(frame, str) else frame.decode())
    assert outcome.session == SESSION
    assert outcome.seq is None
    encoded = encode_event(outcome)  # whatever parse accepts, the log can store
    again = parse_frame(frame, OTHER_CTX)
    assert isinstance(again, Event)
    if isinstance(outcome.body, ProtocolMessage):
        assert again.key != outcome.key  # request ids restart per connection
    else:
        assert again.key == outcome.key
        assert encode_event(again).content_hash == encoded.content_hash


@given(st.one_of(st.text(), st.binary()))
def test_parse_frame_never_raises_on_arbitrary_input(frame: str | bytes) -> None:
    assert isinstance(parse_frame(frame, CTX), Event | FrameRejection)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_parse_frame_is_total_on_mutated_frames(frame: str) -> None:
    check_outcome(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(random_notifications())
def test_parse_frame_is_total_on_random_notifications(frame: str) -> None:
    check_outcome(frame)


_REST_PARSERS: list[Callable[[bytes], Any]] = [
    parse.parse_account,
    parse.parse_balances,
    parse.parse_positions,
    parse.parse_open_orders,
    parse.parse_order,
    parse.parse_orders_history,
    parse.parse_fills,
    parse.parse_funding_payments,
    parse.parse_transfers,
    parse.parse_tradebusts,
]
_REST_ITEMS = [item for name in REST_GOLDEN for item in (fixture_json(name).get("results") or [fixture_json(name)])] + [
    fixture_json(n)["params"]["data"] for n in NOTIFICATIONS
]


@st.composite
def rest_bodies(draw: st.DrawFn) -> bytes:
    item = dict(draw(st.sampled_from(_REST_ITEMS)))
    for key in draw(st.lists(st.sampled_from([*item, "extra"]), max_size=4, unique=True)):
        item[key] = draw(_VALUES)
    shape = draw(st.sampled_from(["page", "results", "item", "junk"]))
    if shape == "junk":
        return json.dumps(draw(_VALUES)).encode()
    if shape == "item":
        return json.dumps(item).encode()
    body: dict[str, Any] = {"results": [item]}
    if shape == "page":
        body["next"] = draw(_VALUES)
    return json.dumps(body).encode()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_REST_PARSERS), st.one_of(st.binary(), rest_bodies()))
def test_rest_parsers_raise_only_response_errors(parser: Callable[[bytes], Any], body: bytes) -> None:
    with contextlib.suppress(VenueResponseError):
        parser(body)


def test_rpc_error_data_is_kept() -> None:
    frame = '{"jsonrpc":"2.0","error":{"code":-32602,"message":"bad params","data":{"field":"channel"}},"id":7}'
    event = parse_frame(frame, CTX)
    assert isinstance(event, Event)
    assert isinstance(event.body, ProtocolMessage)
    assert event.body.error_data == {"field": "channel"}
    assert event.body.error_code == -32602
