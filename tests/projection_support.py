"""Helpers for the projections' end-to-end tests: the projection tables of an account, a wait for the projector
to catch up with the log, a simulated venue driven and brought to rest, and a field-by-field comparison of the
tables with the simulated venue's truth.

What can be compared, and when. The truth's mark-dependent figures (equity, unrealised PnL, a position's mark
price and value...) move with the marks even when the venue publishes nothing, so they match the projection only
once the activity has stopped and fresh snapshots have arrived: the tests stop the activity, force a resync (the
venue drops the connection; the next session takes the snapshots, Extended's on the stream, Paradex's over REST),
wait for the projector, and only then compare. Then every field a venue carries must match exactly; the fields a
venue does not carry are left out per venue, each with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import orjson

from statekeeper.database import connect
from statekeeper.events import Order
from statekeeper.projections import store
from statekeeper.projections.rows import (
    CLOSED_UNCONFIRMED,
    AccountRow,
    BalanceRow,
    FillBustRow,
    FillRow,
    FundingRow,
    OrderRow,
    PositionRow,
    Row,
)
from statekeeper.simulator import Simulator, Truth

Venue = Literal["extended", "paradex"]
R = TypeVar("R", bound=Row)


# ------------------------------------------------------------------------------------------- the tables


async def projected(database_url: str, account: str) -> dict[str, list[Row]]:
    """Every projection row of ``account``, per table, sorted by key."""
    connection = await connect(database_url)
    try:
        return await store.read_tables(connection, account)
    finally:
        await connection.close()


async def projector_lag(database_url: str, account: str) -> tuple[int, int]:
    """(the account's projector checkpoint, the account's last event id); 0 where there is none."""
    connection = await connect(database_url)
    try:
        checkpoint = await connection.fetchval(
            "SELECT position FROM projector_checkpoints WHERE account = $1 AND name = $2", account, store.CHECKPOINT
        )
        head = await connection.fetchval("SELECT max(id) FROM events WHERE account = $1", account)
    finally:
        await connection.close()
    return int(checkpoint or 0), int(head or 0)


async def count_events(database_url: str, account: str, kind: str) -> int:
    """How many events of ``kind`` the account has in the log."""
    connection = await connect(database_url)
    try:
        found = await connection.fetchval("SELECT count(*) FROM events WHERE account = $1 AND kind = $2", account, kind)
        return int(found)
    finally:
        await connection.close()


async def wait_projected(database_url: str, account: str, *, within: float = 15.0) -> None:
    """Wait until the projector has applied every event of ``account`` in the log (its checkpoint is the account's
    last event id); fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    delay = 0.01
    while True:
        checkpoint, head = await projector_lag(database_url, account)
        if head and checkpoint == head:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{account}: the projector did not catch up within {within:g} s (checkpoint {checkpoint}, last event "
                f"{head})"
            )
        await asyncio.sleep(delay)
        delay = min(0.2, delay * 2)


# ------------------------------------------------------------------------------------ driving the venue


async def _log_state(database_url: str, account: str) -> tuple[list[dict[str, Any]], set[str]]:
    """The account's session control events (kind, session, payload) in log order, and every stream frame kept
    (raw of stream events and of rejected frames)."""
    connection = await connect(database_url)
    try:
        control = await connection.fetch(
            "SELECT kind, session, payload::text AS payload FROM events WHERE account = $1"
            " AND kind IN ('session_opened', 'session_closed', 'resync_completed') ORDER BY id",
            account,
        )
        raws = await connection.fetch(
            "SELECT raw FROM events WHERE account = $1 AND source = 'stream' AND raw IS NOT NULL", account
        )
        rejected = await connection.fetch("SELECT raw FROM rejected_frames WHERE account = $1", account)
    finally:
        await connection.close()
    events = [{"kind": r["kind"], "session": r["session"], "payload": orjson.loads(r["payload"])} for r in control]
    kept = {r["raw"] for r in raws} | {bytes(r["raw"]).decode("utf-8", errors="surrogateescape") for r in rejected}
    return events, kept


