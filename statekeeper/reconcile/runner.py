"""One reconciliation pass of one account, and the periodic service of the ingest daemon. The I/O around
:mod:`statekeeper.reconcile.diff`.

A pass (:meth:`Reconciler.run_pass`):

1. *Rounds* (at most ``[reconcile] rounds``). Read the account's log head; fetch balances, positions, open orders
   (and the account summary where the venue has one) over REST with the venue driver the ingest daemon uses; wait
   the race window (not in the first, quick round); read the log head again and wait until the projector's
   checkpoint has reached it; read the projection (one ``REPEATABLE READ`` transaction: the checkpoint and the rows,
   so the comparison is at a known log position) and compare. Rows changed after the first head are *moving* and
   are examined again in the next round; a difference is confirmed when two settled rounds in a row find it
   (:class:`~statekeeper.reconcile.diff.Examination`). A clean account takes one quick round.
2. *Ledgers*: the venue's fills and funding payments of the last ``history_lookback_seconds`` (for the daemon's
   later passes: since a little before the newest item its last pass verified) must all be in ``fills`` and
   ``funding_payments``; one that is missing once the projector has passed the head read after the
   answer, and still missing after the race window twice, is a discrepancy.
3. *Heal* (``--heal`` or ``[reconcile] heal = true``), only once everything above succeeded: append a
   ``discrepancy`` event per discrepancy, a reconciliation snapshot event (source ``reconciliation``, key
   ``reconciliation:<run id>:<what>``) per kind of state that differs, built from the venue's last answer, and each
   missing ledger item (key ``reconciliation:<ledger>:<venue ids>``, the same in every pass). Then wait for the
   projector and compare again: a discrepancy that no longer differs is resolved, with the event that healed it.
   Nothing here writes a projection.
4. *Record*: one row in ``reconciliation_runs``; the account's open discrepancies are confirmed again (last seen),
   created (first seen) or resolved (a key examined to the end without the difference), in one transaction.

A REST call that fails (after the HTTP client's own retries), a pass that takes longer than ``timeout_seconds``
(a slow venue, a projector that does not catch up) fail the pass: it is recorded as ``failed`` with the error, the
discrepancy book is left as it was and nothing is healed (invariant 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from statekeeper.config import ReconcileSettings, Settings
from statekeeper.eventlog import CONNECTION_ERRORS, PostgresEventLog
from statekeeper.events import BalanceBody, Body, Discrepancy, Event, LedgerMark, Source, natural_key
from statekeeper.ingest import records
from statekeeper.ingest.drivers import ExtendedDriver, Snapshot, VenueDriver, make_driver
from statekeeper.ingest.records import Origin
from statekeeper.projections import store
from statekeeper.projections.rows import TERMINAL_ORDER_STATUSES
from statekeeper.reconcile import diff
from statekeeper.reconcile.diff import Difference, Examination, OpenDiscrepancy, Projected
from statekeeper.venues.base import Item
from statekeeper.venues.errors import FatalVenueError, VenueError, VenueResponseError

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- SQL

HEAD = "SELECT coalesce(max(id), 0) FROM events WHERE account = $1"
"""The account's log head: a backward probe of the primary key (account, id)."""

CHECKPOINT = "SELECT coalesce(max(position), 0) FROM projector_checkpoints WHERE account = $1 AND name = $2"

BALANCES = "SELECT * FROM balances WHERE account = $1 AND (scope IS NULL OR $2::text IS NULL OR scope = $2::text)"
"""The balances of the scope the venue's answer states (all of them if it states none; rows without a scope, from
events logged before scopes were recorded, always)."""
MARGINS = "SELECT * FROM account_margins WHERE account = $1"
OPEN_ORDERS = "SELECT * FROM open_orders WHERE account = $1"
ORDERS_BY_ID = "SELECT * FROM orders WHERE account = $1 AND order_id = ANY($2::text[])"
POSITIONS = "SELECT * FROM positions WHERE account = $1"
CLOSED_POSITIONS_BY_MARKET = "SELECT * FROM closed_positions WHERE account = $1 AND market = ANY($2::text[])"
FILLS_BY_ID = "SELECT fill_id, fill_type FROM fills WHERE account = $1 AND fill_id = ANY($2::text[])"
FUNDING_BY_ID = "SELECT payment_id FROM funding_payments WHERE account = $1 AND payment_id = ANY($2::text[])"
MARKETS = """
SELECT market FROM positions WHERE account = $1
UNION
SELECT market FROM closed_positions WHERE account = $1
"""
"""The markets the account has held a position in: where funding is paid (Paradex lists it per market)."""

