"""Stream one account's events from the log for replay: large ordered pages, the next one read while the caller
folds the current one, so memory holds two pages at most however long the log is.

Each page is one text value (:data:`statekeeper.statements.REPLAY_PAGE`): a line per event, tab-separated, split
and decoded by :func:`statekeeper.projections.fold.parse_events` (as the projector reads its batches): that costs
a fraction of a record per event with a decoded ``jsonb`` column each (the generic reader), and PostgreSQL builds
the next page on its own core while this process folds the current one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from statekeeper import statements
from statekeeper.projections.fold import PROJECTED_KINDS, FoldEvent, parse_events

TimeBasis = Literal["venue", "received"]

SERVER_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO"}
"""Settings of a replay connection: any time the server formats as text (the pages' times among them:
:data:`statekeeper.statements.REPLAY_LINE`) is ISO 8601 in UTC."""

PAGE_SIZE = 10_000
_KINDS = sorted(PROJECTED_KINDS)


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a replay stops: at log position ``position``, and (optionally) at time ``at`` on the clock ``basis``.

    With a time, the events folded are those whose time on that clock is at or before it, in log order: by venue
    time, what the venue had done by then as the log knows it (a late backfill included); by receive time, what
    statekeeper had received by then.
    """

    position: int
    at: datetime | None = None
    basis: TimeBasis = "venue"

    def describe(self) -> str:
        if self.at is None:
            return f"up to log position {self.position}"
        clock = "venue time" if self.basis == "venue" else "receive time"
        return f"at {self.at.isoformat()} by {clock} (up to log position {self.position})"


async def _page(conn: asyncpg.Connection, account: str, after: int, bound: Bound, size: int) -> asyncpg.Record:
    return await conn.fetchrow(
        statements.REPLAY_PAGE, account, after, bound.position, bound.at, bound.basis, _KINDS, size
    )


async def pages(
    conn: asyncpg.Connection, account: str, bound: Bound, *, size: int = PAGE_SIZE
) -> AsyncIterator[list[FoldEvent]]:
    """The account's events within ``bound`` that some fold reads, in log order, page by page.

    ``conn`` must have :data:`SERVER_SETTINGS`. While the caller works on a page, the next one is being read.
    """
    ahead: asyncio.Task[asyncpg.Record] | None = asyncio.create_task(_page(conn, account, 0, bound, size))
    try:
        while ahead is not None:
            record = await ahead
            ahead = None
            if record["page"] is None:
                return
            if record["events"] == size:  # a full page: there may be more
                ahead = asyncio.create_task(_page(conn, account, record["last"], bound, size))
                await asyncio.sleep(0)  # let the task send its query now, not when the caller next waits
            yield parse_events(record["page"])
    finally:
        if ahead is not None:  # the caller stopped early: do not leave the read running on its connection
            ahead.cancel()
            await asyncio.wait([ahead])
