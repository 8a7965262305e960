"""The pure folds: how each event changes an account's projected state. No I/O.

The projector workers and the replay command call the same functions, so a projection is a pure function of the
log (DESIGN.md invariant 4). One fold per projection:

* **balances**: a BALANCE message is state, not an increment: each balance it lists replaces that asset's row.
  A venue may state its balances in several messages (Extended: the collateral in ``BALANCE``, the spot assets in
  ``SPOT_BALANCE``), so each message carries its *scope*, kept in the row: a balance snapshot replaces the rows of
  its scope, and an asset of that scope it does not list leaves ``balances`` (rows of other scopes stay).
* **orders / open_orders**: deltas upsert by order id; a terminal status (FILLED, CANCELLED, REJECTED, EXPIRED;
  Paradex CLOSED) takes the order out of ``open_orders`` and keeps it in ``orders``. An ORDER *snapshot* replaces
  the open-order set: an open order it does not list leaves ``open_orders`` and becomes ``closed_unconfirmed`` in
  ``orders`` until its final state is fetched over REST by the ingest daemon (:mod:`statekeeper.ingest.resolve`)
  and appended.
* **positions**: same as orders: a POSITION snapshot replaces the set; a closed position (size 0 or status
  CLOSED) leaves ``positions`` and its last state is kept in ``closed_positions``.
* **fills**, **fill_busts** and **funding_payments** are ledgers keyed by venue ids: the same fill or payment
  received twice (from the stream and from a REST backfill) is one row. A bust marks its fill busted, never
  deletes it; a bust seen before its fill marks the fill when it arrives.
* **account_margins**: the account-level figures (Paradex ``account``).

Order of updates: an update older than the row it would replace never overwrites it. Older means a lower venue
update number (Paradex ``seq_no``) where both have one, otherwise an earlier venue time. Only the stream's update
numbers count: Paradex numbers its REST answers independently of its WebSocket messages (protocols/README 2.6), so
a row whose state came over REST has no ``venue_seq`` (the REST number stays in the event's raw message). Between
two updates of the same version, for orders a terminal state wins (but not over ``closed_unconfirmed``, only a
guess: the venue's answer replaces it), and otherwise (and always for positions) the later message in the log. An
open order or position a snapshot does not list is removed only if the row is not newer than the snapshot itself
(a REST snapshot's time is when its request was sent, a stream snapshot's the venue's time), so a stream update
that overtook a slower REST snapshot survives it.

:class:`AccountState` may hold only part of an account's rows: the SQL projector loads what a batch will touch
(:func:`needs`) and writes back what changed (:attr:`AccountState.changes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from statekeeper.events import EventKind, Source, StoredEvent
from statekeeper.projections.rows import (
    CLOSED_UNCONFIRMED,
    POSITION_CLOSED,
    AccountRow,
    BalanceRow,
    FillBustRow,
    FillRow,
    FundingRow,
    OrderRow,
    PositionRow,
    Row,
    decoder,
    same_state,
)

R = TypeVar("R", AccountRow, OrderRow, PositionRow)

_decode_balance = decoder(BalanceRow)
_decode_margins = decoder(AccountRow)
_decode_order = decoder(OrderRow)
_decode_position = decoder(PositionRow)
_decode_fill = decoder(FillRow)
_decode_bust = decoder(FillBustRow)
_decode_payment = decoder(FundingRow)

_STREAM = Source.STREAM.value
_REQUESTED = frozenset({Source.REST.value, Source.RECONCILIATION.value})
"""Sources whose snapshots are REST answers: ``received_at`` is when the request was sent."""


@dataclass(slots=True)
class FoldEvent:
    """What a fold needs of one logged event. Treated as immutable but not frozen: a frozen dataclass costs three
    times as much to create, and the projector and replay create one per event."""

    id: int
    venue: str
    kind: str
    snapshot: bool
    source: str
    venue_time: datetime
    received_at: datetime
    payload: Mapping[str, Any]
    """The stored payload (``events.payload``): the event body as JSON, validated when it was appended."""

    @classmethod
    def of(cls, event: StoredEvent) -> FoldEvent:
        return cls(event.id, event.venue, event.kind, event.snapshot, event.source, event.venue_time,
                   event.received_at, event.payload)  # fmt: skip

    @property
    def snapshot_time(self) -> datetime:
        """When the venue's state in a snapshot was taken, at the latest (REST and reconciliation snapshots: when
        the request was sent)."""
        return self.received_at if self.source in _REQUESTED else self.venue_time


def parse_events(page: str) -> list[FoldEvent]:
    """The events of one page of the log as PostgreSQL wrote it (:data:`statekeeper.statements.EVENT_LINE` joined
    by newlines): a line per event, tab-separated, times in ISO 8601, the payload last.

    One text value per page costs a fraction of a record per event with a decoded ``jsonb`` column each; the
    payload's JSON escapes any tab or newline in it, and the split stops before scanning it.
    """
    loads = orjson.loads
    parse_time = datetime.fromisoformat
    events = []
    for line in page.split("\n"):
        position, venue, kind, snapshot, source, venue_text, received_text, payload = line.split("\t", 7)
        venue_time, received_at = parse_time(venue_text), parse_time(received_text)
        if venue_time.tzinfo is not UTC or received_at.tzinfo is not UTC:  # a session TimeZone other than UTC
            venue_time, received_at = venue_time.astimezone(UTC), received_at.astimezone(UTC)
        events.append(FoldEvent(int(position), venue, kind, snapshot == "t", source, venue_time, received_at,
                                loads(payload)))  # fmt: skip
    return events


# --------------------------------------------------------------------------------------------- state


@dataclass
class Changes:
    """The keys (without ``account``) of rows a fold wrote or removed, per table."""

    upserted: dict[str, set[tuple[Any, ...]]] = field(default_factory=dict)
    deleted: dict[str, set[tuple[Any, ...]]] = field(default_factory=dict)

    # Called for every row a fold writes: no throwaway sets (``setdefault(table, set())`` builds one per call).
    def upsert(self, table: str, key: tuple[Any, ...]) -> None:
        keys = self.upserted.get(table)
        if keys is None:
            keys = self.upserted[table] = set()
        keys.add(key)
        gone = self.deleted.get(table)
        if gone:
            gone.discard(key)

    def delete(self, table: str, key: tuple[Any, ...]) -> None:
        keys = self.deleted.get(table)
        if keys is None:
            keys = self.deleted[table] = set()
        keys.add(key)
        kept = self.upserted.get(table)
        if kept:
            kept.discard(key)

    def __bool__(self) -> bool:
        return any(self.upserted.values()) or any(self.deleted.values())


@dataclass
class AccountState:
    """One account's projected rows (all of them, or the part a batch touches), and what changed since loading."""

    account: str
    balances: dict[str, BalanceRow] = field(default_factory=dict)
    margins: AccountRow | None = None
    orders: dict[str, OrderRow] = field(default_factory=dict)
    open_orders: set[str] = field(default_factory=set)
    """The ids of the orders in ``open_orders``; their rows are in :attr:`orders`."""
    positions: dict[str, PositionRow] = field(default_factory=dict)
    closed_positions: dict[str, PositionRow] = field(default_factory=dict)
    fills: dict[tuple[str, str], FillRow] = field(default_factory=dict)
    busts: dict[str, FillBustRow] = field(default_factory=dict)
    funding: dict[str, FundingRow] = field(default_factory=dict)
    changes: Changes = field(default_factory=Changes)

    def tables(self) -> dict[str, list[Row]]:
        """Every row held, per table, sorted by key: what the SQL tables hold for this account."""
        opened = [self.orders[i] for i in self.open_orders]
        tables: dict[str, list[Row]] = {
            "balances": list(self.balances.values()),
            "account_margins": [self.margins] if self.margins is not None else [],
            "orders": list(self.orders.values()),
            "open_orders": opened,  # type: ignore[dict-item]
            "positions": list(self.positions.values()),
            "closed_positions": list(self.closed_positions.values()),
            "fills": list(self.fills.values()),
            "fill_busts": list(self.busts.values()),
            "funding_payments": list(self.funding.values()),
        }
        return {name: sorted(rows, key=lambda r: r.key_value()) for name, rows in tables.items()}

    # ------------------------------------------------------------------------------------------ writes

    def _put_order(self, row: OrderRow) -> None:
        self.orders[row.order_id] = row
        self.changes.upsert("orders", (row.order_id,))
        if row.is_open:
            self.open_orders.add(row.order_id)
            self.changes.upsert("open_orders", (row.order_id,))
        elif row.order_id in self.open_orders:
            self.open_orders.discard(row.order_id)
            self.changes.delete("open_orders", (row.order_id,))

    def _put_position(self, row: PositionRow) -> None:
        if row.is_open:
            self.positions[row.market] = row
            self.changes.upsert("positions", (row.market,))
            return
        if self.positions.pop(row.market, None) is not None:
            self.changes.delete("positions", (row.market,))
        self.closed_positions[row.market] = row
        self.changes.upsert("closed_positions", (row.market,))