BOOK_LOCK = "SELECT pg_advisory_xact_lock(21327, hashtext($1))"
"""Passes of one account (the daemon's, a command's) update its discrepancy book one after the other."""

OPEN_DISCREPANCIES = """
SELECT id, entity, entity_key, field FROM reconciliation_discrepancies
WHERE account = $1 AND resolved_at IS NULL
"""

INSERT_DISCREPANCY = """
INSERT INTO reconciliation_discrepancies (account, entity, entity_key, field, projected, venue_value, first_seen_at,
                                          last_seen_at, first_run_id, last_run_id, occurrences, resolved_at,
                                          resolved_run_id, healed_by_event_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $8, 1, $9, $10, $11)
"""

SEEN_AGAIN = """
UPDATE reconciliation_discrepancies
SET projected = $3, venue_value = $4, last_seen_at = $5, last_run_id = $6, occurrences = occurrences + 1,
    resolved_at = $7, resolved_run_id = $8, healed_by_event_id = $9
WHERE account = $1 AND id = $2 AND resolved_at IS NULL
"""

RESOLVE = """
UPDATE reconciliation_discrepancies
SET resolved_at = $3, resolved_run_id = $4
WHERE account = $1 AND id = ANY($2::int8[]) AND resolved_at IS NULL
"""

COUNT_OPEN = "SELECT count(*) FROM reconciliation_discrepancies WHERE account = $1 AND resolved_at IS NULL"

INSERT_RUN = """
INSERT INTO reconciliation_runs (account, run_id, venue, started_at, finished_at, status, heal, log_position, rounds,
                                 compared, found, healed, unsettled, remaining, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""

DISCREPANCIES_FOR_REPORT = """
SELECT account, id, entity, entity_key, field, projected, venue_value, first_seen_at, last_seen_at, occurrences,
       resolved_at, resolved_run_id, healed_by_event_id
FROM reconciliation_discrepancies
WHERE account = ANY($1::text[]) AND (resolved_at IS NULL OR resolved_run_id = ANY($2::uuid[]))
ORDER BY account, resolved_at NULLS FIRST, entity, entity_key, field
"""
"""The open discrepancies of some accounts, and those the given runs resolved."""

RESYNC_AFTER = """
SELECT id FROM events WHERE account = $1 AND id > $2 AND kind = 'resync_completed' ORDER BY id DESC LIMIT 1
"""
"""The account's newest ``resync_completed`` after a position (a walk over the events since it, not the log)."""

STATEMENTS: dict[str, str] = {
    "head": HEAD,
    "checkpoint": CHECKPOINT,
    "balances": BALANCES,
    "margins": MARGINS,
    "open_orders": OPEN_ORDERS,
    "orders_by_id": ORDERS_BY_ID,
    "positions": POSITIONS,
    "closed_positions_by_market": CLOSED_POSITIONS_BY_MARKET,
    "fills_by_id": FILLS_BY_ID,
    "funding_by_id": FUNDING_BY_ID,
    "markets": MARKETS,
    "book_lock": BOOK_LOCK,
    "open_discrepancies": OPEN_DISCREPANCIES,
    "insert_discrepancy": INSERT_DISCREPANCY,
    "seen_again": SEEN_AGAIN,
    "resolve": RESOLVE,
    "count_open": COUNT_OPEN,
    "insert_run": INSERT_RUN,
    "discrepancies_for_report": DISCREPANCIES_FOR_REPORT,
    "resync_after": RESYNC_AFTER,
}
"""Every statement of this module, for the test that prepares them against a migrated database."""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)


# --------------------------------------------------------------------------------------------- metrics