def _seqs(frames: Iterable[str]) -> list[int]:
    found = []
    for frame in frames:
        with contextlib.suppress(orjson.JSONDecodeError):
            message = orjson.loads(frame)
            if isinstance(message, dict) and isinstance(message.get("seq"), int):
                found.append(message["seq"])
    return found


async def at_rest(database_url: str, sim: Simulator, account: str) -> bool:
    """The daemon is at rest on ``account``: one clean connection open with nothing left to send, its session
    resynced and open, every frame it sent stored."""
    history = sim.frames(account)
    connections = sim.server.connections.get(account, [])
    if len(connections) != 1 or not history:
        return False
    connection = connections[0]
    last = history[-1]
    if connection.frames is not last or last.lost or not connection.queue.empty():
        return False
    if sim.config.venue == "extended":
        seqs = _seqs(last.sent)
        if seqs != list(range(1, connection.seq + 1)):
            return False  # a frame still held back or delayed, or a sequence problem: not at rest yet
    events, kept = await _log_state(database_url, account)
    opened = [
        e["session"] for e in events if e["kind"] == "session_opened" and e["payload"]["transport"] == "websocket"
    ]
    if len(opened) != len(history):
        return False
    current = opened[-1]
    of_current = {e["kind"] for e in events if e["session"] == current}
    if "resync_completed" not in of_current or "session_closed" in of_current:
        return False
    return set(last.sent) <= kept


async def stream_stored(database_url: str, sim: Simulator, account: str) -> bool:
    """Every frame the account's current connection sent is in the log (an event or a rejected frame)."""
    history = sim.frames(account)
    if not history:
        return False
    _, kept = await _log_state(database_url, account)
    return set(history[-1].sent) <= kept


async def rest_open_orders(database_url: str, account: str) -> set[str] | None:
    """The order ids the account's first open-orders snapshot over REST listed; None before there is one."""
    connection = await connect(database_url)
    try:
        payload = await connection.fetchval(
            "SELECT payload::text FROM events WHERE account = $1 AND kind = 'order' AND source = 'rest' AND snapshot"
            " ORDER BY id LIMIT 1",
            account,
        )
    finally:
        await connection.close()
    if payload is None:
        return None
    return {str(order["order_id"]) for order in orjson.loads(payload)["orders"]}


async def first_ids(database_url: str, account: str, order_id: str) -> tuple[int, int]:
    """The log position of the first stream event of an order, and of the account's first open-orders snapshot
    over REST."""
    connection = await connect(database_url)
    try:
        order = await connection.fetchval(
            "SELECT min(id) FROM events WHERE account = $1 AND kind = 'order' AND source = 'stream'"
            " AND payload -> 'orders' @> jsonb_build_array(jsonb_build_object('order_id', $2::text))",
            account,
            order_id,
        )
        snapshot = await connection.fetchval(
            "SELECT min(id) FROM events WHERE account = $1 AND kind = 'order' AND source = 'rest' AND snapshot", account
        )
    finally:
        await connection.close()
    assert order is not None, f"order {order_id} is not in the log"
    assert snapshot is not None, "no open-orders snapshot in the log"
    return int(order), int(snapshot)


