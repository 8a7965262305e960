"""Projector workers: follow the log and keep every account's projection tables current.

Every account in the log is projected, whoever ingests it. A worker applies one account's events in order, in
batches, each batch committed with its checkpoint in one statement
(:func:`statekeeper.projections.store.apply_batch`). It wakes on ``NOTIFY`` and polls as the guarantee.

Dividing the accounts. Workers, in one process or several, divide the accounts between them:

* each worker holds a *slot*: a session-level advisory lock ``(21326, n)``, the lowest ``n`` free; the slots held
  in the database (``pg_locks``) are the live workers;
* an account belongs to the live slot that ranks highest for it (rendezvous hashing), so accounts spread evenly
  and only the accounts of a worker that comes or goes move;
* a worker projects an account only while it holds the account's advisory lock ``(21325, hashtext(account))``,
  taken when the account becomes its own and released when it no longer is; a worker that dies loses its locks
  with its connection, and the next rebalance (every ``rebalance_interval_seconds``) gives its accounts away.

None of this is what makes projection exactly-once: the checkpoint's compare-and-set in the statement that commits
a batch is (:mod:`statekeeper.projections.store`). Two workers that ever raced for one account would apply its
events one after the other, never twice. The claims only keep them from doing the same work twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from statekeeper import statements
from statekeeper.config import ProjectorSettings
from statekeeper.database import connect, is_transient
from statekeeper.errors import DatabaseError
from statekeeper.eventlog import CONNECTION_ERRORS, LogWaiter
from statekeeper.ingest.backoff import Backoff
from statekeeper.logs import log_context
from statekeeper.projections import store
from statekeeper.projections.fold import FoldEvent

logger = logging.getLogger(__name__)

MAX_SLOTS = 1024

TAKE_SLOT = "SELECT pg_try_advisory_lock(21326, $1)"
LIVE_SLOTS = """
SELECT objid::int AS slot FROM pg_locks
WHERE locktype = 'advisory' AND classid = 21326 AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY slot
"""
TRY_CLAIM = "SELECT pg_try_advisory_lock(21325, hashtext($1))"
RELEASE = "SELECT pg_advisory_unlock(21325, hashtext($1))"

STATEMENTS: dict[str, str] = {
    "take_slot": TAKE_SLOT,
    "live_slots": LIVE_SLOTS,
    "try_claim": TRY_CLAIM,
    "release": RELEASE,
}

_ERRORS: tuple[type[BaseException], ...] = (DatabaseError, asyncpg.PostgresError, *CONNECTION_ERRORS)

_READ_AHEAD_ERRORS: tuple[type[BaseException], ...] = (*_ERRORS, ValueError, KeyError)

LAG_INTERVAL_SECONDS = 1.0
"""How often a worker counts its accounts' lag in the database for ``/metrics``, whatever its batches are doing: a
projector that is stalled (a lock, a slow statement) or whose batches fail shows its lag growing."""

RETRY_MAX_SECONDS = 30.0
"""The longest pause before a worker that lost the database tries again (:class:`Backoff` from the poll interval:
a random pause whose ceiling doubles, so that workers that lost the database together do not return together)."""


def _permanent(exc: BaseException) -> bool:
    """Whether a database error is one that trying again cannot cure: the server's answer that blames the login
    (a privilege), the schema (a table not there) or a bug, not the moment (:func:`is_transient`)."""
    return isinstance(exc, asyncpg.PostgresError) and not is_transient(exc)


def owner_of(account: str, slots: Collection[int]) -> int | None:
    """The slot an account belongs to (rendezvous hashing): stable, and evenly spread."""

    def rank(slot: int) -> bytes:
        return hashlib.blake2b(f"{slot}\x00{account}".encode(), digest_size=8).digest()

    return max(slots, key=rank, default=None)


async def _take_slot(connection: asyncpg.Connection) -> int:
    for slot in range(MAX_SLOTS):
        if await connection.fetchval(TAKE_SLOT, slot):
            return slot
    raise DatabaseError(f"all {MAX_SLOTS} projector slots are taken")


class ProjectorMetrics:
    """The projectors' Prometheus metrics (on the daemon's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self.applied = Counter(
            "statekeeper_projector_events", "Events applied to the projection tables", ["account"], registry=r
        )
        self.rows = Counter("statekeeper_projector_rows", "Projection rows written or removed", ["account"], registry=r)
        self.batch_seconds = Histogram(
            "statekeeper_projector_batch_seconds", "Time to apply one batch (read, load, fold, commit)", ["account"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r,
        )  # fmt: skip
        self.visible_seconds = Histogram(
            "statekeeper_projector_visible_seconds", "From an event's receipt to its projection rows' commit",
            ["account"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0),
            registry=r,
        )  # fmt: skip
        self.lag_events = Gauge(
            "statekeeper_projector_lag_events", "Events in the log not yet applied", ["account"], registry=r
        )
        self.lag_seconds = Gauge(
            "statekeeper_projector_lag_seconds", "Age of the oldest event not yet applied", ["account"], registry=r
        )
        self.accounts = Gauge("statekeeper_projector_accounts", "Accounts this worker projects", ["worker"], registry=r)
        self.errors = Counter("statekeeper_projector_errors", "Batches that failed (retried)", ["account"], registry=r)


class ProjectorWorker:
    """One worker. :meth:`run` until ``stop`` is set."""

    def __init__(
        self,
        url: str,
        pool: asyncpg.Pool,
        *,
        settings: ProjectorSettings,
        stop: asyncio.Event,
        metrics: ProjectorMetrics | None = None,
        name: str = "projector",
    ) -> None:
        self.url = url
        self.pool = pool
        self.settings = settings
        self.stop = stop
        self.metrics = metrics
        self.name = name
        self.slot: int | None = None
        self.held: set[str] = set()
        """The accounts this worker projects now."""
        self.known: set[str] = set()
        self.error: str | None = None
        """The last database error, while the worker cannot reach the database."""
        self.failing: dict[str, str] = {}
        """Accounts whose last batch failed, and why."""
        self._locks: asyncpg.Connection | None = None
        self._applier: asyncpg.Connection | None = None
        """The connection batches are applied on: the worker's own (a pool's would cost a reset per batch)."""
        self._reader: asyncpg.Connection | None = None
        """The connection the next batch of a backlog is read on, while the applier folds and commits one."""
        self._ahead: tuple[str, int, asyncio.Task[list[FoldEvent] | None]] | None = None
        """The read-ahead under way, if any: (account, the position its events follow, the task reading them)."""
        self._checkpoints: dict[str, store.Checkpoint] = {}
        """Each held account's checkpoint as this worker's last batch left it."""
        self._pending: set[str] = set()
        self._caught_up_count: dict[str, int] = {}
        """How many times each account's batches found it caught up: a lag count begun before the last of them is
        out of date."""
        self._next_rebalance = 0.0
        self._next_look = 0.0
        self._cursor = 0
        self._applied: dict[str, int] = {}
        """Each held account's checkpoint as this worker last moved it."""
        self._poked: set[str] = set()
        self._poke = asyncio.Event()
        self._statistics = store.Statistics()

    # --------------------------------------------------------------------------------------------- run

    def poke(self, account: str) -> None:
        """Events of ``account`` were just committed in this process: apply them now, without waiting for the
        ``NOTIFY`` to come back and the log to be searched for the accounts it concerns (the in-process fast path;
        NOTIFY and polling remain the guarantee)."""
        self._poked.add(account)
        self._poke.set()

    async def run(self) -> None:
        poll = self.settings.poll_interval_seconds
        waiter = LogWaiter(self.url, poll_interval=poll)
        retry = Backoff(initial=poll, maximum=max(poll, RETRY_MAX_SECONDS))
        lag = asyncio.create_task(self._watch_lag(), name=f"{self.name}-lag")
        try:
            async with waiter:
                while not self.stop.is_set():
                    try:
                        await self._look(waiter)
                        await self._catch_up(waiter)
                        self.error = None
                        retry.reset()
                    except _ERRORS as exc:
                        if _permanent(exc):
                            raise DatabaseError(f"projector {self.name}: {type(exc).__name__}: {exc}") from exc
                        self._lost(exc)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.stop.wait(), retry.next_delay())
                        continue
                    if self.stop.is_set():
                        break
                    await self._wait(waiter)
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            await self._close()

    async def _look(self, waiter: LogWaiter) -> None:
        """Take in what happened since the last look: a rebalance when one is due; the accounts with new events,
        when events were notified, the poll interval has passed, or a poke named an account not known yet; the
        accounts poked."""
        poked, self._poked = self._poked, set()
        self._poke.clear()
        await self._connection()
        now = time.monotonic()
        if now >= self._next_rebalance:
            self._next_rebalance = now + self.settings.rebalance_interval_seconds
            await self._rebalance()
        if waiter.notified or now >= self._next_look or not poked <= self.known:
            self._next_look = now + self.settings.poll_interval_seconds
            waiter.clear()  # what was notified until now, the look at the log below covers
            await self._discover()
        self._pending.update(poked & self.held)

    async def _wait(self, waiter: LogWaiter) -> None:
        """Until a notification, the poll interval, a poke or the stop."""
        wake = asyncio.ensure_future(waiter.wait())
        stopping = asyncio.ensure_future(self.stop.wait())
        poked = asyncio.ensure_future(self._poke.wait())
        try:
            await asyncio.wait({wake, stopping, poked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (wake, stopping, poked):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                await wake

    # -------------------------------------------------------------------------------------- accounts

    async def _connection(self) -> asyncpg.Connection:
        """The connection that holds this worker's slot and account claims; a new one, if that was lost (and with
        it the claims): then a rebalance is due at once, to claim the accounts again."""
        if self._locks is None or self._locks.is_closed():
            self._locks = None
            self.held.clear()
            self.slot = None
            self._next_rebalance = 0.0
            connection = await connect(self.url)
            try:
                self.slot = await _take_slot(connection)
                # Where this worker starts following the log; every account it takes is caught up from its
                # checkpoint anyway, so nothing before this position is missed.
                self._cursor = int(await connection.fetchval(statements.HEAD))
                self.known = {r["account"] for r in await connection.fetch(store.ALL_ACCOUNTS)}
            except BaseException:
                connection.terminate()
                raise
            self._locks = connection
            logger.info("projector %s holds slot %d", self.name, self.slot, extra={"action": "projector_slot"})
        return self._locks

    async def _rebalance(self) -> None:
        """Take the accounts that belong to this worker's slot, and give back the ones that no longer do."""
        connection = await self._connection()
        slots = [r["slot"] for r in await connection.fetch(LIVE_SLOTS)]
        for account in sorted(self.known):
            ours = owner_of(account, slots) == self.slot
            if ours and account not in self.held:
                if await connection.fetchval(TRY_CLAIM, account):
                    self.held.add(account)
                    self._pending.add(account)
                    await store.ensure_checkpoint(connection, account)
                    logger.info("projecting account %s", account,
                                extra={"action": "projector_claimed", "account": account})  # fmt: skip
            elif not ours and account in self.held:
                await connection.fetchval(RELEASE, account)
                self.held.discard(account)
                self._pending.discard(account)
                self._checkpoints.pop(account, None)
                self._drop_read_ahead(account)
                self._forget_lag(account)
                logger.info("handing account %s to another worker", account,
                            extra={"action": "projector_released", "account": account})  # fmt: skip
        # An account whose last batch failed is tried again at each rebalance, new events or not.
        self._pending.update(a for a in self.failing if a in self.held)
        if self.metrics is not None:
            self.metrics.accounts.labels(self.name).set(len(self.held))

    async def _discover(self) -> None:
        """Which accounts have events since the last look; new accounts trigger a rebalance to be claimed."""
        connection = await self._connection()
        found = await connection.fetch(store.ACCOUNTS_SINCE, self._cursor)
        new = False
        for record in found:
            account = record["account"]
            self._cursor = max(self._cursor, record["head"])
            if account not in self.known:
                self.known.add(account)
                new = True
            if account in self.held and record["head"] > self._applied.get(account, 0):
                self._pending.add(account)
        if new:
            await self._rebalance()

    # -------------------------------------------------------------------------------------- applying

    async def _catch_up(self, waiter: LogWaiter) -> None:
        """Apply every pending account's events, one batch per account in turn, until none is pending. Between
        turns, what happened meanwhile is taken in (:meth:`_look`): an account with new events joins the turns
        rather than wait for a long backlog of another to be applied."""
        while self._pending and not self.stop.is_set():
            turn = sorted(self._pending)
            for index, account in enumerate(turn):
                if self.stop.is_set():
                    return
                if account not in self.held:
                    self._pending.discard(account)
                    continue
                if not await self._step(account, following=turn[(index + 1) % len(turn)]):
                    self._pending.discard(account)
            if self._pending:
                await self._look(waiter)

    async def _step(self, account: str, *, following: str | None = None) -> bool:
        """One batch of one account; True if more events are waiting. ``following``: the account whose batch comes
        next (its events are read meanwhile).

        A batch that fails for any reason but a lost connection is rolled back and tried again when the account's
        next events arrive, and at each rebalance; the account waits meanwhile (its lag shows it, and ``failing``
        says why), and the other accounts go on.
        """
        started = time.perf_counter()
        with log_context(account=account):
            try:
                if self._applier is None or self._applier.is_closed():
                    self._applier = await store.connect_applier(self.url)
                read = await self._read_ahead_of(account)
                if following not in (None, account) and following in self._checkpoints:
                    self._read_ahead(following, self._checkpoints[following].position)
                result = await store.apply_batch(
                    self._applier, account, limit=self.settings.batch_size, read=read,
                    read_ahead=functools.partial(self._read_ahead, account) if following == account else None,
                )  # fmt: skip
            except (asyncpg.PostgresConnectionError, *CONNECTION_ERRORS):
                raise
            except Exception as exc:
                self.failing[account] = f"{type(exc).__name__}: {exc}"
                if self.metrics is not None:
                    self.metrics.errors.labels(account).inc()
                logger.exception("projecting account %s failed; it is tried again at the next rebalance", account,
                                 extra={"action": "projector_failed"})  # fmt: skip
                return False
        self.failing.pop(account, None)
        self._applied[account] = result.position
        self._checkpoints[account] = result.checkpoint
        if result.rows:
            try:
                await self._statistics.refresh(self._applier)
            except asyncpg.PostgresConnectionError:
                raise
            except asyncpg.PostgresError as exc:  # the batch is committed: only the planner's figures are missing
                logger.warning("could not analyze the projection tables: %s", exc,
                               extra={"action": "projections_analyze_failed"})  # fmt: skip
        self._observe(result, time.perf_counter() - started)
        return result.full

    # A backlog is applied batch after batch, and each batch's read (the server's work, then the parsing of its
    # events here) would wait for the previous batch's fold and commit. So the next batch's events are read on a
    # second connection meanwhile: the next pending account's, after the checkpoint this worker's last batch of it
    # left, or, when one account is pending, the events after its batch under way if that batch is full. The next
    # batch starts from them and that checkpoint; its commit compares with the checkpoint, so a checkpoint moved by
    # anything else meanwhile only means the batch is read again. One read-ahead at a time.

    def _read_ahead(self, account: str, after: int) -> None:
        if self._ahead is not None or self.stop.is_set():
            return
        task = asyncio.get_running_loop().create_task(self._read_events(account, after))
        self._ahead = (account, after, task)

    async def _read_events(self, account: str, after: int) -> list[FoldEvent] | None:
        try:
            if self._reader is None or self._reader.is_closed():
                self._reader = await store.connect_applier(self.url)
            return await store.read_events(self._reader, account, after=after, limit=self.settings.batch_size)
        except _READ_AHEAD_ERRORS as exc:  # the applier reads the batch instead; a fault shows there
            logger.debug("reading ahead for account %s failed: %s", account, exc,
                         extra={"action": "projector_read_ahead_failed", "account": account})  # fmt: skip
            if self._reader is not None and not isinstance(exc, (asyncpg.PostgresError, ValueError, KeyError)):
                self._reader.terminate()  # a connection fault: in whatever state it left the connection
                self._reader = None
            return None

    async def _read_ahead_of(self, account: str) -> tuple[store.Checkpoint, list[FoldEvent]] | None:
        """The events read ahead for ``account``, with its checkpoint, if they follow it."""
        if self._ahead is None or self._ahead[0] != account:
            return None
        _, after, task = self._ahead
        self._ahead = None
        events = await task
        checkpoint = self._checkpoints.get(account)
        if not events or checkpoint is None or checkpoint.position != after:
            return None
        return checkpoint, events

    def _drop_read_ahead(self, account: str | None = None) -> None:
        """Forget the read-ahead (of ``account``, or whichever)."""
        if self._ahead is not None and account in (None, self._ahead[0]):
            self._ahead[2].cancel()
            self._ahead = None

    def _observe(self, result: store.BatchResult, seconds: float) -> None:
        if self.metrics is None:
            return
        account = result.account
        if not result.full:  # nothing was waiting after this batch's events
            self._caught_up_count[account] = self._caught_up_count.get(account, 0) + 1
            self._set_lag(account, 0, 0.0)
        if result.events == 0:
            return
        m = self.metrics
        m.applied.labels(account).inc(result.events)
        m.rows.labels(account).inc(result.rows)
        m.batch_seconds.labels(account).observe(seconds)
        if result.oldest_received_at is not None:
            visible = (datetime.now(UTC) - result.oldest_received_at).total_seconds()
            m.visible_seconds.labels(account).observe(max(0.0, visible))

    # Lag in /metrics: a batch that found nothing more waiting sets its account's to 0 at once; the rest of the time
    # (a backlog, a stalled or failing batch, an account claimed) it is counted in the database every
    # LAG_INTERVAL_SECONDS, for the accounts this worker holds; an account it no longer holds has no lag series here.

    async def _watch_lag(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), LAG_INTERVAL_SECONDS)
            if not self.stop.is_set():
                await self._count_lag()

    async def _count_lag(self) -> None:
        accounts = sorted(self.held)
        if self.metrics is None or not accounts:
            return
        counted = {account: self._caught_up_count.get(account, 0) for account in accounts}
        try:
            async with self.pool.acquire() as conn:
                records = await conn.fetch(store.LAG, accounts, store.CHECKPOINT)
        except _ERRORS as exc:  # the worker's own statements meet the fault and report it
            logger.debug("counting the projector lag failed: %s", exc, extra={"action": "projector_lag_failed"})
            return
        now = datetime.now(UTC)
        for record in records:
            account = record["account"]
            if account not in self.held or self._caught_up_count.get(account, 0) != counted[account]:
                continue  # handed away meanwhile, or a batch found it caught up after this count began
            oldest = record["oldest"]
            self._set_lag(account, record["events"], (now - oldest).total_seconds() if oldest is not None else 0.0)

    def _set_lag(self, account: str, events: int, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.lag_events.labels(account).set(events)
            self.metrics.lag_seconds.labels(account).set(max(0.0, seconds))

    def _forget_lag(self, account: str) -> None:
        self._caught_up_count.pop(account, None)
        if self.metrics is not None:
            for gauge in (self.metrics.lag_events, self.metrics.lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(account)

    # -------------------------------------------------------------------------------------- shutdown

    def _lost(self, exc: BaseException) -> None:
        self.error = str(exc)
        logger.warning("projector %s lost the database (%s); its accounts are taken again when it is back",
                       self.name, exc, extra={"action": "projector_database_lost"})  # fmt: skip
        self._drop_read_ahead()
        for connection in (self._locks, self._applier, self._reader):
            if connection is not None:
                connection.terminate()
        self._locks = self._applier = self._reader = None
        for account in self.held:
            self._forget_lag(account)
        self.held.clear()
        self._pending.clear()
        self._checkpoints.clear()

    async def _close(self) -> None:
        if self._ahead is not None:
            reading = self._ahead[2]
            self._drop_read_ahead()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        for connection in (self._applier, self._reader, self._locks):
            if connection is None:
                continue
            try:
                await connection.close(timeout=5)
            except _ERRORS:
                connection.terminate()
        self._locks = self._applier = self._reader = None
        self.held.clear()
