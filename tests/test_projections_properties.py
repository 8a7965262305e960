"""Properties of the projections: the pure folds, the partial loading of the SQL projector, exactly-once under kills.

* Pure: folding a sequence in one pass equals folding it batch by batch, each batch into a state that holds only
  the rows :func:`~statekeeper.projections.fold.needs` asks for, written back from ``state.changes`` (a pure
  Python model of :func:`statekeeper.projections.store.apply_batch`): ``needs`` is complete.
* Pure: receiving the same messages again (with other keys: a REST backfill, a resend) changes no ledger row, and
  no row at all where there are no snapshots.
* Examples: one or more explicit tests per rule of the fold's docstring.
* PostgreSQL: the projector, run with random small batches while events are appended (and appended again), leaves
  exactly the tables the pure fold of the log gives, per account.
* PostgreSQL: a projector killed at random instants (an exception before the commit, the connection dropped before
  the commit, killed right after it, its backend terminated mid-transaction) never skips or repeats an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, cast
from uuid import uuid4

import asyncpg
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from statekeeper.database import connect
from statekeeper.eventlog import CONNECTION_ERRORS, AppendOutcome, PostgresEventLog, get_checkpoint
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
    Side,
    Source,
    StoredEvent,
    natural_key,
)
from statekeeper.projections import store
from statekeeper.projections.fold import AccountState, FoldEvent, Needs, fold, needs
from statekeeper.projections.rows import CLOSED_UNCONFIRMED, TERMINAL_ORDER_STATUSES, Row
from tests.projection_strategies import (
    ACCOUNT,
    account_events,
    at,
    fold_events,
    several_accounts_events,
    with_account,
)

Tables = dict[str, list[Row]]
TableRows = dict[str, dict[tuple[Any, ...], Any]]
"""A pure model of the projection tables of one account: per table, rows by key."""

LEDGERS = ("fills", "fill_busts", "funding_payments")

# Function-scoped fixtures are fine here: every example works on an account of its own.
SQL_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def one_pass(events: Sequence[FoldEvent], account: str = ACCOUNT) -> AccountState:
    return fold(AccountState(account), events)


def states(tables: Tables) -> dict[str, list[Row]]:
    """The tables with ``event_id`` left out: the state they hold, whichever event last wrote each row."""
    return {name: [dataclasses.replace(r, event_id=0) for r in found] for name, found in tables.items()}  # type: ignore[call-arg]


# =================================================================================== a pure projector model


def _rows_of(state: AccountState) -> dict[str, Any]:
    """How to find the row that a change of each table refers to (what ``store.commit_batch`` writes)."""
    return {
        "balances": lambda key: state.balances[key[0]],
        "account_margins": lambda _key: state.margins,
        "orders": lambda key: state.orders[key[0]],
        "open_orders": lambda key: state.orders[key[0]],
        "positions": lambda key: state.positions[key[0]],
        "closed_positions": lambda key: state.closed_positions[key[0]],
        "fills": lambda key: state.fills[key],
        "fill_busts": lambda key: state.busts[key[0]],
        "funding_payments": lambda key: state.funding[key[0]],
    }


def load(tables: TableRows, account: str, wanted: Needs) -> AccountState:
    """The rows the projector loads for a batch with these needs: nothing else of the account."""
    state = AccountState(account)
    if wanted.balances:
        state.balances = {key[0]: row for key, row in tables["balances"].items()}
    if wanted.margins:
        state.margins = tables["account_margins"].get(())
    if wanted.all_open_orders:
        state.orders.update((key[0], row) for key, row in tables["open_orders"].items())
    for order_id in wanted.order_ids - state.orders.keys():
        if (order_id,) in tables["orders"]:
            state.orders[order_id] = tables["orders"][(order_id,)]
    state.open_orders = {order_id for order_id in state.orders if (order_id,) in tables["open_orders"]}
    if wanted.positions:
        state.positions = {key[0]: row for key, row in tables["positions"].items()}
        state.closed_positions = {key[0]: row for key, row in tables["closed_positions"].items()}
    state.fills = {key: row for key, row in tables["fills"].items() if key[0] in wanted.fill_ids}
    state.busts = {key[0]: row for key, row in tables["fill_busts"].items() if key[0] in wanted.fill_ids}
    state.funding = {key[0]: row for key, row in tables["funding_payments"].items() if key[0] in wanted.payment_ids}
    return state


def write(tables: TableRows, state: AccountState) -> None:
    """Write back what the fold changed, as ``store.commit_batch`` does: removed keys, then upserted rows, per table."""
    lookups = _rows_of(state)
    for table in tables:
        for key in state.changes.deleted.get(table, set()):
            tables[table].pop(key, None)
        for key in state.changes.upserted.get(table, set()):
            tables[table][key] = lookups[table](key)


def fold_in_batches(events: Sequence[FoldEvent], sizes: Sequence[int], account: str = ACCOUNT) -> Tables:
    """Fold batch by batch, each into a state loaded per ``needs`` from the model tables."""
    tables: TableRows = {name: {} for name in AccountState(account).tables()}
    position = 0
    for size in itertools.cycle(sizes):
        if position >= len(events):
            break
        batch = events[position : position + size]
        position += len(batch)
        write(tables, fold(load(tables, account, needs(batch)), batch))
    return {name: sorted(found.values(), key=lambda r: r.key_value()) for name, found in tables.items()}


def check_consistent(state: AccountState) -> None:
    """What every state must satisfy: open orders are the open rows; positions are open; closed ones closed."""
    assert state.open_orders == {i for i, row in state.orders.items() if row.status not in TERMINAL_ORDER_STATUSES}
    assert all(row.is_open for row in state.positions.values())
    assert all(not row.is_open for row in state.closed_positions.values())
    for (fill_id, _), row in state.fills.items():
        bust = state.busts.get(fill_id)
        assert row.busted_at == (bust.busted_at if bust is not None else None)


# ============================================================================================ pure properties


@settings(max_examples=200)
@given(events=account_events(max_steps=40), sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_batches_with_partial_state_equal_one_pass(events: list[Event], sizes: list[int]) -> None:
    folded = fold_events(events)
    whole = one_pass(folded)
    check_consistent(whole)
    assert fold_in_batches(folded, sizes) == whole.tables()


@settings(max_examples=50)
@given(events=account_events(max_steps=40))
def test_one_event_per_batch_equals_one_pass(events: list[Event]) -> None:
    folded = fold_events(events)
    assert fold_in_batches(folded, [1]) == one_pass(folded).tables()


@given(events=account_events(max_steps=30))
def test_ledgers_ignore_messages_received_again(events: list[Event]) -> None:
    once = one_pass(fold_events(events)).tables()
    twice = one_pass(fold_events([*events, *events])).tables()
    assert {t: states(once)[t] for t in LEDGERS} == {t: states(twice)[t] for t in LEDGERS}


@given(
    events=account_events(max_steps=30, snapshots=False, seq_mode="never", venue="extended")
    | account_events(max_steps=30, snapshots=False, seq_mode="always", venue="paradex"),
    again=st.data(),
)
def test_deltas_received_again_change_nothing(events: list[Event], again: st.DataObject) -> None:
    """Without snapshots (and with one kind of version), any repeated messages leave every row as it was."""
    repeated = again.draw(st.lists(st.sampled_from(events), max_size=len(events)) if events else st.just([]))
    once = one_pass(fold_events(events)).tables()
    assert states(one_pass(fold_events([*events, *events])).tables()) == states(once)
    assert states(one_pass(fold_events([*events, *repeated, *events])).tables()) == states(once)


@settings(max_examples=50)
@given(events=several_accounts_events(max_steps=15))
def test_accounts_fold_apart(events: list[Event]) -> None:
    """Folding one account's events alone equals picking them out of an interleaved log."""
    folded = fold_events(events)
    for account in {e.account for e in events}:
        alone = [e for e, stored in zip(folded, events, strict=True) if stored.account == account]
        assert fold_in_batches(alone, [3], account) == one_pass(alone, account).tables()


