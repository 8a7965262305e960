"""Invariant 6: a reader of ``id > checkpoint`` never skips an event committed late by a concurrent appender."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from statekeeper.database import create_pool
from statekeeper.embedded import bin_dir
from statekeeper.eventlog import LogWaiter, PostgresEventLog, advance_checkpoint, copy_record, get_checkpoint
from statekeeper.events import Event, encode_event
from statekeeper.statements import COPY_COLUMNS
from tests.conftest import PgServer, start_embedded
from tests.factories import fill_event

READER = "ordering-test"


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0, what: str = "condition") -> None:
    """Wait until ``check()`` is true, or fail after ``within`` seconds. Never sleeps and hopes."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.01)


async def waiting_on_append_lock(pool: asyncpg.Pool) -> int:
    """How many sessions are blocked on the append lock right now."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 21323 AND objid = 1 "
            "AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    )


Append = Callable[[PostgresEventLog, asyncpg.Connection, Event], Coroutine[Any, Any, int]]


async def api_append(log: PostgresEventLog, conn: asyncpg.Connection, event: Event) -> int:
    return (await log.append([event], connection=conn)).positions[0]


async def plain_insert(_: PostgresEventLog, conn: asyncpg.Connection, event: Event) -> int:
    """Another client writing with plain SQL: only the database's own trigger can serialise it."""
    position = await conn.fetchval(
        f"INSERT INTO events ({', '.join(COPY_COLUMNS)}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        *copy_record(encode_event(event)),
    )
    return int(position)


async def late_commit_scenario(log: PostgresEventLog, append: Append) -> tuple[int, int, list[int]]:
    """T1 draws a position and stays open; T2 appends after it; the reader reads; T1 commits; the reader reads.

    Returns (T1's position, T2's position, what the reader saw in its two reads).
    """
    pool = log.pool
    conn1, conn2 = await pool.acquire(), await pool.acquire()
    try:
        tx1 = conn1.transaction()
        await tx1.start()
        late = await append(log, conn1, fill_event("acc-1", "late"))

        t2 = asyncio.create_task(append(log, conn2, fill_event("acc-2", "early")))
        # T2 either finishes (nothing serialises it) or is seen waiting on the append lock: wait for one.
        await eventually(lambda: _done_or_waiting(t2, pool), what="T2 to finish or wait on the append lock")

        seen = [e.id for e in await log.read(0)]
        await tx1.commit()
        early = await asyncio.wait_for(t2, timeout=30)
    finally:
        await pool.release(conn1)
        await pool.release(conn2)
    checkpoint = seen[-1] if seen else 0
    seen += [e.id for e in await log.read(checkpoint)]
    return late, early, seen


async def _done_or_waiting(task: asyncio.Task[int], pool: asyncpg.Pool) -> bool:
    return task.done() or await waiting_on_append_lock(pool) > 0


@pytest.mark.parametrize("append", [api_append, plain_insert], ids=["append API", "plain INSERT"])
async def test_late_commit_is_never_skipped(log: PostgresEventLog, append: Append) -> None:
    late, early, seen = await late_commit_scenario(log, append)
    # T2 had to wait for T1, so its position comes after T1's, and the reader sees both, in order.
    assert late < early
    assert seen == [late, early]


async def test_without_the_append_lock_the_reader_would_skip(log: PostgresEventLog) -> None:
    """The negative control: without the trigger's lock, a plain INSERT commits past a late one, and is read
    before it, so a reader that moved its checkpoint past it never sees the late event."""
    await log.pool.execute("ALTER TABLE events DISABLE TRIGGER events_serialize_appends")
    late, early, seen = await late_commit_scenario(log, plain_insert)
    assert early > late  # T2 drew a later position but committed first ...
    assert late not in seen  # ... and the reader, past T2's position, never sees T1's event


Plan = list[list[tuple[int, bool, float]]]


def make_plan(seed: int, *, appenders: int = 8, batches: int = 25) -> Plan:
    """Per appender, per batch: (size, hold the transaction open?, for how long)."""
    rng = random.Random(seed)
    return [
        [(rng.randint(1, 40), rng.random() < 0.3, rng.uniform(0.005, 0.05)) for _ in range(batches)]
        for _ in range(appenders)
    ]


