"""Resolving ``closed_unconfirmed`` orders: the daemon fetches, by id over REST, the final state of an order a
snapshot stopped listing and appends it; the projector folds it in place of ``closed_unconfirmed``.

Unit tests drive :class:`OrderResolver` with a fake venue and a fake clock; integration tests run it against a
real PostgreSQL; end-to-end tests run the daemon against the simulated venues (both, stream and REST polling).
The end-to-end tests fold the log either themselves (:func:`project`, the projector's step, with the daemon's
projector workers off), which lets them see every order that is ever ``closed_unconfirmed``, or with the daemon's
own projector workers, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, Literal, Self
from uuid import uuid4

import asyncpg
import orjson
import pytest

from statekeeper.config import ProjectorSettings, Settings
from statekeeper.database import connect, create_pool
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import Event, Order, OrderBody, Side, Source
from statekeeper.ingest import records
from statekeeper.ingest.account import AccountState
from statekeeper.ingest.daemon import Daemon
from statekeeper.ingest.drivers import ExtendedDriver
from statekeeper.ingest.metrics import IngestMetrics
from statekeeper.ingest.records import Origin
from statekeeper.ingest.resolve import PAGE, RECHECK_FACTOR, STATEMENTS, OrderResolver, Outcome
from statekeeper.projections import store
from statekeeper.simulator import FaultKind, Simulator, SimulatorConfig, Truth
from statekeeper.venues.base import Item
from statekeeper.venues.errors import (
    FatalVenueError,
    NonRetryableVenueError,
    RetryableVenueError,
    VenueError,
)
from tests.factories import T0, order_snapshot
from tests.ingest_support import running_daemon, settings_for, wait_until

Venue = Literal["extended", "paradex"]
VENUES: list[Venue] = ["extended", "paradex"]

INTERVAL = 1.0
"""The resolve interval of the unit tests (their clock is fake)."""
T1 = T0 + timedelta(seconds=30)


# ------------------------------------------------------------------------------------------------ fakes


def answer(order_id: str, status: str = "CANCELLED", *, at: datetime = T1, seq: int | None = None) -> Item[Order]:
    order = Order(order_id=order_id, market="ETH-USD", side=Side.SELL, order_type="LIMIT", status=status,
                  price=Decimal("3100.5"), qty=Decimal(2), updated_at=at, venue_seq=seq)  # fmt: skip
    raw = orjson.dumps({"id": order_id, "status": status, "updatedTime": int(at.timestamp() * 1000)}).decode()
    return Item(order, raw)


class FakeVenue:
    """Answers ``order(id)`` from a script per id (the last entry repeats); records the calls."""

    def __init__(self, answers: dict[str, list[Item[Order] | VenueError]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def order(self, order_id: str) -> Item[Order]:
        self.calls.append(order_id)
        script = self.answers.get(order_id) or [NonRetryableVenueError("HTTP 404: order not found", status=404)]
        value = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(value, VenueError):
            raise value
        return value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_resolver(
    venue: FakeVenue,
    submitted: list[Event],
    *,
    clock: Callable[[], float] | None = None,
    interval: float = INTERVAL,
    errors: list[str] | None = None,
    metrics: IngestMetrics | None = None,
) -> OrderResolver:
    def rest_failed(what: str, exc: VenueError) -> None:
        if errors is not None:
            errors.append(f"{what}: {exc}")

    return OrderResolver(account="a1", source=venue, origin=lambda: Origin("a1", "extended", None),
                         submit=submitted.append, interval=interval, clock=clock or Clock(), metrics=metrics,
                         rest_failed=rest_failed)  # fmt: skip


def resolved(metrics: IngestMetrics, outcome: Outcome) -> float:
    value = metrics.registry.get_sample_value(
        "statekeeper_orders_resolved_total", {"account": "a1", "outcome": outcome.value}
    )
    return value or 0.0


# ---------------------------------------------------------------------------------------- the event


def test_order_event_is_the_rest_answer_keyed_by_its_state() -> None:
    session = uuid4()
    fetched_at = T1 + timedelta(seconds=2)
    item = answer("o-1", "FILLED", seq=7)
    event = records.order_event(Origin("a1", "paradex", session), item, fetched_at=fetched_at)
    assert event.source is Source.REST
    assert event.snapshot is False
    assert event.body == OrderBody(orders=(item.record,))
    assert event.venue_time == T1
    assert event.received_at == fetched_at
    assert event.session == session
    assert event.raw == item.raw
    assert event.key == f"rest:order:o-1:{T1.isoformat().replace(':', '%3A').replace('+', '%2B')}:7"
    # The same answer fetched again (later, in another session) is the same event; another answer is another.
    again = records.order_event(Origin("a1", "paradex", None), answer("o-1", "FILLED", seq=7), fetched_at=T1)
    assert again.key == event.key
    other = records.order_event(Origin("a1", "paradex", None), answer("o-1", "FILLED", seq=8), fetched_at=T1)
    assert other.key != event.key
    later = answer("o-1", "FILLED", at=T1 + timedelta(milliseconds=1))
    assert records.order_event(Origin("a1", "extended", None), later, fetched_at=T1).key.endswith(":")


# -------------------------------------------------------------------------------------------- rounds


async def test_an_order_the_venue_does_not_know_stays_and_is_asked_again_only_much_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    venue = FakeVenue({})
    submitted: list[Event] = []
    clock = Clock()
    metrics = IngestMetrics()
    resolver = make_resolver(venue, submitted, clock=clock, metrics=metrics)
    with caplog.at_level(logging.DEBUG, logger="statekeeper.ingest.resolve"):
        assert await resolver.resolve(["o-404"]) == {Outcome.NOT_FOUND: 1}
        for _ in range(RECHECK_FACTOR - 1):  # a round every interval: not asked again within ten of them
            clock.now += INTERVAL
            assert await resolver.resolve(["o-404"]) == {}
        assert venue.calls == ["o-404"]
        clock.now += INTERVAL
        assert await resolver.resolve(["o-404"]) == {Outcome.NOT_FOUND: 1}
    assert venue.calls == ["o-404", "o-404"]
    assert submitted == [], "a 404 never reads as a final state"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "logged once at WARNING"
    assert "o-404" in warnings[0].getMessage()
    assert resolved(metrics, Outcome.NOT_FOUND) == 2


async def test_an_unusable_answer_is_rejected_and_not_asked_again_within_the_interval() -> None:
    venue = FakeVenue({"o-1": [answer("o-2")]})  # the venue answers about another order
    submitted: list[Event] = []
    clock = Clock()
    resolver = make_resolver(venue, submitted, clock=clock)
    assert await resolver.resolve(["o-1"]) == {Outcome.REJECTED: 1}
    clock.now += INTERVAL
    assert await resolver.resolve(["o-1"]) == {}
    assert submitted == []
    assert venue.calls == ["o-1"]


async def test_a_transient_failure_ends_the_round_and_is_retried_next_round() -> None:
    venue = FakeVenue(
        {"o-1": [RetryableVenueError("HTTP 503 after 5 tries", status=503), answer("o-1")], "o-2": [answer("o-2")]}
    )
    submitted: list[Event] = []
    errors: list[str] = []
    metrics = IngestMetrics()
    clock = Clock()
    resolver = make_resolver(venue, submitted, clock=clock, errors=errors, metrics=metrics)
    assert await resolver.resolve(["o-1", "o-2"]) == {Outcome.FAILED: 1}
    assert venue.calls == ["o-1"], "the venue is failing: the round ends"
    assert len(errors) == 1 and "o-1" in errors[0]
    assert submitted == [], "a failed call never reads as the order gone"
    clock.now += INTERVAL  # the next round
    assert await resolver.resolve(["o-1", "o-2"]) == {Outcome.SUBMITTED: 2}
    assert venue.calls == ["o-1", "o-1", "o-2"]
    assert [e.key.split(":")[2] for e in submitted] == ["o-1", "o-2"]
    assert resolved(metrics, Outcome.FAILED) == 1
    assert resolved(metrics, Outcome.SUBMITTED) == 2


async def test_a_refused_credential_propagates() -> None:
    venue = FakeVenue({"o-1": [FatalVenueError("HTTP 401: unauthorised", status=401)]})
    with pytest.raises(FatalVenueError):
        await make_resolver(venue, []).resolve(["o-1", "o-2"])
    assert venue.calls == ["o-1"]


async def test_the_same_answer_twice_is_one_event(log: PostgresEventLog) -> None:
    changed = answer("o-1", "FILLED", at=T1 + timedelta(seconds=1))
    venue = FakeVenue({"o-1": [answer("o-1", "FILLED"), answer("o-1", "FILLED"), changed]})
    submitted: list[Event] = []
    clock = Clock()
    resolver = make_resolver(venue, submitted, clock=clock)
    assert await resolver.resolve(["o-1"]) == {Outcome.SUBMITTED: 1}
    clock.now += INTERVAL
    assert await resolver.resolve(["o-1"]) == {}, "an answered order is left to the projector for a while"
    clock.now += RECHECK_FACTOR * INTERVAL
    assert await resolver.resolve(["o-1"]) == {Outcome.UNCHANGED: 1}
    assert len(submitted) == 1, "the same state is not submitted again"
    clock.now += RECHECK_FACTOR * INTERVAL
    assert await resolver.resolve(["o-1"]) == {Outcome.SUBMITTED: 1}, "a different answer is a new event"
    assert venue.calls == ["o-1"] * 3
    # A daemon that forgot (restarted) and fetched the same answer again: the log keeps one event.
    forgetful: list[Event] = []
    await make_resolver(FakeVenue({"o-1": [answer("o-1", "FILLED")]}), forgetful).resolve(["o-1"])
    assert (await log.append(submitted[:1])).appended == 1
    again = await log.append(forgetful)
    assert (again.appended, again.duplicates, again.conflicts) == (0, 1, 0)
    assert (await log.append(submitted[1:])).appended == 1


# ------------------------------------------------------------------------------ against the database


async def closed_unconfirmed(log: PostgresEventLog, conn: asyncpg.Connection, *order_ids: str) -> None:
    """Orders a snapshot listed, then a snapshot that no longer lists them, folded: ``closed_unconfirmed``."""
    session = uuid4()
    await log.append([order_snapshot("a1", session, 1, *order_ids), order_snapshot("a1", session, 2, at=T1)])
    await project(conn, "a1")


async def project(conn: asyncpg.Connection, account: str) -> list[asyncpg.Record]:
    """The projector's step (what the daemon's projector will do): fold what the log holds, then the orders."""
    while (await store.apply_batch(conn, account, limit=10_000)).full:
        pass
    sql = "SELECT order_id, status, updated_at FROM orders WHERE account = $1 ORDER BY order_id"
    return list(await conn.fetch(sql, account))


async def test_statements_prepare(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for name, sql in STATEMENTS.items():
            assert await conn.prepare(sql) is not None, name


class FlakyPool:
    """A pool whose first ``failures`` acquisitions fail as if the database were down."""

    def __init__(self, pool: asyncpg.Pool, failures: int) -> None:
        self.pool = pool
        self.failures = failures
        self.attempts = 0

    def acquire(self) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionRefusedError("connection refused (test)")
        return self.pool.acquire()


async def test_run_survives_the_database_and_resolves_the_order(pool: asyncpg.Pool, log: PostgresEventLog) -> None:
    async with pool.acquire() as conn:
        await closed_unconfirmed(log, conn, "o-1", "o-2")
        assert [(r["order_id"], r["status"]) for r in await project(conn, "a1")] == [
            ("o-1", "closed_unconfirmed"), ("o-2", "closed_unconfirmed")
        ]  # fmt: skip
        venue = FakeVenue({"o-1": [answer("o-1", "FILLED")], "o-2": [answer("o-2", "CANCELLED", at=T0)]})
        submitted: list[Event] = []
        flaky = FlakyPool(pool, failures=3)
        resolver = make_resolver(venue, submitted, interval=0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(resolver.run(flaky, stop))
        try:
            await wait_until(lambda: len(submitted) == 2 or task.done(), within=10, what="both orders fetched")
            assert not task.done(), "a database error does not end the resolver"
            assert flaky.attempts > 3
        finally:
            stop.set()
            async with asyncio.timeout(5):
                await task
        await log.append(submitted)
        rows = await project(conn, "a1")
        # A later state replaces closed_unconfirmed, and so does a final state as old as the row.
        assert [(r["order_id"], r["status"]) for r in rows] == [("o-1", "FILLED"), ("o-2", "CANCELLED")]
        assert await conn.fetchval("SELECT count(*) FROM open_orders WHERE account = 'a1'") == 0


async def test_pages_move_on_so_unknown_orders_do_not_hide_the_others(
    pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    order_ids = [f"o-{n:03d}" for n in range(PAGE + 20)]
    known = order_ids[-1]  # the venue knows only the last one: a full first page of unknown ids comes before it
    async with pool.acquire() as conn:
        await closed_unconfirmed(log, conn, *order_ids)
    venue = FakeVenue({known: [answer(known, "FILLED")]})
    submitted: list[Event] = []
    resolver = make_resolver(venue, submitted)
    first = await resolver.pending(pool)
    second = await resolver.pending(pool)
    assert first == order_ids[:PAGE] and second == order_ids[PAGE:]
    assert await resolver.pending(pool) == order_ids[:PAGE], "after the last page, the first again"
    assert await resolver.resolve(first) == {Outcome.NOT_FOUND: PAGE}
    assert await resolver.resolve(second) == {Outcome.NOT_FOUND: len(second) - 1, Outcome.SUBMITTED: 1}
    assert [e.key.split(":")[2] for e in submitted] == [known]


async def test_run_stops_promptly(pool: asyncpg.Pool) -> None:
    resolver = make_resolver(FakeVenue({}), [], interval=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(resolver.run(pool, stop))
    await asyncio.sleep(0)  # one turn of the loop: it is waiting for its interval now
    assert not task.done()
    stop.set()
    async with asyncio.timeout(2):
        await task


# ------------------------------------------------------------------------------------- end to end

RATE = 150.0
GAP_FRAMES = 30
RESOLVE_INTERVAL = 0.2


class Activity:
    """Steps a simulator (``rate=0``) at ``RATE`` steps per second; :meth:`pause` holds it still."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.lock = asyncio.Lock()
        self.paused = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="activity")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.paused:
            self.resume()

    async def _run(self) -> None:
        while True:
            async with self.lock:
                await self.sim.step()
            await asyncio.sleep(1.0 / RATE)

    async def pause(self) -> None:
        """Once this returns, nothing happens at the venue until :meth:`resume`."""
        await self.lock.acquire()
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.lock.release()