async def wait_at_rest(database_url: str, sim: Simulator, account: str, *, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    delay = 0.01
    while not await at_rest(database_url, sim, account):
        if time.monotonic() > deadline:
            raise AssertionError(f"{account}: the daemon did not come to rest within {within:g} s")
        await asyncio.sleep(delay)
        delay = min(0.2, delay * 2)


async def _within(condition: Callable[[], Awaitable[bool] | bool], within: float) -> bool:
    """Check ``condition`` until it holds (True) or ``within`` seconds have passed (False)."""
    deadline = time.monotonic() + within
    delay = 0.01
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(0.2, delay * 2)


async def resync_at_rest(database_url: str, sim: Simulator, account: str, *, within: float = 20.0) -> None:
    """With the activity stopped: let the venue send what it has queued, drop the account's connection so that the
    next session takes fresh snapshots, then wait until the daemon is at rest on that session, the orders a
    snapshot stopped listing are resolved (where the daemon resolves them) and the projector has applied
    everything."""

    def drained() -> bool:
        return all(c.queue.empty() or c.closed.is_set() for c in sim.server.connections.get(account, []))

    if not await _within(drained, within):
        raise AssertionError(f"{account}: the venue did not send what it had queued within {within:g} s")
    before = len(sim.frames(account))
    await sim.server.disconnect(account)
    if not await _within(lambda: len(sim.frames(account)) > before, within):
        raise AssertionError(f"{account}: no new connection within {within:g} s of a disconnect")
    await wait_at_rest(database_url, sim, account, within=within)
    await wait_projected(database_url, account)
    if resolver_exists():
        # The resolver fetches them on its own schedule. Orders it cannot settle stay, and the comparison says so.
        async def resolved() -> bool:
            return await unresolved_orders(database_url, account) == 0

        await _within(resolved, within)
        await wait_projected(database_url, account)


async def unresolved_orders(database_url: str, account: str) -> int:
    """How many of the account's orders read ``closed_unconfirmed``."""
    connection = await connect(database_url)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM orders WHERE account = $1 AND status = $2", account, CLOSED_UNCONFIRMED
            )
        )
    finally:
        await connection.close()


# ------------------------------------------------------------------------------------- the comparison


def resolver_exists() -> bool:
    """Whether the ingest daemon resolves the orders a snapshot left ``closed_unconfirmed`` (issue: order
    resolver). Until it does, such an order keeps that status in ``orders``."""
    return importlib.util.find_spec("statekeeper.ingest.resolve") is not None


Getter = Callable[[Any], Any]
"""How to read a field of the truth's record (the canonical record the venue's state is rendered from)."""


def _field(name: str) -> Getter:
    return lambda record: getattr(record, name)


def _same(name: str) -> tuple[str, Getter]:
    return name, _field(name)


def _paradex_order_status(order: Order) -> str:
    # Paradex has three order statuses: NEW, OPEN (partly filled) and CLOSED (filled, cancelled or rejected).
    return {"NEW": "NEW", "PARTIALLY_FILLED": "OPEN"}.get(order.status, "CLOSED")


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _spec(names: str, **special: Getter) -> tuple[tuple[str, Getter], ...]:
    """The fields compared: those named in ``names`` read from the truth's record as they are, and the
    ``special`` ones read by their getter."""
    return tuple(_same(n) for n in _names(names)) + tuple(special.items())


# Balances. Extended's BALANCE (stream and REST) carries every figure but the maintenance margin (it sends the
# margin ratio instead). Paradex's /balance and balance_events carry only the settlement asset's balance: its
# margin figures are the account summary (``account_margins``).
_BALANCE = {
    "extended": _spec(
        "balance equity available_for_trade available_for_withdrawal unrealised_pnl initial_margin margin_ratio "
        "exposure leverage status updated_at"
    ),
    "paradex": _spec("balance updated_at"),
}
_MARGINS = _spec(
    "equity free_collateral initial_margin maintenance_margin total_collateral margin_cushion settlement_asset "
    "status updated_at venue_seq"
)
_MARK_DEPENDENT = frozenset(
    _names(
        "equity available_for_trade available_for_withdrawal unrealised_pnl initial_margin maintenance_margin "
        "margin_ratio exposure leverage free_collateral margin_cushion mark_price value"
    )
)
"""Figures that move with the marks (balances, account summary, positions)."""

