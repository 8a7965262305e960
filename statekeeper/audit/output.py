"""What a replay renderer makes of one account, where the account was replayed: a worker process when accounts are
replayed in parallel (:mod:`statekeeper.audit.parallel`), so everything here pickles and imports neither rich nor
SQLAlchemy (a worker's start).

A renderer's *form* (:class:`AccountForm`) reads the account's tables as the digest does, each row as its digest
line (:meth:`statekeeper.audit.state.ReplayState.table_lines`: the row's values in column order as JSON data,
decimals as their exact text, times ISO 8601, which is what every output shows; spilled rows as stored), and makes
of them the JSON or CSV text, written to a temporary file (:class:`Spooled`), or the table format's figures
(:class:`Summary`). The renderer (:mod:`statekeeper.audit.render`), in the calling process, writes each account's
output in account order. So the accounts' output is made in parallel too, and the calling process only copies text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Protocol, TextIO, TypeVar

import orjson

from statekeeper.projections import rows

TableLines = Iterable[tuple[str, Iterator[bytes]]]
"""An account's tables, in :data:`statekeeper.projections.rows.ROW_TYPES` order, each with its rows' digest lines
(the canonical JSON of ``[table, value, value, ...]``), sorted by key."""

Out = TypeVar("Out")

_COLUMNS: dict[str, tuple[str, ...]] = {row_type.table: rows.columns(row_type) for row_type in rows.ROW_TYPES}


class AccountForm(Protocol):
    """What a renderer makes of one account's tables, where the account was replayed (a worker process too: it
    must pickle). It may leave rows unread (the digest reads them all anyway)."""

    def __call__(self, tables: TableLines) -> object: ...


@dataclass(frozen=True, slots=True)
class Rendered:
    """One replayed account, for :meth:`Renderer.account`: what was folded, its digest, and its form's output.
    Close it when done (a :class:`Spooled` output's file is deleted)."""

    account: str
    events: int
    """Events folded."""
    position: int
    """The log position of the last event folded (0: none)."""
    digest: str
    output: object

    def close(self) -> None:
        close_output(self.output)


def close_output(output: object) -> None:
    """Delete a form's output file, if it made one."""
    if isinstance(output, Spooled):
        output.close()


@dataclass(frozen=True, slots=True)
class Spooled:
    """One account's output text (UTF-8), in a temporary file until the renderer copies it to its output. It
    travels from a worker process to the calling one by name; whoever closes it deletes the file."""

    path: Path

    @classmethod
    @contextlib.contextmanager
    def writing(cls, suffix: str) -> Iterator[tuple[Spooled, IO[bytes]]]:
        """A new spooled output and its file, open for writing; the file is deleted if the block fails."""
        descriptor, name = tempfile.mkstemp(prefix="statekeeper-replay-", suffix=suffix)
        spooled = cls(Path(name))
        try:
            with os.fdopen(descriptor, "wb") as file:
                yield spooled, file
        except BaseException:
            spooled.close()
            raise

    def copy_to(self, out: TextIO) -> None:
        with self.path.open(encoding="utf-8", newline="") as text:
            shutil.copyfileobj(text, out)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def output_of(done: Rendered, kind: type[Out]) -> Out:
    """The output ``done`` carries, which its renderer's own form made: a ``kind``."""
    if not isinstance(done.output, kind):  # pragma: no cover - a renderer is given its own form's output only
        raise TypeError(f"expected {kind.__name__} output for {done.account!r}, got {type(done.output).__name__}")
    return done.output


def _text(value: object) -> str:
    """A value of a digest line as the CSV and table formats show it: none as empty, the rest as its text."""
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------------------------------- json


@dataclass(frozen=True, slots=True)
class JsonForm:
    """The ``tables`` object of an account: ``{table: [{column: value, ...}, ...], ...}``."""

    def __call__(self, tables: TableLines) -> Spooled:
        loads, dumps = orjson.loads, orjson.dumps
        with Spooled.writing(".json") as (spooled, file):
            file.write(b"{")
            for index, (table, lines) in enumerate(tables):
                columns = _COLUMNS[table]
                file.write((b"," if index else b"") + dumps(table) + b":[")
                for number, line in enumerate(lines):
                    row = dict(zip(columns, loads(line)[1:], strict=True))
                    file.write((b"," if number else b"") + dumps(row))
                file.write(b"]")
            file.write(b"}")
        return spooled


# ------------------------------------------------------------------------------------------------------ csv


@dataclass(frozen=True, slots=True)
class CsvForm:
    """An account's tables as CSV: per table with rows, a header line, a line per row, a blank line."""

    def __call__(self, tables: TableLines) -> Spooled:
        loads = orjson.loads
        with Spooled.writing(".csv") as (spooled, file), io.TextIOWrapper(file, encoding="utf-8", newline="") as text:
            writer = csv.writer(text, lineterminator="\n")
            for table, lines in tables:
                header_written = False
                for line in lines:
                    values = loads(line)
                    if not header_written:
                        writer.writerow(("table", *_COLUMNS[table]))
                        header_written = True
                    values[1:] = ["" if value is None else value for value in values[1:]]
                    writer.writerow(values)
                if header_written:
                    writer.writerow(())
        return spooled


# ---------------------------------------------------------------------------------------------------- table

SHOWN: dict[str, tuple[str, ...]] = {
    "balances": ("asset", "balance", "equity", "available_for_trade", "unrealised_pnl", "updated_at", "event_id"),
    "account_margins": ("equity", "free_collateral", "initial_margin", "maintenance_margin", "updated_at", "event_id"),
    "open_orders": (
        "order_id",
        "market",
        "side",
        "order_type",
        "status",
        "price",
        "qty",
        "filled_qty",
        "updated_at",
        "event_id",
    ),
    "positions": ("market", "side", "size", "entry_price", "mark_price", "unrealised_pnl", "updated_at", "event_id"),
}


def _at(table: str, *names: str) -> list[int]:
    """Where the columns ``names`` of ``table`` are in its digest lines (the table's name first)."""
    return [1 + _COLUMNS[table].index(name) for name in names]


_SHOWN_AT = {table: _at(table, *columns) for table, columns in SHOWN.items()}
_FILL_AT = _at("fills", "fee", "fee_asset", "busted_at")
_PAYMENT_AT = _at("funding_payments", "market", "amount")


@dataclass(frozen=True, slots=True)
class Summary:
    """What the table format shows of an account: the small tables' cells, the fills' and payments' totals."""

    shown: dict[str, list[tuple[str, ...]]]
    fills: int
    busted: int
    fees: dict[str, Decimal]
    """Fees by asset (``-``: none named)."""
    payments: int
    paid: dict[str, Decimal]
    """Funding by market."""


@dataclass(frozen=True, slots=True)
class TableForm:
    def __call__(self, tables: TableLines) -> Summary:
        loads = orjson.loads
        shown: dict[str, list[tuple[str, ...]]] = {}
        fills = busted = payments = 0
        fees: dict[str, Decimal] = {}
        paid: dict[str, Decimal] = {}
        for table, lines in tables:
            if table in _SHOWN_AT:
                at = _SHOWN_AT[table]
                shown[table] = [tuple(_text(values[i]) for i in at) for values in map(loads, lines)]
            elif table == "fills":
                fee_at, asset_at, busted_at = _FILL_AT
                for values in map(loads, lines):
                    fills += 1
                    busted += values[busted_at] is not None
                    asset = values[asset_at] or "-"
                    fees[asset] = fees.get(asset, Decimal(0)) + Decimal(values[fee_at])
            elif table == "funding_payments":
                market_at, amount_at = _PAYMENT_AT
                for values in map(loads, lines):
                    payments += 1
                    paid[values[market_at]] = paid.get(values[market_at], Decimal(0)) + Decimal(values[amount_at])
        return Summary(shown, fills, busted, fees, payments, paid)
