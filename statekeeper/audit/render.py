"""The replayed state as output: a rich table for a terminal, one JSON document, or CSV. Each writes an account as
soon as it is replayed, row by row, so the output never needs the whole state in memory.

* JSON: ``{"replay": {basis}, "accounts": [{"account", "events", "position", "digest", "tables": {table: [row,
  ...]}}, ...], "digest": ...}``; every table, rows sorted by key, decimals as exact strings, times ISO 8601.
* CSV: for each account and table, a header line (``table`` then the table's columns) and one line per row whose
  first field is the table's name (``grep '^fills,'`` gives the fills), then a blank line; at the end a
  ``summary`` section: one line per account (basis, events, position, digest) and one for all of them.
* table: per account, the balances, account figures, open orders and positions in full; fills and funding
  payments as counts and totals (every row is in the JSON and CSV forms); the digest.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Protocol, TextIO

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from statekeeper.audit.state import ReplayState, value_text
from statekeeper.projections import rows
from statekeeper.projections.rows import Row


class Renderer(Protocol):
    def begin(self, basis: dict[str, Any]) -> None: ...

    def account(self, state: ReplayState, digest: str) -> None: ...

    def end(self, digest: str) -> None: ...


def basis_text(basis: dict[str, Any]) -> str:
    if basis.get("at") is None:
        return f"log position {basis['position']}"
    return f"{basis['at']} by {basis['clock']} time, up to log position {basis['position']}"


# ----------------------------------------------------------------------------------------------------- json


class JsonRenderer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._first = True

    def begin(self, basis: dict[str, Any]) -> None:
        self.out.write('{"replay":' + orjson.dumps(basis).decode() + ',"accounts":[')

    def account(self, state: ReplayState, digest: str) -> None:
        head = {"account": state.account, "events": state.events, "position": state.position, "digest": digest}
        self.out.write(("" if self._first else ",") + orjson.dumps(head).decode()[:-1] + ',"tables":{')
        self._first = False
        for index, (table, table_rows) in enumerate(state.tables()):
            self.out.write(("," if index else "") + orjson.dumps(table).decode() + ":[")
            for number, row in enumerate(table_rows):
                self.out.write(("," if number else "") + orjson.dumps(_as_dict(row)).decode())
            self.out.write("]")
        self.out.write("}}")

    def end(self, digest: str) -> None:
        self.out.write('],"digest":' + orjson.dumps(digest).decode() + "}\n")


def _as_dict(row: Row) -> dict[str, Any]:
    return {c: value_text(getattr(row, c)) for c in rows.columns(type(row))}


# ------------------------------------------------------------------------------------------------------ csv


class CsvRenderer:
    SUMMARY = ("table", "account", "basis", "events", "position", "digest")

    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.summary: list[tuple[str, ...]] = []
        self.basis = ""

    def begin(self, basis: dict[str, Any]) -> None:
        self.basis = basis_text(basis)

    def account(self, state: ReplayState, digest: str) -> None:
        for table, table_rows in state.tables():
            header_written = False
            for row in table_rows:
                columns = rows.columns(type(row))
                if not header_written:
                    self.writer.writerow(("table", *columns))
                    header_written = True
                self.writer.writerow((table, *(_cell(getattr(row, c)) for c in columns)))
            if header_written:
                self.writer.writerow(())
        self.summary.append(("summary", state.account, self.basis, str(state.events), str(state.position), digest))

    def end(self, digest: str) -> None:
        self.writer.writerow(self.SUMMARY)
        self.writer.writerows(self.summary)
        self.writer.writerow(("summary", "*", self.basis, "", "", digest))


def _cell(value: object) -> str:
    shown = value_text(value)
    return "" if shown is None else str(shown)


# ---------------------------------------------------------------------------------------------------- table

_SHOWN: dict[str, tuple[str, ...]] = {
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


class TableRenderer:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.basis = ""

    def begin(self, basis: dict[str, Any]) -> None:
        self.basis = basis_text(basis)
        self.console.print(f"replay {escape(self.basis)}", highlight=False)

    def account(self, state: ReplayState, digest: str) -> None:
        self.console.print(
            f"\n[bold]{escape(state.account)}[/]: {state.events} events folded, last at log position {state.position}",
            highlight=False,
        )
        fills = funding = busted = 0
        fees: dict[str, Decimal] = {}
        paid: dict[str, Decimal] = {}
        for table, table_rows in state.tables():
            if table in _SHOWN:
                self._table(table, table_rows)
            elif table == "fills":
                for fill in table_rows:
                    assert isinstance(fill, rows.FillRow)
                    fills += 1
                    busted += fill.busted_at is not None
                    asset = fill.fee_asset or "-"
                    fees[asset] = fees.get(asset, Decimal(0)) + fill.fee
            elif table == "funding_payments":
                for payment in table_rows:
                    assert isinstance(payment, rows.FundingRow)
                    funding += 1
                    paid[payment.market] = paid.get(payment.market, Decimal(0)) + payment.amount
        fee_text = ", ".join(f"{v} {k}" for k, v in sorted(fees.items())) or "none"
        paid_text = ", ".join(f"{k} {v}" for k, v in sorted(paid.items())) or "none"
        self.console.print(f"fills: {fills} ({busted} busted), fees {escape(fee_text)}", highlight=False)
        self.console.print(f"funding payments: {funding}, amount by market: {escape(paid_text)}", highlight=False)
        self.console.print(f"digest: {digest}", highlight=False)

    def _table(self, table: str, table_rows: Iterator[Row]) -> None:
        columns = _SHOWN[table]
        shown = Table(title=table, title_justify="left")
        for column in columns:
            shown.add_column(column, justify="right" if column not in ("asset", "market", "side", "status") else "left")
        for row in table_rows:
            shown.add_row(*(escape(_cell(getattr(row, c))) for c in columns))
        if shown.row_count:
            self.console.print(shown)
        else:
            self.console.print(f"{table}: none", highlight=False)

    def end(self, digest: str) -> None:
        self.console.print(f"\naudit digest ({escape(self.basis)}): {digest}", highlight=False)