def simulator(venue: Venue) -> SimulatorConfig:
    return SimulatorConfig(venue=venue, seed=11, accounts=("a1",), rate=0, step_ms=round(1000 / RATE))


def venue_status(venue: Venue, order: Order) -> str:
    """The status word the venue shows for the simulator's true order (Paradex: NEW, OPEN or CLOSED)."""
    if venue == "paradex":
        return {"NEW": "NEW", "PARTIALLY_FILLED": "OPEN"}.get(order.status, "CLOSED")
    return order.status


def mismatches(rows: list[asyncpg.Record], truth: Truth, venue: Venue) -> list[str]:
    """Projected orders whose state is not the venue's (``closed_unconfirmed`` is never the venue's)."""
    found = []
    for row in rows:
        order = truth.orders.get(row["order_id"])
        if order is None:
            found.append(f"{row['order_id']}: unknown to the venue")
        elif (row["status"], row["updated_at"]) != (venue_status(venue, order), order.updated_at):
            found.append(f"{row['order_id']}: {row['status']} at {row['updated_at']}, the venue says "
                         f"{venue_status(venue, order)} at {order.updated_at}")  # fmt: skip
    return found


def unconfirmed(rows: list[asyncpg.Record]) -> set[str]:
    return {r["order_id"] for r in rows if r["status"] == "closed_unconfirmed"}


