"""The projection tables in PostgreSQL: load the rows a batch touches, write back what the folds changed.

:func:`apply_batch` is one projector step for one account, three statements, whatever the batch holds:

1. **read** the account's checkpoint (position and ``updated_at``) and the events after it, in one statement
   (appends are serialised, so no late commit can appear below the position);
2. **load** the rows those events can touch (:func:`statekeeper.projections.fold.needs`), every table in one
   statement (an array of each table's rows); then fold the events in memory (the pure folds replay uses too);
3. **commit**: one statement writes every changed row (set-based ``unnest`` upserts and deletes, a data-modifying
   ``WITH`` clause per table) *and* moves the checkpoint, as one implicit transaction, on a condition: the
   checkpoint is still the one read in step 1 (compare-and-set). If another projector moved it meanwhile (two
   workers ever racing for one account, or a rebuild swapping its tables in), the statement writes nothing and the
   batch is read again from the new checkpoint. So the rows and the checkpoint commit or vanish together
   (invariant 5), and no event is ever applied twice, without a transaction held open across the fold.

Each step is one round trip: on a busy machine a round trip costs milliseconds, which is what the projector's
latency is made of. The statements are generated once from the table metadata (our own column names only, never
input) and are prepared against a migrated database by the tests, like :mod:`statekeeper.statements`.
"""

from __future__ import annotations

import functools
import logging
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from statekeeper import schema, statements
from statekeeper.database import connect
from statekeeper.errors import StatekeeperError
from statekeeper.projections import rows
from statekeeper.projections.fold import AccountState, FoldEvent, Needs, fold, needs, parse_events

logger = logging.getLogger(__name__)

