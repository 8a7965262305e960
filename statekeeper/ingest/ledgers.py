"""What the daemon knows of an account's ledgers (fills, funding, transfers, busts), pure.

Per ledger it keeps two things:

* the *mark*: the latest item up to which the log is known to be complete. Backfills start there. It moves only
  on proof: a REST answer (complete from the mark to the time of the call), or, once a session's resync is done,
  the latest item its stream delivered before any sequence problem. Items that arrive after a gap never move it.
  The mark is written into ``resync_completed`` and ``session_closed`` events, so a restarted daemon resumes from
  it (:meth:`Ledgers.restore`);
* the venue ids known to be stored (the most recent ones), so a backfill appends only what the log lacks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from statekeeper.events import LedgerMark
from statekeeper.ingest.records import LEDGERS, ledger_id, ledger_time

KNOWN_IDS = 20_000
"""Venue ids remembered per ledger (the most recent): enough to cover any backfill's overlap."""


def _id_key(value: str | None) -> tuple[int, int | str]:
    # Venue ids that are numbers compare as numbers (Extended's increase with time), others as text.
    if value is None:
        return (0, 0)
    return (1, int(value)) if value.isascii() and value.isdigit() else (2, value)


def later(a: LedgerMark, b: LedgerMark) -> LedgerMark:
    """The later of two marks (a mark with no time is the earliest)."""
    if b.time is None:
        return a
    if a.time is None:
        return b
    return b if (b.time, _id_key(b.id)) > (a.time, _id_key(a.id)) else a


def mark_of(what: str, record: Any) -> LedgerMark:
    return LedgerMark(
        time=ledger_time(what, record), id=str(getattr(record, "fill_id", None) or ledger_id(what, record))
    )


class Ledger:
    """One ledger of one account."""

    def __init__(self, what: str, capacity: int = KNOWN_IDS) -> None:
        self.what = what
        self.capacity = capacity
        self.mark = LedgerMark()
        self._known: OrderedDict[str, None] = OrderedDict()

    def knows(self, record: Any) -> bool:
        return ledger_id(self.what, record) in self._known

    def note(self, record: Any) -> LedgerMark:
        """Remember that a record is stored (or about to be); returns its mark."""
        item_id = ledger_id(self.what, record)
        self._known[item_id] = None
        self._known.move_to_end(item_id)
        while len(self._known) > self.capacity:
            self._known.popitem(last=False)
        return mark_of(self.what, record)

    def advance(self, mark: LedgerMark) -> None:
        self.mark = later(self.mark, mark)


class Ledgers:
    """Every ledger of an account, plus the markets it is known to trade (Paradex lists funding per market)."""

    def __init__(self) -> None:
        self.by_name = {what: Ledger(what) for what in LEDGERS}
        self.markets: set[str] = set()

    def __getitem__(self, what: str) -> Ledger:
        return self.by_name[what]

    def marks(self) -> dict[str, LedgerMark]:
        return {what: ledger.mark for what, ledger in self.by_name.items()}

    def advance(self, marks: Mapping[str, LedgerMark]) -> None:
        for what, mark in marks.items():
            if what in self.by_name:
                self.by_name[what].advance(mark)

    def restore(self, marks: Mapping[str, LedgerMark]) -> None:
        """Take the marks a previous daemon recorded (they only ever move forward)."""
        self.advance(marks)

    def note_markets(self, records: Iterable[Any]) -> None:
        for record in records:
            market = getattr(record, "market", None)
            if isinstance(market, str):
                self.markets.add(market)