class ReconcileMetrics:
    """The reconciliation metrics, on the daemon's registry (``/metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.passes = Counter("statekeeper_reconcile_passes", "Reconciliation passes, by outcome (clean, "
                              "discrepancies, failed)", ["account", "status"], registry=r)  # fmt: skip
        self.found = Counter("statekeeper_reconcile_discrepancies_found", "Discrepancies confirmed by a pass",
                             ["account", "entity"], registry=r)  # fmt: skip
        self.healed = Counter("statekeeper_reconcile_discrepancies_healed", "Discrepancies resolved by the events "
                              "a pass appended", ["account", "entity"], registry=r)  # fmt: skip
        self.open = Gauge("statekeeper_reconcile_discrepancies_open", "Discrepancies of the account still open "
                          "after its last pass", ["account"], registry=r)  # fmt: skip
        self.seconds = Histogram("statekeeper_reconcile_pass_seconds", "Duration of a reconciliation pass",
                                 ["account"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                                 registry=r)  # fmt: skip


# ---------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class PassResult:
    """What one pass of one account did (its ``reconciliation_runs`` row, and the discrepancies themselves)."""

    account: str
    venue: str
    run_id: UUID
    started_at: datetime
    finished_at: datetime
    status: str
    """clean (no discrepancy of the account is open after the pass), discrepancies, or failed."""
    heal: bool
    log_position: int | None = None
    rounds: int = 0
    compared: int = 0
    found: tuple[Difference, ...] = ()
    healed: tuple[Difference, ...] = ()
    unsettled: int = 0
    remaining: int = 0
    error: str | None = None
    appended: tuple[int, ...] = ()
    """The log positions of the events the pass appended (healing)."""

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class PassFailed(Exception):
    """Internal: a pass cannot conclude (the message says why)."""


@dataclass
class _Answer:
    """One REST answer: the snapshots, when the request was sent, and the log head read just before."""

    snapshots: dict[str, Snapshot]
    requested_at: datetime
    head_before: int

    @property
    def balance_scope(self) -> str | None:
        """The balance statement the venue's answer holds (Extended's REST answer: its collateral, not its spot
        assets); None if the answer says nothing of one."""
        snapshot = self.snapshots.get("balances")
        body = snapshot.body if snapshot is not None else None
        return body.scope if isinstance(body, BalanceBody) else None

    def venue(self, entity: str) -> dict[str, Any] | None:
        """The venue's records of an entity kind by key; None if the venue has no such snapshot."""
        for what, snapshot in self.snapshots.items():
            if diff.SNAPSHOT_ENTITY.get(what) == entity:
                return {_venue_key(entity, item.record): item.record for item in snapshot.items}
        return None


def _venue_key(entity: str, record: Any) -> str:
    if entity == diff.BALANCE:
        return str(record.asset)
    if entity == diff.ORDER:
        return str(record.order_id)
    if entity == diff.POSITION:
        return str(record.market)
    return diff.SUMMARY_KEY


@dataclass
class _Ledgers:
    """The venue's recent fills and funding payments, by key, and what the comparison concluded."""

    items: dict[str, dict[str, Item[Any]]] = field(default_factory=dict)
    confirmed: list[Difference] = field(default_factory=list)
    settled: set[diff.EntityKey] = field(default_factory=set)


# ---------------------------------------------------------------------------------------------- a pass


