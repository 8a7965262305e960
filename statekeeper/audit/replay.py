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

import gc
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from statekeeper import statements
from statekeeper.audit.output import AccountForm, Rendered, close_output
from statekeeper.audit.parallel import PARALLEL_FROM, each_account
from statekeeper.audit.reader import PAGE_SIZE, SERVER_SETTINGS, Bound, TimeBasis, pages
from statekeeper.audit.state import HOT_ROWS, ReplayState, value_text
from statekeeper.database import connect
from statekeeper.eventlog import chosen_accounts
from statekeeper.projections import rows
from statekeeper.projections.rows import Row

if TYPE_CHECKING:
    from statekeeper.audit.render import Renderer

DIGEST_DOMAIN = b"statekeeper/replay-digest/v1\x00"

Progress = Callable[[int], None]
"""Called with the number of events each page folded."""


# ------------------------------------------------------------------------------------------------- replay


async def head(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(statements.HEAD))


async def count_up_to(
    conn: asyncpg.Connection, accounts: Sequence[str], position: int, *, at_most: int | None = None
) -> int:
    """How many events the accounts have up to ``position`` (the progress bar's total, control events included), or
    ``at_most`` if they have more."""
    return int(await conn.fetchval(statements.COUNT_UP_TO, list(accounts), position, at_most))


async def _to_read(
    conn: asyncpg.Connection,
    accounts: Sequence[str],
    position: int,
    progress: Callable[[int], Progress | None] | None,
    parallel_from: int,
) -> tuple[int, Progress | None]:
    """The events to read (for the choice of worker processes) and the progress callback. With no progress to show
    they are counted only up to ``parallel_from``: on a long log the whole count is a noticeable wait."""
    total = await count_up_to(conn, accounts, position, at_most=None if progress is not None else parallel_from)
    return total, progress(total) if progress is not None else None


async def replay_account(
    conn: asyncpg.Connection,
    account: str,
    bound: Bound,
    *,
    page_size: int = PAGE_SIZE,
    hot_rows: int = HOT_ROWS,
    spill_dir: Path | None = None,
    progress: Progress | None = None,
) -> ReplayState:
    """The state of ``account`` replayed from the log within ``bound``; the caller closes it (its spill file).

    ``conn`` must have :data:`statekeeper.audit.reader.SERVER_SETTINGS`.
    """
    state = ReplayState(account, hot_rows=hot_rows, spill_dir=spill_dir)
    try:
        with cycle_collection_paused():
            async for page in pages(conn, account, bound, size=page_size):
                state.apply(page)
                if progress is not None:
                    progress(len(page))
    except BaseException:
        state.close()
        raise
    return state


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
    """:func:`replay_account` as a context: the state's spill file is deleted on exit."""
    state = await replay_account(conn, account, bound, page_size=page_size, hot_rows=hot_rows, spill_dir=spill_dir,
                                 progress=progress)  # fmt: skip
    try:
        yield state
    finally:
        state.close()


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a replay folds.

    A replay allocates millions of objects (events, their payloads, rows) that reference counting alone frees, and
    each allocation burst makes the collector scan the whole growing state again: paused, the read and fold take
    half the time. What the replay leaves (none of its own objects form cycles) is collected when it resumes.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


# ------------------------------------------------------------------------------------------------- digest


class Digesting:
    """An account's tables as digest lines (:meth:`ReplayState.table_lines`), hashed as they are read: a
    renderer's form reads them once for its output and the digest both. :meth:`digest` reads (and hashes) whatever
    was left unread."""

    def __init__(self, state: ReplayState) -> None:
        self._hash = hashlib.sha256(DIGEST_DOMAIN)
        self._tables = state.table_lines()
        self._open: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        for table, lines in self._tables:
            self._open = self._hashed(lines)
            yield table, self._open
            self._drain()

    def _hashed(self, lines: Iterator[bytes]) -> Iterator[bytes]:
        update = self._hash.update
        for line in lines:
            update(line)
            update(b"\n")
            yield line

    def _drain(self) -> None:
        if self._open is not None:
            for _ in self._open:
                pass
            self._open = None

    def digest(self) -> str:
        """The digest of every table, each sorted by key."""
        self._drain()
        for _, lines in self._tables:
            for _ in self._hashed(lines):
                pass
        return self._hash.hexdigest()


