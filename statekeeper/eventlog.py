"""The event log in PostgreSQL: the API every other part of statekeeper appends through and reads from.

Appending
    :meth:`PostgresEventLog.append` writes a batch in one transaction: take the append lock, probe which keys
    are already stored, link the new rows into their accounts' hash chains, COPY them, read back their
    positions. COPY was chosen by measurement over ``executemany`` and ``INSERT ... SELECT FROM unnest`` (see
    ``docs/event-log.md``). The append is
    idempotent: an event whose key is already stored with the same content is a *duplicate* and changes nothing;
    one whose key is stored with different content is a *conflict*, recorded in ``event_conflicts`` (kept,
    visible, counted) and never silently dropped.

Ordering (invariant 6)
    Every append takes one transaction-scoped advisory lock before it draws log positions (a ``BEFORE INSERT``
    statement trigger does it, so no client can forget) and holds it until commit. Positions therefore become
    visible in the order they were drawn, and a reader that asks for ``id > checkpoint`` can never miss an event
    that commits late. See ``docs/event-log.md`` for why this was preferred to an ``xid8`` watermark.

Tamper evidence
    Each event's ``chain_hash`` covers its content and the previous ``chain_hash`` of its account
    (:mod:`statekeeper.audit.chain`). Appends are serialised by the lock above, so the link is computed here, in
    Python, from the account's last stored link; ``statekeeper verify-log`` recomputes every link from the stored
    rows. Control and corrective events (resolver, reconciliation) are appended here too, so the chain covers them.

Waking
    An ``AFTER INSERT`` statement trigger sends ``NOTIFY statekeeper_events``; :class:`LogWaiter` turns that into
    a wake-up, with polling as the guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from statekeeper import statements
from statekeeper.audit.chain import GENESIS, link_hash
from statekeeper.database import connect
from statekeeper.errors import DatabaseError, StatekeeperError, UnknownAccount
from statekeeper.events import EncodedEvent, Event, RejectedFrame, StoredEvent, encode_events
from statekeeper.schema import NOTIFY_CHANNEL

logger = logging.getLogger(__name__)

#: Errors that mean "the database is not reachable right now": the caller may retry the same batch.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # The server ended the connection while the client protocol was mid-operation: unusable, like the others.
    asyncpg.InternalClientError,
)


_LISTEN_ERRORS: tuple[type[BaseException], ...] = (DatabaseError, *CONNECTION_ERRORS)


class EventLogUnavailable(DatabaseError):
    """The event log's database is not reachable; nothing of the batch was stored, and it may be retried."""


class EventLogError(StatekeeperError):
    """The event log was used in a way that could break its guarantees."""


class CheckpointError(StatekeeperError):
    """A projector checkpoint would move backwards."""


class AppendOutcome(StrEnum):
    APPENDED = "appended"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What happened to each event of a batch, in the batch's order.

    ``positions[i]`` is the log position of event ``i``: its new position when appended, the position of the
    stored event with the same key when it was a duplicate or a conflict.
    """

    outcomes: tuple[AppendOutcome, ...]
    positions: tuple[int, ...]

    @property
    def appended(self) -> int:
        return self.outcomes.count(AppendOutcome.APPENDED)

    @property
    def duplicates(self) -> int:
        return self.outcomes.count(AppendOutcome.DUPLICATE)

    @property
    def conflicts(self) -> int:
        return self.outcomes.count(AppendOutcome.CONFLICT)

    @property
    def last_position(self) -> int | None:
        """The highest position this batch appended, or None if it appended nothing."""
        appended = [p for o, p in zip(self.outcomes, self.positions, strict=True) if o is AppendOutcome.APPENDED]
        return max(appended, default=None)


def _event_columns(rows: Sequence[EncodedEvent]) -> list[list[Any]]:
    """The rows as one list per column, for the statements that take arrays (``unnest``)."""
    return [list(column) for column in zip(*(copy_record(r) for r in rows), strict=True)]


def copy_record(row: EncodedEvent) -> tuple[Any, ...]:
    """The message's columns of one row, in the order of :data:`statements.COPY_COLUMNS`."""
    return (row.account, row.venue, row.session, row.seq, row.key, row.kind, row.snapshot, row.source,
            row.venue_time, row.received_at, row.payload, row.raw, row.content_hash)  # fmt: skip


