"""Rebuild the projections from the log into new tables, and swap them in atomically while ingest goes on.

``statekeeper project --rebuild [--account A ...]``:

1. create the schema ``statekeeper_rebuild`` with an empty copy of every projection table and of
   ``projector_checkpoints`` (``CREATE TABLE ... (LIKE ... INCLUDING ALL)``);
2. project the log into it with the same projector step as the live workers (:func:`store.apply_batch`), on a
   connection whose ``search_path`` puts ``statekeeper_rebuild`` first: the statements are the live ones, the tables
   they write are the copies, and ``events`` is the live log. Ingest and the live projectors go on meanwhile;
3. catch up with what was appended during the build, until little is left;
4. swap, in one transaction: lock ``projector_checkpoints`` (a live projector waits at its next commit, then finds
   the checkpoint moved and reads again from the new one; readers of the projections do not wait), apply the last
   events to the copies, replace the live rows of the rebuilt accounts with the copies' and move their checkpoints
   to the copies'. Readers see the old tables or the new ones, never a mix;
5. drop ``statekeeper_rebuild``.

Only one rebuild runs at a time (an advisory lock). If the rebuild fails before the swap, the live tables are
untouched; the swap itself is one transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from statekeeper import statements
from statekeeper.database import connect
from statekeeper.errors import StatekeeperError
from statekeeper.eventlog import chosen_accounts
from statekeeper.projections import store

logger = logging.getLogger(__name__)

SCHEMA = "statekeeper_rebuild"
TABLES: tuple[str, ...] = (*store.TABLES, "projector_checkpoints")
CATCH_UP_ROUNDS = 5

TRY_LOCK = "SELECT pg_try_advisory_lock(21327, 0)"
UNLOCK = "SELECT pg_advisory_unlock(21327, 0)"
LOCK_CHECKPOINTS = "LOCK TABLE projector_checkpoints IN EXCLUSIVE MODE"
SWAP_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '2s'"
SWAP_ATTEMPTS = 5
"""How many times the swap asks for the checkpoints' lock (and the live tables' own), waiting at most
``SWAP_LOCK_TIMEOUT`` for each lock: while it waits, every live worker's commit queues behind it, so it never waits
long (for a transaction that holds a table, say) but lets the workers go on and tries again."""


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


# DDL and the swap name tables, which bind parameters cannot: the names are this module's constants and the
# live schema's name as PostgreSQL reports it, each quoted.
def _create(table: str, live_schema: str) -> str:
    return f"CREATE TABLE {_ident(SCHEMA)}.{_ident(table)} (LIKE {_ident(live_schema)}.{_ident(table)} INCLUDING ALL)"


def _replace(table: str, live_schema: str) -> tuple[str, str]:
    live, copy = f"{_ident(live_schema)}.{_ident(table)}", f"{_ident(SCHEMA)}.{_ident(table)}"
    return (
        f"DELETE FROM {live} WHERE account = ANY($1::text[])",  # noqa: S608
        f"INSERT INTO {live} SELECT * FROM {copy} WHERE account = ANY($1::text[])",  # noqa: S608
    )


def _swap_checkpoints(live_schema: str) -> str:
    return (
        f"INSERT INTO {_ident(live_schema)}.projector_checkpoints AS c (account, name, position, updated_at) "  # noqa: S608
        f"SELECT account, name, position, now() FROM {_ident(SCHEMA)}.projector_checkpoints "
        "WHERE account = ANY($1::text[]) AND name = $2 "
        "ON CONFLICT (account, name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at"
    )


class RebuildError(StatekeeperError):
    """The rebuild could not run (another one holds the lock) or failed; the live tables are unchanged."""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    accounts: tuple[str, ...]
    events: int
    """Events applied to the copies."""
    rows: int
    """Rows the swapped-in tables hold for the rebuilt accounts."""
    position: int
    """The log position the rebuilt projections are complete up to."""
    seconds: float
    swap_seconds: float
    """How long the swap held the live projectors."""


async def rebuild(
    url: str,
    *,
    accounts: Sequence[str] | None = None,
    batch_size: int = 5_000,
    progress: Callable[[str], None] | None = None,
) -> RebuildReport:
    """Rebuild the projections of ``accounts`` (default: every account in the log) and swap them in."""
    say = progress or (lambda message: logger.info(message, extra={"action": "rebuild"}))
    started = time.perf_counter()
    live = await connect(url)
    try:
        if not await live.fetchval(TRY_LOCK):
            raise RebuildError("another rebuild is running (it holds the rebuild lock); try again when it is done")
        try:
            return await _rebuild(live, url, accounts=accounts, batch_size=batch_size, say=say, started=started)
        finally:
            await live.execute(f"DROP SCHEMA IF EXISTS {_ident(SCHEMA)} CASCADE")
            await live.fetchval(UNLOCK)
    finally:
        await live.close()


async def _rebuild(
    live: asyncpg.Connection,
    url: str,
    *,
    accounts: Sequence[str] | None,
    batch_size: int,
    say: Callable[[str], None],
    started: float,
) -> RebuildReport:
    live_schema = str(await live.fetchval("SELECT current_schema()"))
    chosen = await chosen_accounts(live, accounts)
    async with live.transaction():
        await live.execute(f"DROP SCHEMA IF EXISTS {_ident(SCHEMA)} CASCADE")
        await live.execute(f"CREATE SCHEMA {_ident(SCHEMA)}")
        for table in TABLES:
            await live.execute(_create(table, live_schema))
    copy = await store.connect_applier(url, search_path=f"{_ident(SCHEMA)}, {_ident(live_schema)}")
    try:
        applied = 0
        target = int(await live.fetchval(statements.HEAD))
        say(f"rebuilding {len(chosen)} accounts from the log up to position {target}")
        applied += await store.catch_up(copy, chosen, limit=batch_size, up_to=target)
        for _ in range(CATCH_UP_ROUNDS):
            head = int(await live.fetchval(statements.HEAD))
            if head == target:
                break
            target = head
            applied += await store.catch_up(copy, chosen, limit=batch_size, up_to=target)
        say(f"built {applied} events; swapping the rebuilt tables in")
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            swap_started = time.perf_counter()
            try:
                async with live.transaction():
                    await live.execute(SWAP_LOCK_TIMEOUT)
                    await live.execute(LOCK_CHECKPOINTS)
                    target = int(await live.fetchval(statements.HEAD))
                    applied += await store.catch_up(copy, chosen, limit=batch_size, up_to=target)
                    total = 0
                    for table in store.TABLES:
                        delete, insert = _replace(table, live_schema)
                        await live.execute(delete, chosen)
                        status = await live.execute(insert, chosen)
                        total += int(status.rsplit(" ", 1)[-1])
                    await live.execute(_swap_checkpoints(live_schema), chosen, store.CHECKPOINT)
                break
            except asyncpg.LockNotAvailableError:
                if attempt == SWAP_ATTEMPTS:
                    raise RebuildError(
                        f"the swap could not lock projector_checkpoints in {SWAP_ATTEMPTS} tries, or a live projection "
                        "table: a transaction holds it (see pg_locks); the live tables are as they were"
                    ) from None
                say(f"the swap waited for its locks (attempt {attempt} of {SWAP_ATTEMPTS}); trying again")
        swap_seconds = time.perf_counter() - swap_started
    finally:
        await copy.close()
    report = RebuildReport(tuple(chosen), applied, total, target, time.perf_counter() - started, swap_seconds)
    say(
        f"rebuilt {len(chosen)} accounts: {applied} events, {total} rows, complete up to position {target}; "
        f"the swap held the projectors for {swap_seconds * 1000:.0f} ms"
    )
    return report