async def reconnected(conn: asyncpg.Connection, sim: Simulator, after: int) -> bool:
    """A stream connection newer than the first ``after`` is the only one open, and its session's order snapshot
    (on the stream, or seeded from REST) is in the log."""
    if len(sim.frames("a1")) <= after or sim.connections("a1") != 1:
        return False
    sessions = await conn.fetch(
        "SELECT session FROM events WHERE account = 'a1' AND kind = 'session_opened'"
        " AND payload->>'transport' = 'websocket' ORDER BY id"
    )
    if len(sessions) != len(sim.frames("a1")):
        return False
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM events WHERE account = 'a1' AND kind = 'order' AND snapshot AND session = $1",
            sessions[-1]["session"],
        )
    )


def lost(sim: Simulator) -> int:
    """Frames the venue lost so far (gaps), over every connection."""
    return sum(len(connection.lost) for connection in sim.frames("a1"))


Folder = Literal["test", "daemon"]


@dataclass
class Projection:
    """Who folds the log into ``orders`` during an end-to-end test, and every order seen ``closed_unconfirmed``.

    ``test``: the daemon runs no projector (``[projector] workers = 0``) and the test folds the log itself, a step
    at a time (:func:`project`), so every row that is ever ``closed_unconfirmed`` is seen (the resolver can only
    read a row after the step that wrote it, and its answer is folded by a later step). ``daemon``: the daemon's
    own projector workers fold it, as in production; the test reads the table.
    """

    conn: asyncpg.Connection
    by: Folder
    seen: set[str] = field(default_factory=set)

    def configure(self, settings: Settings) -> Settings:
        if self.by == "daemon":
            return settings
        return settings.model_copy(update={"projector": ProjectorSettings(workers=0)})

    async def rows(self) -> list[asyncpg.Record]:
        if self.by == "test":
            rows = await project(self.conn, "a1")
        else:
            rows = list(await self.conn.fetch(ORDERS, "a1"))
        self.seen.update(unconfirmed(rows))
        return rows

    async def current(self) -> list[asyncpg.Record]:
        """The rows once everything the log holds now is folded."""
        if self.by == "daemon":
            head = await self.conn.fetchval("SELECT coalesce(max(id), 0) FROM events WHERE account = 'a1'")

            async def caught_up() -> bool:
                position = await self.conn.fetchval(
                    "SELECT position FROM projector_checkpoints WHERE account = 'a1' AND name = $1", store.CHECKPOINT
                )
                return position is not None and position >= head

            await wait_until(caught_up, within=15, what="the daemon's projector caught up")
        return await self.rows()

    async def vanished(self) -> bool:
        """Whether an order went ``closed_unconfirmed`` (seen, or already resolved by the daemon)."""
        await self.current()
        return bool(self.seen) or bool(resolved_in_log(list(await self.conn.fetch(KEYS))))

    async def settled(self, truth: Truth, venue: Venue) -> bool:
        rows = await self.rows()
        return bool(rows) and not mismatches(rows, truth, venue)


