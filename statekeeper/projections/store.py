"""The projection tables in PostgreSQL: load the rows a batch touches, write back what the folds changed.

:func:`apply_batch` is one projector step for one account, in one transaction (invariant 5):

1. lock the account's checkpoint row (``SELECT ... FOR UPDATE``) and read its position: a second projector of
   the same account waits here, then reads the position the first one committed, so no event is applied twice
   even if two workers ever raced for an account;
2. read the next events after that position (appends are serialised, so no late commit can appear below it);
3. load the rows those events can touch (:func:`statekeeper.projections.fold.needs`);
4. fold them (the pure folds replay uses too);
5. write the changed rows with set-based statements (``unnest`` arrays: one statement per table, whatever the
   number of rows) and move the checkpoint.

The statements are generated once from the table metadata (our own column names only, never input) and are
prepared against a migrated database by the tests, like :mod:`statekeeper.statements`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from statekeeper import schema
from statekeeper.projections import rows
from statekeeper.projections.fold import AccountState, FoldEvent, Needs, fold, needs

CHECKPOINT = "projections"
"""The projector's name in ``projector_checkpoints``: one checkpoint per account covers every projection table."""

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class TableSQL:
    """The statements of one projection table."""

    table: str
    row_type: type[rows.Row]
    columns: tuple[str, ...]
    select_all: str
    select_by_key: str
    upsert: str
    delete: str
    values: Callable[[Any], tuple[Any, ...]]


def _table_sql(row_type: type[rows.Row], table: Table) -> TableSQL:
    # Identifiers come from our own metadata, and every value is a bind parameter.
    columns = rows.columns(row_type)
    if tuple(c.name for c in table.columns) != columns:
        raise RuntimeError(f"table {table.name} and {row_type.__name__} disagree on the columns")
    types = {c.name: c.type.compile(dialect=_DIALECT) for c in table.columns}
    column_list = ", ".join(columns)
    key = row_type.key
    arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(columns, start=1))
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    key_arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(key[1:], start=2))
    first_key = key[1] if len(key) > 1 else None
    return TableSQL(
        table=table.name,
        row_type=row_type,
        columns=columns,
        select_all=f"SELECT {column_list} FROM {table.name} WHERE account = $1",  # noqa: S608
        select_by_key=(
            f"SELECT {column_list} FROM {table.name} WHERE account = $1 AND {first_key} = ANY($2::text[])"  # noqa: S608
            if first_key
            else ""
        ),
        upsert=(
            f"INSERT INTO {table.name} ({column_list}) SELECT * FROM unnest({arrays}) "  # noqa: S608
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        ),
        delete=(
            f"DELETE FROM {table.name} WHERE account = $1 AND ({', '.join(key[1:])}) IN "  # noqa: S608
            f"(SELECT * FROM unnest({key_arrays}))"
            if first_key
            else f"DELETE FROM {table.name} WHERE account = $1"  # noqa: S608
        ),
        values=operator.attrgetter(*columns),
    )


TABLES: dict[str, TableSQL] = {
    row_type.table: _table_sql(row_type, schema.metadata.tables[row_type.table]) for row_type in rows.ROW_TYPES
}

ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"

LOCK_CHECKPOINT = """
SELECT position FROM projector_checkpoints WHERE account = $1 AND name = $2 FOR UPDATE
"""

ENSURE_CHECKPOINT = """
INSERT INTO projector_checkpoints (account, name, position) VALUES ($1, $2, 0)
ON CONFLICT (account, name) DO NOTHING
"""

SET_CHECKPOINT = """
UPDATE projector_checkpoints SET position = $3, updated_at = now() WHERE account = $1 AND name = $2
"""

READ_EVENTS = """
SELECT id, venue, kind, snapshot, source, venue_time, received_at, payload
FROM events
WHERE account = $1 AND id > $2
ORDER BY id
LIMIT $3
"""

# Accounts with events after a position, and their newest position: which accounts a wake-up concerns.
ACCOUNTS_SINCE = """
SELECT account, max(id) AS head FROM events WHERE id > $1 GROUP BY account
"""

