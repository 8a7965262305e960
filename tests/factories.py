"""Small builders of canonical events for tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from statekeeper.events import Event, Fill, FillBody, Order, OrderBody, Side, Source, natural_key

T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def fill(fill_id: str = "1", *, qty: str = "0.5", price: str = "30000.12", at: datetime = T0) -> Fill:
    return Fill(
        fill_id=fill_id,
        order_id="o-" + fill_id,
        market="BTC-USD",
        side=Side.BUY,
        price=Decimal(price),
        qty=Decimal(qty),
        fee=Decimal("0.01"),
        created_at=at,
    )


def fill_event(
    account: str = "acc-1",
    fill_id: str = "1",
    *,
    qty: str = "0.5",
    session: UUID | None = None,
    seq: int | None = None,
    received_at: datetime | None = None,
    raw: str | None = None,
    venue: str = "paradex",
) -> Event:
    """A fill event: numbered by ``(session, seq)`` when given, keyed by the fill id otherwise."""
    f = fill(fill_id, qty=qty)
    return Event(
        account=account,
        venue=venue,
        source=Source.STREAM,
        body=FillBody(fills=(f,)),
        venue_time=f.created_at,
        received_at=received_at or f.created_at + timedelta(milliseconds=5),
        session=session,
        seq=seq,
        key="" if seq is not None else natural_key("fill", fill_id, f.fill_type),
        raw=raw if raw is not None else f'{{"fill":"{fill_id}","qty":"{qty}"}}',
    )


def order_snapshot(account: str, session: UUID, seq: int, *order_ids: str, at: datetime = T0) -> Event:
    orders = tuple(
        Order(
            order_id=oid,
            market="ETH-USD",
            side=Side.SELL,
            order_type="LIMIT",
            status="NEW",
            price=Decimal("3100.5"),
            qty=Decimal("2"),
            updated_at=at,
        )
        for oid in order_ids
    )
    return Event(
        account=account,
        venue="extended",
        source=Source.STREAM,
        body=OrderBody(orders=orders),
        snapshot=True,
        venue_time=at,
        received_at=at,
        session=session,
        seq=seq,
        raw="{}",
    )
