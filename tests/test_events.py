"""The canonical event model: pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from statekeeper.errors import InvalidEvent
from statekeeper.events import (
    Balance,
    BalanceBody,
    CloseReason,
    Event,
    EventKind,
    Fill,
    FillBody,
    Order,
    OrderBody,
    RejectedFrame,
    SessionClosed,
    Side,
    Source,
    canonical_json,
    encode_event,
    natural_key,
    parse_body,
    session_seq_key,
)
from tests.factories import T0, fill, fill_event

SESSION = UUID("3f2b8c1e-0000-4000-8000-000000000001")


def test_numbered_frame_key_is_session_and_seq() -> None:
    event = fill_event(session=SESSION, seq=7)
    assert event.key == f"seq:{SESSION}:7" == session_seq_key(SESSION, 7)


def test_numbered_frame_refuses_another_key() -> None:
    with pytest.raises(ValidationError, match="key of a numbered frame"):
        Event(
            account="a",
            venue="extended",
            source=Source.STREAM,
            body=FillBody(fills=(fill(),)),
            venue_time=T0,
            received_at=T0,
            session=SESSION,
            seq=1,
            key="something-else",
        )


def test_seq_needs_a_session() -> None:
    with pytest.raises(ValidationError, match="stream session"):
        fill_event(seq=3)


def test_unnumbered_event_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="needs a key"):
        Event(account="a", venue="paradex", source=Source.REST, body=FillBody(fills=(fill(),)), venue_time=T0,
              received_at=T0)  # fmt: skip


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        fill("1", at=datetime(2026, 1, 1, 12, 0))  # noqa: DTZ001 - the point of the test


def test_times_are_converted_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    f = fill("1", at=datetime(2026, 1, 1, 13, 0, tzinfo=paris))
    assert f.created_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert f.created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("bad", [0.1, float("nan"), True, "NaN", "Infinity", "abc"])
def test_amounts_refuse_floats_and_non_numbers(bad: object) -> None:
    with pytest.raises(ValidationError):
        Balance(asset="USD", balance=bad)  # type: ignore[arg-type]


def test_decimal_strings_are_kept_exactly() -> None:
    body = BalanceBody(balances=(Balance(asset="USD", balance=Decimal("12400.000000")),))
    payload = orjson.loads(encode_event(_balance_event(body)).payload)
    assert payload["balances"][0]["balance"] == "12400.000000"


def test_venue_ids_are_strings_even_beyond_bigint() -> None:
    huge = str(2**63)
    assert fill(huge).fill_id == huge
    with pytest.raises(ValidationError):
        Fill.model_validate({"fill_id": 2**63, "market": "BTC-USD", "side": "BUY", "price": "1", "qty": "1",
                             "fee": "0", "created_at": T0})  # fmt: skip


def test_only_state_kinds_can_be_snapshots() -> None:
    with pytest.raises(ValidationError, match="cannot be a snapshot"):
        Event(account="a", venue="paradex", source=Source.REST, body=FillBody(fills=(fill(),)), snapshot=True,
              venue_time=T0, received_at=T0, key="k")  # fmt: skip
    assert _balance_event(BalanceBody(balances=()), snapshot=True).snapshot


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        parse_body({"kind": "session_closed", "reason": "gap", "surprise": 1})


def test_raw_frame_with_nul_is_refused() -> None:
    with pytest.raises(ValidationError, match="NUL"):
        fill_event(raw='{"a":"\x00"}')


def test_payload_with_nul_cannot_be_encoded() -> None:
    event = fill_event()
    poisoned = event.model_copy(update={"body": FillBody(fills=(fill("x\x00y"),))})
    with pytest.raises(InvalidEvent, match="NUL"):
        encode_event(poisoned)


def test_natural_key_cannot_collide_through_separators() -> None:
    assert natural_key("fill", "a:b", "c") != natural_key("fill", "a", "b:c")
    assert natural_key("fill", 12, "FILL") == "fill:12:FILL"
    with pytest.raises(ValueError, match="at least one part"):
        natural_key()


def test_account_names_are_checked() -> None:
    with pytest.raises(ValidationError):
        fill_event(account="bad name with spaces")


def test_rejected_frame_needs_aware_time_and_reason() -> None:
    with pytest.raises(ValueError, match="timezone"):
        RejectedFrame("a", "extended", Source.STREAM, datetime(2026, 1, 1), "bad", b"x")  # noqa: DTZ001
    with pytest.raises(ValueError, match="reason"):
        RejectedFrame("a", "extended", Source.STREAM, T0, "", b"x")


def test_lone_surrogates_are_refused_not_crashing() -> None:
    with pytest.raises(ValidationError, match="surrogate"):
        fill_event(raw='{"a":"\ud800"}')
    bad_fill = fill("1").model_copy(update={"client_order_id": "x\ud800"})
    poisoned = fill_event().model_copy(update={"body": FillBody(fills=(bad_fill,))})
    with pytest.raises(InvalidEvent, match="cannot be encoded"):
        encode_event(poisoned)


def test_every_kind_has_a_body() -> None:
    for kind in EventKind:
        try:
            body = parse_body({"kind": kind.value})
        except ValidationError as exc:
            # a known kind fails on its missing fields, never on the discriminator
            tags = {error["type"] for error in exc.errors()}
            assert tags.isdisjoint({"union_tag_invalid", "union_tag_not_found"}), kind
        else:
            assert body.kind == kind


def _balance_event(body: BalanceBody, *, snapshot: bool = False) -> Event:
    return Event(account="a", venue="extended", source=Source.STREAM, body=body, snapshot=snapshot,
                 venue_time=T0, received_at=T0, session=SESSION, seq=1)  # fmt: skip


# ---------------------------------------------------------------------------------------------- properties

decimals = st.decimals(allow_nan=False, allow_infinity=False, places=8, min_value=-(10**12), max_value=10**12)
ids = st.text(alphabet=st.characters(min_codepoint=1, exclude_categories=["Cs"]), min_size=1, max_size=30)
# Hypothesis takes naive bounds and applies the time zone itself.
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))  # noqa: DTZ001


@st.composite
def orders(draw: st.DrawFn) -> Order:
    return Order(
        order_id=draw(ids),
        client_order_id=draw(st.none() | ids),
        market=draw(st.sampled_from(["BTC-USD", "ETH-USD-PERP"])),
        side=draw(st.sampled_from(list(Side))),
        order_type="LIMIT",
        status=draw(st.sampled_from(["NEW", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "OPEN", "CLOSED"])),
        price=draw(st.none() | decimals),
        qty=draw(decimals),
        filled_qty=draw(st.none() | decimals),
        updated_at=draw(times),
        venue_seq=draw(st.none() | st.integers(min_value=0, max_value=2**63)),
    )


@given(st.lists(orders(), max_size=5), times)
def test_payload_round_trips_exactly(order_list: list[Order], at: datetime) -> None:
    body = OrderBody(orders=tuple(order_list))
    event = Event(account="a", venue="extended", source=Source.STREAM, body=body, venue_time=at, received_at=at,
                  session=SESSION, seq=1)  # fmt: skip
    encoded = encode_event(event)
    assert parse_body(encoded.payload) == body
    assert encoded.payload.encode() == canonical_json(orjson.loads(encoded.payload))


@given(st.lists(orders(), min_size=1, max_size=3), times, times, st.text(max_size=20))
def test_content_hash_ignores_receipt_details(order_list: list[Order], at: datetime, later: datetime, raw: str) -> None:
    body = OrderBody(orders=tuple(order_list))
    first = Event(account="a", venue="extended", source=Source.STREAM, body=body, venue_time=at, received_at=at,
                  session=SESSION, seq=1, raw="{}")  # fmt: skip
    again = first.model_copy(update={"received_at": later, "raw": raw.replace("\x00", "")})
    assert encode_event(first).content_hash == encode_event(again).content_hash


@given(orders(), decimals)
def test_content_hash_sees_every_change(order: Order, other_qty: Decimal) -> None:
    changed = order.model_copy(update={"qty": other_qty})
    a = Event(account="a", venue="extended", source=Source.STREAM, body=OrderBody(orders=(order,)), venue_time=T0,
              received_at=T0, session=SESSION, seq=1)  # fmt: skip
    b = a.model_copy(update={"body": OrderBody(orders=(changed,))})
    same = str(order.qty) == str(other_qty)
    assert (encode_event(a).content_hash == encode_event(b).content_hash) == same


def test_content_hash_is_stable_across_versions() -> None:
    """The hash of a fixed event is pinned: changing the encoding would break idempotency of stored logs."""
    event = Event(account="a", venue="extended", source=Source.STREAM, body=SessionClosed(reason=CloseReason.GAP),
                  venue_time=T0, received_at=T0, session=SESSION, key="k")  # fmt: skip
    assert encode_event(event).payload == '{"kind":"session_closed","reason":"gap"}'
    pinned = "761041aa8b94aa83d83e061576afb4657c733aa454d044e6ba03169757476418"
    assert encode_event(event).content_hash.hex() == pinned
    later = event.model_copy(update={"received_at": T0 + timedelta(days=1), "session": uuid4()})
    assert encode_event(later).content_hash.hex() == pinned