def reference(events: Sequence[Event]) -> dict[str, dict[Any, Any]]:
    """An independent model of the fold for logs without snapshots, written from the docstring's rules.

    Per entity, the state is the newest version: the highest ``(venue_seq, updated_at, terminal)`` (venue_seq left
    out where the log has none), the later message among equals; positions leave the terminal state out (between
    two reports of the same version of a position the later one wins). Ledgers keep the last content of each key; a
    fill's ``busted_at`` is the first bust of its id, before or after it. Values are a few telling columns.
    """
    newest: dict[str, dict[Any, tuple[tuple[Any, ...], tuple[Any, ...]]]] = {
        "orders": {}, "positions": {}, "balances": {}, "account_margins": {}
    }  # fmt: skip
    fills: dict[tuple[str, str], tuple[Any, ...]] = {}
    busts: dict[str, datetime] = {}
    funding: dict[str, tuple[Any, ...]] = {}

    def offer(table: str, key: Any, version: tuple[Any, ...], value: tuple[Any, ...]) -> None:
        current = newest[table].get(key)
        if current is None or version >= current[0]:
            newest[table][key] = (version, value)

    for message in events:
        body = message.body
        if isinstance(body, OrderBody):
            for o in body.orders:
                final = o.status in TERMINAL_ORDER_STATUSES
                offer("orders", o.order_id, (o.venue_seq or 0, o.updated_at, final), (o.status, o.updated_at))
        elif isinstance(body, PositionBody):
            for p in body.positions:
                closed = p.size == 0 or p.status == "CLOSED"
                offer("positions", p.market, (p.venue_seq or 0, p.updated_at), (p.size, p.updated_at, closed))
        elif isinstance(body, BalanceBody):
            for balance in body.balances:
                when = balance.updated_at or message.venue_time
                offer("balances", balance.asset, (when,), (balance.balance, when))
        elif isinstance(body, AccountBody):
            s = body.summary
            when = s.updated_at or message.venue_time
            offer("account_margins", (), (s.venue_seq or 0, when), (s.equity, when))
        elif isinstance(body, FillBody):
            for f in body.fills:
                fills[(f.fill_id, f.fill_type)] = (f.fee, f.fee_asset, f.value)
        elif isinstance(body, FillBustBody):
            for bust in body.busts:
                busts.setdefault(bust.fill_id, bust.busted_at)
        elif isinstance(body, FundingBody):
            for pay in body.payments:
                funding[pay.payment_id] = (pay.amount, pay.rate)
    model: dict[str, dict[Any, Any]] = {
        table: {key: value for key, (_, value) in found.items()} for table, found in newest.items()
    }
    model["fills"] = {key: (*value, busts.get(key[0])) for key, value in fills.items()}
    model["fill_busts"] = dict(busts)
    model["funding_payments"] = funding
    return model


def observed(state: AccountState) -> dict[str, dict[Any, Any]]:
    """The same columns of the fold's state, for :func:`reference`."""
    latest = {**state.closed_positions, **state.positions}  # an open row is newer than any closed one kept
    return {
        "orders": {i: (r.status, r.updated_at) for i, r in state.orders.items()},
        "positions": {m: (r.size, r.updated_at, not r.is_open) for m, r in latest.items()},
        "balances": {a: (r.balance, r.updated_at) for a, r in state.balances.items()},
        "account_margins": {(): (m.equity, m.updated_at)} if (m := state.margins) is not None else {},
        "fills": {k: (r.fee, r.fee_asset, r.value, r.busted_at) for k, r in state.fills.items()},
        "fill_busts": {i: r.busted_at for i, r in state.busts.items()},
        "funding_payments": {i: (r.amount, r.rate) for i, r in state.funding.items()},
    }


@given(
    account_events(max_steps=40, snapshots=False, seq_mode="never", venue="extended")
    | account_events(max_steps=40, snapshots=False, seq_mode="always", venue="paradex")
)
def test_fold_without_snapshots_keeps_the_newest_version(events: list[Event]) -> None:
    state = one_pass(fold_events(events))
    check_consistent(state)
    assert observed(state) == reference(events)


