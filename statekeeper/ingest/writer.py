"""The writer between an account's stream and the event log: a bounded buffer, drained in growing batches.

Frames are parsed and encoded where they arrive and handed to :meth:`AccountWriter.submit`, which never blocks
(so the socket keeps being read and the venue's pings keep being answered). One task per account writes what is
buffered, in arrival order, through :meth:`PostgresEventLog.append` in one transaction per batch: at a low rate
each frame is its own batch and is durable within milliseconds; under load the batch is whatever arrived during
the previous write, so batches grow with the load.

The buffer's ``bound`` is not a hard limit: :attr:`AccountWriter.full` tells the stream to give up its session
(closed with reason ``backpressure``, resynced later), and the few frames still in flight after that are kept
too. Nothing submitted is dropped: while PostgreSQL is down the batch is retried with backoff, and a retried batch whose
first commit was in fact done changes no event (appends are idempotent, session rows are upserts); only a
``RejectedFrame`` item, which has no key, could then be stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from statekeeper import statements
from statekeeper.database import error_class, is_transient
from statekeeper.eventlog import CONNECTION_ERRORS, AppendOutcome, EventLogUnavailable, PostgresEventLog
from statekeeper.events import EncodedEvent, RejectedFrame, Source
from statekeeper.ingest.metrics import IngestMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionOpen:
    """A ``stream_sessions`` row to insert."""

    account: str
    session: UUID
    venue: str
    transport: str
    url: str | None
    owner: str
    opened_at: datetime


@dataclass(frozen=True, slots=True)
class SessionClose:
    """A ``stream_sessions`` row to close."""

    account: str
    session: UUID
    closed_at: datetime
    reason: str
    detail: str | None
    last_seq: int | None


WriteItem = EncodedEvent | RejectedFrame | SessionOpen | SessionClose

_DATA_ERRORS = ("22", "23")
"""SQLSTATE classes that blame the data (data exception, integrity violation): the item is set aside."""


def _data_error(exc: asyncpg.PostgresError) -> bool:
    return error_class(exc) in _DATA_ERRORS


def _raise_if_transient(exc: asyncpg.PostgresError) -> None:
    """A transient refusal (:func:`statekeeper.database.is_transient`) becomes :class:`EventLogUnavailable` (the
    batch is retried). The caller re-raises anything else as is: a bug, for the supervisor to report."""
    if is_transient(exc):
        raise EventLogUnavailable(f"the database did not take the batch, will retry: {type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class _Pending:
    item: WriteItem
    submitted: float  # time.monotonic()


class WriterStopped(Exception):
    """The writer was stopped before everything submitted was stored."""


class AccountWriter:
    """Stores one account's items in the order they were submitted."""

    def __init__(
        self,
        log: PostgresEventLog,
        *,
        account: str,
        bound: int = 50_000,
        batch_size: int = 2_000,
        metrics: IngestMetrics | None = None,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        on_appended: Callable[[str], None] | None = None,
    ) -> None:
        self.log = log
        self.on_appended = on_appended
        """Called with the account once a batch that appended events has committed: the daemon wakes its own
        projectors with it at once (``NOTIFY`` and polling still wake every other reader)."""
        self.account = account
        self.bound = bound
        self.batch_size = batch_size
        self.metrics = metrics
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._pending: deque[_Pending] = deque()
        self._submitted = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._stopping = False
        self.failing_since: float | None = None
        """Monotonic time since when the database has been refusing batches (None when writes succeed)."""
        self.last_error: str | None = None
        self.last_stored: float | None = None
        """Monotonic time of the last successful write that stored an event."""
        if metrics is not None:
            metrics.track_account(account, lambda: self.last_stored, lambda: len(self._pending))

    # ----------------------------------------------------------------------------------------- producers

    def submit(self, item: WriteItem) -> None:
        """Queue an item for storing; never blocks, never refuses (see :attr:`full`)."""
        if self._stopping:
            raise WriterStopped(f"the writer of account {self.account!r} is stopping; nothing more is taken")
        self._pending.append(_Pending(item, time.monotonic()))
        self._submitted += 1
        self._wake.set()

    def submit_all(self, items: Sequence[WriteItem]) -> None:
        for item in items:
            self.submit(item)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """True when the buffer holds ``bound`` items or more: the stream should give up its session."""
        return len(self._pending) >= self.bound

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    async def flushed(self) -> None:
        """Wait until everything submitted so far is stored."""
        target = self._submitted
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def drained_below(self, level: int) -> None:
        """Wait until fewer than ``level`` items are waiting."""
        async with self._progress:
            await self._progress.wait_for(lambda: len(self._pending) < level)

    # ------------------------------------------------------------------------------------------- writing

    async def run(self) -> None:
        """Write batches until :meth:`stop` is called and everything submitted is stored (or cancelled)."""
        rng = random.Random()  # noqa: S311 - jitter, not cryptography
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(self.batch_size, len(self._pending)))]
            delay = self.retry_initial
            while True:
                try:
                    await self._write(batch)
                    break
                except EventLogUnavailable as exc:
                    self._failed(exc)
                    await asyncio.sleep(rng.uniform(delay / 2, delay))
                    delay = min(self.retry_max, delay * 2)
            for _ in batch:
                self._pending.popleft()
            if self.failing_since is not None:
                logger.info(
                    "the event log is reachable again; %d items were waiting",
                    len(self._pending) + len(batch),
                    extra={"action": "append_recovered", "account": self.account},
                )
                self.failing_since = None
                self.last_error = None
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()

    def stop(self) -> None:
        """Finish: store what is pending, then :meth:`run` returns. Nothing more may be submitted."""
        self._stopping = True
        self._wake.set()

    def _failed(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.append_errors.labels(self.account).inc()
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            logger.warning(
                "the event log is unavailable, %d items are buffered and will be retried: %s",
                len(self._pending),
                exc,
                extra={"action": "append_failed", "account": self.account},
            )
        self.last_error = str(exc)

    async def _write(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            async with self.log.pool.acquire() as conn:
                async with self.log.appending(conn):  # the BEGIN takes the append lock: one round trip less
                    counts = await self._write_items(conn, [p.item for p in batch])
                self._committed(counts)  # before the pool resets the connection: that is one more round trip
        except CONNECTION_ERRORS as exc:
            raise EventLogUnavailable(f"the event log is unavailable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            if not _data_error(exc):
                _raise_if_transient(exc)
                raise
            # Something in the batch is refused by the database: store the items one by one, so that only the
            # culprit is set aside (as a rejected frame, with the database's reason).
            counts = await self._write_one_by_one(batch)
        self._observe(batch, counts, time.perf_counter() - started)

    def _committed(self, counts: dict[str, int]) -> None:
        if counts.get("appended") and self.on_appended is not None:
            self.on_appended(self.account)

    async def _write_one_by_one(self, batch: list[_Pending]) -> dict[str, int]:
        """Each item in its own savepoint, all in one transaction: a retry after a lost commit sets nothing aside
        twice."""
        counts: dict[str, int] = {}
        try:
            async with self.log.pool.acquire() as conn:
                async with conn.transaction():
                    for pending in batch:
                        try:
                            async with conn.transaction():
                                done = await self._write_items(conn, [pending.item])
                        except asyncpg.PostgresError as exc:
                            if not _data_error(exc):
                                raise
                            done = await self._set_aside(conn, pending.item, exc)
                        for key, value in done.items():
                            counts[key] = counts.get(key, 0) + value
                self._committed(counts)
        except CONNECTION_ERRORS as exc:
            raise EventLogUnavailable(f"the event log is unavailable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            _raise_if_transient(exc)
            raise
        return counts

    async def _write_items(self, conn: asyncpg.Connection, items: list[WriteItem]) -> dict[str, int]:
        counts = {"appended": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
        index = 0
        while index < len(items):
            kind = type(items[index])
            end = index
            while end < len(items) and type(items[end]) is kind:
                end += 1
            group: list[Any] = items[index:end]
            if kind is EncodedEvent:
                result = await self.log.append(group, connection=conn)
                counts["appended"] += result.appended
                counts["duplicate"] += result.outcomes.count(AppendOutcome.DUPLICATE)
                counts["conflict"] += result.conflicts
            elif kind is RejectedFrame:
                await self.log.reject(group, connection=conn)
                counts["rejected"] += len(group)
            elif kind is SessionOpen:
                for row in group:
                    await conn.execute(statements.OPEN_SESSION, row.account, row.session, row.venue, row.transport,
                                       row.url, row.owner, row.opened_at)  # fmt: skip
            else:
                for row in group:
                    await conn.execute(statements.CLOSE_SESSION, row.account, row.session, row.closed_at, row.reason,
                                       row.detail, row.last_seq)  # fmt: skip
            index = end
        return counts

    async def _set_aside(self, conn: asyncpg.Connection, item: WriteItem, exc: asyncpg.PostgresError) -> dict[str, int]:
        """The database refused one item: keep an event as a rejected frame (same transaction); log a session row."""
        reason = f"the database refused it: {type(exc).__name__}: {exc}"[:500]
        logger.error(
            "the database refused a %s (%s); %s",
            type(item).__name__,
            getattr(item, "key", getattr(item, "session", "")),
            reason,
            extra={"action": "append_refused", "account": self.account},
        )
        if not isinstance(item, EncodedEvent):
            return {}
        frame = RejectedFrame(
            account=item.account,
            venue=item.venue,
            source=Source(item.source),
            received_at=item.received_at,
            reason=reason,
            raw=(item.raw or item.payload).encode(),
            session=item.session,
            seq=item.seq,
        )
        await self.log.reject([frame], connection=conn)
        return {"rejected": 1}

    def _observe(self, batch: list[_Pending], counts: dict[str, int], seconds: float) -> None:
        if counts.get("appended") or counts.get("duplicate"):
            self.last_stored = time.monotonic()
        metrics = self.metrics
        if metrics is None:
            return
        account = self.account
        metrics.append_seconds.labels(account).observe(seconds)
        metrics.batch_size.labels(account).observe(len(batch))
        now = time.monotonic()
        durable = metrics.durable_seconds.labels(account)
        for pending in batch:
            if isinstance(pending.item, EncodedEvent) and pending.item.source == Source.STREAM:
                durable.observe(now - pending.submitted)
        if counts.get("appended"):
            metrics.events_appended.labels(account).inc(counts["appended"])
        if counts.get("duplicate"):
            metrics.duplicates.labels(account).inc(counts["duplicate"])
        if counts.get("conflict"):
            metrics.conflicts.labels(account).inc(counts["conflict"])
        if counts.get("rejected"):
            metrics.rejected_frames.labels(account).inc(counts["rejected"])