# ------------------------------------------------------------------------------------------ ordering


def _versioned(row: R, event: FoldEvent) -> R:
    """``row`` with the venue's update number only if it came on the stream (see the module's docstring)."""
    if event.source != _STREAM:
        row.venue_seq = None
    return row


def _unchanged(new: R, current: R) -> bool:
    """Whether ``new`` says what ``current`` says: the same state, also when ``new`` came over REST (no update
    number) and ``current`` is the stream's report of that state (kept, with its number)."""
    if new.venue_seq is None and current.venue_seq is not None:
        if new.updated_at != current.updated_at:
            return False
        new = dataclasses.replace(new, venue_seq=current.venue_seq)
    return same_state(new, current)


def _is_newer(new: Any, current: Any, *, new_final: bool, current_final: bool) -> bool:
    """Whether ``new`` may replace ``current`` (both have ``updated_at`` and ``venue_seq``)."""
    if new.venue_seq is not None and current.venue_seq is not None and new.venue_seq != current.venue_seq:
        return bool(new.venue_seq > current.venue_seq)
    if new.updated_at != current.updated_at:
        return bool(new.updated_at > current.updated_at)
    return new_final or not current_final


# -------------------------------------------------------------------------------------------- folds


def _time_or(row: BalanceRow | AccountRow, default: datetime) -> datetime:
    """The row's ``updated_at``, or (when the venue gave none) the message's time."""
    at: datetime | None = row.updated_at
    return at if at is not None else default