ORDERS = "SELECT order_id, status, updated_at FROM orders WHERE account = $1 ORDER BY order_id"
KEYS = "SELECT event_key FROM events WHERE account = 'a1' ORDER BY id"


async def lose_orders(projection: Projection, sim: Simulator, activity: Activity) -> None:
    """Make orders vanish: frames are lost (a gap) while orders are filled and cancelled, then the stream is
    dropped and comes back with a fresh snapshot (Extended's on the stream, Paradex's seeded from REST) that no
    longer lists them. Repeated until an order went ``closed_unconfirmed``; the activity is left paused.

    The fresh snapshot is taken while the venue holds still. A Paradex REST seed that races new orders can mark
    an order that is still working ``closed_unconfirmed`` (its stream update is logged before the snapshot, and
    the simulator's clock is behind the local one, so the snapshot's time guard does not save it); the venue's
    answer for it, the same state, does not reopen it (between two updates of one version the folds prefer a
    final state, and ``closed_unconfirmed`` counts as one). This test is not about that race."""
    async with asyncio.timeout(60):
        while True:
            target = lost(sim) + GAP_FRAMES
            sim.inject(FaultKind.GAP, "a1", count=GAP_FRAMES)
            await wait_until(partial(lambda at_least: lost(sim) >= at_least, target), within=15, what="frames lost")
            await activity.pause()
            sim.inject(FaultKind.DISCONNECT, "a1")
            await wait_until(partial(reconnected, projection.conn, sim, len(sim.frames("a1"))), within=15,
                             what="the stream back")  # fmt: skip
            if await projection.vanished():
                return
            activity.resume()


