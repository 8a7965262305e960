"""The replayed state of one account, held so that memory stays flat however long the log is.

Replay folds the log page by page exactly as the SQL projector does (:func:`statekeeper.projections.store.
apply_batch`): for each page, load into a fresh :class:`~statekeeper.projections.fold.AccountState` the rows the
page can read (:func:`~statekeeper.projections.fold.needs`), fold the page with the projectors' own folds, and
write back what they changed (:attr:`AccountState.changes`). Only the store differs: here it is
:class:`ReplayState`, not the projection tables.

The tables that stay small (balances, account margins, open orders, positions, closed positions: bounded by the
account's assets, markets and working orders) live in memory. The tables that grow with the log (terminal orders,
fills, fill busts, funding payments) live in memory up to ``hot_rows`` keys each; past that the least recently
written half is spilled to a temporary SQLite file, and read back when a later page names one of its keys. A
row is spilled as its digest line (:func:`row_line`: canonical JSON, decimals as their exact text) and read back
with :func:`statekeeper.projections.rows.positional_decoder`, so a row read back is equal to the row spilled, field
for field, and the digest reads spilled rows as they are stored, without decoding them.

At the end, each table's rows come out sorted by key, streamed (from SQLite once anything was spilled), for the
output and ``--verify`` (:meth:`ReplayState.tables`), and as digest lines (:meth:`ReplayState.table_lines`).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from statekeeper.projections import rows
from statekeeper.projections.fold import AccountState, FoldEvent, fold, needs
from statekeeper.projections.rows import (
    AccountRow,
    BalanceRow,
    FillBustRow,
    FillRow,
    FundingRow,
    OrderRow,
    PositionRow,
    Row,
)

HOT_ROWS = 20_000
"""Keys of each growing table kept in memory before the oldest half is spilled to disk."""

R = TypeVar("R", bound=Row)
T = TypeVar("T")

SPILLED_TABLES = ("orders", "fills", "fill_busts", "funding_payments")
# SQLite statements of the spill file, one set per growing table (the names are this module's constants).
_CREATE = {t: f"CREATE TABLE {t} (key TEXT PRIMARY KEY, rows BLOB NOT NULL) WITHOUT ROWID" for t in SPILLED_TABLES}
_PUT = {t: f"INSERT OR REPLACE INTO {t} (key, rows) VALUES (?, ?)" for t in SPILLED_TABLES}  # noqa: S608
_GET = {t: f"SELECT key, rows FROM {t} WHERE key IN (SELECT value FROM json_each(?))" for t in SPILLED_TABLES}  # noqa: S608
_ALL = {t: f"SELECT key, rows FROM {t} ORDER BY key" for t in SPILLED_TABLES}  # noqa: S608
_DELETE = {t: f"DELETE FROM {t} WHERE key = ?" for t in SPILLED_TABLES}  # noqa: S608
_LOOKUP_CHUNK = 5_000


_TO_LINE: dict[str, Callable[[Row], bytes]] = {t.table: rows.json_encoder(t, t.table) for t in rows.ROW_TYPES}
"""Each table's :func:`row_line`."""
_FROM_LINE: dict[type[Row], Any] = {row_type: rows.positional_decoder(row_type, 1) for row_type in rows.ROW_TYPES}
"""A row from the values of its :func:`row_line` (the table's name first)."""


def row_line(table: str, row: Row) -> bytes:
    """One row as the digest (and the JSON output) writes it: the canonical JSON (orjson, no whitespace) of
    ``[table, value, value, ...]`` in column order, decimals as their exact text, times in ISO 8601 as stored
    (UTC), ``null`` for none: :func:`value_text` of each value."""
    return _TO_LINE[table](row)