def _newer(new: Order | Position, current: Row, *, new_final: bool, current_final: bool) -> bool:
    """The docstring's order of versions: venue_seq where both have one, then time, then a terminal state."""
    seq: int | None = cast(Any, current).venue_seq
    when: datetime = cast(Any, current).updated_at
    if new.venue_seq is not None and seq is not None and new.venue_seq != seq:
        return new.venue_seq > seq
    if new.updated_at != when:
        return new.updated_at > when
    return new_final or not current_final


@settings(max_examples=150)
@given(events=account_events(max_steps=40))
def test_snapshots_replace_the_open_sets(events: list[Event]) -> None:
    """Right after each snapshot: what it lists (unless older than the row) is the row's state, and an open order,
    position or (scoped snapshot) balance of its scope it does not list is newer than the snapshot."""
    state = AccountState(ACCOUNT)
    for message, folded in zip(events, fold_events(events), strict=True):
        orders_before, positions_before = dict(state.orders), {**state.closed_positions, **state.positions}
        balances_before = dict(state.balances)
        fold(state, [folded])
        body = message.body
        if not message.snapshot or not isinstance(body, OrderBody | PositionBody | BalanceBody):
            continue
        taken = folded.snapshot_time
        if isinstance(body, BalanceBody):
            for b in body.balances:
                kept = balances_before.get(b.asset)
                if kept is None or (b.updated_at or message.venue_time) >= kept.updated_at:
                    assert (state.balances[b.asset].balance, state.balances[b.asset].scope) == (b.balance, body.scope)
            assets = {b.asset for b in body.balances}
            others = [row for asset, row in state.balances.items() if asset not in assets]
            if body.scope is None:  # a balance message logged without a scope removes nothing
                assert {row.asset for row in others} == set(balances_before) - assets
            assert all(row.updated_at > taken for row in others if body.scope is not None and row.scope == body.scope)
            assert all(row.asset in balances_before for row in others)
        elif isinstance(body, OrderBody):
            for o in body.orders:
                row = orders_before.get(o.order_id)
                final = o.status in TERMINAL_ORDER_STATUSES
                if row is None or _newer(
                    o, row, new_final=final, current_final=not row.is_open and row.status != CLOSED_UNCONFIRMED
                ):
                    assert state.orders[o.order_id].status == o.status
            listed = {o.order_id for o in body.orders}
            assert all(state.orders[i].updated_at > taken for i in state.open_orders - listed)
        else:
            for p in body.positions:
                before = positions_before.get(p.market)
                closed = p.size == 0 or p.status == "CLOSED"
                if before is None or _newer(p, before, new_final=False, current_final=False):
                    where = state.closed_positions if closed else state.positions
                    assert (where[p.market].size, where[p.market].updated_at) == (p.size, p.updated_at)
                    assert closed != (p.market in state.positions)
            markets = {p.market for p in body.positions}
            assert all(row.updated_at > taken for m, row in state.positions.items() if m not in markets)
        check_consistent(state)


# ====================================================================================== examples of each rule


class Log:
    """Builds a short log of hand-written events for the example tests."""

    def __init__(self, venue: str = "extended") -> None:
        self.venue = venue
        self.events: list[Event] = []

    def add(
        self,
        body: Body,
        *,
        t: int,
        snapshot: bool = False,
        source: Source = Source.STREAM,
        received: int | None = None,
    ) -> Log:
        self.events.append(
            Event(
                account=ACCOUNT,
                venue=self.venue,
                source=source,
                body=body,
                venue_time=at(t),
                received_at=at(received if received is not None else t),
                snapshot=snapshot,
                key=natural_key("example", len(self.events)),
            )
        )
        return self

    def fold(self) -> AccountState:
        state = one_pass(fold_events(self.events))
        check_consistent(state)
        return state


def order(order_id: str, status: str, t: int, *, seq: int | None = None, filled: str = "0") -> Order:
    return Order(order_id=order_id, market="ETH-USD", side=Side.BUY, order_type="LIMIT", status=status,
                 price=Decimal("3100.5"), qty=Decimal(2), filled_qty=Decimal(filled), updated_at=at(t),
                 venue_seq=seq)  # fmt: skip


def position(market: str, size: str, t: int, *, seq: int | None = None, status: str | None = None) -> Position:
    return Position(market=market, side=PositionSide.LONG, size=Decimal(size), entry_price=Decimal(100),
                    status=status, updated_at=at(t), venue_seq=seq)  # fmt: skip


def fill(fill_id: str, t: int, **changes: Any) -> Fill:
    values: dict[str, Any] = {"fill_id": fill_id, "market": "ETH-USD", "side": Side.BUY, "price": Decimal("3100.5"),
                              "qty": Decimal(1), "fee": Decimal("0.01"), "created_at": at(t)}  # fmt: skip
    return Fill.model_validate(values | changes)


def orders(*items: Order) -> OrderBody:
    return OrderBody(orders=items)


def positions(*items: Position) -> PositionBody:
    return PositionBody(positions=items)


def statuses(state: AccountState) -> dict[str, str]:
    return {order_id: row.status for order_id, row in sorted(state.orders.items())}


def test_stale_order_update_is_ignored() -> None:
    log = Log().add(orders(order("o1", "NEW", 2)), t=2).add(orders(order("o1", "PARTIALLY_FILLED", 5, filled="1")), t=5)
    state = log.add(orders(order("o1", "NEW", 3)), t=3).fold()  # arrives last, but older
    assert statuses(state) == {"o1": "PARTIALLY_FILLED"}
    assert state.orders["o1"].event_id == 2
    assert state.open_orders == {"o1"}