class Reconciler:
    """Reconciliation passes of one account against its venue (``driver``: the REST side of the venue driver).

    ``project``: the pass applies the log to the projections itself up to the position it compares at (the
    ``statekeeper reconcile`` command, which may run without a daemon); otherwise it waits for the projector
    workers. Either way only the projector code writes projections.
    """

    def __init__(
        self,
        *,
        account: str,
        venue: str,
        driver: VenueDriver,
        pool: asyncpg.Pool,
        settings: ReconcileSettings,
        project: bool = False,
        batch_size: int = 2000,
        metrics: ReconcileMetrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.account = account
        self.venue = venue
        self.driver = driver
        self.pool = pool
        self.settings = settings
        self.project = project
        self.batch_size = batch_size
        self.metrics = metrics
        self.now = now
        self.log = PostgresEventLog(pool)
        self.tolerances = diff.tolerances(settings.tolerances)
        self._waiting = "starting"
        self._verified: dict[str, datetime] = {}
        """Per ledger, the time of the newest item a pass of this reconciler found in the projection: the next pass
        looks back only to a little before it (ledger rows are never deleted)."""
        """What the pass is doing, for the message of a pass that times out."""

    # ------------------------------------------------------------------------------------------ running

    async def run_pass(self, *, heal: bool | None = None) -> PassResult:
        """One pass, recorded in ``reconciliation_runs``. A failed pass is a result with status ``failed``; a
        refused credential (:class:`FatalVenueError`) is recorded, then raised. A database that cannot be used to
        record the pass raises."""
        heal = self.settings.heal if heal is None else heal
        run_id, started, clock = uuid4(), self.now(), time.monotonic()
        error: str | None = None
        fatal: FatalVenueError | None = None
        result: PassResult | None = None
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                result = await self._pass(run_id, started, heal)
        except FatalVenueError as exc:
            fatal, error = exc, f"the venue refused the credentials: {exc}"
        except VenueError as exc:
            error = f"REST failed: {exc}"
        except TimeoutError:
            error = f"the pass did not finish within {self.settings.timeout_seconds:g} s ({self._waiting})"
        except PassFailed as exc:
            error = str(exc)
        if result is None:
            assert error is not None
            result = PassResult(self.account, self.venue, run_id, started, self.now(), "failed", heal, error=error)
            await self._record_failure(result)
            logger.warning("reconciliation of %s failed: %s", self.account, error,
                           extra={"action": "reconcile_failed", "account": self.account})  # fmt: skip
        self._observe(result, time.monotonic() - clock)
        if fatal is not None:
            raise fatal
        return result

    def _observe(self, result: PassResult, seconds: float) -> None:
        if self.metrics is None:
            return
        self.metrics.passes.labels(self.account, result.status).inc()
        self.metrics.seconds.labels(self.account).observe(seconds)
        for difference in result.found:
            self.metrics.found.labels(self.account, difference.entity).inc()
        for difference in result.healed:
            self.metrics.healed.labels(self.account, difference.entity).inc()
        if result.status != "failed":
            self.metrics.open.labels(self.account).set(result.remaining)

    async def _pass(self, run_id: UUID, started: datetime, heal: bool) -> PassResult:
        async with self.pool.acquire() as conn:
            book = frozenset(
                (r["entity"], r["entity_key"]) for r in await conn.fetch(OPEN_DISCREPANCIES, self.account)
                if r["entity"] not in diff.LEDGER_ENTITIES
            )  # fmt: skip
        exam = Examination(book=book)
        answer: _Answer | None = None
        position = 0
        compared: set[diff.EntityKey] = set()
        while not exam.done and exam.rounds < self.settings.rounds:
            quick = exam.rounds == 0
            answer = await self._fetch()
            if quick:
                await self._projected_up_to(await self.head())
            else:
                await self._settle()
            position, projected = await self._read_projection(answer)
            differences, keys, changed = self._compare(answer, projected, exam)
            compared |= keys
            exam.record(keys, differences, changed, settled=not quick)
        assert answer is not None
        ledgers = await self._ledgers()
        confirmed = [*exam.confirmed.values(), *ledgers.confirmed]
        healed: list[Difference] = []
        healed_by: dict[diff.Ident, int] = {}
        appended: tuple[int, ...] = ()
        if heal and confirmed:
            appended, healed_by = await self._heal(run_id, answer, exam.confirmed, ledgers)
            position, healed = await self._recheck(answer, exam.confirmed, ledgers, max(appended, default=0))
        settled = exam.settled | ledgers.settled
        remaining = await self._record(run_id, started, heal, position, exam, compared, ledgers, confirmed, healed,
                                       healed_by, settled)  # fmt: skip
        result = PassResult(
            self.account, self.venue, run_id, started, self.now(), "discrepancies" if remaining else "clean", heal,
            log_position=position, rounds=exam.rounds, compared=len(compared) + sum(map(len, ledgers.items.values())),
            found=tuple(confirmed), healed=tuple(healed), unsettled=len(exam.unsettled), remaining=remaining,
            appended=appended,
        )  # fmt: skip
        log = logger.warning if confirmed else logger.info
        log("reconciliation of %s: %s, %d compared at log position %d in %d rounds, %d discrepancies found, %d "
            "healed, %d left for the next pass, %d open", self.account, result.status, result.compared, position,
            result.rounds, len(confirmed), len(healed), result.unsettled, remaining,
            extra={"action": "reconcile_pass", "account": self.account, "run_id": str(run_id)})  # fmt: skip
        return result

    # -------------------------------------------------------------------------------------- the log side

    async def head(self) -> int:
        """The account's log head."""
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval(HEAD, self.account))

    async def _projected_up_to(self, target: int) -> None:
        """Return once the projections have applied the log up to ``target`` (the account's position)."""
        self._waiting = f"waiting for the projector to reach log position {target}"
        delay = 0.01
        while True:
            async with self.pool.acquire() as conn:
                if self.project:
                    await store.catch_up(conn, [self.account], limit=self.batch_size, up_to=target)
                if int(await conn.fetchval(CHECKPOINT, self.account, store.CHECKPOINT)) >= target:
                    return
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 2)

    async def _settle(self) -> None:
        """Give the stream the race window, then wait for the projector to pass the log head after it."""
        self._waiting = "waiting the race window"
        await asyncio.sleep(self.settings.race_window_seconds)
        await self._projected_up_to(await self.head())

    async def _fetch(self) -> _Answer:
        head_before = await self.head()
        requested_at = self.now()
        self._waiting = "waiting for the venue's REST answer"
        snapshots = await self.driver.snapshots()
        return _Answer({s.what: s for s in snapshots}, requested_at, head_before)

    async def _read_projection(self, answer: _Answer) -> tuple[int, dict[str, dict[str, Projected]]]:
        """The checkpoint and the projected rows the answer's keys concern, read at one instant."""
        orders = answer.venue(diff.ORDER) or {}
        positions = answer.venue(diff.POSITION) or {}
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            position = int(await conn.fetchval(CHECKPOINT, self.account, store.CHECKPOINT))
            found: dict[str, dict[str, Projected]] = {}
            found[diff.BALANCE] = _rows(await conn.fetch(BALANCES, self.account, answer.balance_scope), "asset")
            found[diff.ACCOUNT] = _rows(await conn.fetch(MARGINS, self.account), None)
            open_orders = _rows(await conn.fetch(OPEN_ORDERS, self.account), "order_id")
            others = sorted(set(orders) - set(open_orders))
            closed = _rows(await conn.fetch(ORDERS_BY_ID, self.account, others), "order_id", present=False)
            found[diff.ORDER] = {**closed, **open_orders}
            open_positions = _rows(await conn.fetch(POSITIONS, self.account), "market")
            others = sorted(set(positions) - set(open_positions))
            closed = _rows(await conn.fetch(CLOSED_POSITIONS_BY_MARKET, self.account, others), "market", present=False)
            found[diff.POSITION] = {**closed, **open_positions}
        return position, found

    def _compare(
        self, answer: _Answer, projected: Mapping[str, Mapping[str, Projected]], exam: Examination
    ) -> tuple[list[Difference], set[diff.EntityKey], set[diff.EntityKey]]:
        differences: list[Difference] = []
        keys: set[diff.EntityKey] = set()
        changed: set[diff.EntityKey] = set()
        for entity in diff.STATE_ENTITIES:
            venue = answer.venue(entity)
            if venue is None:
                continue  # the venue has no such state (Extended: no account summary)
            mine = projected[entity]
            wanted = [k for k in {*mine, *venue} if exam.wants((entity, k))]
            differences += diff.compare(entity, mine, venue, self.tolerances, keys=wanted)
            keys |= {(entity, k) for k in wanted}
            changed |= {(entity, k) for k in wanted if k in mine and mine[k].event_id > answer.head_before}
        return differences, keys, changed

    # -------------------------------------------------------------------------------------------- ledgers

    async def _ledgers(self) -> _Ledgers:
        """The venue's recent fills and funding payments against the ledgers (see the module docstring)."""
        ledgers = _Ledgers()
        lookback = self.now() - timedelta(seconds=self.settings.history_lookback_seconds)
        async with self.pool.acquire() as conn:
            markets = sorted(r["market"] for r in await conn.fetch(MARKETS, self.account))
        self._waiting = "waiting for the venue's fill and funding history"
        for what, entity in (("fill", diff.FILL), ("funding", diff.FUNDING)):
            verified = self._verified.get(what)
            overlap = timedelta(seconds=self.settings.history_overlap_seconds)
            since = max(lookback, verified - overlap) if verified is not None else lookback
            items = await _recent(self.driver, what, since, markets)
            ledgers.items[entity] = {_ledger_key(entity, item.record): item for item in items}
        await self._projected_up_to(await self.head())
        missing = await self._missing(ledgers)
        for _ in range(2):  # missing at a quick look: looked at again after the race window, twice
            if not missing:
                break
            await self._settle()
            missing = await self._missing(ledgers)
        ledgers.confirmed = missing
        gone = {d.entity_key for d in missing}
        ledgers.settled = {(e, k) for e, items in ledgers.items.items() for k in items} - gone
        if not missing:
            for what, entity in (("fill", diff.FILL), ("funding", diff.FUNDING)):
                times = [records.ledger_time(what, item.record) for item in ledgers.items[entity].values()]
                if times:
                    self._verified[what] = max(times)
        return ledgers

    async def _missing(self, ledgers: _Ledgers) -> list[Difference]:
        fills = ledgers.items.get(diff.FILL, {})
        payments = ledgers.items.get(diff.FUNDING, {})
        async with self.pool.acquire() as conn:
            fill_ids = sorted({item.record.fill_id for item in fills.values()})
            fill_rows = await conn.fetch(FILLS_BY_ID, self.account, fill_ids)
            have_fills = {diff.fill_key(r["fill_id"], r["fill_type"]) for r in fill_rows}
            have_payments = {r["payment_id"] for r in await conn.fetch(FUNDING_BY_ID, self.account, sorted(payments))}
        return diff.missing(diff.FILL, fills, have_fills) + diff.missing(diff.FUNDING, payments, have_payments)

    # ----------------------------------------------------------------------------------------------- heal

    async def _heal(
        self, run_id: UUID, answer: _Answer, confirmed: Mapping[diff.Ident, Difference], ledgers: _Ledgers
    ) -> tuple[tuple[int, ...], dict[diff.Ident, int]]:
        """Append the discrepancy events, the snapshots and the missing ledger items. Returns the positions, and
        per discrepancy the position of the event that should heal it."""
        self._waiting = "appending the heal events"
        now = self.now()
        events: list[Event] = []
        heals: list[tuple[list[diff.Ident], int]] = []  # the discrepancies each event heals, by its index
        for difference in [*confirmed.values(), *ledgers.confirmed]:
            events.append(self._discrepancy_event(run_id, difference, now))
        entities = {d.entity for d in confirmed.values()}
        for what, snapshot in sorted(answer.snapshots.items()):
            entity = diff.SNAPSHOT_ENTITY.get(what)
            if entity in entities:
                heals.append(([i for i in confirmed if i[0] == entity], len(events)))
                events.append(self._snapshot_event(run_id, snapshot, answer.requested_at))
        origin = Origin(self.account, self.venue, None)
        for difference in ledgers.confirmed:
            item = ledgers.items[difference.entity][difference.key]
            what = "fill" if difference.entity == diff.FILL else "funding"
            event = records.ledger_event(origin, what, item, fetched_at=now)
            ids = (item.record.fill_id, item.record.fill_type) if what == "fill" else (item.record.payment_id,)
            heals.append(([difference.ident], len(events)))
            events.append(event.model_copy(update={"source": Source.RECONCILIATION,
                                                   "key": natural_key("reconciliation", what, *ids)}))  # fmt: skip
        result = await self.log.append(events)
        healed_by = {ident: result.positions[index] for idents, index in heals for ident in idents}
        logger.info("reconciliation of %s: appended %d events to heal %d discrepancies", self.account,
                    result.appended, len(healed_by), extra={"action": "reconcile_heal", "account": self.account,
                                                            "run_id": str(run_id)})  # fmt: skip
        return result.positions, healed_by

    def _discrepancy_event(self, run_id: UUID, difference: Difference, at: datetime) -> Event:
        body = Discrepancy(run_id=str(run_id), entity=difference.entity, entity_key=difference.key,  # type: ignore[arg-type]
                           field=difference.field, projected=difference.projected, venue=difference.venue)  # fmt: skip
        key = natural_key("reconciliation", str(run_id), "discrepancy", *difference.ident)
        return Event(account=self.account, venue=self.venue, source=Source.RECONCILIATION, body=body, venue_time=at,
                     received_at=at, key=key)  # fmt: skip

    def _snapshot_event(self, run_id: UUID, snapshot: Snapshot, requested_at: datetime) -> Event:
        """The venue's answer as a snapshot the projectors fold. ``received_at`` is when the request was sent (the
        folds remove an open order or position the snapshot does not list only if it is not newer than that)."""
        body: Body = snapshot.body
        times = [t for t in (getattr(i.record, "updated_at", None) for i in snapshot.items) if t is not None]
        return Event(account=self.account, venue=self.venue, source=Source.RECONCILIATION, body=body, snapshot=True,
                     venue_time=max(times, default=requested_at), received_at=requested_at,
                     key=natural_key("reconciliation", str(run_id), snapshot.what),
                     raw="[" + ",".join(i.raw for i in snapshot.items) + "]")  # fmt: skip

    async def _recheck(
        self, answer: _Answer, confirmed: Mapping[diff.Ident, Difference], ledgers: _Ledgers, target: int
    ) -> tuple[int, list[Difference]]:
        """Once the heal events are folded: the discrepancies that no longer differ from the venue's answer."""
        await self._projected_up_to(target)
        position, projected = await self._read_projection(answer)
        after: list[Difference] = []
        for entity, key in sorted({d.entity_key for d in confirmed.values()}):
            venue = answer.venue(entity) or {}
            after += diff.compare_entity(entity, key, projected[entity].get(key), venue.get(key),
                                         self.tolerances)  # fmt: skip
        after += await self._missing(ledgers)
        return position, diff.healed([*confirmed.values(), *ledgers.confirmed], after)

    # --------------------------------------------------------------------------------------------- record

    async def _record(  # noqa: PLR0917 - the whole outcome of the pass, recorded at once
        self,
        run_id: UUID,
        started: datetime,
        heal: bool,
        position: int,
        exam: Examination,
        compared: Collection[diff.EntityKey],
        ledgers: _Ledgers,
        confirmed: Sequence[Difference],
        healed: Iterable[Difference],
        healed_by: Mapping[diff.Ident, int],
        settled: Collection[diff.EntityKey],
    ) -> int:
        """Update the discrepancy book and insert the run, in one transaction. Returns the open discrepancies."""
        self._waiting = "recording the pass"
        now = self.now()
        fixed = {d.ident for d in healed}
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(BOOK_LOCK, self.account)
            open_rows = [OpenDiscrepancy(r["id"], r["entity"], r["entity_key"], r["field"])
                         for r in await conn.fetch(OPEN_DISCREPANCIES, self.account)]  # fmt: skip
            book = diff.settle_book(open_rows, {d.ident: d for d in confirmed}, settled)

            def resolution(difference: Difference) -> tuple[datetime | None, UUID | None, int | None]:
                if difference.ident in fixed:
                    return now, run_id, healed_by.get(difference.ident)
                return None, None, None

            for row_id, difference in book.seen_again.items():
                await conn.execute(SEEN_AGAIN, self.account, row_id, difference.projected, difference.venue, now,
                                   run_id, *resolution(difference))  # fmt: skip
            for difference in book.new:
                await conn.execute(INSERT_DISCREPANCY, self.account, difference.entity, difference.key,
                                   difference.field, difference.projected, difference.venue, now, run_id,
                                   *resolution(difference))  # fmt: skip
            if book.gone:
                await conn.execute(RESOLVE, self.account, book.gone, now, run_id)
            remaining = int(await conn.fetchval(COUNT_OPEN, self.account))
            await conn.execute(INSERT_RUN, self.account, run_id, self.venue, started, now,
                               "discrepancies" if remaining else "clean", heal, position, exam.rounds,
                               len(compared) + sum(map(len, ledgers.items.values())), len(confirmed), len(fixed),
                               len(exam.unsettled), remaining, None)  # fmt: skip
        return remaining

    async def _record_failure(self, result: PassResult) -> None:
        async with self.pool.acquire() as conn:
            remaining = int(await conn.fetchval(COUNT_OPEN, self.account))
            await conn.execute(INSERT_RUN, self.account, result.run_id, self.venue, result.started_at,
                               result.finished_at, "failed", result.heal, None, 0, 0, 0, 0, 0, remaining,
                               result.error)  # fmt: skip