def chain_link(previous: bytes, row: EncodedEvent) -> bytes:
    """The event's link in its account's hash chain, after the account's link ``previous``."""
    return link_hash(previous, account=row.account, venue=row.venue, session=row.session, seq=row.seq, key=row.key,
                     kind=row.kind, snapshot=row.snapshot, source=row.source, venue_time=row.venue_time,
                     received_at=row.received_at, raw=row.raw, content_hash=row.content_hash)  # fmt: skip


def stored_event(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        id=row["id"],
        account=row["account"],
        venue=row["venue"],
        session=row["session"],
        seq=row["seq"],
        key=row["event_key"],
        kind=row["kind"],
        snapshot=row["snapshot"],
        source=row["source"],
        venue_time=row["venue_time"],
        received_at=row["received_at"],
        payload=row["payload"],
        raw=row["raw"],
        content_hash=bytes(row["content_hash"]),
        appended_at=row["appended_at"],
    )


class PostgresEventLog:
    """Append to and read from the ``events`` table through a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._appending: set[asyncpg.Connection] = set()
        """Connections inside :meth:`appending`: they hold the append lock already."""

    @asynccontextmanager
    async def _connection(self, connection: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        try:
            if connection is not None:
                yield connection
            else:
                async with self.pool.acquire() as acquired:
                    yield acquired
        except CONNECTION_ERRORS as exc:
            raise EventLogUnavailable(f"the event log is unavailable: {exc}") from exc

    # ------------------------------------------------------------------------------------------ append

    async def append(
        self,
        events: Sequence[Event | EncodedEvent],
        *,
        connection: asyncpg.Connection | None = None,
    ) -> AppendResult:
        """Append a batch in one transaction: the caller's, if ``connection`` is inside one (no savepoint: an error
        aborts it, and the batch is stored or not with the rest of it), else its own.

        Events are encoded first, so an event that cannot be stored raises :class:`InvalidEvent` before the
        database is touched. If the database cannot be reached, :class:`EventLogUnavailable` is raised and
        nothing of the batch is stored.
        """
        rows = encode_events(events)
        if not rows:
            return AppendResult((), ())
        async with self._connection(connection) as conn:
            if conn.is_in_transaction():  # a savepoint would cost two round trips, and the caller's commit decides
                return await self._append_rows(conn, rows)
            async with self.appending(conn):
                return await self._append_rows(conn, rows)

    @asynccontextmanager
    async def appending(self, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on ``conn`` that takes the append lock with its ``BEGIN``, in one round trip
        (:data:`statements.BEGIN_APPENDING`), for a caller that appends and writes other rows in one transaction:
        :meth:`append` inside it (``connection=conn``) does not take the lock again. Committed on exit, rolled back
        on an error.

        The lock serialises every appender until the commit, so keep the transaction to the writes. ``conn`` must not
        be in a transaction already; no ``conn.transaction()`` may be opened inside this one (it was not begun by
        asyncpg's own transaction manager).
        """
        await conn.execute(statements.BEGIN_APPENDING)
        self._appending.add(conn)
        try:
            yield conn
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, *CONNECTION_ERRORS):
                    await conn.execute("ROLLBACK")  # else the pool's reset rolls it back
            raise
        finally:
            self._appending.discard(conn)
        await conn.execute("COMMIT")

    async def _append_rows(self, conn: asyncpg.Connection, rows: list[EncodedEvent]) -> AppendResult:
        # Only the first event with a given key is sent; later ones in the batch compare with it.
        first: dict[tuple[str, str], int] = {}
        for index, row in enumerate(rows):
            first.setdefault((row.account, row.key), index)
        unique = list(first.values())

        if conn not in self._appending:  # in a transaction of the caller's: lock, and check its isolation level
            lock = await conn.fetchrow(statements.TAKE_APPEND_LOCK)
            if lock["isolation"] != "read committed":
                raise EventLogError(
                    f"appends need READ COMMITTED isolation, not {lock['isolation']}: under a longer-lived snapshot "
                    "the duplicate check could miss an event committed by another appender"
                )
        accounts = sorted({row.account for row in rows})
        probe = await conn.fetch(
            statements.PROBE_KEYS, [rows[i].account for i in unique], [rows[i].key for i in unique], accounts
        )
        head = next(r["head"] for r in probe if not r["tip"])
        stored = {(r["account"], r["event_key"]): (r["id"], bytes(r["content_hash"])) for r in probe if r["id"]}
        new = [i for i in unique if (rows[i].account, rows[i].key) not in stored]
        if new:
            links = {r["account"]: bytes(r["chain_hash"] or GENESIS) for r in probe if r["tip"]}
            records = []
            for i in new:  # the order given is log order: each row links to the one before it in its account
                link = links[rows[i].account] = chain_link(links[rows[i].account], rows[i])
                records.append((*copy_record(rows[i]), link))
            for i, position in zip(new, await self._insert(conn, records, head), strict=True):
                stored[(rows[i].account, rows[i].key)] = (position, rows[i].content_hash)

        appended_now = set(new)
        outcomes: list[AppendOutcome] = []
        positions: list[int] = []
        conflicting: dict[tuple[str, str, bytes], tuple[int, int, int]] = {}  # -> (row index, stored id, count)
        for index, row in enumerate(rows):
            stored_id, stored_hash = stored[(row.account, row.key)]
            positions.append(stored_id)
            if index in appended_now:
                outcomes.append(AppendOutcome.APPENDED)
            elif stored_hash == row.content_hash:
                outcomes.append(AppendOutcome.DUPLICATE)
            else:
                outcomes.append(AppendOutcome.CONFLICT)
                identity = (row.account, row.key, row.content_hash)
                first_index, _, count = conflicting.get(identity, (index, stored_id, 0))
                conflicting[identity] = (first_index, stored_id, count + 1)
        if conflicting:
            await self._record_conflicts(conn, rows, conflicting)
        return AppendResult(outcomes=tuple(outcomes), positions=tuple(positions))

    @staticmethod
    async def _insert(conn: asyncpg.Connection, records: list[tuple[Any, ...]], head: int) -> list[int]:
        """Insert the rows (:data:`statements.APPEND_COLUMNS`, in log order); their positions, in the same order."""
        if len(records) < statements.COPY_FROM_ROWS:
            columns = [list(column) for column in zip(*records, strict=True)]
            positions = [r["id"] for r in await conn.fetch(statements.INSERT_EVENTS, *columns)]
            if positions != sorted(positions) or positions[0] <= head:
                raise EventLogError(f"the positions given to an append are out of log order: {positions}")
            return positions
        await conn.copy_records_to_table("events", records=records, columns=statements.APPEND_COLUMNS)
        copied: list[int] = [r["id"] for r in await conn.fetch(statements.READ_BACK_APPENDED, head)]
        if len(copied) != len(records):
            raise EventLogError(
                f"{len(records)} events were appended after position {head} but {len(copied)} are there: "
                "something inserted into events without taking the append lock"
            )
        return copied

    async def _record_conflicts(
        self,
        conn: asyncpg.Connection,
        rows: list[EncodedEvent],
        conflicting: dict[tuple[str, str, bytes], tuple[int, int, int]],
    ) -> None:
        """Keep every message whose key was taken by different content, counted per distinct content."""
        chosen = [rows[first] for first, _, _ in conflicting.values()]
        await conn.fetch(
            statements.RECORD_CONFLICTS,
            [stored_id for _, stored_id, _ in conflicting.values()],
            [count for _, _, count in conflicting.values()],
            *_event_columns(chosen),
        )
        for row in chosen:
            logger.warning(
                "conflicting content for event key %s of account %s: recorded in event_conflicts",
                row.key,
                row.account,
                extra={"action": "event_conflict", "account": row.account, "session": row.session},
            )

    async def reject(
        self, frames: Sequence[RejectedFrame], *, connection: asyncpg.Connection | None = None
    ) -> list[int]:
        """Store frames that could not become events, with their reasons. Returns their ids."""
        if not frames:
            return []
        async with self._connection(connection) as conn:
            records = await conn.fetch(
                statements.INSERT_REJECTED_FRAMES,
                [f.account for f in frames],
                [f.venue for f in frames],
                [f.session for f in frames],
                [f.seq for f in frames],
                [f.source.value for f in frames],
                [f.received_at for f in frames],
                [f.reason for f in frames],
                [f.raw for f in frames],
            )
        return [r["id"] for r in records]

    # -------------------------------------------------------------------------------------------- read

    async def read(
        self,
        after: int,
        *,
        limit: int = 1000,
        accounts: Sequence[str] | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> list[StoredEvent]:
        """The events at positions greater than ``after``, in log order, at most ``limit`` of them.

        Safe against late commits: no event at a position at or below the last one returned can appear later.
        """
        async with self._connection(connection) as conn:
            if accounts is None:
                records = await conn.fetch(statements.READ_AFTER, after, limit)
            else:
                records = await conn.fetch(statements.READ_AFTER_FOR_ACCOUNTS, list(accounts), after, limit)
        return [stored_event(r) for r in records]

    async def head(self, *, connection: asyncpg.Connection | None = None) -> int:
        """The highest log position committed so far (0 for an empty log)."""
        async with self._connection(connection) as conn:
            return int(await conn.fetchval(statements.HEAD))

    async def tail(
        self,
        after: int,
        *,
        waiter: LogWaiter,
        batch_size: int = 1000,
        accounts: Sequence[str] | None = None,
    ) -> AsyncIterator[list[StoredEvent]]:
        """Follow the log from ``after``: yield each batch of new events in order, forever.

        Waits on NOTIFY between batches, and polls every ``waiter.poll_interval`` seconds in any case.
        """
        position = after
        while True:
            waiter.clear()
            batch = await self.read(position, limit=batch_size, accounts=accounts)
            if batch:
                position = batch[-1].id
                yield batch
                if len(batch) == batch_size:
                    continue
            await waiter.wait()


# ------------------------------------------------------------------------------------------ checkpoints


async def get_checkpoint(conn: asyncpg.Connection, *, name: str, account: str) -> int:
    """The last log position projector ``name`` applied for ``account`` (0 if it never ran)."""
    value = await conn.fetchval(statements.GET_CHECKPOINT, account, name)
    return int(value) if value is not None else 0


async def advance_checkpoint(conn: asyncpg.Connection, *, name: str, account: str, position: int) -> None:
    """Record ``position`` as applied. Call it in the same transaction as the rows it covers (invariant 5)."""
    if await conn.fetchval(statements.ADVANCE_CHECKPOINT, account, name, position) is None:
        raise CheckpointError(
            f"checkpoint {name!r} of account {account!r} would move backwards to {position}: "
            "an event would be applied twice"
        )


# -------------------------------------------------------------------------------------------- waking


async def accounts_in_log(conn: asyncpg.Connection) -> list[str]:
    """Every account with events in the log, in order."""
    return [r["account"] for r in await conn.fetch(statements.ACCOUNTS_IN_LOG)]


async def chosen_accounts(conn: asyncpg.Connection, accounts: Sequence[str] | None) -> list[str]:
    """The accounts a command names (sorted, each once), each checked to have events in the log (a mistyped name
    is :class:`UnknownAccount`, not an empty success); none named: every account in the log."""
    if not accounts:
        return await accounts_in_log(conn)
    for account in accounts:
        if not await conn.fetchval(statements.ACCOUNT_HEAD, account):
            raise UnknownAccount(f"account {account!r} has no events in the log")
    return sorted(set(accounts))


class LogWaiter:
    """Wakes a reader when events are appended (LISTEN/NOTIFY), and after ``poll_interval`` in any case.

    NOTIFY only wakes readers up; polling is the guarantee. If the listening connection is lost (a database
    restart), the waiter falls back to polling and listens again on the next wait.
    """

    def __init__(self, url: str, *, poll_interval: float = 1.0) -> None:
        self.url = url
        self.poll_interval = poll_interval
        self._event = asyncio.Event()
        self._connection: asyncpg.Connection | None = None

    def _notified(self, *_: object) -> None:
        self._event.set()

    async def _ensure_listening(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            return
        self._connection = None
        connection: asyncpg.Connection | None = None
        try:
            connection = await connect(self.url)
            await connection.add_listener(NOTIFY_CHANNEL, self._notified)
        except BaseException as exc:
            # Not listening: this connection is of no use (and a wait cancelled here must not leak it).
            if connection is not None:
                connection.terminate()
            if not isinstance(exc, _LISTEN_ERRORS):
                raise
            logger.warning(
                "cannot listen for new events, polling every %.1f s: %s",
                self.poll_interval,
                exc,
                extra={"action": "listen_failed"},
            )
            return
        self._connection = connection
        # Anything appended before LISTEN took effect is found by the read that follows this wait.
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    @property
    def notified(self) -> bool:
        """Whether a notification came (or listening began) since the last :meth:`clear`."""
        return self._event.is_set()

    async def wait(self) -> bool:
        """Wait for a notification or the poll interval. Returns True if woken by a notification."""
        await self._ensure_listening()
        try:
            await asyncio.wait_for(self._event.wait(), self.poll_interval)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.close(timeout=5)
            except CONNECTION_ERRORS:
                connection.terminate()

    async def __aenter__(self) -> LogWaiter:
        await self._ensure_listening()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