# Orders. Extended sends neither the remaining quantity (the parser does not guess it) nor a venue seq; Paradex
# sends no fee paid, names its time in force by the order's instruction (GTC, POST_ONLY) and has its own statuses.
_ORDER_COMMON = (
    "client_order_id market side order_type price average_price qty filled_qty post_only reduce_only created_at "
    "updated_at"
)
_ORDER = {
    "extended": _spec(f"{_ORDER_COMMON} status fee_paid time_in_force"),
    "paradex": _spec(f"{_ORDER_COMMON} remaining_qty venue_seq", status=_paradex_order_status),
}

# Positions. Extended's carry the mark price and the value, Paradex's do not; Extended numbers no update (no venue
# seq). Each venue has its own word for an open position. The liquidation price and the margin are the venue's
# own figures, not in the truth's record.
_POSITION_COMMON = "side size entry_price position_id realised_pnl leverage created_at updated_at unrealised_pnl"
_POSITION = {
    "extended": _spec(f"{_POSITION_COMMON} status mark_price value"),
    "paradex": _spec(f"{_POSITION_COMMON} venue_seq", status=lambda _p: "OPEN"),
}

# Fills. Extended carries the value but no realised PnL and names no fee asset; Paradex the other way round
# (its ``realized_funding`` is a figure of its own, not in the truth's record).
_FILL_COMMON = "order_id client_order_id market side price qty fee is_taker created_at"
_FILL = {
    "extended": _spec(f"{_FILL_COMMON} value"),
    "paradex": _spec(f"{_FILL_COMMON} fee_asset realized_pnl"),
}

# Funding payments. Extended's funding history carries the rate and the position; Paradex's payment carries the
# funding index. Neither names the asset on a payment.
_FUNDING = {
    "extended": _spec("market amount paid_at rate position_side position_size position_value mark_price"),
    "paradex": _spec("market amount paid_at funding_index"),
}


