"""``statekeeper verify-log``: check every account's hash chain (:mod:`statekeeper.audit.chain`) from the rows.

For each event of an account, in log order, three checks, all from the stored row alone:

1. it has a link at all (a row inserted with plain SQL, past the append API, has none);
2. its content gives its ``content_hash`` again (the payload, kind, venue, source, snapshot flag and venue time);
3. its ``chain_hash`` is the link of its own columns after the ``chain_hash`` of the account's event before it.

The first event that fails is the account's first broken link, reported with its log position: that event was
altered, or (check 3 only) the event before it was removed, inserted or altered with its hashes recomputed. The
check goes on to the end to report the account's tip (last position and last link): record it, and a later
verification that shows another tip for the same position, or fewer events, shows the log was cut or rewritten
at its end, the one change a chain cannot show by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from statekeeper import statements
from statekeeper.audit.chain import GENESIS, stored_content_hash, stored_link

PAGE_SIZE = 5_000


@dataclass(frozen=True, slots=True)
class BrokenLink:
    position: int
    """The log position (``events.id``) of the first event whose check failed."""
    reason: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    account: str
    events: int
    last_position: int
    tip: bytes | None
    """The account's last link (None when the account has no events, or its last event has no link)."""
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def check_event(previous: bytes, row: asyncpg.Record) -> str | None:
    """Why ``row`` breaks the chain after the link ``previous``, or None if it holds."""
    stored = row["chain_hash"]
    if stored is None:
        return "the event has no chain link: it was inserted without the append API"
    if stored_content_hash(row) != bytes(row["content_hash"]):
        return "the event's content (payload, kind, venue, source, snapshot flag or venue time) gives another hash"
    if stored_link(previous, row) != bytes(stored):
        return (
            "the event's chain link does not match: its key, session, seq, times, raw frame or hashes were altered, "
            "or the event before it was removed, inserted or altered"
        )
    return None


async def verify_account(conn: asyncpg.Connection, account: str, *, page_size: int = PAGE_SIZE) -> ChainReport:
    """Check one account's chain from its first event to its last (``conn`` has statekeeper's JSON codecs)."""
    previous, after, events = GENESIS, 0, 0
    broken: BrokenLink | None = None
    tip: bytes | None = None
    while True:
        page = await conn.fetch(statements.CHAIN_PAGE, account, after, page_size)
        for row in page:
            if broken is None:
                reason = check_event(previous, row)
                if reason is not None:
                    broken = BrokenLink(row["id"], reason)
            tip = None if row["chain_hash"] is None else bytes(row["chain_hash"])
            previous = tip or GENESIS
        events += len(page)
        if len(page) < page_size:
            return ChainReport(account, events, after if not page else page[-1]["id"], tip, broken)
        after = page[-1]["id"]


async def verify_log(conn: asyncpg.Connection, accounts: Sequence[str]) -> list[ChainReport]:
    return [await verify_account(conn, account) for account in accounts]