def fold_balances(state: AccountState, event: FoldEvent) -> None:
    payload = event.payload
    items = payload["balances"]
    scope = payload.get("scope")
    for item in items:
        row = _decode_balance(item, state.account, event.venue, event.id)
        row.scope = scope
        row.updated_at = _time_or(row, event.venue_time)
        current = state.balances.get(row.asset)
        if current is not None and (row.updated_at < current.updated_at or same_state(row, current)):
            continue
        state.balances[row.asset] = row
        state.changes.upsert("balances", (row.asset,))
    if not event.snapshot or scope is None:
        return
    listed = {item["asset"] for item in items}
    taken = event.snapshot_time
    for asset in sorted(state.balances.keys() - listed):
        row = state.balances[asset]
        if row.scope == scope and row.updated_at <= taken:
            # The venue's statement of this scope no longer lists it: the account holds none of it.
            del state.balances[asset]
            state.changes.delete("balances", (asset,))


def fold_margins(state: AccountState, event: FoldEvent) -> None:
    item = event.payload["summary"]
    row = _versioned(_decode_margins(item, state.account, event.venue, event.id), event)
    row.updated_at = _time_or(row, event.venue_time)
    current = state.margins
    if current is not None and (
        not _is_newer(row, current, new_final=False, current_final=False) or _unchanged(row, current)
    ):
        return
    state.margins = row
    state.changes.upsert("account_margins", ())


def _apply_order(state: AccountState, row: OrderRow) -> None:
    current = state.orders.get(row.order_id)
    if current is not None:
        # closed_unconfirmed is statekeeper's guess, not the venue's word: the venue's answer for the same version
        # replaces it (the order was working after all), where a venue's terminal state would win the tie.
        guessed = current.status == CLOSED_UNCONFIRMED
        final = not current.is_open and not guessed
        if not _is_newer(row, current, new_final=not row.is_open, current_final=final) or _unchanged(row, current):
            return
    state._put_order(row)


def fold_orders(state: AccountState, event: FoldEvent) -> None:
    items = event.payload["orders"]
    for item in items:
        _apply_order(state, _versioned(_decode_order(item, state.account, event.venue, event.id), event))
    if not event.snapshot:
        return
    listed = {item["order_id"] for item in items}
    taken = event.snapshot_time
    for order_id in sorted(state.open_orders - listed):
        row = state.orders[order_id]
        if row.updated_at <= taken:
            # The venue no longer lists it: it is not working. Its final state is fetched and appended later.
            state._put_order(dataclasses.replace(row, status=CLOSED_UNCONFIRMED, event_id=event.id))


def _apply_position(state: AccountState, row: PositionRow) -> None:
    current = state.positions.get(row.market) or state.closed_positions.get(row.market)
    # Between two reports of the same version the later one wins: a close inferred from a snapshot is not more
    # final than the venue's next report of the position.
    if current is not None and (
        not _is_newer(row, current, new_final=False, current_final=False) or _unchanged(row, current)
    ):
        return
    state._put_position(row)


def fold_positions(state: AccountState, event: FoldEvent) -> None:
    items = event.payload["positions"]
    for item in items:
        _apply_position(state, _versioned(_decode_position(item, state.account, event.venue, event.id), event))
    if not event.snapshot:
        return
    listed = {item["market"] for item in items}
    taken = event.snapshot_time
    for market in sorted(set(state.positions) - listed):
        row = state.positions[market]
        if row.updated_at <= taken:
            # Closed as of the snapshot. The closed row keeps the position's own (venue) time and version: an
            # update older than what was known stays ignored, any later one (on the venue's clock) applies.
            state._put_position(dataclasses.replace(row, size=Decimal(0), status=POSITION_CLOSED,
                                                    event_id=event.id))  # fmt: skip