def test_venue_seq_decides_before_time() -> None:
    log = Log("paradex").add(orders(order("o1", "OPEN", 5, seq=7)), t=5)
    state = log.add(orders(order("o1", "NEW", 9, seq=6)), t=9).fold()  # a lower seq_no loses, even if later in time
    assert (state.orders["o1"].status, state.orders["o1"].venue_seq) == ("OPEN", 7)
    state = log.add(orders(order("o1", "CLOSED", 4, seq=8)), t=10).fold()  # a higher one wins, even if earlier
    assert (state.orders["o1"].status, state.open_orders) == ("CLOSED", set())
    # Without a seq_no on both sides, time decides.
    state = log.add(orders(order("o1", "OPEN", 11)), t=11).fold()
    assert state.orders["o1"].status == "OPEN"


@pytest.mark.parametrize("terminal_first", [True, False])
def test_terminal_status_wins_a_tie(terminal_first: bool) -> None:
    updates = [orders(order("o1", "CANCELLED", 5)), orders(order("o1", "NEW", 5))]
    log = Log().add(orders(order("o1", "NEW", 1)), t=1)
    for body in updates if terminal_first else updates[::-1]:
        log.add(body, t=5)
    state = log.fold()
    assert statuses(state) == {"o1": "CANCELLED"}
    assert state.open_orders == set()
    assert state.tables()["open_orders"] == []


def test_between_open_states_of_one_version_the_later_message_wins() -> None:
    log = Log().add(orders(order("o1", "NEW", 5)), t=5).add(orders(order("o1", "PARTIALLY_FILLED", 5)), t=5)
    assert statuses(log.fold()) == {"o1": "PARTIALLY_FILLED"}
    log.add(orders(order("o1", "NEW", 5)), t=5)
    assert statuses(log.fold()) == {"o1": "NEW"}


def test_snapshot_closes_an_order_it_does_not_list() -> None:
    log = Log().add(orders(order("o1", "NEW", 1), order("o2", "NEW", 1)), t=1)
    state = log.add(orders(order("o2", "NEW", 1)), t=5, snapshot=True).fold()
    assert statuses(state) == {"o1": CLOSED_UNCONFIRMED, "o2": "NEW"}
    assert state.open_orders == {"o2"}
    assert state.orders["o1"].event_id == 2  # the snapshot changed it
    assert state.orders["o1"].updated_at == at(1)  # its own time: the final state fetched later replaces it
    state = log.add(orders(order("o1", "FILLED", 1, filled="2")), t=6, source=Source.REST).fold()
    assert statuses(state) == {"o1": "FILLED", "o2": "NEW"}


def test_snapshot_keeps_an_order_newer_than_itself() -> None:
    # A REST snapshot's time is when its request was sent (received_at), however late the answer came.
    log = Log().add(orders(order("o1", "NEW", 1)), t=1).add(orders(order("o2", "NEW", 4)), t=4)
    state = log.add(orders(), t=9, received=3, snapshot=True, source=Source.REST).fold()
    assert statuses(state) == {"o1": CLOSED_UNCONFIRMED, "o2": "NEW"}
    assert state.open_orders == {"o2"}
    # A stream snapshot's time is the venue's: at t=9 the venue no longer had o2.
    state = log.add(orders(), t=9, received=3, snapshot=True).fold()
    assert statuses(state) == {"o1": CLOSED_UNCONFIRMED, "o2": CLOSED_UNCONFIRMED}
    assert state.open_orders == set()


def test_snapshot_does_not_reopen_a_terminal_order_with_an_older_listing() -> None:
    log = Log().add(orders(order("o1", "NEW", 1)), t=1).add(orders(order("o1", "CANCELLED", 6)), t=6)
    state = log.add(orders(order("o1", "NEW", 1)), t=8, received=5, snapshot=True, source=Source.REST).fold()
    assert statuses(state) == {"o1": "CANCELLED"}
    assert state.open_orders == set()


def test_snapshot_listing_a_closed_unconfirmed_order_reopens_it() -> None:
    # A REST snapshot that missed o1 (a lagging replica, or the local clock ahead of the venue's) closes it...
    log = Log().add(orders(order("o1", "NEW", 1)), t=1)
    log.add(orders(), t=5, received=4, snapshot=True, source=Source.REST)
    assert statuses(log.fold()) == {"o1": CLOSED_UNCONFIRMED}
    # ...and the next snapshot lists it, unchanged, as working: the open-order set is what this snapshot says.
    state = log.add(orders(order("o1", "NEW", 1)), t=9, received=8, snapshot=True, source=Source.REST).fold()
    assert statuses(state) == {"o1": "NEW"}
    assert state.open_orders == {"o1"}


def test_resolved_order_still_working_leaves_closed_unconfirmed() -> None:
    """The resolver fetches a closed_unconfirmed order by id and appends the venue's answer (not a snapshot)."""
    log = Log("paradex").add(orders(order("o1", "OPEN", 1, seq=3)), t=1)
    log.add(orders(), t=5, received=4, snapshot=True, source=Source.REST)
    assert statuses(log.fold()) == {"o1": CLOSED_UNCONFIRMED}
    state = log.add(orders(order("o1", "OPEN", 1, seq=3)), t=6, source=Source.REST).fold()
    assert (statuses(state), state.open_orders) == ({"o1": "OPEN"}, {"o1"})
    # A venue's terminal state of the same version still wins over a working one.
    state = log.add(orders(order("o1", "CLOSED", 1, seq=3)), t=7).add(orders(order("o1", "OPEN", 1, seq=3)), t=8).fold()
    assert (statuses(state), state.open_orders) == ({"o1": "CLOSED"}, set())


