"""``statekeeper demo``: statekeeper at work on the embedded database, with nothing to install or configure.

What it shows today: the database chosen (embedded by default) and migrated; a stream session's frames from an
Extended-style account and REST items from a Paradex-style account appended to the log; a repeated frame that is
one event; a frame whose key comes back with different content, recorded as a conflict; the log read back in
order through the ordered reader; and PostgreSQL refusing to edit the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson
from rich.console import Console
from rich.table import Table

from statekeeper.config import Settings
from statekeeper.database import DatabaseTarget, create_pool, database_target
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import (
    Balance,
    BalanceBody,
    Event,
    Fill,
    FillBody,
    FundingBody,
    FundingPayment,
    Order,
    OrderBody,
    Position,
    PositionBody,
    PositionSide,
    SessionOpened,
    Side,
    Source,
    Transport,
    natural_key,
)
from statekeeper.migrations import upgrade

EXT_ACCOUNT = "demo-extended"
PDX_ACCOUNT = "demo-paradex"
PSQL_EXAMPLE = "SELECT id, account, kind, event_key FROM events ORDER BY id"


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _frame(kind: str, data: dict[str, Any], ts: datetime, seq: int) -> str:
    return orjson.dumps({"type": kind, "data": data, "ts": _ms(ts), "seq": seq}).decode()


def extended_session(session: UUID, start: datetime) -> list[Event]:
    """A connection's snapshots and a fill, as an Extended account stream would send them."""
    order_time = start - timedelta(minutes=3)
    order = Order(
        order_id="1791181340771614723",
        client_order_id="-1771812132822291885",
        market="BTC-USD",
        side=Side.BUY,
        order_type="LIMIT",
        status="PARTIALLY_FILLED",
        price=Decimal("58850.000000"),
        average_price=Decimal("58850.000000"),
        qty=Decimal("0.200000"),
        filled_qty=Decimal("0.090000"),
        fee_paid=Decimal("1.059300"),
        reduce_only=False,
        post_only=True,
        time_in_force="GTT",
        created_at=order_time,
        updated_at=start,
    )
    balance = Balance(
        asset="USD",
        balance=Decimal("25000.000000"),
        equity=Decimal("25012.410000"),
        available_for_trade=Decimal("23953.110000"),
        available_for_withdrawal=Decimal("23953.110000"),
        unrealised_pnl=Decimal("12.410000"),
        initial_margin=Decimal("1059.300000"),
        margin_ratio=Decimal("0.0212"),
        exposure=Decimal("5296.500000"),
        leverage=Decimal("0.2118"),
        status="ACTIVE",
        updated_at=start,
    )
    position = Position(
        position_id="1791183357858545669",
        market="BTC-USD",
        side=PositionSide.LONG,
        size=Decimal("0.09"),
        entry_price=Decimal("58850.00"),
        mark_price=Decimal("58987.90"),
        value=Decimal("5308.91"),
        unrealised_pnl=Decimal("12.41"),
        realised_pnl=Decimal("0"),
        leverage=Decimal("5.0"),
        status="OPENED",
        updated_at=start,
    )
    fill = Fill(
        fill_id="1784963886257016832",
        order_id="1791181340771614723",
        client_order_id="-1771812132822291885",
        market="BTC-USD",
        side=Side.BUY,
        price=Decimal("58850.0000000000000000"),
        qty=Decimal("0.0900000000000000"),
        value=Decimal("5296.5000000000000000"),
        fee=Decimal("1.0593000000000000"),
        is_taker=False,
        created_at=start + timedelta(milliseconds=250),
    )
    common: dict[str, Any] = {"account": EXT_ACCOUNT, "venue": "extended", "source": Source.STREAM}
    snapshot_raw = [
        _frame("ORDER", {"isSnapshot": True, "orders": [order.model_dump(mode="json")]}, start, 1),
        _frame("BALANCE", {"isSnapshot": True, "balance": balance.model_dump(mode="json")}, start, 2),
        _frame("POSITION", {"isSnapshot": True, "positions": [position.model_dump(mode="json")]}, start, 3),
    ]
    fill_time = start + timedelta(milliseconds=250)
    return [
        Event(
            **common,
            body=SessionOpened(transport=Transport.WEBSOCKET, url="wss://simulated/stream.extended.exchange/v1/account"),
            venue_time=start,
            received_at=start,
            session=session,
            key=natural_key("session_opened", str(session)),
        ),
        Event(**common, body=OrderBody(orders=(order,)), snapshot=True, session=session, seq=1,
              venue_time=start, received_at=start, raw=snapshot_raw[0]),
        Event(**common, body=BalanceBody(balances=(balance,)), snapshot=True, session=session, seq=2,
              venue_time=start, received_at=start, raw=snapshot_raw[1]),
        Event(**common, body=PositionBody(positions=(position,)), snapshot=True, session=session, seq=3,
              venue_time=start, received_at=start, raw=snapshot_raw[2]),
        Event(**common, body=FillBody(fills=(fill,)), session=session, seq=4, venue_time=fill_time,
              received_at=fill_time + timedelta(milliseconds=3),
              raw=_frame("TRADE", {"trades": [fill.model_dump(mode="json")]}, fill_time, 4)),
    ]  # fmt: skip


