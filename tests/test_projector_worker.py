"""Projector workers against a real PostgreSQL: dividing accounts, exactly-once application, take-over, rebuild."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from statekeeper import statements
from statekeeper.cli import app
from statekeeper.config import ProjectorSettings
from statekeeper.database import connect
from statekeeper.errors import DatabaseError
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import (
    Balance,
    BalanceBody,
    Event,
    Fill,
    FillBody,
    Order,
    OrderBody,
    Position,
    PositionBody,
    PositionSide,
    Side,
    Source,
    natural_key,
)
from statekeeper.migrations import check
from statekeeper.projections import rebuild as rebuild_module
from statekeeper.projections import store
from statekeeper.projections.fold import AccountState, FoldEvent, fold
from statekeeper.projections.fold import needs as fold_needs
from statekeeper.projections.rebuild import RebuildError, rebuild
from statekeeper.projections.worker import STATEMENTS, ProjectorMetrics, ProjectorWorker, owner_of
from tests.ingest_support import wait_until

T0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
FAST = ProjectorSettings(batch_size=50, poll_interval_seconds=0.2, rebalance_interval_seconds=0.2)


def activity(account: str, count: int, *, seed: int, start: int = 0) -> list[Event]:
    """A deterministic mix of order updates, snapshots, fills, balances and positions for one account."""
    rng = random.Random(f"{account}:{seed}:{start}")
    events: list[Event] = []
    for n in range(start, start + count):
        at = T0 + timedelta(milliseconds=n * 10)
        roll = rng.random()
        snapshot = False
        order_ids = [f"{account}-o{rng.randrange(8)}"]
        if roll < 0.45:
            status = rng.choice(["NEW", "PARTIALLY_FILLED", "FILLED", "CANCELLED"])
            body: OrderBody | FillBody | BalanceBody | PositionBody = OrderBody(
                orders=tuple(
                    Order(order_id=oid, market="BTC-USD", side=Side.BUY, order_type="LIMIT", status=status,
                          price=Decimal("100.5"), qty=Decimal(3), filled_qty=Decimal(n % 3), updated_at=at)
                    for oid in order_ids
                )
            )  # fmt: skip
        elif roll < 0.5:
            snapshot = True
            body = OrderBody(
                orders=tuple(
                    Order(order_id=f"{account}-o{i}", market="BTC-USD", side=Side.SELL, order_type="LIMIT",
                          status="NEW", price=Decimal(101), qty=Decimal(1), updated_at=at)
                    for i in range(rng.randrange(3))
                )
            )  # fmt: skip
        elif roll < 0.75:
            fill_id = f"f{rng.randrange(n + 1)}"  # sometimes a fill seen before: a duplicate
            body = FillBody(
                fills=(
                    Fill(fill_id=fill_id, market="BTC-USD", side=Side.BUY, price=Decimal("100.5"), qty=Decimal(1),
                         fee=Decimal("0.01"), created_at=T0 + timedelta(seconds=int(fill_id[1:]))),
                )
            )  # fmt: skip
        elif roll < 0.9:
            body = BalanceBody(balances=(Balance(asset="USD", balance=Decimal(1000 + n), updated_at=at),))
        else:
            size = Decimal(rng.randrange(3))
            body = PositionBody(
                positions=(
                    Position(market=rng.choice(["BTC-USD", "ETH-USD"]), side=PositionSide.LONG, size=size,
                             updated_at=at),
                )
            )  # fmt: skip
        events.append(
            Event(
                account=account,
                venue="extended",
                source=Source.STREAM,
                body=body,
                snapshot=snapshot,
                venue_time=at,
                received_at=at,
                key=natural_key("test", n),
                raw="{}",
            )
        )
    return events


async def pure_tables(log: PostgresEventLog, account: str) -> dict[str, list[object]]:
    stored = await log.read(0, limit=1_000_000, accounts=[account])
    return fold(AccountState(account), [FoldEvent.of(e) for e in stored]).tables()  # type: ignore[return-value]


async def heads(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT account, max(id) AS head FROM events GROUP BY account")
    return {r["account"]: r["head"] for r in rows}


async def checkpoints(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT account, position FROM projector_checkpoints WHERE name = $1", store.CHECKPOINT)
    return {r["account"]: r["position"] for r in rows}


def caught_up(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await checkpoints(pool) == await heads(pool)

    return check


@asynccontextmanager
async def workers(
    url: str, pool: asyncpg.Pool, count: int, metrics: ProjectorMetrics | None = None
) -> AsyncIterator[list[tuple[ProjectorWorker, asyncio.Task[None]]]]:
    stop = asyncio.Event()
    running = []
    for number in range(count):
        worker = ProjectorWorker(url, pool, settings=FAST, stop=stop, metrics=metrics, name=f"w{number}")
        running.append((worker, asyncio.create_task(worker.run())))
    try:
        yield running
    finally:
        stop.set()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)


def applied_total(metrics: ProjectorMetrics) -> float:
    return sum(s.value for m in metrics.applied.collect() for s in m.samples if s.name.endswith("_total"))


# ------------------------------------------------------------------------------------------------ tests


async def test_every_statement_prepares(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for name, sql in {**store.STATEMENTS, **STATEMENTS}.items():
            assert await conn.prepare(sql) is not None, name


async def test_a_batch_whose_checkpoint_moved_meanwhile_writes_nothing(
    pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    """Two projectors of one account without the worker's account locks: the one that commits second finds the
    checkpoint moved, writes nothing, and applies the batch again from the new checkpoint."""
    await log.append(activity("race", 60, seed=5))
    async with pool.acquire() as first, pool.acquire() as second:
        checkpoint, events = await store.read_batch(first, "race", limit=20)
        state = fold(await store.load(first, "race", fold_needs(events)), events)
        overtaking = await store.apply_batch(second, "race", limit=30)
        assert overtaking.events == 30
        assert await store.commit_batch(first, state, checkpoint, events[-1].id) is None, "a stale batch committed"
        assert (await checkpoints(pool))["race"] == overtaking.position
        # The stale batch's rows were not written: the tables are the fold of the first 30 events exactly.
        stored = await log.read(0, limit=30, accounts=["race"])
        expected = fold(AccountState("race"), [FoldEvent.of(e) for e in stored]).tables()
        assert await store.read_tables(first, "race") == expected
        # apply_batch itself re-reads after losing the race; both go on to the end with each event applied once.
        applied = overtaking.events
        while (result := await store.apply_batch(first, "race", limit=7)).events:
            applied += result.events
    assert applied == 60
    async with pool.acquire() as conn:
        assert await store.read_tables(conn, "race") == await pure_tables(log, "race")


def test_owner_of_is_stable_and_spreads_accounts() -> None:
    accounts = [f"acc-{i}" for i in range(300)]
    owners = [owner_of(a, [0, 1, 2]) for a in accounts]
    assert owners == [owner_of(a, [2, 1, 0]) for a in accounts]
    assert min(owners.count(s) for s in (0, 1, 2)) > 60
    # A fourth worker takes accounts only from the others, never moves one between the first three.
    moved = [(before, owner_of(a, [0, 1, 2, 3])) for a, before in zip(accounts, owners, strict=True)]
    assert all(after in (before, 3) for before, after in moved)
    assert owner_of("x", []) is None


async def test_workers_divide_accounts_and_apply_each_event_once(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    accounts = [f"acc-{i}" for i in range(12)]
    for account in accounts:
        await log.append(activity(account, 120, seed=1))
    metrics = ProjectorMetrics(__import__("prometheus_client").CollectorRegistry())
    async with workers(database_url, pool, 3, metrics) as running:
        await wait_until(caught_up(pool), what="every account projected")
        # More events while they run: each goes to the account's one worker.
        for account in accounts:
            await log.append(activity(account, 40, seed=1, start=120))
        await wait_until(caught_up(pool), what="the new events projected")
        held = [set(w.held) for w, _ in running]
    assert sorted(a for h in held for a in h) == sorted(accounts), "each account held by exactly one worker"
    assert all(held), f"every worker has accounts: {held}"
    assert applied_total(metrics) == 12 * 160, "every event applied exactly once"
    async with pool.acquire() as conn:
        for account in accounts:
            assert await store.read_tables(conn, account) == await pure_tables(log, account)


async def analyzed(pool: asyncpg.Pool) -> dict[str, bool]:
    """Per projection table: does PostgreSQL have statistics for it (has it been analyzed)?"""
    rows = await pool.fetch("SELECT relname, reltuples >= 0 AS known FROM pg_class WHERE relname = ANY($1::text[])",
                            list(store.TABLES))  # fmt: skip
    return {r["relname"]: r["known"] for r in rows}


async def test_statistics_are_given_once_per_table_file_to_tables_with_rows(
    pool: asyncpg.Pool, log: PostgresEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await log.append(activity("stats", 60, seed=3))
    monkeypatch.setattr(store.Statistics, "INTERVAL_SECONDS", 0.0)
    statistics = store.Statistics()
    async with pool.acquire() as conn:
        assert not any((await analyzed(pool)).values()), "a new database's projection tables have no statistics"
        assert await statistics.refresh(conn) == [], "empty tables need none"
        await store.catch_up(conn, ["stats"], limit=1000)
        known = await analyzed(pool)
        assert known["orders"] and known["fills"] and known["balances"], known  # catch_up refreshed them
        assert not known["funding_payments"], "a table without rows is left alone"
        assert await statistics.refresh(conn) == []
        # Emptied and filled again (a new table file, no statistics): analyzed again, once.
        await conn.execute("TRUNCATE orders")
        await conn.execute("DELETE FROM projector_checkpoints")
        await store.apply_batch(conn, "stats", limit=1000)
        assert await statistics.refresh(conn) == ["orders"]
        assert await statistics.refresh(conn) == []
    # At most once per interval.
    monkeypatch.setattr(store.Statistics, "INTERVAL_SECONDS", 3600.0)
    later = store.Statistics()
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE orders")
        await conn.execute("DELETE FROM projector_checkpoints")
        await store.apply_batch(conn, "stats", limit=1000)
        assert await later.refresh(conn) == ["orders"]
        await conn.execute("TRUNCATE orders")
        await conn.execute("DELETE FROM projector_checkpoints")
        await store.apply_batch(conn, "stats", limit=1000)
        assert await later.refresh(conn) == [], "checked again within the interval"


async def test_a_batch_read_ahead_starts_from_its_checkpoint_or_is_read_again(
    pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append(activity("ahead", 120, seed=7))
    async with pool.acquire() as conn:
        asked: list[int] = []
        first = await store.apply_batch(conn, "ahead", limit=50, read_ahead=asked.append)
        assert first.full and asked == [first.position], "a full batch asks for the events after it"
        events = await store.read_events(conn, "ahead", after=first.position, limit=50)
        second = await store.apply_batch(conn, "ahead", limit=50, read=(first.checkpoint, events))
        assert (second.events, second.position) == (50, events[-1].id)
        # The same read-ahead again: its checkpoint has moved (the second batch), so the batch is read again.
        third = await store.apply_batch(conn, "ahead", limit=50, read=(first.checkpoint, events))
        assert (third.events, third.full) == (20, False)
        with pytest.raises(ValueError, match="up_to"):
            await store.apply_batch(conn, "ahead", limit=50, read=(third.checkpoint, events), up_to=third.position)
        assert await store.read_tables(conn, "ahead") == await pure_tables(log, "ahead"), "each event applied once"


async def test_workers_read_the_next_batch_ahead(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = ["ahead-1", "ahead-2", "ahead-3"]
    for account in accounts:
        await log.append(activity(account, 160, seed=8))
    read_ahead: list[tuple[str, int]] = []
    real = store.read_events

    async def reading(conn: asyncpg.Connection, account: str, *, after: int, limit: int) -> list[FoldEvent]:
        read_ahead.append((account, after))
        return await real(conn, account, after=after, limit=limit)

    monkeypatch.setattr(store, "read_events", reading)
    async with workers(database_url, pool, 1):
        await wait_until(caught_up(pool), what="every account projected")
    assert {account for account, _ in read_ahead} == set(accounts), read_ahead
    async with pool.acquire() as conn:
        for account in accounts:
            assert await store.read_tables(conn, account) == await pure_tables(log, account)


async def test_statistics_follow_a_table_that_grows(
    pool: asyncpg.Pool, log: PostgresEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table analyzed while small is analyzed again once it has doubled (and grown by GROWTH_PAGES), not before.
    monkeypatch.setattr(store.Statistics, "INTERVAL_SECONDS", 0.0)
    monkeypatch.setattr(store.Statistics, "GROWTH_PAGES", 2)
    statistics = store.Statistics()

    async def fills_statistics() -> tuple[int, float]:
        record = await pool.fetchrow("SELECT relpages, reltuples FROM pg_class WHERE relname = 'fills'")
        assert record is not None
        return record["relpages"], record["reltuples"]

    await log.append(activity("grows", 40, seed=5))
    async with pool.acquire() as conn:
        await store.apply_batch(conn, "grows", limit=1000)
        assert "fills" in await statistics.refresh(conn)
        pages, _ = await fills_statistics()
        assert await statistics.refresh(conn) == [], "statistics that are up to date are left alone"
        await log.append(activity("grows", 1500, seed=5, start=40))
        await store.apply_batch(conn, "grows", limit=2000)
        size = await conn.fetchval("SELECT pg_relation_size('fills') / current_setting('block_size')::int")
        assert size > 2 * pages + 2, f"the fills table grew from {pages} to {size} pages"
        assert "fills" in await statistics.refresh(conn), "a table that doubled is analyzed again"
        assert await fills_statistics() == (size, await conn.fetchval("SELECT count(*) FROM fills"))
        assert await statistics.refresh(conn) == []


async def test_batches_are_applied_with_generic_plans(database_url: str, log: PostgresEventLog) -> None:
    # Under plan_cache_mode = auto, PostgreSQL plans the load and commit statements anew at every batch once it
    # judges their generic plans (arrays of ids of unknown length) dearer than a custom one: the projector's
    # connection keeps the generic plans.
    await log.append(activity("generic", 120, seed=6))
    conn = await store.connect_applier(database_url)
    try:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
        for _ in range(40):
            await store.apply_batch(conn, "generic", limit=3)
        plans = await conn.fetch(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = ANY($1)",
            [store.READ_BATCH, store.LOAD],
        )
    finally:
        await conn.close()
    assert len(plans) == 2, plans
    assert all(p["custom_plans"] == 0 and p["generic_plans"] >= 40 for p in plans), plans


async def test_an_accounts_events_are_read_from_its_range_of_the_primary_key(
    database_url: str, log: PostgresEventLog
) -> None:
    # On a log that interleaves accounts, a page of one account's events must come from the primary key (account,
    # id), not from ix_events_id (every account in log order) filtered on the account, which reads the other
    # accounts' events in between (statekeeper.statements.ACCOUNT_AFTER).
    accounts = [f"mix-{i}" for i in range(8)]
    streams = {account: activity(account, 150, seed=7) for account in accounts}
    for start in range(0, 150, 5):
        await log.append([event for account in accounts for event in streams[account][start : start + 5]])
    conn = await store.connect_applier(database_url)
    try:
        await conn.execute("ANALYZE events")
        await conn.execute(store.ENSURE_CHECKPOINT, "mix-3", "projections")
        reads = {
            "read_batch": (store.READ_BATCH, "'mix-3', 'projections', 40, 9223372036854775807"),
            "read_events": (store.READ_EVENTS, "'mix-3', 0, 40"),
            "replay_page": (
                statements.REPLAY_PAGE,
                "'mix-3', 0, 9223372036854775807, NULL, 'venue', '{order,fill,balance,position}', 40",
            ),
            "chain_page": (statements.CHAIN_PAGE, "'mix-3', 0, 40"),
            "lag": (store.LAG, "'{mix-3}', 'projections'"),
        }
        for name, (sql, arguments) in reads.items():
            await conn.execute(f"PREPARE {name} AS {sql}")
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({arguments})")
            nodes = list(plan_nodes(plan[0]["Plan"]))
            indexes = {n["Index Name"] for n in nodes if "Index Name" in n} - {"pk_projector_checkpoints"}
            dropped = sum(n.get("Rows Removed by Filter", 0) for n in nodes if n.get("Relation Name") == "events")
            assert (indexes, dropped) == ({"pk_events"}, 0), (name, nodes)
    finally:
        await conn.close()


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


async def test_workers_give_the_planner_statistics_for_the_tables_they_fill(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append(activity("planner", 200, seed=4))

    async def orders_analyzed() -> bool:
        return (await analyzed(pool))["orders"]

    assert not await orders_analyzed()
    async with workers(database_url, pool, 1):
        await wait_until(caught_up(pool), what="the account projected")
        await wait_until(orders_analyzed, what="the orders table analyzed")


async def test_a_dead_workers_accounts_are_taken_over(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    accounts = [f"acc-{i}" for i in range(6)]
    for account in accounts:
        await log.append(activity(account, 30, seed=2))
    async with workers(database_url, pool, 2) as running:
        await wait_until(caught_up(pool), what="every account projected")
        (first, first_task), (second, _) = running
        victims = set(first.held)
        assert victims
        first_task.cancel()  # the worker dies; its connection and with it its claims go
        await asyncio.gather(first_task, return_exceptions=True)
        for account in accounts:
            await log.append(activity(account, 30, seed=2, start=30))

        async def taken_over() -> bool:
            return victims <= second.held and await caught_up(pool)()

        await wait_until(taken_over, what="the survivor takes the dead worker's accounts")
    async with pool.acquire() as conn:
        for account in accounts:
            assert await store.read_tables(conn, account) == await pure_tables(log, account)


async def test_a_worker_that_lost_the_database_takes_its_accounts_again_when_it_is_back(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    """The server ends every connection of the worker (a restart, a failover): its claims are gone with them. It
    claims its accounts again as soon as the database answers, not at its next scheduled rebalance."""
    accounts = [f"acc-{i}" for i in range(3)]
    for account in accounts:
        await log.append(activity(account, 20, seed=4))
    settings = FAST.model_copy(update={"rebalance_interval_seconds": 60.0})
    stop = asyncio.Event()
    worker = ProjectorWorker(database_url, pool, settings=settings, stop=stop, name="w0")
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(caught_up(pool), what="every account projected")
        assert worker.held == set(accounts)
        async with pool.acquire() as conn:
            ended = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        assert ended >= 2  # the worker's claims and its applier at least
        for account in accounts:
            await log.append(activity(account, 20, seed=4, start=20))

        async def back() -> bool:
            return worker.held == set(accounts) and worker.error is None and await caught_up(pool)()

        await wait_until(back, within=15, what="the worker's accounts claimed and projected again")
        assert not task.done()
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
    async with pool.acquire() as conn:
        for account in accounts:
            assert await store.read_tables(conn, account) == await pure_tables(log, account)


def lag_series(metrics: ProjectorMetrics) -> dict[str, tuple[float, float]]:
    """Each account's (lag in events, lag in seconds) as the worker's /metrics shows them."""
    found: dict[str, dict[str, float]] = {}
    for gauge in (metrics.lag_events, metrics.lag_seconds):
        for family in gauge.collect():
            for sample in family.samples:
                found.setdefault(sample.labels["account"], {})[sample.name] = sample.value
    return {
        a: (v["statekeeper_projector_lag_events"], v["statekeeper_projector_lag_seconds"]) for a, v in found.items()
    }


async def test_metrics_show_the_lag_of_a_stalled_projector(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append(activity("stalled", 100, seed=3))  # two full batches: nothing left after the second
    metrics = ProjectorMetrics(__import__("prometheus_client").CollectorRegistry())
    async with workers(database_url, pool, 1, metrics):
        await wait_until(caught_up(pool), what="the account projected")
        await wait_until(lambda: lag_series(metrics).get("stalled") == (0, 0), what="no lag once caught up")
        blocker = await connect(database_url)
        try:
            async with blocker.transaction():
                # The worker's next commit waits for this lock: the projector is stalled, not failing.
                await blocker.execute("LOCK projector_checkpoints IN SHARE MODE")
                await log.append(activity("stalled", 30, seed=3, start=100))

                def behind() -> bool:
                    events, seconds = lag_series(metrics).get("stalled", (0, 0))
                    return events == 30 and seconds > 0

                await wait_until(behind, what="the stalled projector's lag in /metrics")
        finally:
            await blocker.close()
        await wait_until(lambda: lag_series(metrics).get("stalled") == (0, 0), what="no lag once it goes on")


async def test_metrics_show_the_lag_only_of_the_accounts_a_worker_holds(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    accounts = {f"acc-{i}" for i in range(6)}
    for account in sorted(accounts):
        await log.append(activity(account, 20, seed=5))
    stop = asyncio.Event()
    first_metrics, second_metrics = (
        ProjectorMetrics(__import__("prometheus_client").CollectorRegistry()) for _ in "12"
    )
    first = ProjectorWorker(database_url, pool, settings=FAST, stop=stop, metrics=first_metrics, name="first")
    second = ProjectorWorker(database_url, pool, settings=FAST, stop=stop, metrics=second_metrics, name="second")
    tasks = [asyncio.create_task(first.run())]
    try:
        await wait_until(lambda: set(lag_series(first_metrics)) == accounts, what="the first worker's lag series")
        tasks.append(asyncio.create_task(second.run()))

        def divided() -> bool:
            shown = set(lag_series(first_metrics)), set(lag_series(second_metrics))
            return bool(second.held) and shown == (first.held, second.held) and first.held | second.held == accounts

        await wait_until(divided, what="each worker showing the lag of its own accounts only")
        assert not first.held & second.held
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_an_account_with_new_events_does_not_wait_for_another_accounts_backlog(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append(activity("live", 5, seed=8))
    for start in range(0, 4000, 500):
        await log.append(activity("backlog", 500, seed=8, start=start))
    settings = ProjectorSettings(batch_size=5, poll_interval_seconds=0.2, rebalance_interval_seconds=0.2)
    stop = asyncio.Event()
    worker = ProjectorWorker(database_url, pool, settings=settings, stop=stop, name="one")
    task = asyncio.create_task(worker.run())
    try:

        async def backlog_begun() -> bool:
            return (await checkpoints(pool)).get("backlog", 0) > 0

        await wait_until(backlog_begun, what="the backlog being applied")
        await log.append(activity("live", 5, seed=8, start=5))
        live_head = (await heads(pool))["live"]

        async def live_applied() -> bool:
            return (await checkpoints(pool)).get("live") == live_head

        await wait_until(live_applied, what="the live account's new events applied")
        assert (await checkpoints(pool))["backlog"] < (await heads(pool))["backlog"], "before the backlog's end"
    finally:
        stop.set()
        await task


async def test_a_worker_without_the_privileges_it_needs_stops_with_the_reason(
    pool: asyncpg.Pool, log: PostgresEventLog, login_as: Callable[..., Awaitable[str]]
) -> None:
    # Trying again cannot give a login privileges: no reconnecting in a loop, an error for the supervisor to report.
    await log.append(activity("acc", 5, seed=1))
    url = await login_as("statekeeper_auditor")
    worker = ProjectorWorker(url, pool, settings=FAST, stop=asyncio.Event(), name="auditor")
    with pytest.raises(DatabaseError, match="InsufficientPrivilegeError: permission denied for table"):
        await asyncio.wait_for(worker.run(), 30)


async def test_workers_in_another_process_share_the_accounts(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    accounts = [f"acc-{i}" for i in range(10)]
    for account in accounts:
        await log.append(activity(account, 50, seed=3))
    env = {**os.environ, "STATEKEEPER_DATABASE_URL": database_url, "STATEKEEPER_INGEST_METRICS_PORT": "0",
           "STATEKEEPER_PROJECTOR_REBALANCE_INTERVAL_SECONDS": "0.2"}  # fmt: skip
    other = subprocess.Popen(  # noqa: ASYNC220 - a child process for the test's whole length
        [sys.executable, "-m", "statekeeper", "project"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        async def two_slots() -> bool:
            return len(await pool.fetch(STATEMENTS["live_slots"])) == 1

        await wait_until(two_slots, what="the other process holds a slot")
        async with workers(database_url, pool, 1) as running:
            for account in accounts:
                await log.append(activity(account, 50, seed=3, start=50))

            async def divided() -> bool:
                mine = running[0][0].held
                return 0 < len(mine) < len(accounts) and await caught_up(pool)()

            await wait_until(divided, what="the accounts divided between the processes and projected")
    finally:
        other.terminate()
        output, _ = other.communicate(timeout=60)
    assert other.returncode == 0, output.decode()
    async with pool.acquire() as conn:
        for account in accounts:
            assert await store.read_tables(conn, account) == await pure_tables(log, account)


async def test_rebuild_swaps_in_tables_equal_to_the_log_while_appends_go_on(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    accounts = ["r1", "r2", "r3"]
    for account in accounts:
        await log.append(activity(account, 300, seed=4))
    stop_appending = asyncio.Event()

    async def append_forever() -> int:
        n = 300
        while not stop_appending.is_set():
            for account in accounts:
                await log.append(activity(account, 5, seed=4, start=n))
            n += 5
        return n

    async with workers(database_url, pool, 1):
        await wait_until(caught_up(pool), what="projected once")
        # Damage the live projection: the rebuild, a pure function of the log, must repair it.
        await pool.execute("UPDATE balances SET balance = -1 WHERE account = 'r1'")
        await pool.execute("DELETE FROM fills WHERE account = 'r2'")
        appender = asyncio.create_task(append_forever())
        messages: list[str] = []
        report = await rebuild(database_url, batch_size=100, progress=messages.append)
        stop_appending.set()
        await appender
        await wait_until(caught_up(pool), what="the live worker catches up after the swap")
    assert report.accounts == tuple(accounts)
    assert report.events >= 900
    assert messages[-1].startswith("rebuilt 3 accounts")
    async with pool.acquire() as conn:
        for account in accounts:
            assert await store.read_tables(conn, account) == await pure_tables(log, account)
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'statekeeper_rebuild'") == 0
    assert await check(database_url) == []


async def test_a_rebuild_does_not_queue_the_projectors_behind_a_held_lock(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the swap waits for its lock, every live commit queues behind it: it waits briefly, lets them go on, and
    # asks again; it gives up, the live tables untouched, if the lock never comes.
    monkeypatch.setattr(rebuild_module, "SWAP_LOCK_TIMEOUT", "SET LOCAL lock_timeout = '100ms'")
    monkeypatch.setattr(rebuild_module, "SWAP_ATTEMPTS", 3)
    await log.append(activity("l1", 30, seed=4))
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK projector_checkpoints IN ROW EXCLUSIVE MODE")
            with pytest.raises(RebuildError, match="could not lock projector_checkpoints in 3 tries"):
                await rebuild(database_url, progress=lambda _: None)
        assert await pool.fetchval("SELECT count(*) FROM projector_checkpoints") == 0
        assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'statekeeper_rebuild'") == 0
        messages: list[str] = []
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK projector_checkpoints IN ROW EXCLUSIVE MODE")
        rebuilding = asyncio.create_task(rebuild(database_url, progress=messages.append))
        await wait_until(lambda: any("the swap waited" in m for m in messages), what="the swap waiting once")
        await transaction.rollback()
        report = await rebuilding
    finally:
        await blocker.close()
    assert report.accounts == ("l1",)
    async with pool.acquire() as conn:
        assert await store.read_tables(conn, "l1") == await pure_tables(log, "l1")


async def test_project_once_and_rebuild_from_the_command_line(database_url: str, log: PostgresEventLog) -> None:
    await log.append(activity("c1", 40, seed=5) + activity("c2", 40, seed=5))
    runner = CliRunner()
    env = {"STATEKEEPER_DATABASE_URL": database_url}
    result = await asyncio.to_thread(runner.invoke, app, ["project", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert "applied 80 events to the projections of 2 accounts" in result.output
    result = await asyncio.to_thread(runner.invoke, app, ["project", "--rebuild", "--account", "c2"], env=env)
    assert result.exit_code == 0, result.output
    assert "rebuilt 1 accounts: 40 events" in result.output
    result = await asyncio.to_thread(runner.invoke, app, ["project", "--account", "c2"], env=env)
    assert result.exit_code == 2
    assert "--account needs --once or --rebuild" in result.output
    for option in ("--once", "--rebuild"):  # a mistyped account is an error, not an empty success
        result = await asyncio.to_thread(runner.invoke, app, ["project", option, "--account", "c3"], env=env)
        assert result.exit_code == 2, result.output
        assert "account 'c3' has no events in the log" in result.output
    conn = await connect(database_url)
    try:
        for account in ("c1", "c2"):
            assert await store.read_tables(conn, account) == await pure_tables(log, account)
    finally:
        await conn.close()


async def test_project_as_a_login_without_the_privileges_says_so(
    database_url: str, log: PostgresEventLog, login_as: Callable[..., Awaitable[str]]
) -> None:
    await log.append(activity("c1", 5, seed=5))
    env = {"STATEKEEPER_DATABASE_URL": await login_as("statekeeper_auditor")}
    for options in (["--once"], ["--rebuild"]):
        result = await asyncio.to_thread(CliRunner().invoke, app, ["project", *options], env=env)
        assert result.exit_code == 2, result.output
        assert "the database refused: permission denied for" in result.output
        assert "Traceback" not in result.output


async def test_sigterm_stops_a_rebuild_which_drops_its_tables(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append(activity("t1", 50, seed=5))
    env = {**os.environ, "STATEKEEPER_DATABASE_URL": database_url}
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK projector_checkpoints IN ROW EXCLUSIVE MODE")  # the swap waits for it
            rebuilding = subprocess.Popen(  # noqa: ASYNC220 - the command under test
                [sys.executable, "-m", "statekeeper", "project", "--rebuild"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            try:

                async def swap_waiting() -> bool:
                    return bool(await pool.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE relation = 'projector_checkpoints'::regclass "
                        "AND NOT granted"
                    ))  # fmt: skip

                await wait_until(swap_waiting, what="the rebuild waiting to swap its tables in")
                rebuilding.send_signal(signal.SIGTERM)
                output, _ = await asyncio.to_thread(rebuilding.communicate, timeout=30)
            finally:
                if rebuilding.poll() is None:
                    rebuilding.kill()
    finally:
        await blocker.close()
    assert rebuilding.returncode == 143, output
    assert "terminated (SIGTERM)" in output and "Traceback" not in output
    assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'statekeeper_rebuild'") == 0
    assert await pool.fetchval("SELECT count(*) FROM projector_checkpoints") == 0, "the live tables are untouched"


async def test_db_check_finds_a_missing_view(database_url: str, pool: asyncpg.Pool) -> None:
    await pool.execute("DROP VIEW account_summary")
    problems = await check(database_url)
    assert any("view account_summary is missing" in p for p in problems), problems


@pytest.mark.parametrize("venue_reports_margins", [False, True])
async def test_account_summary_view(pool: asyncpg.Pool, log: PostgresEventLog, venue_reports_margins: bool) -> None:
    await log.append(activity("s1", 200, seed=6))
    async with pool.acquire() as conn:
        await store.catch_up(conn, ["s1"], limit=1000)
        if venue_reports_margins:
            await conn.execute(
                "INSERT INTO account_margins (account, venue, equity, free_collateral, updated_at, event_id) "
                "VALUES ('s1', 'paradex', 5000, 4000, now(), 1)"
            )
        row = await conn.fetchrow("SELECT * FROM account_summary WHERE account = 's1'")
        open_orders = await conn.fetchval("SELECT count(*) FROM open_orders WHERE account = 's1'")
        balance = await conn.fetchval("SELECT balance FROM balances WHERE account = 's1'")
    assert row is not None
    assert row["open_orders"] == open_orders
    assert row["venue"] == "extended"
    assert row["stream_state"] == "none"
    assert row["last_event_id"] == (await heads(pool))["s1"]
    if venue_reports_margins:
        assert (row["equity"], row["available_balance"]) == (5000, 4000)
    else:
        assert balance is not None
        assert row["equity"] is None  # the test balances carry no equity figure


async def test_an_event_the_folds_cannot_read_stops_only_its_account(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append(activity("good", 20, seed=7) + activity("bad", 5, seed=7))
    # A payload that cannot have passed the event model (no "orders"): only a bug or a hand-made row could do it.
    await pool.execute(
        "INSERT INTO events (account, venue, event_key, kind, snapshot, source, venue_time, received_at, payload, "
        "content_hash) VALUES ('bad', 'extended', 'poison', 'order', false, 'stream', now(), now(), '{}', "
        "sha256('x'))"
    )
    await log.append(activity("good", 20, seed=7, start=20) + activity("bad", 5, seed=7, start=5))
    metrics = ProjectorMetrics(__import__("prometheus_client").CollectorRegistry())
    async with workers(database_url, pool, 1, metrics) as running:
        worker = running[0][0]

        async def good_done_bad_failing() -> bool:
            done = (await checkpoints(pool)).get("good") == (await heads(pool))["good"]
            return done and "bad" in worker.failing

        await wait_until(good_done_bad_failing, what="the good account projected, the bad one failing")
        assert "KeyError" in worker.failing["bad"]

        async def tried_again() -> bool:
            errors = metrics.registry.get_sample_value("statekeeper_projector_errors_total", {"account": "bad"})
            return (errors or 0) >= 3

        await wait_until(tried_again, what="the failing account tried again at the rebalances, with no new event")
        assert not running[0][1].done(), "the worker goes on"
    position = (await checkpoints(pool))["bad"]
    poison = await pool.fetchval("SELECT id FROM events WHERE event_key = 'poison'")
    assert position < poison, "nothing at or after the unreadable event was applied"