def resolved_in_log(events: list[asyncpg.Record]) -> list[asyncpg.Record]:
    return [e for e in events if e["event_key"].startswith("rest:order:")]


async def check_log(projection: Projection, venue: Venue, truth: Truth) -> None:
    events = await projection.conn.fetch(
        "SELECT event_key, kind, source, snapshot, venue_time, payload FROM events WHERE account = 'a1' ORDER BY id"
    )
    fetched = resolved_in_log(list(events))
    assert fetched, "the daemon fetched orders by id"
    for event in fetched:
        (order,) = event["payload"]["orders"]
        assert (event["kind"], event["source"], event["snapshot"]) == ("order", "rest", False)
        if projection.by == "test":
            assert order["order_id"] in projection.seen, "only orders that were closed_unconfirmed are fetched"
        true = truth.orders[order["order_id"]]
        assert true.status in ("FILLED", "CANCELLED"), "an order that vanished from a snapshot is closed"
        assert order["status"] == venue_status(venue, true)
        assert event["venue_time"] == true.updated_at
    keys = [e["event_key"] for e in fetched]
    assert len(keys) == len(set(keys))
    assert await projection.conn.fetchval("SELECT count(*) FROM event_conflicts WHERE account = 'a1'") == 0


def resolved_total(daemon: Daemon, outcome: Outcome) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "statekeeper_orders_resolved_total", {"account": "a1", "outcome": outcome.value}
    )
    return value or 0.0


