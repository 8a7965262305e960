"""Replay: rebuild accounts' state from the log up to a position or a time, with the projectors' own folds; the
audit digest of that state; and ``--verify``, the replayed state compared with the live projection tables.

The digest
    SHA-256, hex. Per account: over ``b"statekeeper/replay-digest/v1\\x00"`` and then, for every table in
    :data:`statekeeper.projections.rows.ROW_TYPES` order and every row sorted by key, one line: the canonical JSON
    (orjson, no whitespace) of ``[table, value, value, ...]`` in column order, decimals as their exact text, times
    in ISO 8601 UTC, ``null`` for none; a newline after each line. Of several accounts: over the same prefix, then
    ``account`` NUL ``account digest`` newline for each account sorted by name. Only the state and the log
    positions it holds (``event_id``) enter it: no clock, locale, host or version of PostgreSQL, so two audits of
    the same log at the same point agree to the byte anywhere, and so does a replay of a dump restored elsewhere.

``--verify``
    For each account, in one REPEATABLE READ snapshot: the projector's checkpoint and every projection row
    (:func:`statekeeper.projections.store.read_tables`). The log is then replayed up to that checkpoint (the
    position the projection says it is complete up to: comparing it with a later position would report the
    projector's lag as differences; the lag is reported on its own) and compared row by row, field by field.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson

from statekeeper import statements
from statekeeper.audit.reader import PAGE_SIZE, SERVER_SETTINGS, Bound, TimeBasis, pages
from statekeeper.audit.render import Renderer
from statekeeper.audit.state import HOT_ROWS, ReplayState, value_text
from statekeeper.database import connect
from statekeeper.errors import StatekeeperError
from statekeeper.projections import rows, store
from statekeeper.projections.rows import Row

DIGEST_DOMAIN = b"statekeeper/replay-digest/v1\x00"

Progress = Callable[[int], None]
"""Called with the number of events each page folded."""


# ------------------------------------------------------------------------------------------------- replay


async def accounts_in_log(conn: asyncpg.Connection) -> list[str]:
    return [r["account"] for r in await conn.fetch(statements.ACCOUNTS_IN_LOG)]


async def head(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(statements.HEAD))


async def count_up_to(conn: asyncpg.Connection, accounts: Sequence[str], position: int) -> int:
    """How many events the accounts have up to ``position`` (the progress bar's total, control events included)."""
    return int(await conn.fetchval(statements.COUNT_UP_TO, list(accounts), position))


@asynccontextmanager
async def replayed(
    conn: asyncpg.Connection,
    account: str,
    bound: Bound,
    *,
    page_size: int = PAGE_SIZE,
    hot_rows: int = HOT_ROWS,
    spill_dir: Path | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[ReplayState]:
    """The state of ``account`` replayed from the log within ``bound`` (its spill file is deleted on exit).

    ``conn`` must have :data:`statekeeper.audit.reader.SERVER_SETTINGS`.
    """
    state = ReplayState(account, hot_rows=hot_rows, spill_dir=spill_dir)
    try:
        async for page in pages(conn, account, bound, size=page_size):
            state.apply(page)
            if progress is not None:
                progress(len(page))
        yield state
    finally:
        state.close()


# ------------------------------------------------------------------------------------------------- digest


def row_line(table: str, row: Row) -> bytes:
    """One row as the digest (and the JSON output) writes it: canonical JSON of the table and the values."""
    return orjson.dumps([table, *(value_text(getattr(row, c)) for c in rows.columns(type(row)))])


def account_digest(tables: Iterable[tuple[str, Iterable[Row]]]) -> str:
    """The digest of one account's replayed tables (every table, each sorted by key)."""
    digest = hashlib.sha256(DIGEST_DOMAIN)
    for table, table_rows in tables:
        for row in table_rows:
            digest.update(row_line(table, row))
            digest.update(b"\n")
    return digest.hexdigest()


def combined_digest(digests: dict[str, str]) -> str:
    """The digest of several accounts, from their own digests."""
    digest = hashlib.sha256(DIGEST_DOMAIN)
    for account in sorted(digests):
        digest.update(account.encode() + b"\x00" + digests[account].encode() + b"\n")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True, slots=True)
class Difference:
    """One way the replayed state and a live projection table differ."""

    account: str
    table: str
    key: tuple[object, ...]
    column: str | None
    """None: the row is on one side only."""
    replayed: str | None
    projected: str | None

    def __str__(self) -> str:
        key = ", ".join(str(part) for part in self.key) or "-"
        where = f"{self.account} {self.table} [{key}]"
        if self.column is None:
            side = "replayed, not in the projection" if self.projected is None else "in the projection, not replayed"
            return f"{where}: {side}"
        return f"{where} {self.column}: replayed {self.replayed}, projected {self.projected}"


def _show(value: object) -> str:
    shown = value_text(value)
    return "null" if shown is None else str(shown)


def differences(account: str, table: str, replayed: Iterable[Row], projected: Sequence[Row]) -> Iterator[Difference]:
    """Every difference between one table's replayed rows and its live rows, by key then column."""
    live = {row.key_value(): row for row in projected}
    for row in replayed:
        key = row.key_value()
        other = live.pop(key, None)
        if other is None:
            yield Difference(account, table, key, None, "row", None)
            continue
        for column in rows.columns(type(row)):
            mine, theirs = getattr(row, column), getattr(other, column)
            if mine != theirs:
                yield Difference(account, table, key, column, _show(mine), _show(theirs))
    for key in sorted(live):
        yield Difference(account, table, key, None, None, "row")


@dataclass(frozen=True, slots=True)
class Projection:
    """An account's live projection, read in one snapshot: its checkpoint and every row."""

    account: str
    checkpoint: int
    account_head: int
    """The account's last log position when the snapshot was taken."""
    tables: dict[str, list[Row]]


async def read_projection(conn: asyncpg.Connection, account: str) -> Projection:
    """The account's checkpoint and projection rows, consistent with each other (the projector commits both in one
    transaction, and they are read here in one snapshot)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        checkpoint = await conn.fetchval(statements.GET_CHECKPOINT, account, store.CHECKPOINT)
        tables = await store.read_tables(conn, account)
        account_head = await conn.fetchval(statements.ACCOUNT_HEAD, account)
    return Projection(account, int(checkpoint or 0), int(account_head), tables)


# ----------------------------------------------------------------------------------------------- commands


class UnknownAccount(StatekeeperError):
    """The account has no events in the log."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class ReplayRun:
    """What ``statekeeper replay`` did."""

    bound: Bound
    digests: dict[str, str]
    digest: str
    events: int


def basis_of(bound: Bound) -> dict[str, object]:
    """How the output names the point replayed to."""
    at = None if bound.at is None else bound.at.isoformat()
    return {"position": bound.position, "at": at, "clock": bound.basis if at is not None else None}


async def _chosen(conn: asyncpg.Connection, accounts: Sequence[str] | None) -> list[str]:
    if not accounts:
        return await accounts_in_log(conn)
    for account in accounts:
        if not await conn.fetchval(statements.ACCOUNT_HEAD, account):
            raise UnknownAccount(f"account {account!r} has no events in the log")
    return sorted(set(accounts))


async def run_replay(
    url: str,
    renderer: Renderer,
    *,
    accounts: Sequence[str] | None = None,
    position: int | None = None,
    at: datetime | None = None,
    clock: TimeBasis = "venue",
    page_size: int = PAGE_SIZE,
    hot_rows: int = HOT_ROWS,
    progress: Callable[[int], Progress | None] | None = None,
) -> ReplayRun:
    """Replay ``accounts`` (default: every account in the log) up to ``position`` or time ``at`` (both capped at
    the log's head when the replay starts), each written to ``renderer`` with its digest as soon as it is done.

    ``progress`` is given the number of events to read and returns the per-page callback (or None for none).
    """
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    try:
        chosen = await _chosen(conn, accounts)
        top = await head(conn)
        bound = Bound(top if position is None else min(position, top), at, clock)
        advance = progress(await count_up_to(conn, chosen, bound.position)) if progress is not None else None
        renderer.begin(basis_of(bound))
        digests: dict[str, str] = {}
        events = 0
        for account in chosen:
            async with replayed(conn, account, bound, page_size=page_size, hot_rows=hot_rows,
                                progress=advance) as state:  # fmt: skip
                digests[account] = account_digest(state.tables())
                renderer.account(state, digests[account])
                events += state.events
        digest = combined_digest(digests)
        renderer.end(digest)
    finally:
        await conn.close()
    return ReplayRun(bound, digests, digest, events)


@dataclass(frozen=True, slots=True)
class AccountCheck:
    """``replay --verify`` of one account."""

    account: str
    checkpoint: int
    """The position the projection is complete up to, and the log was replayed to."""
    account_head: int
    events: int
    differences: list[Difference]
    digest: str

    @property
    def lag(self) -> bool:
        return self.account_head > self.checkpoint


async def run_verify(
    url: str,
    *,
    accounts: Sequence[str] | None = None,
    page_size: int = PAGE_SIZE,
    hot_rows: int = HOT_ROWS,
    progress: Callable[[int], Progress | None] | None = None,
) -> list[AccountCheck]:
    """Replay each account to its projector checkpoint and compare with its live projection tables."""
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    checks = []
    try:
        chosen = await _chosen(conn, accounts)
        advance = progress(await count_up_to(conn, chosen, await head(conn))) if progress is not None else None
        for account in chosen:
            live = await read_projection(conn, account)
            bound = Bound(live.checkpoint)
            async with replayed(conn, account, bound, page_size=page_size, hot_rows=hot_rows,
                                progress=advance) as state:  # fmt: skip
                found: list[Difference] = []
                for table, table_rows in state.tables():
                    found.extend(differences(account, table, table_rows, live.tables.get(table, [])))
                digest = account_digest(state.tables())
                checks.append(AccountCheck(account, live.checkpoint, live.account_head, state.events, found, digest))
    finally:
        await conn.close()
    return checks