class SpillMap(Generic[R]):
    """Rows of one growing table, grouped by their first key column (a fill's id groups its fill types)."""

    def __init__(self, table: str, row_type: type[R], spill: _SpillFile, hot_rows: int) -> None:
        self.table = table
        self.row_type = row_type
        self._spill = spill
        self._hot_rows = hot_rows
        self._memory: dict[str, list[R]] = {}
        self._spilled = False

    def __len__(self) -> int:
        return len(self._memory)

    def get_many(self, keys: set[str]) -> dict[str, list[R]]:
        found = {k: self._memory[k] for k in keys if k in self._memory}
        missing = sorted(keys - found.keys())
        if missing and self._spilled:
            for start in range(0, len(missing), _LOOKUP_CHUNK):
                chunk = orjson.dumps(missing[start : start + _LOOKUP_CHUNK])
                for key, blob in self._spill.db.execute(_GET[self.table], (chunk,)):
                    found[key] = self._decode(blob)
        return found

    def put(self, key: str, group: list[R]) -> None:
        self._memory.pop(key, None)  # most recently written last: the oldest are spilled first
        self._memory[key] = group

    def discard(self, key: str) -> None:
        """Remove ``key`` (an order working again after a terminal state: it is held in ``open_orders`` now)."""
        self._memory.pop(key, None)
        if self._spilled:
            self._spill.db.execute(_DELETE[self.table], (key,))

    def trim(self) -> None:
        """Spill the least recently written half once more than ``hot_rows`` keys are in memory."""
        if len(self._memory) > self._hot_rows:
            self._flush(len(self._memory) - self._hot_rows // 2)

    def _flush(self, count: int) -> None:
        # One transaction, keys in order: a fifth of the time of one transaction per row in random order.
        keys = sorted(list(self._memory)[:count])
        db = self._spill.db
        db.execute("BEGIN")
        db.executemany(_PUT[self.table], [(k, self._encode(self._memory.pop(k))) for k in keys])
        db.execute("COMMIT")
        self._spilled = True

    def sorted_groups(self) -> Iterator[tuple[str, list[R]]]:
        """Every group, by key (streamed from disk once anything was spilled)."""
        if not self._spilled:
            for key in sorted(self._memory):
                yield key, self._memory[key]
            return
        self._flush(len(self._memory))
        for key, blob in self._spill.db.execute(_ALL[self.table]):
            yield key, self._decode(blob)

    def sorted_lines(self) -> Iterator[tuple[str, list[bytes]]]:
        """Every group's digest lines, by key (spilled groups as stored, not decoded)."""
        if not self._spilled:
            for key in sorted(self._memory):
                yield key, [row_line(self.table, row) for row in self._memory[key]]
            return
        self._flush(len(self._memory))
        for key, blob in self._spill.db.execute(_ALL[self.table]):
            yield key, blob.split(b"\n")

    def _encode(self, group: list[R]) -> bytes:
        return b"\n".join([row_line(self.table, row) for row in group])

    def _decode(self, blob: bytes) -> list[R]:
        from_line, loads = _FROM_LINE[self.row_type], orjson.loads
        return [from_line(loads(line)) for line in blob.split(b"\n")]


class _SpillFile:
    """A temporary SQLite file, created on first use and deleted on close (by the process that replayed the
    account: what leaves a replay worker is the account's output, never its state)."""

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._path: Path | None = None
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._path = Path(tempfile.mkdtemp(prefix="statekeeper-replay-", dir=self._directory))
            self._db = sqlite3.connect(self._path / "spill.sqlite3", isolation_level=None)
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            for statement in _CREATE.values():
                self._db.execute(statement)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None


class ReplayState:
    """One account's replayed rows (see the module's docstring). Close it to delete its spill file."""

    def __init__(self, account: str, *, hot_rows: int = HOT_ROWS, spill_dir: Path | None = None) -> None:
        self.account = account
        self.balances: dict[str, BalanceRow] = {}
        self.margins: AccountRow | None = None
        self.open_orders: dict[str, OrderRow] = {}
        self.positions: dict[str, PositionRow] = {}
        self.closed_positions: dict[str, PositionRow] = {}
        self._spill = _SpillFile(spill_dir)
        self.orders: SpillMap[OrderRow] = SpillMap("orders", OrderRow, self._spill, hot_rows)
        """The orders no longer working (the working ones are in :attr:`open_orders`)."""
        self.fills: SpillMap[FillRow] = SpillMap("fills", FillRow, self._spill, hot_rows)
        self.busts: SpillMap[FillBustRow] = SpillMap("fill_busts", FillBustRow, self._spill, hot_rows)
        self.funding: SpillMap[FundingRow] = SpillMap("funding_payments", FundingRow, self._spill, hot_rows)
        self._terminal_loaded: dict[str, list[OrderRow]] = {}
        self.events = 0
        """Events folded."""
        self.position = 0
        """The log position of the last event folded (0: none)."""

    def close(self) -> None:
        self._spill.close()

    # ------------------------------------------------------------------------------------------ folding

    def apply(self, page: list[FoldEvent]) -> None:
        """Fold one page of events (in log order) into the state."""
        if not page:
            return
        state = fold(self._load(needs(page)), page)
        self._write(state)
        self.events += len(page)
        self.position = page[-1].id

    def _load(self, wanted: Any) -> AccountState:
        state = AccountState(self.account)
        if wanted.balances:
            state.balances = dict(self.balances)
        if wanted.margins:
            state.margins = self.margins
        if wanted.all_open_orders:
            state.orders.update(self.open_orders)
        order_ids: set[str] = wanted.order_ids - state.orders.keys()
        for order_id in order_ids & self.open_orders.keys():
            state.orders[order_id] = self.open_orders[order_id]
        self._terminal_loaded = self.orders.get_many(order_ids - state.orders.keys())
        for order_id, (row,) in self._terminal_loaded.items():
            state.orders[order_id] = row
        state.open_orders = {order_id for order_id, row in state.orders.items() if row.is_open}
        if wanted.positions:
            state.positions = dict(self.positions)
            state.closed_positions = dict(self.closed_positions)
        if wanted.fill_ids:
            for group in self.fills.get_many(wanted.fill_ids).values():
                state.fills.update(((row.fill_id, row.fill_type), row) for row in group)
            state.busts = {fill_id: bust for fill_id, (bust,) in self.busts.get_many(wanted.fill_ids).items()}
        if wanted.payment_ids:
            state.funding = {key: row for key, (row,) in self.funding.get_many(wanted.payment_ids).items()}
        return state

    def _write(self, state: AccountState) -> None:
        upserted = state.changes.upserted
        deleted = state.changes.deleted
        for (asset,) in deleted.get("balances", ()):
            self.balances.pop(asset, None)
        for (asset,) in upserted.get("balances", ()):
            self.balances[asset] = state.balances[asset]
        if upserted.get("account_margins"):
            self.margins = state.margins
        for (order_id,) in upserted.get("orders", ()):
            order = state.orders[order_id]
            if order.is_open:
                self.open_orders[order_id] = order
                if order_id in self._terminal_loaded:  # working again (a guessed close the venue contradicted)
                    self.orders.discard(order_id)
            else:
                self.open_orders.pop(order_id, None)
                self.orders.put(order_id, [order])
        for (market,) in deleted.get("positions", ()):
            self.positions.pop(market, None)
        for (market,) in upserted.get("positions", ()):
            self.positions[market] = state.positions[market]
        for (market,) in upserted.get("closed_positions", ()):
            self.closed_positions[market] = state.closed_positions[market]
        self._write_ledgers(state)

    def _write_ledgers(self, state: AccountState) -> None:
        upserted = state.changes.upserted
        changed_fills = {fill_id for fill_id, _ in upserted.get("fills", ())}
        if changed_fills:
            groups: defaultdict[str, list[FillRow]] = defaultdict(list)
            for (fill_id, _), row in sorted(state.fills.items()):
                if fill_id in changed_fills:
                    groups[fill_id].append(row)
            for fill_id, group in groups.items():
                self.fills.put(fill_id, group)
        for (fill_id,) in upserted.get("fill_busts", ()):
            self.busts.put(fill_id, [state.busts[fill_id]])
        for (payment_id,) in upserted.get("funding_payments", ()):
            self.funding.put(payment_id, [state.funding[payment_id]])
        for spilled in (self.orders, self.fills, self.busts, self.funding):
            spilled.trim()

    # ------------------------------------------------------------------------------------------- reading

    def tables(self) -> Iterator[tuple[str, Iterator[Row]]]:
        """Every table (in :data:`statekeeper.projections.rows.ROW_TYPES` order) and its rows, sorted by key: the
        shape of :func:`statekeeper.projections.store.read_tables`, streamed."""
        yield "balances", iter([self.balances[k] for k in sorted(self.balances)])
        yield "account_margins", iter([self.margins] if self.margins is not None else [])
        yield "orders", self._all_orders()
        yield "open_orders", iter([self.open_orders[k] for k in sorted(self.open_orders)])
        yield "positions", iter([self.positions[k] for k in sorted(self.positions)])
        yield "closed_positions", iter([self.closed_positions[k] for k in sorted(self.closed_positions)])
        yield "fills", (row for _, group in self.fills.sorted_groups() for row in group)
        yield "fill_busts", (row for _, group in self.busts.sorted_groups() for row in group)
        yield "funding_payments", (row for _, group in self.funding.sorted_groups() for row in group)

    def _all_orders(self) -> Iterator[Row]:
        working = [(k, self.open_orders[k]) for k in sorted(self.open_orders)]
        return _merged(working, self.orders.sorted_groups())

    def table_lines(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        """Every table (in :data:`statekeeper.projections.rows.ROW_TYPES` order) and the digest lines
        (:func:`row_line`) of its rows, sorted by key: :meth:`tables` as the digest and the JSON and CSV output read
        it, spilled rows as stored (not decoded)."""
        yield "balances", _row_lines("balances", self.balances)
        yield "account_margins", _row_lines("account_margins", {} if self.margins is None else {(): self.margins})
        working = [(k, row_line("orders", self.open_orders[k])) for k in sorted(self.open_orders)]
        yield "orders", _merged(working, self.orders.sorted_lines())
        yield "open_orders", _row_lines("open_orders", self.open_orders)
        yield "positions", _row_lines("positions", self.positions)
        yield "closed_positions", _row_lines("closed_positions", self.closed_positions)
        for spilled in (self.fills, self.busts, self.funding):
            yield spilled.table, _flat(spilled.sorted_lines())


def _merged(few: list[tuple[str, T]], groups: Iterable[tuple[str, list[T]]]) -> Iterator[T]:
    """The items of ``groups`` and the ``few`` others, all in key order (both sorted by key, no key in both): the
    working orders among the terminal ones, without a merge's cost per item."""
    at = 0
    for key, group in groups:
        while at < len(few) and few[at][0] < key:
            yield few[at][1]
            at += 1
        yield from group
    for _, item in few[at:]:
        yield item


def _row_lines(table: str, held: dict[Any, R]) -> Iterator[bytes]:
    for key in sorted(held):
        yield row_line(table, held[key])


def _flat(groups: Iterable[tuple[str, list[bytes]]]) -> Iterator[bytes]:
    for _, group in groups:
        yield from group


def value_text(value: object) -> object:
    """A row's value as plain JSON data: decimals as their exact text, times in ISO 8601 (UTC as stored)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