@pytest.mark.parametrize("by", ["test", "daemon"])
@pytest.mark.parametrize("venue", VENUES)
async def test_orders_lost_while_the_stream_was_down_get_their_final_state(
    database_url: str, venue: Venue, by: Folder
) -> None:
    conn = await connect(database_url)
    projection = Projection(conn, by)
    try:
        async with await Simulator.start(simulator(venue)) as sim:
            settings = projection.configure(settings_for({"a1": sim}, resolve_interval_seconds=RESOLVE_INTERVAL))
            async with running_daemon(settings, database_url) as daemon:
                await wait_until(lambda: reconnected(conn, sim, 0), within=15, what="the first session")
                async with Activity(sim) as activity:  # the first snapshot is taken while nothing happens
                    await wait_until(lambda: len(sim.frames("a1")[-1].sent) > 50, within=15, what="activity")
                    await lose_orders(projection, sim, activity)
                    truth = sim.truth("a1")  # the activity is paused for good: the truth holds still
                    await wait_until(partial(projection.settled, truth, venue), within=30,
                                     what="every order in its venue's state")  # fmt: skip
                rows = await projection.current()
                assert unconfirmed(rows) == set()
                assert mismatches(rows, truth, venue) == []
                assert resolved_total(daemon, Outcome.SUBMITTED) >= max(1, len(projection.seen))
            await check_log(projection, venue, truth)
    finally:
        await conn.close()


@pytest.mark.parametrize("by", ["test", "daemon"])
@pytest.mark.parametrize("venue", VENUES)
async def test_rest_polling_resolves_orders_gone_between_polls(database_url: str, venue: Venue, by: Folder) -> None:
    conn = await connect(database_url)
    projection = Projection(conn, by)
    try:
        async with await Simulator.start(simulator(venue)) as sim:
            settings = settings_for({"a1": sim}, modes={"a1": "rest"}, resolve_interval_seconds=RESOLVE_INTERVAL,
                                    poll_interval_seconds=0.3)  # fmt: skip
            async with running_daemon(projection.configure(settings), database_url) as daemon:
                async with Activity(sim) as activity:
                    await wait_until(projection.vanished, within=30, what="an order gone between two polls")
                    await activity.pause()
                    truth = sim.truth("a1")
                    await wait_until(partial(projection.settled, truth, venue), within=30,
                                     what="every order in its venue's state")  # fmt: skip
                rows = await projection.current()
                assert unconfirmed(rows) == set()
                assert mismatches(rows, truth, venue) == []
                assert resolved_total(daemon, Outcome.SUBMITTED) >= max(1, len(projection.seen))
            await check_log(projection, venue, truth)
    finally:
        await conn.close()


async def test_a_refused_credential_while_resolving_stops_the_account(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await connect(database_url)
    streaming = asyncio.Event()
    fetched: list[str] = []

    async def refused(self: ExtendedDriver, order_id: str) -> Item[Order]:
        fetched.append(order_id)
        await streaming.wait()  # refused once the stream session is up: it ends with the account
        raise FatalVenueError("HTTP 401: the API key is refused", venue="extended", status=401)

    monkeypatch.setattr(ExtendedDriver, "order", refused)
    pool = await create_pool(database_url, max_size=2)
    try:
        await closed_unconfirmed(PostgresEventLog(pool), conn, "o-1")
        async with await Simulator.start(simulator("extended")) as sim:
            settings = settings_for({"a1": sim}, resolve_interval_seconds=0.05)
            settings = settings.model_copy(update={"projector": ProjectorSettings(workers=0)})
            async with running_daemon(settings, database_url) as daemon:
                await wait_until(lambda: reconnected(conn, sim, 0), within=15, what="the stream session")
                streaming.set()
                ingest = daemon.accounts["a1"].ingest
                assert ingest is not None
                await wait_until(lambda: ingest.state is AccountState.FATAL, within=15, what="the account stopped")
                assert ingest.error is not None and "401" in ingest.error
            sessions = await conn.fetch("SELECT close_reason FROM stream_sessions WHERE account = 'a1'")
        assert [s["close_reason"] for s in sessions] == ["fatal"]
        assert fetched == ["o-1"]
        assert unconfirmed(await project(conn, "a1")) == {"o-1"}, "a refusal never reads as a final state"
    finally:
        await pool.close()
        await conn.close()


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        make_resolver(FakeVenue({}), [], interval=0)


def test_resolve_times_are_utc() -> None:
    event = records.order_event(Origin("a1", "extended", None), answer("o-1"), fetched_at=datetime.now(UTC))
    assert event.received_at.tzinfo is not None and event.venue_time.tzinfo is not None