def _show(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return repr(value)


def _plain(value: Any) -> Any:
    """Enum members (sides) as their value, so that a row's text and a record's enum compare."""
    return getattr(value, "value", value)


def _fields(
    table: str,
    key: object,
    row: Row,
    record: Any,
    *,
    spec: Sequence[tuple[str, Getter]],
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    found = []
    for name, getter in spec:
        if name in skip:
            continue
        mine, theirs = _plain(getattr(row, name)), _plain(getter(record))
        if name == "venue_seq" and mine is None:
            continue  # the state came over REST, whose numbers are not the stream's (none is kept: fold.py)
        if mine != theirs:
            found.append(f"{table} {key}: {name}: projected {_show(mine)}, venue {_show(theirs)}")
    return found


def _keyed(
    table: str,
    rows: Sequence[R],
    truth: Mapping[Any, Any],
    key: Callable[[R], Any],
    *,
    spec: Sequence[tuple[str, Getter]],
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """Rows and records matched by key: the ones on one side only, then each field that differs."""
    mine = {key(r): r for r in rows}
    found = [f"{table} {k}: projected, not at the venue" for k in sorted(mine.keys() - truth.keys(), key=str)]
    found += [f"{table} {k}: at the venue, not projected" for k in sorted(truth.keys() - mine.keys(), key=str)]
    for k in sorted(mine.keys() & truth.keys(), key=str):
        found += _fields(table, k, mine[k], truth[k], spec=spec, skip=skip)
    return found


def _typed(tables: Mapping[str, Sequence[Row]], table: str, row_type: type[R]) -> list[R]:
    rows = list(tables[table])
    for row in rows:
        assert isinstance(row, row_type), f"{table}: a {type(row).__name__}, not a {row_type.__name__}"
    return rows  # type: ignore[return-value]  # checked just above


def compare_with_truth(
    tables: Mapping[str, Sequence[Row]],
    truth: Truth,
    venue: Venue,
    *,
    fresh: bool = True,
    strict_orders: bool | None = None,
) -> list[str]:
    """The differences between an account's projection tables and its simulated venue's truth, one readable line
    per row or field, grouped by table; ``[]`` when they agree.

    ``fresh``: the last snapshots were taken with the truth as it is now (the activity stopped, then a resync), so
    the mark-dependent figures are compared too. ``strict_orders``: every order in ``orders`` must have the
    truth's status; otherwise (the default while the order resolver does not exist) an order the truth has as
    terminal may still read ``closed_unconfirmed`` (a snapshot no longer listed it and nobody fetched its end).
    """
    strict = resolver_exists() if strict_orders is None else strict_orders
    marks = frozenset() if fresh else _MARK_DEPENDENT
    found: list[str] = []

    # balances: the venue's collateral asset, and nothing else (the simulated venues hold one asset)
    balance = truth.balance
    balances = _typed(tables, "balances", BalanceRow)
    found += _keyed("balances", balances, {balance.asset: balance}, lambda r: r.asset, spec=_BALANCE[venue], skip=marks)
    margins = _typed(tables, "account_margins", AccountRow)
    if venue == "paradex":
        summary = {"summary": truth.summary}
        found += _keyed("account_margins", margins, summary, lambda _r: "summary", spec=_MARGINS, skip=marks)
    elif margins:
        found.append(f"account_margins: {len(margins)} rows, where Extended publishes no account summary")

    # open_orders: exactly the venue's working orders, field by field
    open_orders = _typed(tables, "open_orders", OrderRow)
    found += _keyed("open_orders", open_orders, truth.open_orders, lambda r: r.order_id, spec=_ORDER[venue])

    # orders: every order seen has the venue's state; one the venue has as terminal may read closed_unconfirmed
    # (without the resolver), and then its other fields are an older state of it
    orders = _typed(tables, "orders", OrderRow)
    for row in orders:
        order = truth.orders.get(row.order_id)
        if order is None:
            found.append(f"orders {row.order_id}: projected, not at the venue")
            continue
        if row.status == CLOSED_UNCONFIRMED and not strict and order.order_id not in truth.open_orders:
            continue
        found += _fields("orders", row.order_id, row, order, spec=_ORDER[venue])
    unseen = truth.open_orders.keys() - {r.order_id for r in orders}
    found += [f"orders {i}: open at the venue, not projected" for i in sorted(unseen)]

    # positions: the open ones, by market
    positions = _typed(tables, "positions", PositionRow)
    found += _keyed("positions", positions, truth.positions, lambda r: r.market, spec=_POSITION[venue], skip=marks)

    # fills, each busted or not as at the venue; and the busts themselves
    fills = _typed(tables, "fills", FillRow)
    found += _keyed("fills", fills, truth.fills, lambda r: (r.fill_id, r.fill_type), spec=_FILL[venue])
    for fill in fills:
        busted = fill.busted_at is not None
        if busted != (fill.fill_id in truth.busted_fills):
            found.append(f"fills {fill.fill_id}: busted: projected {busted}, venue {not busted}")
    bust_ids = {r.fill_id for r in _typed(tables, "fill_busts", FillBustRow)}
    found += [f"fill_busts {i}: projected, not busted at the venue" for i in sorted(bust_ids - truth.busted_fills)]
    found += [f"fill_busts {i}: busted at the venue, not projected" for i in sorted(truth.busted_fills - bust_ids)]

    # funding payments
    funding = _typed(tables, "funding_payments", FundingRow)
    found += _keyed("funding_payments", funding, truth.funding, lambda r: r.payment_id, spec=_FUNDING[venue])
    return found


def report(differences: Sequence[str], *, limit: int = 60) -> str:
    """The differences as one message for an assertion (the first ``limit`` lines, and how many more)."""
    shown = "\n  ".join(differences[:limit])
    more = f"\n  ... and {len(differences) - limit} more" if len(differences) > limit else ""
    return f"{len(differences)} differences between the projection and the venue's truth:\n  {shown}{more}"