async def run_appenders(log: PostgresEventLog, plan: Plan, *, prefix: str) -> set[str]:
    """Concurrent appenders; some hold their transaction open for a while after drawing positions."""
    keys: set[str] = set()

    async def appender(number: int) -> None:
        for batch_number, (size, slow, hold) in enumerate(plan[number]):
            events = [fill_event(f"acc-{number % 4}", f"{prefix}-{number}-{batch_number}-{i}") for i in range(size)]
            keys.update(f"{e.account}/{e.key}" for e in events)
            async with log.pool.acquire() as conn, conn.transaction():
                await log.append(events, connection=conn)
                if slow:
                    await asyncio.sleep(hold)  # a deliberately slow commit: the late committer

    await asyncio.gather(*(appender(n) for n in range(len(plan))))
    return keys


async def follow(log: PostgresEventLog, url: str, expected: int, seen: list[tuple[int, str]]) -> None:
    """A tailing reader with a durable checkpoint, until it has seen ``expected`` events in all."""
    async with log.pool.acquire() as conn:
        position = await get_checkpoint(conn, name=READER, account="all")
    async with LogWaiter(url, poll_interval=0.05) as waiter:
        async for batch in log.tail(position, waiter=waiter, batch_size=97):
            seen.extend((e.id, f"{e.account}/{e.key}") for e in batch)
            async with log.pool.acquire() as conn:
                await advance_checkpoint(conn, name=READER, account="all", position=batch[-1].id)
            if len(seen) >= expected:
                return


def assert_seen_exactly_once_in_order(seen: list[tuple[int, str]], keys: set[str]) -> None:
    ids = [i for i, _ in seen]
    assert ids == sorted(ids), "the reader saw positions out of order"
    assert len(ids) == len(set(ids)), "the reader saw a position twice"
    seen_keys = [k for _, k in seen]
    assert len(seen_keys) == len(set(seen_keys)), "an event was delivered twice"
    assert set(seen_keys) == keys, f"missing: {sorted(keys - set(seen_keys))[:5]}"


async def stress(log: PostgresEventLog, url: str, *, seed: int, prefix: str, seen: list[tuple[int, str]],
                 already: int = 0) -> set[str]:  # fmt: skip
    plan = make_plan(seed)
    total = sum(size for batches in plan for size, _, _ in batches)
    reader = asyncio.create_task(follow(log, url, already + total, seen))
    keys = await run_appenders(log, plan, prefix=prefix)
    assert len(keys) == total
    await asyncio.wait_for(reader, timeout=120)
    return keys


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_slow_appenders_and_a_tailing_reader(log: PostgresEventLog, database_url: str,
                                                              seed: int) -> None:  # fmt: skip
    seen: list[tuple[int, str]] = []
    keys = await stress(log, database_url, seed=seed, prefix="a", seen=seen)
    assert_seen_exactly_once_in_order(seen, keys)


@pytest.mark.slow
async def test_order_holds_after_dump_and_restore_into_a_fresh_cluster(
    log: PostgresEventLog, database_url: str, pg_server: PgServer, tmp_path: Path
) -> None:
    seen: list[tuple[int, str]] = []
    before = await stress(log, database_url, seed=11, prefix="before", seen=seen)
    head_before = await log.head()

    dump = tmp_path / "statekeeper.dump"
    pg_dump = bin_dir() / "pg_dump"
    pg_restore = bin_dir() / "pg_restore"
    env = {"PGPASSWORD": pg_server.password} if pg_server.password else None
    await asyncio.to_thread(
        subprocess.run, [str(pg_dump), "--format=custom", f"--file={dump}", database_url], check=True, env=env
    )

    server, fresh = await asyncio.to_thread(start_embedded, tmp_path / "fresh-cluster")
    try:
        admin = await asyncpg.connect(fresh.url("postgres"))
        await admin.execute("CREATE DATABASE restored")
        await admin.close()
        restored_url = fresh.url("restored")
        restore = [
            str(pg_restore),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={restored_url}",
            str(dump),
        ]
        await asyncio.to_thread(subprocess.run, restore, check=True)

        pool = await create_pool(restored_url, max_size=10)
        try:
            restored = PostgresEventLog(pool)
            assert await restored.head() == head_before
            # the reader resumes from its restored checkpoint; appends continue on the new cluster
            after = await stress(restored, restored_url, seed=12, prefix="after", seen=seen, already=len(before))
            new_positions = [i for i, k in seen if k.split("/", 1)[1].startswith("fill:after")]
            assert min(new_positions) > head_before
            assert_seen_exactly_once_in_order(seen, before | after)
            # and the append-only rule came along with the dump
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute("DELETE FROM events")
        finally:
            await pool.close()
    finally:
        server.stop()
