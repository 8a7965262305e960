"""Final states of the orders a snapshot stopped listing: fetched by id over REST and appended to the log.

The folds (:mod:`statekeeper.projections.fold`) turn an open order that an ORDER snapshot no longer lists into
``closed_unconfirmed`` in ``orders``: it is not working, but how it ended (filled, cancelled, expired) is not
known. The folds are pure, so the fetch happens here, in the ingest daemon: every ``resolve_interval_seconds``
the account's :class:`OrderResolver` reads the ids of its ``closed_unconfirmed`` orders (:data:`PENDING_ORDERS`),
fetches each one by id and appends what the venue answered as an ORDER event (source ``rest``, not a snapshot:
:func:`statekeeper.ingest.records.order_event`). The projector folds it like any update: a terminal state, or
any newer one, replaces the ``closed_unconfirmed`` row.

Each id is remembered in memory (for the daemon's life; forgotten once the order is no longer pending):

* an answer is appended once: the same state fetched again is not appended again (its key would make it one
  event anyway), and the id is fetched again only after ``RECHECK_FACTOR`` intervals, the time for the
  projector to fold the answer (an order the venue still reports working keeps being checked, slowly);
* an id the venue does not know (HTTP 404), or whose answer cannot be used, stays ``closed_unconfirmed``: it is
  logged once at WARNING and tried again only after ``RECHECK_FACTOR`` intervals, never in a hot loop;
* a transient failure (5xx, 429, a timeout, after the client's own retries) ends the round: logged, counted,
  tried again the next round, and never read as "the order is gone" (invariant 8);
* a refused credential (:class:`FatalVenueError`) propagates: the account stops, as everywhere else.

The ids are read a page at a time (:data:`PAGE`), after a cursor that moves on each round and wraps around at
the end, so a page full of ids that the venue never answers cannot hide the others. A database error while
reading them is logged and the round tried again at the next interval: the daemon does not die of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import asyncpg

from statekeeper.eventlog import CONNECTION_ERRORS
from statekeeper.events import Event, Order
from statekeeper.ingest import records
from statekeeper.ingest.metrics import IngestMetrics
from statekeeper.ingest.records import Origin
from statekeeper.venues.base import Item
from statekeeper.venues.errors import FatalVenueError, NonRetryableVenueError, VenueError, VenueResponseError

logger = logging.getLogger(__name__)

PAGE = 100
"""Most ids read (and so fetched) in one round."""
RECHECK_FACTOR = 10
"""An id answered, or unknown to the venue, is fetched again only after this many intervals."""

PENDING_ORDERS = """
SELECT order_id FROM orders
WHERE account = $1 AND status = 'closed_unconfirmed' AND order_id > $2
ORDER BY order_id
LIMIT $3
"""
"""The ids of an account's ``closed_unconfirmed`` orders after a cursor (``''`` from the start), in id order."""

STATEMENTS: dict[str, str] = {"pending_orders": PENDING_ORDERS}
"""Every statement of this module, for the test that prepares them against a migrated database."""


class OrderSource(Protocol):
    """What the resolver needs of a venue driver."""

    async def order(self, order_id: str) -> Item[Order]: ...


class Outcome(StrEnum):
    """What came of fetching one order (label ``outcome`` of ``statekeeper_orders_resolved_total``)."""

    SUBMITTED = "submitted"
    """The venue's answer was new: appended."""
    UNCHANGED = "unchanged"
    """The same answer as the one already appended: not appended again."""
    NOT_FOUND = "not_found"
    """The venue does not know the id (HTTP 404)."""
    REJECTED = "rejected"
    """The venue refused the request otherwise, or answered something unusable."""
    FAILED = "failed"
    """A transient failure: tried again next round."""


@dataclass
class _Attempts:
    """What the resolver remembers of one order id."""

    answered: Order | None = None
    """The state last appended for it."""
    not_before: float = 0.0
    """Monotonic time before which it is not fetched again."""
    warned: bool = False
    """Whether its refusal was logged at WARNING already."""