def test_rest_seq_no_is_never_compared_with_the_streams() -> None:
    """Paradex: "WebSocket and REST responses use independently generated seq_no" (protocols/README 2.6)."""
    ws = 1681471234972000000
    log = Log("paradex").add(orders(order("o1", "OPEN", 1, seq=ws)), t=1)
    log.add(orders(), t=5, received=4, snapshot=True, source=Source.REST)
    # The resolver's answer carries a REST seq_no far below the stream's: time decides, and the final state lands.
    state = log.add(orders(order("o1", "CLOSED", 3, seq=42)), t=6, source=Source.REST).fold()
    assert (statuses(state), state.orders["o1"].venue_seq) == ({"o1": "CLOSED"}, None)
    # A stale REST listing with a REST seq_no far above the stream's does not reopen an order closed since.
    log = (
        Log("paradex")
        .add(orders(order("o2", "OPEN", 1, seq=100)), t=1)
        .add(orders(order("o2", "CLOSED", 6, seq=101)), t=6)
    )
    state = log.add(orders(order("o2", "OPEN", 2, seq=ws)), t=8, received=5, snapshot=True, source=Source.REST).fold()
    assert (statuses(state), state.open_orders) == ({"o2": "CLOSED"}, set())
    # A REST answer that restates the stream's state changes nothing: the row keeps the stream's number.
    log = Log("paradex").add(positions(position("ETH-USD", "1", 3, seq=ws)), t=3)
    state = log.add(positions(position("ETH-USD", "1", 3, seq=7)), t=4, source=Source.REST, snapshot=True).fold()
    assert (state.positions["ETH-USD"].venue_seq, state.positions["ETH-USD"].event_id) == (ws, 1)
    # After a state that came over REST, the stream's next update applies whatever its number.
    state = log.add(positions(position("ETH-USD", "2", 5, seq=ws + 10**6)), t=5, source=Source.REST).fold()
    state = log.add(positions(position("ETH-USD", "3", 6, seq=ws + 1)), t=6).fold()
    assert (state.positions["ETH-USD"].size, state.positions["ETH-USD"].venue_seq) == (Decimal(3), ws + 1)


def test_closed_position_moves_to_closed_positions() -> None:
    log = Log().add(positions(position("BTC-USD", "1", 1)), t=1)
    state = log.add(positions(position("BTC-USD", "0", 5)), t=5).fold()
    assert state.positions == {}
    assert [(r.market, r.size) for r in state.closed_positions.values()] == [("BTC-USD", Decimal(0))]
    # A late update from before the close does not open it again.
    state = log.add(positions(position("BTC-USD", "1", 3)), t=6).fold()
    assert state.positions == {}
    assert state.closed_positions["BTC-USD"].updated_at == at(5)
    # A status CLOSED closes it too, whatever the size says; a newer update opens it again.
    state = log.add(positions(position("BTC-USD", "2", 7)), t=7).fold()
    assert state.positions["BTC-USD"].size == 2
    state = log.add(positions(position("BTC-USD", "2", 8, status="CLOSED")), t=8).fold()
    assert state.positions == {}
    assert state.closed_positions["BTC-USD"].status == "CLOSED"


def test_position_snapshot_closes_absent_positions_keeping_their_version() -> None:
    log = Log("paradex").add(positions(position("BTC-USD", "1", 1, seq=3), position("ETH-USD", "1", 1, seq=1)), t=1)
    state = log.add(positions(position("ETH-USD", "1", 1, seq=1)), t=5, snapshot=True).fold()
    assert set(state.positions) == {"ETH-USD"}
    closed = state.closed_positions["BTC-USD"]
    assert (closed.size, closed.status, closed.updated_at, closed.venue_seq) == (Decimal(0), "CLOSED", at(1), 3)
    assert closed.event_id == 2
    # An update older than what was known stays ignored...
    state = log.add(positions(position("BTC-USD", "2", 0, seq=2)), t=6).fold()
    assert set(state.positions) == {"ETH-USD"}
    # ...and any later one applies, whatever the snapshot's time (the venue's seq_no says it came after).
    state = log.add(positions(position("BTC-USD", "1.5", 4, seq=4)), t=7).fold()
    assert state.positions["BTC-USD"].size == Decimal("1.5")


def test_position_snapshot_keeps_a_position_newer_than_itself() -> None:
    log = Log().add(positions(position("BTC-USD", "1", 6)), t=6)
    state = log.add(positions(), t=9, received=5, snapshot=True, source=Source.REST).fold()
    assert set(state.positions) == {"BTC-USD"}


def test_position_snapshot_listing_a_closed_position_reopens_it() -> None:
    log = Log().add(positions(position("BTC-USD", "1", 1)), t=1)
    log.add(positions(), t=5, received=4, snapshot=True, source=Source.REST)  # missed it
    assert log.fold().positions == {}
    state = log.add(positions(position("BTC-USD", "1", 1)), t=9, received=8, snapshot=True, source=Source.REST).fold()
    assert set(state.positions) == {"BTC-USD"}


def test_bust_before_its_fill_marks_the_fill() -> None:
    log = Log("paradex").add(FillBustBody(busts=(FillBust(fill_id="f1", busted_at=at(3)),)), t=3)
    state = log.add(FillBody(fills=(fill("f1", 1),)), t=4).fold()
    row = state.fills[("f1", "TRADE")]
    assert (row.busted_at, row.updated_at) == (at(3), at(3))
    assert state.busts["f1"].busted_at == at(3)


def test_bust_after_its_fill_marks_it_and_the_first_bust_is_kept() -> None:
    log = Log("paradex").add(FillBody(fills=(fill("f1", 1), fill("f2", 1))), t=1)
    log.add(FillBustBody(busts=(FillBust(fill_id="f1", busted_at=at(3)),)), t=3)
    state = log.add(FillBustBody(busts=(FillBust(fill_id="f1", busted_at=at(7)),)), t=7).fold()
    assert [(r.fill_id, r.busted_at) for r in state.tables()["fills"]] == [("f1", at(3)), ("f2", None)]  # type: ignore[attr-defined]
    assert state.fills[("f1", "TRADE")].event_id == 2
    # The fill received again (a REST backfill) stays busted.
    state = log.add(FillBody(fills=(fill("f1", 1),)), t=8, source=Source.REST).fold()
    assert state.fills[("f1", "TRADE")].busted_at == at(3)


def test_fill_received_again_from_rest_is_one_row() -> None:
    log = Log().add(FillBody(fills=(fill("f1", 1),)), t=1)
    log.add(FillBody(fills=(fill("f1", 1),)), t=1, received=9, source=Source.REST)
    state = log.fold()
    assert list(state.fills) == [("f1", "TRADE")]
    assert state.fills[("f1", "TRADE")].event_id == 1  # the same content: not even rewritten
    # The same id with another fill type is another fill (Paradex ids are unique per type only).
    state = log.add(FillBody(fills=(fill("f1", 2, fill_type="LIQUIDATION"),)), t=2).fold()
    assert sorted(state.fills) == [("f1", "LIQUIDATION"), ("f1", "TRADE")]