def _rows(found: Iterable[asyncpg.Record], key: str | None, *, present: bool = True) -> dict[str, Projected]:
    """Projected rows by key (``None``: the one row of the account, keyed ``summary``)."""
    rows: dict[str, Projected] = {}
    for record in found:
        values = dict(record.items())
        rows[str(values[key]) if key else diff.SUMMARY_KEY] = Projected(
            SimpleNamespace(**values), int(values["event_id"]), present=present and _open(values)
        )
    return rows


def _open(values: Mapping[str, Any]) -> bool:
    """A row of ``orders`` that is not open is not present among the open orders."""
    return "order_id" not in values or values["status"] not in TERMINAL_ORDER_STATUSES


def _ledger_key(entity: str, record: Any) -> str:
    if entity == diff.FILL:
        return diff.fill_key(record.fill_id, record.fill_type)
    return str(record.payment_id)


async def _recent(driver: VenueDriver, what: str, since: datetime, markets: Sequence[str]) -> list[Item[Any]]:
    """Every fill or funding payment the venue lists from ``since`` on (a failed call raises)."""
    if what == "fill" and isinstance(driver, ExtendedDriver):
        # Extended's trades come newest first, page after page: the walk stops at the first one before ``since``.
        found: list[Item[Any]] = []
        cursor: str | None = None
        cursors: set[str] = set()
        while True:
            page = await driver.rest.trades(cursor=cursor)
            for item in page.items:
                if item.record.created_at < since:
                    return found
                found.append(item)
            if page.cursor is None or not page.items:
                return found
            if page.cursor in cursors:
                raise VenueResponseError(f"extended trades: the pagination cursor {page.cursor!r} came back",
                                         venue="extended")  # fmt: skip
            cursors.add(page.cursor)
            cursor = page.cursor
    walk: AsyncIterator[Item[Any]] = driver.ledger(what, LedgerMark(time=since), markets)
    return [item async for item in walk if records.ledger_time(what, item.record) >= since]