CHECKPOINT = "projections"
"""The projector's name in ``projector_checkpoints``: one checkpoint per account covers every projection table."""

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class TableSQL:
    """One projection table: its row class, and the pieces of the statements that read and write it."""

    table: str
    row_type: type[rows.Row]
    columns: tuple[str, ...]
    types: tuple[str, ...]
    """Each column's SQL type, for the arrays its values are sent in."""
    key_columns: tuple[str, ...]
    """The key without ``account`` (every statement is about one account)."""
    select_all: str
    values: Callable[[Any], tuple[Any, ...]]

    def delete_clause(self, first: int) -> str:
        """A data-modifying ``WITH`` clause body: remove the rows whose keys arrive as arrays from ``$first`` on."""
        types = dict(zip(self.columns, self.types, strict=True))
        arrays = ", ".join(f"${i}::{types[c]}[]" for i, c in enumerate(self.key_columns, start=first))
        if not self.key_columns:
            return f"DELETE FROM {self.table} WHERE account = $1 AND EXISTS (SELECT FROM moved)"  # noqa: S608
        return (
            f"DELETE FROM {self.table} WHERE account = $1 AND ({', '.join(self.key_columns)}) IN "  # noqa: S608
            f"(SELECT * FROM unnest({arrays})) AND EXISTS (SELECT FROM moved)"
        )

    def upsert_clause(self, first: int) -> str:
        """A data-modifying ``WITH`` clause body: insert or update the rows that arrive as ``$first``, one array of
        the table's row type."""
        key = ("account", *self.key_columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in self.columns if c not in key)
        return (
            f"INSERT INTO {self.table} ({', '.join(self.columns)}) "  # noqa: S608
            f"SELECT * FROM unnest(${first}::{self.table}[]) WHERE EXISTS (SELECT FROM moved) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        )


def _table_sql(row_type: type[rows.Row], table: Table) -> TableSQL:
    # Identifiers come from our own metadata, and every value is a bind parameter.
    columns = rows.columns(row_type)
    if tuple(c.name for c in table.columns) != columns:
        raise RuntimeError(f"table {table.name} and {row_type.__name__} disagree on the columns")
    return TableSQL(
        table=table.name,
        row_type=row_type,
        columns=columns,
        types=tuple(c.type.compile(dialect=_DIALECT) for c in table.columns),
        key_columns=row_type.key[1:],
        select_all=f"SELECT {', '.join(columns)} FROM {table.name} WHERE account = $1",  # noqa: S608
        values=operator.attrgetter(*columns),
    )


TABLES: dict[str, TableSQL] = {
    row_type.table: _table_sql(row_type, schema.metadata.tables[row_type.table]) for row_type in rows.ROW_TYPES
}

ENSURE_CHECKPOINT = """
INSERT INTO projector_checkpoints (account, name, position) VALUES ($1, $2, 0)
ON CONFLICT (account, name) DO NOTHING
"""

# Step 1: the checkpoint and the events after it (at most $3, none after $4). One row with null event columns if
# no event is waiting; no row at all if the account has no checkpoint yet.
READ_BATCH = f"""
SELECT c.position, c.updated_at, page.events
FROM projector_checkpoints AS c
LEFT JOIN LATERAL (
    SELECT string_agg({statements.EVENT_LINE}, E'\\n' ORDER BY id) AS events
    FROM (
        SELECT id, venue, kind, snapshot, source, venue_time, received_at, payload
        FROM events
        WHERE {statements.ACCOUNT_AFTER.format(account="$1", position="c.position")} AND (account, id) <= ($1, $4)
        ORDER BY {statements.ACCOUNT_ORDER}
        LIMIT $3
    ) AS e
) AS page ON true
WHERE c.account = $1 AND c.name = $2
"""  # noqa: S608 - the interpolated text is a constant expression

# The events of an account after a position, as one page (a worker's read-ahead, benchmarks; a batch reads them with
# its checkpoint, READ_BATCH).
READ_EVENTS = f"""
SELECT string_agg({statements.EVENT_LINE}, E'\\n' ORDER BY id) AS events
FROM (
    SELECT id, venue, kind, snapshot, source, venue_time, received_at, payload
    FROM events
    WHERE {statements.ACCOUNT_AFTER.format(account="$1", position="$2")}
    ORDER BY {statements.ACCOUNT_ORDER}
    LIMIT $3
) AS e
"""  # noqa: S608 - the interpolated text is a constant expression


@dataclass(frozen=True, slots=True)
class _Load:
    table: str
    condition: str
    """What, besides the account, selects the rows: a flag or a key among an array of ids (bind parameters)."""


# Step 2: every row the batch can touch, each table's as one array of its row type: $2 balances, $3 the account
# figures, $4 every open order, $5 these order ids, $6 every open and closed position, $7 these fill ids (fills and
# their busts), $8 these funding payment ids.
_LOADS = (
    _Load("balances", "$2"),
    _Load("account_margins", "$3"),
    _Load("open_orders", "$4"),
    _Load("orders", "t.order_id = ANY($5::text[])"),
    _Load("positions", "$6"),
    _Load("closed_positions", "$6"),
    _Load("fills", "t.fill_id = ANY($7::text[])"),
    _Load("fill_busts", "t.fill_id = ANY($7::text[])"),
    _Load("funding_payments", "t.payment_id = ANY($8::text[])"),
)


def _load_statement() -> str:
    # Table names and conditions are this module's constants.
    arrays = [
        f"ARRAY(SELECT t FROM {load.table} AS t WHERE t.account = $1 AND {load.condition}) AS {load.table}"  # noqa: S608
        for load in _LOADS
    ]
    return "SELECT " + ",\n       ".join(arrays)


LOAD = _load_statement()
if {load.table for load in _LOADS} != set(TABLES):
    raise RuntimeError("LOAD does not read every projection table")

# Step 3: the writes and the checkpoint, in one statement (see write_statement). The checkpoint moves only if it is
# still the one the batch was read at; every write of the statement depends on that (EXISTS (SELECT FROM moved)).
_MOVE_CHECKPOINT = """moved AS (
    UPDATE projector_checkpoints SET position = $3, updated_at = now()
    WHERE account = $1 AND name = $2 AND position = $4 AND updated_at = $5
    RETURNING position, updated_at
)"""
_WRITE_RESULT = "SELECT set_config('synchronous_commit', 'off', true), (SELECT updated_at FROM moved) AS moved_at"
# The rows and the checkpoint commit or vanish together, and the log itself is durable: a commit lost in a server
# crash only means these events are applied again, so the projector need not wait for the WAL flush.

SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
"""The session settings of the connections batches are applied on. Their statements look rows up by key among
arrays of ids, whose length a cached generic plan cannot know: PostgreSQL's default (``auto``) then judges the
generic plan dearer than a plan for the values at hand, and plans every execution anew, a fraction of a millisecond
for each of a batch's statements, more than their execution when a batch holds a few events. The generic plans are
the same index lookups, so the projector keeps them (an ``ANALYZE`` replans them: :class:`Statistics`)."""


async def connect_applier(url: str, *, search_path: str | None = None) -> asyncpg.Connection:
    """A connection to apply batches on: :data:`SERVER_SETTINGS`, and the ``search_path`` given (a rebuild's)."""
    settings = dict(SERVER_SETTINGS) if search_path is None else {**SERVER_SETTINGS, "search_path": search_path}
    return await connect(url, server_settings=settings)


Write = tuple[str, str]
"""A part of a write statement: (table, ``"delete"`` or ``"upsert"``)."""


@functools.cache
def write_statement(parts: frozenset[Write]) -> str:
    """The statement that moves the checkpoint and writes these parts (in :data:`TABLES` order, deletes first).

    Its parameters: ``$1`` account, ``$2`` projector name, ``$3`` the new position, ``$4`` and ``$5`` the
    checkpoint's position and ``updated_at`` as read; then, per part, the arrays of key columns (delete) or of every
    column (upsert).
    """
    clauses = [_MOVE_CHECKPOINT]
    next_parameter = 6
    for part in _ordered(parts):
        table, what = part
        sql = TABLES[table]
        if what == "delete":
            body = sql.delete_clause(next_parameter)
            next_parameter += len(sql.key_columns)
        else:
            body = sql.upsert_clause(next_parameter)
            next_parameter += 1
        clauses.append(f"{what}_{table} AS ({body})")
    return "WITH " + ",\n".join(clauses) + "\n" + _WRITE_RESULT


def _ordered(parts: frozenset[Write]) -> list[Write]:
    return [(table, what) for table in TABLES for what in ("delete", "upsert") if (table, what) in parts]


# Accounts with events after a position, and their newest position: which accounts a wake-up concerns.
ACCOUNTS_SINCE = """
SELECT account, max(id) AS head FROM events WHERE id > $1 GROUP BY account
"""

# Every account in the log (a loose index scan: one probe per account).
ALL_ACCOUNTS = statements.ACCOUNTS_IN_LOG

# Projection tables (as the search path finds them) that hold rows but whose statistics are missing or far out of
# date: never analyzed (new, or emptied by TRUNCATE; reltuples is -1 from PostgreSQL 14 on), or grown to more than
# twice their size (in pages) at the last ANALYZE, plus $2 pages.
UNANALYZED = """
SELECT c.relname AS name, c.relfilenode AS file, c.relpages AS pages
FROM unnest($1::text[]) AS t(name)
JOIN pg_class AS c ON c.oid = to_regclass(t.name)
CROSS JOIN LATERAL (SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint AS now_pages) AS size
WHERE size.now_pages > 0 AND (c.reltuples < 0 OR size.now_pages > 2 * c.relpages + $2)
"""
ANALYZE_TABLE = {name: f"ANALYZE {name}" for name in TABLES}
"""``ANALYZE`` of each projection table (the names are this module's constants; a utility statement takes no
parameters and is not prepared)."""

# How far behind each account's projections are: the checkpoint, the events not applied yet, and the oldest
# one's receive time (a range of the primary key, as long as the lag). Used by the workers and `statekeeper status`.
LAG = f"""
SELECT a.account, c.position, c.updated_at, l.events, l.oldest
FROM unnest($1::text[]) AS a(account)
LEFT JOIN projector_checkpoints AS c ON c.account = a.account AND c.name = $2
CROSS JOIN LATERAL (
    SELECT count(*) AS events, min(received_at) AS oldest
    FROM events
    WHERE {statements.ACCOUNT_AFTER.format(account="a.account", position="coalesce(c.position, 0)")}
) AS l
"""  # noqa: S608 - the interpolated text is a constant expression

STATEMENTS: dict[str, str] = {
    "ensure_checkpoint": ENSURE_CHECKPOINT,
    "read_batch": READ_BATCH,
    "read_events": READ_EVENTS,
    "load": LOAD,
    "write_everything": write_statement(frozenset((t, w) for t in TABLES for w in ("delete", "upsert"))),
    **{f"write_{t}_{w}": write_statement(frozenset({(t, w)})) for t in TABLES for w in ("delete", "upsert")},
    "accounts_since": ACCOUNTS_SINCE,
    "all_accounts": ALL_ACCOUNTS,
    "lag": LAG,
    "unanalyzed": UNANALYZED,
    **{f"{name}_select_all": sql.select_all for name, sql in TABLES.items()},
}
"""Every statement of this module (the write statement whole and by part), for the test that prepares them against
a migrated database."""


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """An account's checkpoint as a batch read it: the write moves it only if it is still this one."""

    position: int
    updated_at: datetime


async def read_batch(
    conn: asyncpg.Connection, account: str, *, limit: int, name: str = CHECKPOINT, up_to: int | None = None
) -> tuple[Checkpoint, list[FoldEvent]]:
    """Step 1: the account's checkpoint (created at 0 if it has none) and the next events after it."""
    record = await conn.fetchrow(READ_BATCH, account, name, limit, _NO_LIMIT if up_to is None else up_to)
    if record is None:
        await conn.execute(ENSURE_CHECKPOINT, account, name)
        record = await conn.fetchrow(READ_BATCH, account, name, limit, _NO_LIMIT if up_to is None else up_to)
        if record is None:
            raise StatekeeperError(f"the checkpoint {name!r} of account {account!r} vanished as it was created")
    checkpoint = Checkpoint(record[0], record[1])
    return checkpoint, [] if record[2] is None else parse_events(record[2])


_NO_LIMIT = 2**63 - 1


async def read_events(conn: asyncpg.Connection, account: str, *, after: int, limit: int) -> list[FoldEvent]:
    """The next events of ``account`` after position ``after`` (at most ``limit``), without a checkpoint."""
    page = await conn.fetchval(READ_EVENTS, account, after, limit)
    return [] if page is None else parse_events(page)


async def load(conn: asyncpg.Connection, account: str, wanted: Needs) -> AccountState:
    """Step 2: the rows of ``account`` that a batch with these needs can read or change (one statement)."""
    state = AccountState(account)
    if not (wanted.balances or wanted.margins or wanted.all_open_orders or wanted.order_ids or wanted.positions
            or wanted.fill_ids or wanted.payment_ids):  # fmt: skip
        return state
    found = await conn.fetchrow(
        LOAD, account, wanted.balances, wanted.margins, wanted.all_open_orders, sorted(wanted.order_ids),
        wanted.positions, sorted(wanted.fill_ids), sorted(wanted.payment_ids),
    )  # fmt: skip
    assert found is not None

    def loaded(table: str) -> list[Any]:
        # open_orders and closed_positions hold the same rows as orders and positions: the folds see one class each
        row_type = TABLES[table].row_type
        row_type = rows.SAME_ROWS_AS.get(row_type, row_type)
        return [row_type(*record) for record in found[table]]

    state.balances = {r.asset: r for r in loaded("balances")}
    margins = loaded("account_margins")
    state.margins = margins[0] if margins else None
    state.orders = {r.order_id: r for r in loaded("open_orders")}
    state.orders.update((r.order_id, r) for r in loaded("orders"))
    state.open_orders = {order_id for order_id, row in state.orders.items() if row.is_open}
    state.positions = {r.market: r for r in loaded("positions")}
    state.closed_positions = {r.market: r for r in loaded("closed_positions")}
    state.fills = {(r.fill_id, r.fill_type): r for r in loaded("fills")}
    state.busts = {r.fill_id: r for r in loaded("fill_busts")}
    state.funding = {r.payment_id: r for r in loaded("funding_payments")}
    return state


async def _select(conn: asyncpg.Connection, table: str, account: str) -> list[Any]:
    sql = TABLES[table]
    records = await conn.fetch(sql.select_all, account)
    row_type = rows.SAME_ROWS_AS.get(sql.row_type, sql.row_type)
    return [row_type(*record) for record in records]


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


def _columns(values: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of values as one list per column (the arrays a set-based statement takes)."""
    return [list(column) for column in zip(*values, strict=True)] if values else [[] for _ in range(width)]


def write_arguments(state: AccountState) -> tuple[frozenset[Write], list[list[Any]], int]:
    """What the fold changed, as the parts of the write statement, their arguments, and the number of rows."""
    changes = state.changes
    parts: set[Write] = set()
    for table in TABLES:
        if changes.deleted.get(table):
            parts.add((table, "delete"))
        if changes.upserted.get(table):
            parts.add((table, "upsert"))
    frozen = frozenset(parts)
    arguments: list[list[Any]] = []
    count = 0
    for table, what in _ordered(frozen):
        sql = TABLES[table]
        if what == "delete":
            keys = sorted(changes.deleted[table])
            if sql.key_columns:
                arguments.extend(_columns(keys, len(sql.key_columns)))
            count += len(keys)
        else:
            lookup = _held(state, table)
            values = [sql.values(lookup(key)) for key in sorted(changes.upserted[table])]
            arguments.append(values)
            count += len(values)
    return frozen, arguments, count


async def commit_batch(
    conn: asyncpg.Connection, state: AccountState, checkpoint: Checkpoint, position: int, *, name: str = CHECKPOINT
) -> tuple[int, Checkpoint] | None:
    """Step 3: write what changed in ``state`` and move the checkpoint to ``position``, if it is still
    ``checkpoint``. Returns the number of rows written or removed and the new checkpoint, or None if the checkpoint
    had moved (nothing is written then)."""
    parts, arguments, count = write_arguments(state)
    sql = write_statement(parts)
    record = await conn.fetchrow(
        sql, state.account, name, position, checkpoint.position, checkpoint.updated_at, *arguments
    )
    assert record is not None
    moved_at = record["moved_at"]
    return None if moved_at is None else (count, Checkpoint(position, moved_at))


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
    checkpoint: Checkpoint
    """The checkpoint after the batch (what the next batch's commit compares with)."""


MAX_ATTEMPTS = 100
"""How many times a batch is read again because another projector moved the checkpoint first."""


class CheckpointRace(StatekeeperError):
    """The checkpoint kept moving under this projector: something else is projecting the account."""


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
    read: tuple[Checkpoint, list[FoldEvent]] | None = None,
    read_ahead: Callable[[int], None] | None = None,
) -> BatchResult:
    """Apply the next events of ``account`` (at most ``limit``, none after ``up_to``): read, load, fold, commit.

    ``read``: the checkpoint and the events after it, read already (a worker's read-ahead: the checkpoint its last
    batch left, and :func:`read_events` after it); if the checkpoint has moved since, the batch is read again.
    Not with ``up_to`` (the events read ahead know no limit).
    ``read_ahead`` is called with the last position of a full batch (more events are probably waiting) once it is
    read, so that the caller can read the next batch's events while this one is folded and committed.
    ``before_commit`` runs after the fold, before the statement that commits the rows and the checkpoint (tests
    kill the projector there). ``conn`` must not be inside a transaction: the commit statement is its own.
    """
    if read is not None and up_to is not None:
        raise ValueError("apply_batch: events read ahead cannot be limited by up_to")
    for _ in range(MAX_ATTEMPTS):
        if read is not None and read[1]:
            (checkpoint, events), read = read, None
        else:
            checkpoint, events = await read_batch(conn, account, limit=limit, name=name, up_to=up_to)
        if not events:
            return BatchResult(account, 0, 0, checkpoint.position, None, False, checkpoint)
        last = events[-1].id
        full = len(events) == limit
        if full and read_ahead is not None:
            read_ahead(last)
        state = fold(await load(conn, account, needs(events)), events)
        if before_commit is not None:
            before_commit()
        committed = await commit_batch(conn, state, checkpoint, last, name=name)
        if committed is not None:
            written, moved = committed
            return BatchResult(account, len(events), written, last, events[0].received_at, full, moved)
    raise CheckpointRace(
        f"the checkpoint of account {account} moved under this projector {MAX_ATTEMPTS} times in a row: "
        "is another program projecting it without the projector's account lock?"
    )


async def catch_up(conn: asyncpg.Connection, accounts: Sequence[str], *, limit: int, up_to: int | None = None) -> int:
    """Apply every event of ``accounts`` (up to position ``up_to``), batch after batch. Returns the events applied."""
    applied = 0
    statistics = Statistics()
    for account in accounts:
        while True:
            result = await apply_batch(conn, account, limit=limit, up_to=up_to)
            applied += result.events
            if result.rows:
                await statistics.refresh(conn)
            if result.events == 0 or (up_to is None and not result.full):
                break
    return applied


class Statistics:
    """Gives the planner statistics for projection tables that have rows but none yet, or whose statistics are far
    out of date.

    Without them, PostgreSQL plans the load step (:data:`LOAD`) as if each account had one row: it reads the
    account's rows through any index on ``account`` and tests each against the batch's ids, a cost that grows with
    the table (20 ms a batch at 2,500 orders), and a cached plan keeps doing so until autovacuum's next ``ANALYZE``,
    a minute or more away. The same happens to tables analyzed while they were small (the first batches of a new
    deployment write a few rows), as they grow. :meth:`refresh`, called after batches that wrote rows, analyzes such
    tables itself, at most once a second: a table never analyzed, or grown to more than twice its size at its last
    ``ANALYZE`` (and by :data:`GROWTH_PAGES` pages at least), so a table is analyzed a few times as it grows, each
    time a cheap sample. A table whose statistics an ``ANALYZE`` did not change (a role that does not own the tables
    gets a warning from the server) is left to autovacuum until they do."""

    INTERVAL_SECONDS = 1.0
    GROWTH_PAGES = 16
    """128 kB: a table is analyzed again once it has grown by this much, and doubled, since its last ANALYZE."""

    def __init__(self) -> None:
        self._checked = -self.INTERVAL_SECONDS
        self._tried: set[tuple[str, int, int]] = set()

    async def refresh(self, conn: asyncpg.Connection) -> list[str]:
        """Analyze the tables that need it; the names of those analyzed."""
        now = time.monotonic()
        if now - self._checked < self.INTERVAL_SECONDS:
            return []
        self._checked = now
        analyzed = []
        for record in await conn.fetch(UNANALYZED, list(TABLES), self.GROWTH_PAGES):
            name, tried = record["name"], (record["name"], record["file"], record["pages"])
            if tried in self._tried or name not in TABLES:
                continue
            self._tried.add(tried)
            await conn.execute(ANALYZE_TABLE[name])
            analyzed.append(name)
        if analyzed:
            logger.info("analyzed %s: the planner had no statistics for them, or outdated ones",
                        ", ".join(analyzed), extra={"action": "projections_analyzed"})  # fmt: skip
        return analyzed


async def read_tables(conn: asyncpg.Connection, account: str) -> dict[str, list[rows.Row]]:
    """Every projection row of ``account``, per table, sorted by key (the shape of :meth:`AccountState.tables`)."""
    found: dict[str, list[rows.Row]] = {}
    for table in TABLES:
        table_rows = await _select(conn, table, account)
        found[table] = sorted(table_rows, key=lambda r: r.key_value())
    return found