# Every account in the log, by a loose index scan over the primary key (account, id): one probe per account.
ALL_ACCOUNTS = """
WITH RECURSIVE found(account) AS (
    (SELECT account FROM events ORDER BY account LIMIT 1)
    UNION ALL
    SELECT (SELECT e.account FROM events AS e WHERE e.account > found.account ORDER BY e.account LIMIT 1)
    FROM found WHERE found.account IS NOT NULL
)
SELECT account FROM found WHERE account IS NOT NULL
"""

# How far behind each account's projections are: the checkpoint, the events not applied yet, and the oldest
# one's receive time (a range of the primary key, as long as the lag). Used by the workers and `statekeeper status`.
LAG = """
SELECT a.account, c.position, c.updated_at, l.events, l.oldest
FROM unnest($1::text[]) AS a(account)
LEFT JOIN projector_checkpoints AS c ON c.account = a.account AND c.name = $2
CROSS JOIN LATERAL (
    SELECT count(*) AS events, min(e.received_at) AS oldest
    FROM events AS e
    WHERE e.account = a.account AND e.id > coalesce(c.position, 0)
) AS l
"""

STATEMENTS: dict[str, str] = {
    "async_commit": ASYNC_COMMIT,
    "lock_checkpoint": LOCK_CHECKPOINT,
    "ensure_checkpoint": ENSURE_CHECKPOINT,
    "set_checkpoint": SET_CHECKPOINT,
    "read_events": READ_EVENTS,
    "accounts_since": ACCOUNTS_SINCE,
    "all_accounts": ALL_ACCOUNTS,
    "lag": LAG,
    **{
        f"{name}_{what}": getattr(sql, what)
        for name, sql in TABLES.items()
        for what in ("select_all", "select_by_key", "upsert", "delete")
        if getattr(sql, what)
    },
}
"""Every statement of this module, for the test that prepares them against a migrated database."""


# ------------------------------------------------------------------------------------------------ reading


def fold_event(record: asyncpg.Record) -> FoldEvent:
    """A row of :data:`READ_EVENTS` as a :class:`FoldEvent`."""
    return FoldEvent(*record)


async def _select(conn: asyncpg.Connection, table: str, account: str, keys: Sequence[str] | None = None) -> list[Any]:
    sql = TABLES[table]
    if keys is None:
        records = await conn.fetch(sql.select_all, account)
    else:
        records = await conn.fetch(sql.select_by_key, account, list(keys))
    # open_orders and closed_positions hold the same rows as orders and positions: the folds see one class each.
    row_type = rows.SAME_ROWS_AS.get(sql.row_type, sql.row_type)
    return [row_type(*record) for record in records]


async def load(conn: asyncpg.Connection, account: str, wanted: Needs) -> AccountState:
    """The rows of ``account`` that a batch with these needs can read or change."""
    state = AccountState(account)
    if wanted.balances:
        state.balances = {r.asset: r for r in await _select(conn, "balances", account)}
    if wanted.margins:
        found = await _select(conn, "account_margins", account)
        state.margins = found[0] if found else None
    if wanted.all_open_orders:
        state.orders.update((r.order_id, r) for r in await _select(conn, "open_orders", account))
    missing = sorted(wanted.order_ids - state.orders.keys())
    if missing:
        state.orders.update((r.order_id, r) for r in await _select(conn, "orders", account, missing))
    state.open_orders = {order_id for order_id, row in state.orders.items() if row.is_open}
    if wanted.positions:
        state.positions = {r.market: r for r in await _select(conn, "positions", account)}
        state.closed_positions = {r.market: r for r in await _select(conn, "closed_positions", account)}
    if wanted.fill_ids:
        fill_ids = sorted(wanted.fill_ids)
        state.fills = {(r.fill_id, r.fill_type): r for r in await _select(conn, "fills", account, fill_ids)}
        state.busts = {r.fill_id: r for r in await _select(conn, "fill_busts", account, fill_ids)}
    if wanted.payment_ids:
        state.funding = {
            r.payment_id: r for r in await _select(conn, "funding_payments", account, sorted(wanted.payment_ids))
        }
    return state