def fold_fills(state: AccountState, event: FoldEvent) -> None:
    for item in event.payload["fills"]:
        row = _decode_fill(item, state.account, event.venue, event.id)
        key = (row.fill_id, row.fill_type)
        current = state.fills.get(key)
        bust = state.busts.get(row.fill_id)
        busted_at = bust.busted_at if bust is not None else (current.busted_at if current is not None else None)
        row.busted_at = busted_at
        row.updated_at = max(row.created_at, busted_at) if busted_at is not None else row.created_at
        if same_state(row, current):
            continue
        state.fills[key] = row
        state.changes.upsert("fills", key)


def fold_busts(state: AccountState, event: FoldEvent) -> None:
    for item in event.payload["busts"]:
        fill_id = item["fill_id"]
        if fill_id not in state.busts:  # the first report of a bust is kept
            bust = _decode_bust(item, state.account, event.venue, event.id)
            bust.updated_at = bust.busted_at
            state.busts[fill_id] = bust
            state.changes.upsert("fill_busts", (fill_id,))
        busted_at = state.busts[fill_id].busted_at
        for key in sorted(k for k in state.fills if k[0] == fill_id):
            fill = state.fills[key]
            if fill.busted_at is None:
                state.fills[key] = dataclasses.replace(fill, busted_at=busted_at,
                                                       updated_at=max(fill.created_at, busted_at),
                                                       event_id=event.id)  # fmt: skip
                state.changes.upsert("fills", key)


def fold_funding(state: AccountState, event: FoldEvent) -> None:
    for item in event.payload["payments"]:
        row = _decode_payment(item, state.account, event.venue, event.id)
        row.updated_at = row.paid_at
        if same_state(row, state.funding.get(row.payment_id)):
            continue
        state.funding[row.payment_id] = row
        state.changes.upsert("funding_payments", (row.payment_id,))


_ORDER, _POSITION, _BALANCE, _FILL, _ACCOUNT, _FUNDING, _FILL_BUST = (
    EventKind.ORDER.value, EventKind.POSITION.value, EventKind.BALANCE.value, EventKind.FILL.value,
    EventKind.ACCOUNT.value, EventKind.FUNDING.value, EventKind.FILL_BUST.value,
)  # fmt: skip

_FOLDS = {
    EventKind.ORDER.value: fold_orders,
    EventKind.FILL.value: fold_fills,
    EventKind.BALANCE.value: fold_balances,
    EventKind.POSITION.value: fold_positions,
    EventKind.FUNDING.value: fold_funding,
    EventKind.FILL_BUST.value: fold_busts,
    EventKind.ACCOUNT.value: fold_margins,
}


PROJECTED_KINDS: frozenset[str] = frozenset(_FOLDS)
"""The event kinds that change a projection; every other kind only moves the checkpoint."""


def apply(state: AccountState, event: FoldEvent) -> None:
    """Fold one event into ``state`` (kinds no projection reads change nothing)."""
    fold_one = _FOLDS.get(event.kind)
    if fold_one is not None:
        fold_one(state, event)


def fold(state: AccountState, events: Iterable[FoldEvent]) -> AccountState:
    """Fold events, in log order, into ``state`` (changed in place, and returned)."""
    folds = _FOLDS
    for event in events:  # apply(), inlined: a call less per event
        fold_one = folds.get(event.kind)
        if fold_one is not None:
            fold_one(state, event)
    return state


# ---------------------------------------------------------------------------------------------- needs


@dataclass
class Needs:
    """The rows a batch of events can read: what the SQL projector loads before folding it."""

    balances: bool = False
    margins: bool = False
    order_ids: set[str] = field(default_factory=set)
    all_open_orders: bool = False
    positions: bool = False
    fill_ids: set[str] = field(default_factory=set)
    payment_ids: set[str] = field(default_factory=set)


def needs(events: Iterable[FoldEvent]) -> Needs:
    wanted = Needs()
    order_ids, fill_ids, payment_ids = wanted.order_ids, wanted.fill_ids, wanted.payment_ids
    for event in events:  # called for every event read: plain strings and loops, no generators or enum members
        kind = event.kind
        if kind == _ORDER:
            for order in event.payload["orders"]:
                order_ids.add(order["order_id"])
            if event.snapshot:
                wanted.all_open_orders = True
        elif kind == _POSITION:
            wanted.positions = True
        elif kind == _BALANCE:
            wanted.balances = True
        elif kind in (_FILL, _FILL_BUST):
            for item in event.payload["fills" if kind == _FILL else "busts"]:
                fill_ids.add(item["fill_id"])
        elif kind == _ACCOUNT:
            wanted.margins = True
        elif kind == _FUNDING:
            for payment in event.payload["payments"]:
                payment_ids.add(payment["payment_id"])
    return wanted
