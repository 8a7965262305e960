"""The replayed state as output: a rich table for a terminal, one JSON document, or CSV. Each writes an account as
soon as it is replayed, row by row, so the output never needs the whole state in memory.

* JSON: ``{"replay": {basis}, "accounts": [{"account", "events", "position", "digest", "tables": {table: [row,
  ...]}}, ...], "digest": ...}``; every table, rows sorted by key, decimals as exact strings, times ISO 8601.
* CSV: for each account and table, a header line (``table`` then the table's columns) and one line per row whose
  first field is the table's name (``grep '^fills,'`` gives the fills), then a blank line; at the end a
  ``summary`` section: one line per account (basis, events, position, digest) and one for all of them.
* table: per account, the balances, account figures, open orders and positions in full; fills and funding
  payments as counts and totals (every row is in the JSON and CSV forms); the digest.

Each account's output is made where the account was replayed, by the renderer's form (:mod:`.output`); a
renderer writes them in account order.
"""

from __future__ import annotations

import csv
from typing import Any, Protocol, TextIO

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from statekeeper.audit.output import (
    SHOWN,
    AccountForm,
    CsvForm,
    JsonForm,
    Rendered,
    Spooled,
    Summary,
    TableForm,
    output_of,
)


class Renderer(Protocol):
    @property
    def form(self) -> AccountForm: ...

    def begin(self, basis: dict[str, Any]) -> None: ...

    def account(self, done: Rendered) -> None: ...

    def end(self, digest: str) -> None: ...


def basis_text(basis: dict[str, Any]) -> str:
    if basis.get("at") is None:
        return f"log position {basis['position']}"
    return f"{basis['at']} by {basis['clock']} time, up to log position {basis['position']}"


# ----------------------------------------------------------------------------------------------------- json


class JsonRenderer:
    form = JsonForm()

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._first = True

    def begin(self, basis: dict[str, Any]) -> None:
        self.out.write('{"replay":' + orjson.dumps(basis).decode() + ',"accounts":[')

    def account(self, done: Rendered) -> None:
        head = {"account": done.account, "events": done.events, "position": done.position, "digest": done.digest}
        self.out.write(("" if self._first else ",") + orjson.dumps(head).decode()[:-1] + ',"tables":')
        self._first = False
        output_of(done, Spooled).copy_to(self.out)
        self.out.write("}")

    def end(self, digest: str) -> None:
        self.out.write('],"digest":' + orjson.dumps(digest).decode() + "}\n")


# ------------------------------------------------------------------------------------------------------ csv


class CsvRenderer:
    SUMMARY = ("table", "account", "basis", "events", "position", "digest")
    form = CsvForm()

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.writer = csv.writer(out, lineterminator="\n")
        self.summary: list[tuple[str, ...]] = []
        self.basis = ""

    def begin(self, basis: dict[str, Any]) -> None:
        self.basis = basis_text(basis)

    def account(self, done: Rendered) -> None:
        output_of(done, Spooled).copy_to(self.out)
        self.summary.append(("summary", done.account, self.basis, str(done.events), str(done.position), done.digest))

    def end(self, digest: str) -> None:
        self.writer.writerow(self.SUMMARY)
        self.writer.writerows(self.summary)
        self.writer.writerow(("summary", "*", self.basis, "", "", digest))


# ---------------------------------------------------------------------------------------------------- table


class TableRenderer:
    form = TableForm()

    def __init__(self, console: Console) -> None:
        self.console = console
        self.basis = ""

    def begin(self, basis: dict[str, Any]) -> None:
        self.basis = basis_text(basis)
        self.console.print(f"replay {escape(self.basis)}", highlight=False)

    def account(self, done: Rendered) -> None:
        summary = output_of(done, Summary)
        self.console.print(
            f"\n[bold]{escape(done.account)}[/]: {done.events} events folded, last at log position {done.position}",
            highlight=False,
        )
        for table, cells in summary.shown.items():
            self._table(table, cells)
        fee_text = ", ".join(f"{v} {k}" for k, v in sorted(summary.fees.items())) or "none"
        paid_text = ", ".join(f"{k} {v}" for k, v in sorted(summary.paid.items())) or "none"
        self.console.print(f"fills: {summary.fills} ({summary.busted} busted), fees {escape(fee_text)}",
                           highlight=False)  # fmt: skip
        self.console.print(f"funding payments: {summary.payments}, amount by market: {escape(paid_text)}",
                           highlight=False)  # fmt: skip
        self.console.print(f"digest: {done.digest}", highlight=False)

    def _table(self, table: str, cells: list[tuple[str, ...]]) -> None:
        columns = SHOWN[table]
        shown = Table(title=table, title_justify="left")
        for column in columns:
            shown.add_column(column, justify="right" if column not in ("asset", "market", "side", "status") else "left")
        for row in cells:
            shown.add_row(*(escape(cell) for cell in row))
        if shown.row_count:
            self.console.print(shown)
        else:
            self.console.print(f"{table}: none", highlight=False)

    def end(self, digest: str) -> None:
        self.console.print(f"\naudit digest ({escape(self.basis)}): {digest}", highlight=False)