def paradex_rest_items(start: datetime) -> list[Event]:
    """A fill and a funding payment fetched over REST: keyed by the venue's own ids, no sequence.

    The venue returns the same items with the same content every time they are fetched; so does this function.
    """
    fill = Fill(
        fill_id="8615262148007718462",
        fill_type="FILL",
        order_id="1681462103821101699438490000",
        client_order_id="x1234",
        market="BTC-USD-PERP",
        side=Side.BUY,
        price=Decimal("30000.12"),
        qty=Decimal("0.5"),
        fee=Decimal("7.56"),
        fee_asset="USDC",
        is_taker=False,
        realized_pnl=Decimal("0"),
        created_at=datetime.fromtimestamp(1681375176.910, UTC),
    )
    payment = FundingPayment(
        payment_id="1681375578221101699352320000",
        market="BTC-USD-PERP",
        amount=Decimal("-3.4490622"),
        asset="USDC",
        funding_index=Decimal("-2819.53434361"),
        fill_id="8615262148007718462",
        paid_at=datetime.fromtimestamp(1681375481.000, UTC),
    )
    common: dict[str, Any] = {"account": PDX_ACCOUNT, "venue": "paradex", "source": Source.REST}
    return [
        Event(**common, body=FillBody(fills=(fill,)), key=natural_key("fill", fill.fill_id, fill.fill_type),
              venue_time=fill.created_at, received_at=start, raw=orjson.dumps(fill.model_dump(mode="json")).decode()),
        Event(**common, body=FundingBody(payments=(payment,)), key=natural_key("funding", payment.payment_id),
              venue_time=payment.paid_at, received_at=start,
              raw=orjson.dumps(payment.model_dump(mode="json")).decode()),
    ]  # fmt: skip


def _events_table(rows: Sequence[Any]) -> Table:
    table = Table(title="the log, read back in order", title_justify="left")
    for column in ("id", "account", "kind", "snapshot", "source", "seq", "venue time (UTC)"):
        table.add_column(column, no_wrap=True)
    table.add_column("event key", overflow="ellipsis", no_wrap=True, max_width=44)
    for e in rows:
        table.add_row(
            str(e.id),
            e.account,
            e.kind,
            "yes" if e.snapshot else "",
            e.source,
            "" if e.seq is None else str(e.seq),
            e.venue_time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            e.key,
        )
    return table


def _where(target: DatabaseTarget) -> str:
    if target.embedded is not None:
        return f"embedded PostgreSQL, data in {target.embedded.pgdata}"
    return target.display_url


async def run_demo(settings: Settings, console: Console) -> int:
    async with database_target(settings.database) as target:
        console.print(f"[bold]database[/]: {_where(target)}", highlight=False)
        await upgrade(target.url)
        console.print("[bold]schema[/]: migrated to the latest revision")
        pool = await create_pool(target.url, max_size=4)
        try:
            return await _show(PostgresEventLog(pool), pool, console)
        finally:
            await pool.close()


async def _show(log: PostgresEventLog, pool: asyncpg.Pool, console: Console) -> int:
    start_position = await log.head()
    start = datetime.now(UTC).replace(microsecond=0)
    events = extended_session(uuid4(), start) + paradex_rest_items(start)

    result = await log.append(events)
    console.print(
        f"appended a batch of {len(events)}: {result.appended} new events"
        + (f", {result.duplicates} already in the log (REST items keyed by venue ids)" if result.duplicates else "")
    )

    repeated_fill = events[4]
    altered_fill = repeated_fill.model_copy(
        update={"body": FillBody(fills=(repeated_fill.body.fills[0].model_copy(update={"qty": Decimal("0.1")}),))}  # type: ignore[union-attr]
    )
    again = await log.append([repeated_fill, altered_fill])
    console.print(
        f"the same TRADE frame again: {again.outcomes[0].value} (still one event at position {again.positions[0]}); "
        f"seq 4 with a different quantity: {again.outcomes[1].value}, kept in event_conflicts",
        highlight=False,
    )

    read_back = await log.read(start_position, limit=100)
    # At least wide enough for the table: a narrow terminal wraps the lines rather than dropping columns.
    wide = Console(file=console.file, width=max(console.width, 150), force_terminal=console.is_terminal)
    wide.print(_events_table(read_back))
    in_order = [e.id for e in read_back] == sorted(e.id for e in read_back) and len(read_back) == result.appended

    try:
        await pool.execute("UPDATE events SET kind = kind WHERE id = $1", read_back[0].id)
    except asyncpg.InsufficientPrivilegeError as exc:
        console.print(f"[bold]append-only[/]: UPDATE refused by PostgreSQL: {exc}", highlight=False)
        refused = True
    else:
        console.print("[bold red]append-only[/]: UPDATE was NOT refused")
        refused = False

    conflicts = await pool.fetchval("SELECT count(*) FROM event_conflicts")
    total = await log.head()
    console.print(
        f"[bold]log[/]: head position {total}, {conflicts} conflict(s) recorded in all. "
        f"Query it yourself: [cyan]statekeeper db psql -c {PSQL_EXAMPLE!r}[/]",
        highlight=False,
    )
    ok = in_order and refused and again.duplicates == 1 and again.conflicts == 1
    console.print("[bold green]demo finished: every check passed[/]" if ok else "[bold red]demo: a check failed[/]")
    return 0 if ok else 1