def balances(*items: tuple[str, int], scope: BalanceScope | None, t: int | None = None) -> BalanceBody:
    at_t = at(t) if t is not None else None
    return BalanceBody(balances=tuple(Balance(asset=a, balance=Decimal(b), updated_at=at_t) for a, b in items),
                       scope=scope)  # fmt: skip


def held(state: AccountState) -> dict[str, tuple[object, object]]:
    """Each asset's balance and scope."""
    return {asset: (row.balance, row.scope) for asset, row in sorted(state.balances.items())}


def test_balance_snapshot_keeps_the_assets_of_other_scopes() -> None:
    """Extended states its collateral and its spot assets in separate messages: neither removes the other's."""
    log = Log().add(balances(("USD", 100), scope=BalanceScope.COLLATERAL), t=1, snapshot=True)
    state = log.add(balances(("ETH", 2), ("BTC", 1), scope=BalanceScope.SPOT), t=2, snapshot=True).fold()
    assert held(state) == {"BTC": (1, "spot"), "ETH": (2, "spot"), "USD": (100, "collateral")}
    state = log.add(balances(("USD", 90), scope=BalanceScope.COLLATERAL), t=3, snapshot=True).fold()
    assert held(state) == {"BTC": (1, "spot"), "ETH": (2, "spot"), "USD": (90, "collateral")}


def test_balance_snapshot_removes_an_asset_of_its_scope_it_does_not_list() -> None:
    log = Log("paradex").add(balances(("USDC", 100), ("ETH", 2), scope=BalanceScope.TOKEN), t=1, snapshot=True)
    state = log.add(balances(("USDC", 100), scope=BalanceScope.TOKEN), t=2, snapshot=True).fold()
    assert held(state) == {"USDC": (100, "token")}
    assert state.changes.deleted == {"balances": {("ETH",)}}
    # A delta never removes anything; an empty snapshot says the account holds none of the scope's assets.
    state = log.add(balances(("ETH", 1), scope=BalanceScope.TOKEN), t=3).fold()
    assert held(state) == {"ETH": (1, "token"), "USDC": (100, "token")}
    assert held(log.add(balances(scope=BalanceScope.TOKEN), t=4, snapshot=True).fold()) == {}


def test_balance_snapshot_keeps_an_asset_newer_than_itself() -> None:
    """A REST snapshot's time is when its request was sent: a stream update that came meanwhile survives it."""
    log = Log("paradex").add(balances(("USDC", 100), scope=BalanceScope.TOKEN, t=1), t=1)
    log.add(balances(("ETH", 3), scope=BalanceScope.TOKEN, t=6), t=6)
    state = log.add(balances(("USDC", 100), scope=BalanceScope.TOKEN), t=8, received=5, snapshot=True,
                    source=Source.REST).fold()  # fmt: skip
    assert held(state) == {"ETH": (3, "token"), "USDC": (100, "token")}


def test_balance_snapshot_without_a_scope_removes_nothing() -> None:
    """Events logged before scopes were recorded: their rows have none, and a snapshot only replaces what it lists."""
    log = Log().add(balances(("USDC", 100), ("ETH", 2), scope=None), t=1, snapshot=True)
    state = log.add(balances(("USDC", 90), scope=None), t=2, snapshot=True).fold()
    assert held(state) == {"ETH": (2, None), "USDC": (90, None)}
    # A scoped snapshot does not remove a row without a scope either: nothing says which statement it was of.
    state = log.add(balances(("USDC", 80), scope=BalanceScope.TOKEN), t=3, snapshot=True).fold()
    assert held(state) == {"ETH": (2, None), "USDC": (80, "token")}


def test_stale_balance_is_ignored() -> None:
    log = Log().add(BalanceBody(balances=(Balance(asset="USDC", balance=Decimal(100), updated_at=at(5)),)), t=5)
    state = log.add(BalanceBody(balances=(Balance(asset="USDC", balance=Decimal(90), updated_at=at(4)),)), t=6).fold()
    assert state.balances["USDC"].balance == 100
    # Without its own time, a balance takes the message's venue time.
    state = log.add(BalanceBody(balances=(Balance(asset="USDC", balance=Decimal(80)),)), t=7).fold()
    assert (state.balances["USDC"].balance, state.balances["USDC"].updated_at) == (Decimal(80), at(7))


def test_funding_received_twice_is_one_row() -> None:
    payment = FundingPayment(payment_id="p1", market="ETH-USD", amount=Decimal("-0.5"), paid_at=at(1))
    log = Log().add(FundingBody(payments=(payment,)), t=1)
    state = log.add(FundingBody(payments=(payment,)), t=1, received=9, source=Source.REST).fold()
    assert [(r.payment_id, r.amount, r.event_id) for r in state.tables()["funding_payments"]] == [  # type: ignore[attr-defined]
        ("p1", Decimal("-0.5"), 1)
    ]


# ============================================================================================== PostgreSQL


def fresh_account() -> str:
    return f"acc-{uuid4().hex[:16]}"


async def read_account(log: PostgresEventLog, account: str) -> list[StoredEvent]:
    return await log.read(0, limit=100_000, accounts=[account])


def pure_tables(stored: Iterable[StoredEvent], account: str, *, up_to: int | None = None) -> Tables:
    events = [FoldEvent.of(e) for e in stored if up_to is None or e.id <= up_to]
    return fold(AccountState(account), events).tables()


async def catch_up(conn: asyncpg.Connection, account: str, limits: Sequence[int]) -> int:
    """Apply batches (of the given sizes, in turn) until none is left; returns the number of events applied."""
    applied = 0
    for limit in itertools.cycle(limits):
        result = await store.apply_batch(conn, account, limit=limit)
        if result.events == 0:
            return applied
        assert result.events <= limit
        applied += result.events
    raise AssertionError("unreachable")