def account_digest(state: ReplayState) -> str:
    """The digest of one account's replayed tables (every table, each sorted by key:
    :meth:`ReplayState.table_lines`)."""
    return Digesting(state).digest()


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
    # Imported here: a replay worker process does not read projections, and their SQL (SQLAlchemy) is a good part
    # of its start.
    from statekeeper.projections import store  # noqa: PLC0415

    async with conn.transaction(isolation="repeatable_read", readonly=True):
        checkpoint = await conn.fetchval(statements.GET_CHECKPOINT, account, store.CHECKPOINT)
        tables = await store.read_tables(conn, account)
        account_head = await conn.fetchval(statements.ACCOUNT_HEAD, account)
    return Projection(account, int(checkpoint or 0), int(account_head), tables)


# ----------------------------------------------------------------------------------------------- commands


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


@dataclass(frozen=True, slots=True)
class _ReplayOne:
    """Replay one account, digest it and make the renderer's output of it (picklable: it runs in a worker process
    too)."""

    bound: Bound
    page_size: int
    hot_rows: int
    form: AccountForm

    async def __call__(self, conn: asyncpg.Connection, account: str, progress: Progress | None) -> Rendered:
        async with replayed(conn, account, self.bound, page_size=self.page_size, hot_rows=self.hot_rows,
                            progress=progress) as state:  # fmt: skip
            tables = Digesting(state)
            output = self.form(tables)
            try:
                digest = tables.digest()
            except BaseException:
                close_output(output)
                raise
            return Rendered(account, state.events, state.position, digest, output)


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
    jobs: int = 1,
    parallel_from: int = PARALLEL_FROM,
    progress: Callable[[int], Progress | None] | None = None,
) -> ReplayRun:
    """Replay ``accounts`` (default: every account in the log) up to ``position`` or time ``at`` (both capped at
    the log's head when the replay starts), each written to ``renderer`` with its digest, in account order.

    Up to ``jobs`` accounts are replayed at once in worker processes (:mod:`statekeeper.audit.parallel`).
    ``progress`` is given the number of events to read and returns the per-page callback (or None for none).
    """
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    try:
        chosen = await chosen_accounts(conn, accounts)
        top = await head(conn)
        bound = Bound(top if position is None else min(position, top), at, clock)
        total, advance = await _to_read(conn, chosen, bound.position, progress, parallel_from)
        renderer.begin(basis_of(bound))
        digests: dict[str, str] = {}
        events = 0
        work = _ReplayOne(bound, page_size, hot_rows, renderer.form)
        async for done in each_account(url, conn, chosen, work, jobs=jobs, events=total, progress=advance,
                                       parallel_from=parallel_from):  # fmt: skip
            try:
                digests[done.account] = done.digest
                renderer.account(done)
                events += done.events
            finally:
                done.close()
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


@dataclass(frozen=True, slots=True)
class _CheckOne:
    """Verify one account (picklable: it runs in a worker process too)."""

    page_size: int
    hot_rows: int

    async def __call__(self, conn: asyncpg.Connection, account: str, progress: Progress | None) -> AccountCheck:
        live = await read_projection(conn, account)
        async with replayed(conn, account, Bound(live.checkpoint), page_size=self.page_size, hot_rows=self.hot_rows,
                            progress=progress) as state:  # fmt: skip
            found: list[Difference] = []
            for table, table_rows in state.tables():
                found.extend(differences(account, table, table_rows, live.tables.get(table, [])))
            digest = account_digest(state)
        return AccountCheck(account, live.checkpoint, live.account_head, state.events, found, digest)


async def run_verify(
    url: str,
    *,
    accounts: Sequence[str] | None = None,
    page_size: int = PAGE_SIZE,
    hot_rows: int = HOT_ROWS,
    jobs: int = 1,
    parallel_from: int = PARALLEL_FROM,
    progress: Callable[[int], Progress | None] | None = None,
) -> list[AccountCheck]:
    """Replay each account to its projector checkpoint and compare with its live projection tables (up to
    ``jobs`` accounts at once)."""
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    try:
        chosen = await chosen_accounts(conn, accounts)
        total, advance = await _to_read(conn, chosen, await head(conn), progress, parallel_from)
        work = _CheckOne(page_size, hot_rows)
        return [check async for check in each_account(url, conn, chosen, work, jobs=jobs, events=total,
                                                      progress=advance, parallel_from=parallel_from)]  # fmt: skip
    finally:
        await conn.close()