class OrderResolver:
    """Fetches an account's ``closed_unconfirmed`` orders by id and submits the venue's answers as events.

    ``origin`` gives the current session at submit time; ``submit`` hands an event to the account's writer.
    :meth:`resolve` is one round over given ids (no database); :meth:`run` reads the ids and runs the rounds.
    """

    def __init__(
        self,
        *,
        account: str,
        source: OrderSource,
        origin: Callable[[], Origin],
        submit: Callable[[Event], None],
        interval: float,
        metrics: IngestMetrics | None = None,
        rest_failed: Callable[[str, VenueError], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("the resolve interval must be positive")
        self.account = account
        self.source = source
        self.origin = origin
        self.submit = submit
        self.interval = interval
        self.recheck_after = RECHECK_FACTOR * interval
        self.metrics = metrics
        self.rest_failed = rest_failed
        self.clock = clock
        self._attempts: dict[str, _Attempts] = {}
        self._cursor = ""
        self._cycle: set[str] = set()
        """The ids read since the cursor last wrapped around."""

    # ------------------------------------------------------------------------------------------- a round

    def _count(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.orders_resolved.labels(self.account, outcome.value).inc()

    async def resolve(self, order_ids: Sequence[str], stop: asyncio.Event | None = None) -> Counter[Outcome]:
        """Fetch each id that is due, in order, and submit the new answers. Ends early at a transient failure or
        when ``stop`` is set. Returns what came of the ids fetched."""
        outcomes: Counter[Outcome] = Counter()
        for order_id in order_ids:
            if stop is not None and stop.is_set():
                break
            attempts = self._attempts.setdefault(order_id, _Attempts())
            if self.clock() < attempts.not_before:
                continue
            outcome = await self._fetch(order_id, attempts)
            outcomes[outcome] += 1
            self._count(outcome)
            if outcome is Outcome.FAILED:
                break  # the venue is failing now: the next round tries again
        if outcomes[Outcome.SUBMITTED]:
            logger.info("fetched %d orders a snapshot no longer listed: %d new states appended", outcomes.total(),
                        outcomes[Outcome.SUBMITTED], extra={"action": "orders_resolved"})  # fmt: skip
        return outcomes

    async def _order(self, order_id: str) -> Item[Order]:
        item = await self.source.order(order_id)
        if item.record.order_id != order_id:
            raise VenueResponseError(f"asked for order {order_id}, the venue answered order {item.record.order_id}")
        return item

    async def _fetch(self, order_id: str, attempts: _Attempts) -> Outcome:
        try:
            item = await self._order(order_id)
        except FatalVenueError:
            raise
        except NonRetryableVenueError as exc:
            attempts.not_before = self.clock() + self.recheck_after
            outcome = Outcome.NOT_FOUND if exc.status == 404 else Outcome.REJECTED
            log = logger.debug if attempts.warned else logger.warning
            attempts.warned = True
            log("order %s stays closed_unconfirmed: the venue %s (%s); asking again in %g s", order_id,
                "does not know it" if outcome is Outcome.NOT_FOUND else "gave no usable answer", exc,
                self.recheck_after, extra={"action": "order_unresolved", "order_id": order_id})  # fmt: skip
            return outcome
        except VenueError as exc:
            if self.rest_failed is not None:
                self.rest_failed(f"fetching order {order_id}", exc)
            else:
                logger.warning("fetching order %s over REST failed, will retry: %s", order_id, exc,
                               extra={"action": "rest_failed"})  # fmt: skip
            return Outcome.FAILED
        fetched_at = datetime.now(UTC)
        attempts.not_before = self.clock() + self.recheck_after
        if attempts.answered == item.record:
            return Outcome.UNCHANGED
        self.submit(records.order_event(self.origin(), item, fetched_at=fetched_at))
        attempts.answered = item.record
        return Outcome.SUBMITTED

    # ------------------------------------------------------------------------------------------- the loop

    async def pending(self, pool: asyncpg.Pool) -> list[str] | None:
        """The next page of ``closed_unconfirmed`` ids after the cursor (moved on), or None if the database failed."""
        try:
            async with pool.acquire() as conn:
                rows = await conn.fetch(PENDING_ORDERS, self.account, self._cursor, PAGE)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError, TimeoutError) as exc:
            logger.warning("cannot read the closed_unconfirmed orders (%s); trying again in %g s", exc,
                           self.interval, extra={"action": "resolve_db_failed"})  # fmt: skip
            return None
        order_ids = [str(row["order_id"]) for row in rows]
        self._cycle.update(order_ids)
        if len(order_ids) < PAGE:
            # The end of the list: start again from the first id next time, and forget the ids no longer pending.
            self._cursor = ""
            self._attempts = {k: v for k, v in self._attempts.items() if k in self._cycle}
            self._cycle = set()
        else:
            self._cursor = order_ids[-1]
        return order_ids

    async def run(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """A round every interval until ``stop`` is set. A refused credential (:class:`FatalVenueError`) ends it."""
        while not await _wait(stop, self.interval):
            order_ids = await self.pending(pool)
            if order_ids:
                await self.resolve(order_ids, stop)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stop`` is set first; True if it is set."""
    if not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