@SQL_SETTINGS
@given(
    events=account_events(max_steps=35),
    chunks=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    limits=st.lists(st.integers(1, 8), min_size=1, max_size=4),
    pauses=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    again=st.booleans(),
)
async def test_projector_equals_the_pure_fold(
    *,
    pool: asyncpg.Pool,
    log: PostgresEventLog,
    events: list[Event],
    chunks: list[int],
    limits: list[int],
    pauses: list[int],
    again: bool,
) -> None:
    """Events appended in chunks (some twice) while the projector runs a few small batches after each chunk."""
    account = fresh_account()
    events = with_account(events, account)
    async with pool.acquire() as conn:
        start, steps = 0, itertools.cycle(zip(itertools.cycle(chunks), itertools.cycle(pauses), strict=False))
        while start < len(events):
            size, pause = next(steps)
            chunk = events[start : start + size]
            if again and start:
                chunk = events[max(0, start - size) : start] + chunk  # resent messages are duplicates in the log
            result = await log.append(chunk)
            assert AppendOutcome.CONFLICT not in result.outcomes
            start += size
            for limit in limits[:pause]:
                await store.apply_batch(conn, account, limit=limit)
        await catch_up(conn, account, limits)
        tables = await store.read_tables(conn, account)
        checkpoint = await get_checkpoint(conn, name=store.CHECKPOINT, account=account)
    stored = await read_account(log, account)
    assert len(stored) == len(events)
    assert tables == pure_tables(stored, account)
    assert checkpoint == (stored[-1].id if stored else 0)


@settings(SQL_SETTINGS, max_examples=15)
@given(events=several_accounts_events(max_steps=15), order=st.randoms(use_true_random=False))
async def test_projector_keeps_accounts_apart(
    pool: asyncpg.Pool, log: PostgresEventLog, events: list[Event], order: random.Random
) -> None:
    names = {e.account for e in events}
    rename = {name: fresh_account() for name in names}
    await log.append(with_account(events, "", rename=rename))
    async with pool.acquire() as conn:
        pending = sorted(rename.values())
        while pending:  # one small batch of a random account at a time
            account = order.choice(pending)
            if (await store.apply_batch(conn, account, limit=order.randint(1, 5))).events == 0:
                pending.remove(account)
        projected = 0
        for account in rename.values():
            stored = await read_account(log, account)
            assert await store.read_tables(conn, account) == pure_tables(stored, account)
            assert await get_checkpoint(conn, name=store.CHECKPOINT, account=account) == stored[-1].id
            projected += len(stored)
    assert projected == len(events)


async def test_projector_with_up_to_stops_there(pool: asyncpg.Pool, log: PostgresEventLog) -> None:
    account = fresh_account()
    events = Log()
    for t in range(1, 6):
        events.add(orders(order(f"o{t}", "NEW", t)), t=t)
    await log.append(with_account(events.events, account))
    stored = await read_account(log, account)
    async with pool.acquire() as conn:
        result = await store.apply_batch(conn, account, limit=10, up_to=stored[2].id)
        assert (result.events, result.position) == (3, stored[2].id)
        assert await store.read_tables(conn, account) == pure_tables(stored, account, up_to=stored[2].id)
        await catch_up(conn, account, [10])
        assert await store.read_tables(conn, account) == pure_tables(stored, account)


# ============================================================================================ kills


class SimulatedCrash(Exception):
    """The projector process dies right before its commit."""


class Kill(StrEnum):
    NONE = "none"
    RAISE_BEFORE_COMMIT = "raise before commit"
    DROP_BEFORE_COMMIT = "connection dropped before commit"
    AFTER_COMMIT = "killed after commit"
    TERMINATE_BACKEND = "backend terminated mid-transaction"


BLOCKABLE = ("projector_checkpoints", *(name for name in store.TABLES))
LOCK_CHECKPOINT_ROW = "SELECT position FROM projector_checkpoints WHERE account = $1 AND name = $2 FOR UPDATE"
"""Where a projector's transaction can be made to wait (a lock held by another session) and then killed."""