# --------------------------------------------------------------------------------------------- service


class ReconcileService:
    """The passes of one account inside ``statekeeper run``: one every ``interval_seconds``, and one after every
    resync (a ``resync_completed`` event of the account appended since the last look), until ``stop`` is set.

    A failed pass is recorded and logged; the service goes on. A refused credential ends it (the account's ingest
    stops for the same reason). A database error is logged and the pass tried again at the next interval.
    """

    RESYNC_CHECK_SECONDS = 1.0

    def __init__(self, reconciler: Reconciler, *, interval: float, stop: asyncio.Event,
                 resync_check: float = RESYNC_CHECK_SECONDS) -> None:  # fmt: skip
        self.reconciler = reconciler
        self.interval = interval
        self.stop = stop
        self.resync_check = min(resync_check, interval)
        self.passes = 0
        self.last: PassResult | None = None

    async def _newest_resync(self, after: int) -> int | None:
        async with self.reconciler.pool.acquire() as conn:
            found = await conn.fetchval(RESYNC_AFTER, self.reconciler.account, after)
        return int(found) if found is not None else None

    async def run(self) -> None:
        account = self.reconciler.account
        seen = await self._start()
        due = time.monotonic() + self.interval
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, min(self.resync_check, due - time.monotonic())))
            if self.stop.is_set():
                return
            try:
                head = await self.reconciler.head()
                resync = await self._newest_resync(seen)
                seen = head if resync is None else max(head, resync)
                if resync is None and time.monotonic() < due:
                    continue
                result = await self._until_stop(self.reconciler.run_pass())
                if result is None:
                    return
                self.last = result
                self.passes += 1
            except FatalVenueError:
                logger.error("reconciliation of %s stops: the venue refused the credentials", account,  # noqa: TRY400
                             extra={"action": "reconcile_stopped", "account": account})  # fmt: skip
                return
            except DATABASE_ERRORS as exc:
                logger.warning("reconciliation of %s: the database failed (%s); trying again in %g s", account, exc,
                               self.interval, extra={"action": "reconcile_db_failed", "account": account})  # fmt: skip
            except Exception:  # a bug must not end the account's reconciliation until its ingest ends
                logger.exception("reconciliation of %s failed unexpectedly; trying again in %g s", account,
                                 self.interval, extra={"action": "reconcile_failed", "account": account})  # fmt: skip
            due = time.monotonic() + self.interval

    async def _start(self) -> int:
        """The log head when the service starts (resyncs before it are not this service's business)."""
        while True:
            try:
                return await self.reconciler.head()
            except DATABASE_ERRORS as exc:
                account = self.reconciler.account
                logger.warning("reconciliation of %s: the database failed (%s); trying again", account, exc,
                               extra={"action": "reconcile_db_failed", "account": account})  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.resync_check)
            if self.stop.is_set():
                return 0

    async def _until_stop(self, work: Coroutine[Any, Any, PassResult]) -> PassResult | None:
        """Run a pass; a daemon that stops cancels it (None). What it appended stays: appends are transactions."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()


# ------------------------------------------------------------------------------------------ one-shot


async def reconcile_accounts(
    settings: Settings, pool: asyncpg.Pool, names: Sequence[str] | None, *, heal: bool
) -> tuple[list[PassResult], list[asyncpg.Record]]:
    """One pass of each account (every configured one, or ``names``), one after the other, applying the log to
    the projections itself. Returns the results and the discrepancy rows to report (open, or resolved now)."""
    accounts = [settings.account(name) for name in names] if names else list(settings.accounts)
    results: list[PassResult] = []
    for account in accounts:
        assert account.api_key is not None, "secrets are resolved before reconciling"
        driver = make_driver(account.venue, credential=account.api_key, ws_url=account.ws_url,
                             rest_url=account.rest_url, backfill_from=settings.ingest.backfill_from)  # fmt: skip
        try:
            reconciler = Reconciler(account=account.name, venue=account.venue, driver=driver, pool=pool,
                                    settings=settings.reconcile, project=True,
                                    batch_size=settings.projector.batch_size)  # fmt: skip
            results.append(await reconciler.run_pass(heal=heal))
        finally:
            await driver.close()
    async with pool.acquire() as conn:
        rows = await conn.fetch(DISCREPANCIES_FOR_REPORT, [a.name for a in accounts], [r.run_id for r in results])
    return results, list(rows)