# ------------------------------------------------------------------------------------------------ writing


def _held(state: AccountState, table: str) -> Callable[[tuple[Any, ...]], rows.Row]:
    """How to find the row a change of ``table`` refers to."""
    lookups: dict[str, Callable[[tuple[Any, ...]], Any]] = {
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
    return lookups[table]


async def write(conn: asyncpg.Connection, state: AccountState) -> int:
    """Write what changed in ``state`` since it was loaded. Returns the number of rows written or removed."""
    changes = state.changes
    written = 0
    for table, sql in TABLES.items():
        removed = changes.deleted.get(table)
        if removed:
            keys = sorted(removed)
            await conn.execute(sql.delete, state.account, *(list(column) for column in zip(*keys, strict=True)))
            written += len(keys)
        upserted = changes.upserted.get(table)
        if upserted:
            lookup = _held(state, table)
            values = [sql.values(lookup(key)) for key in sorted(upserted)]
            await conn.execute(sql.upsert, *(list(column) for column in zip(*values, strict=True)))
            written += len(values)
    return written


# ------------------------------------------------------------------------------------------------ a step


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one :func:`apply_batch` did."""

    account: str
    events: int
    """Events applied (every kind: control events move the checkpoint too)."""
    rows: int
    """Rows written or removed."""
    position: int
    """The checkpoint after the batch."""
    oldest_received_at: datetime | None
    """The receive time of the first event of the batch (for lag in seconds)."""
    full: bool
    """The batch was as large as allowed: more events are probably waiting."""


async def ensure_checkpoint(conn: asyncpg.Connection, account: str, name: str = CHECKPOINT) -> None:
    await conn.execute(ENSURE_CHECKPOINT, account, name)


async def apply_batch(
    conn: asyncpg.Connection,
    account: str,
    *,
    limit: int,
    name: str = CHECKPOINT,
    up_to: int | None = None,
    before_commit: Callable[[], None] | None = None,
) -> BatchResult:
    """Apply the next events of ``account`` (at most ``limit``, none after ``up_to``) in one transaction."""
    async with conn.transaction():
        # The rows and the checkpoint commit or vanish together, and the log itself is durable: a commit lost in a
        # server crash only means these events are applied again, so the projector need not wait for the flush.
        await conn.execute(ASYNC_COMMIT)
        position = await conn.fetchval(LOCK_CHECKPOINT, account, name)
        if position is None:
            await ensure_checkpoint(conn, account, name)
            position = await conn.fetchval(LOCK_CHECKPOINT, account, name)
        records = await conn.fetch(READ_EVENTS, account, position, limit)
        if up_to is not None:
            records = [r for r in records if r["id"] <= up_to]
        if not records:
            return BatchResult(account, 0, 0, position, None, False)
        events = [fold_event(r) for r in records]
        state = fold(await load(conn, account, needs(events)), events)
        written = await write(conn, state)
        last = events[-1].id
        await conn.execute(SET_CHECKPOINT, account, name, last)
        if before_commit is not None:
            before_commit()
    return BatchResult(account, len(events), written, last, events[0].received_at, len(records) == limit)


async def catch_up(conn: asyncpg.Connection, accounts: Sequence[str], *, limit: int, up_to: int | None = None) -> int:
    """Apply every event of ``accounts`` (up to position ``up_to``), batch after batch. Returns the events applied."""
    applied = 0
    for account in accounts:
        while True:
            result = await apply_batch(conn, account, limit=limit, up_to=up_to)
            applied += result.events
            if result.events == 0 or (up_to is None and not result.full):
                break
    return applied


async def read_tables(conn: asyncpg.Connection, account: str) -> dict[str, list[rows.Row]]:
    """Every projection row of ``account``, per table, sorted by key (the shape of :meth:`AccountState.tables`)."""
    found: dict[str, list[rows.Row]] = {}
    for table in TABLES:
        table_rows = await _select(conn, table, account)
        found[table] = sorted(table_rows, key=lambda r: r.key_value())
    return found