class Projector:
    """A projector process of one account that can be killed: its connection is reopened after each death."""

    def __init__(self, database_url: str, account: str) -> None:
        self.database_url = database_url
        self.account = account
        self.conn: asyncpg.Connection | None = None
        self.deaths = 0

    async def connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await connect(self.database_url)
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    def die(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
        self.conn = None
        self.deaths += 1

    async def step(self, kill: Kill, limit: int, *, watcher: asyncpg.Connection, blocker: asyncpg.Connection,
                   blocked_table: str) -> None:  # fmt: skip
        conn = await self.connection()
        if kill is Kill.NONE:
            await store.apply_batch(conn, self.account, limit=limit)
        elif kill is Kill.RAISE_BEFORE_COMMIT:

            def crash() -> None:
                raise SimulatedCrash

            # No error if there was nothing to apply: the hook runs only before a commit of applied events.
            with contextlib.suppress(SimulatedCrash):
                await store.apply_batch(conn, self.account, limit=limit, before_commit=crash)
            self.die()
        elif kill is Kill.DROP_BEFORE_COMMIT:
            with contextlib.suppress(*CONNECTION_ERRORS):  # no error if there was nothing to apply
                await store.apply_batch(conn, self.account, limit=limit, before_commit=conn.terminate)
            self.die()
        elif kill is Kill.AFTER_COMMIT:
            await store.apply_batch(conn, self.account, limit=limit)
            self.die()
        else:
            await self.terminated_while_waiting(conn, limit, watcher=watcher, blocker=blocker, table=blocked_table)

    async def terminated_while_waiting(
        self, conn: asyncpg.Connection, limit: int, *, watcher: asyncpg.Connection, blocker: asyncpg.Connection,
        table: str,
    ) -> None:  # fmt: skip
        """Another session holds a lock the batch needs; once the projector waits for it, its backend is killed."""
        pid = conn.get_server_pid()
        async with blocker.transaction():
            if table == "projector_checkpoints":
                await blocker.execute(LOCK_CHECKPOINT_ROW, self.account, store.CHECKPOINT)
            else:
                await blocker.execute(f"LOCK TABLE {table} IN SHARE MODE")
            task = asyncio.create_task(store.apply_batch(conn, self.account, limit=limit))
            for _ in range(100_000):  # each round trip of the watcher lets the projector run
                if task.done():
                    break
                if await watcher.fetchval("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid):
                    assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)
                    break
            else:
                raise AssertionError("the projector neither finished nor waited for the lock")
            try:
                await task
            except CONNECTION_ERRORS:
                self.die()
                if currently_in_test_context():  # statistics of the property test
                    event(f"backend terminated while waiting on {table}")
            else:
                if currently_in_test_context():
                    event("not blocked: the batch did not write the locked table")


@settings(SQL_SETTINGS, max_examples=20)
@given(
    events=account_events(max_steps=40),
    chunks=st.lists(st.integers(1, 15), min_size=1, max_size=4),
    plan=st.lists(
        st.tuples(st.sampled_from(Kill), st.integers(1, 6), st.sampled_from(BLOCKABLE)), min_size=1, max_size=25
    ),
)
async def test_killed_projector_applies_every_event_exactly_once(
    *,
    database_url: str,
    pool: asyncpg.Pool,
    log: PostgresEventLog,
    events: list[Event],
    chunks: list[int],
    plan: list[tuple[Kill, int, str]],
) -> None:
    account = fresh_account()
    events = with_account(events, account)
    projector = Projector(database_url, account)
    sizes = itertools.cycle(chunks)
    appended = 0
    async with pool.acquire() as checker, pool.acquire() as watcher, pool.acquire() as blocker:

        async def check_committed() -> int:
            """What is committed is the fold of exactly the events up to the checkpoint."""
            checkpoint = await get_checkpoint(checker, name=store.CHECKPOINT, account=account)
            tables = await store.read_tables(checker, account)
            assert tables == pure_tables(await read_account(log, account), account, up_to=checkpoint)
            assert all(cast(Any, row).event_id <= checkpoint for found in tables.values() for row in found)
            return checkpoint

        try:
            for kill, limit, table in plan:
                if appended < len(events):
                    size = next(sizes)
                    await log.append(events[appended : appended + size])
                    appended += size
                before = await check_committed()
                await projector.step(kill, limit, watcher=watcher, blocker=blocker, blocked_table=table)
                after = await check_committed()
                assert after >= before
            await log.append(events[appended:])
            await catch_up(await projector.connection(), account, [7])
            checkpoint = await check_committed()
        finally:
            await projector.close()
    stored = await read_account(log, account)
    assert checkpoint == (stored[-1].id if stored else 0)
    assert len(stored) == len(events)


def every_table_log() -> list[Event]:
    """A short log that writes every projection table."""
    log = Log("paradex")
    log.add(BalanceBody(balances=(Balance(asset="USDC", balance=Decimal(100)),)), t=1, snapshot=True)
    log.add(AccountBody(summary=AccountSummary(equity=Decimal(100))), t=1)
    log.add(orders(order("o1", "NEW", 1, seq=1), order("o2", "NEW", 1, seq=1)), t=1)
    log.add(orders(order("o2", "CLOSED", 2, seq=2)), t=2)
    log.add(positions(position("BTC-USD", "1", 1, seq=1), position("ETH-USD", "0", 1, seq=1)), t=2)
    log.add(FillBody(fills=(fill("f1", 2),)), t=2)
    log.add(FillBustBody(busts=(FillBust(fill_id="f1", busted_at=at(3)),)), t=3)
    payment = FundingPayment(payment_id="p1", market="BTC-USD", amount=Decimal("-0.5"), paid_at=at(3))
    log.add(FundingBody(payments=(payment,)), t=3)
    return log.events


@pytest.mark.parametrize("table", BLOCKABLE)
async def test_backend_terminated_mid_transaction_commits_nothing(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog, table: str
) -> None:
    account = fresh_account()
    await log.append(with_account(every_table_log(), account))
    stored = await read_account(log, account)
    projector = Projector(database_url, account)
    async with pool.acquire() as checker, pool.acquire() as watcher, pool.acquire() as blocker:
        await store.ensure_checkpoint(checker, account)
        await projector.step(Kill.TERMINATE_BACKEND, 100, watcher=watcher, blocker=blocker, blocked_table=table)
        assert projector.deaths == 1  # it was waiting for the lock when it was killed
        assert await get_checkpoint(checker, name=store.CHECKPOINT, account=account) == 0
        assert all(not found for found in (await store.read_tables(checker, account)).values())
        # Another process (a new connection) takes over and applies everything once.
        assert await catch_up(await projector.connection(), account, [100]) == len(stored)
        tables = await store.read_tables(checker, account)
    await projector.close()
    assert all(tables.values())  # the log wrote every table
    assert tables == pure_tables(stored, account)


@pytest.mark.parametrize("kill", list(Kill))
async def test_each_kind_of_kill_leaves_a_consistent_state(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog, kill: Kill
) -> None:
    account = fresh_account()
    await log.append(with_account(every_table_log(), account))
    stored = await read_account(log, account)
    projector = Projector(database_url, account)
    async with pool.acquire() as checker, pool.acquire() as watcher, pool.acquire() as blocker:
        await projector.step(kill, 3, watcher=watcher, blocker=blocker, blocked_table="orders")
        committed = {Kill.NONE: 3, Kill.AFTER_COMMIT: 3}.get(kill, 0)
        checkpoint = await get_checkpoint(checker, name=store.CHECKPOINT, account=account)
        assert checkpoint == (stored[committed - 1].id if committed else 0)
        assert await store.read_tables(checker, account) == pure_tables(stored, account, up_to=checkpoint)
        assert projector.deaths == (0 if kill is Kill.NONE else 1)
        assert await catch_up(await projector.connection(), account, [2]) == len(stored) - committed
        assert await store.read_tables(checker, account) == pure_tables(stored, account)
    await projector.close()
