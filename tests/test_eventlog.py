"""The event log against a real PostgreSQL: append, read back, idempotency, conflicts, append-only, waking."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

import asyncpg
import pytest

from statekeeper import statements
from statekeeper.audit.verify_log import verify_log
from statekeeper.errors import InvalidEvent
from statekeeper.eventlog import (
    AppendOutcome,
    CheckpointError,
    EventLogError,
    EventLogUnavailable,
    LogWaiter,
    PostgresEventLog,
    advance_checkpoint,
    get_checkpoint,
)
from statekeeper.events import (
    Body,
    Event,
    EventKind,
    FillBody,
    ProtocolMessage,
    RejectedFrame,
    Source,
    VenueMessage,
    encode_event,
    natural_key,
)
from tests.factories import T0, fill, fill_event, order_snapshot
from tests.ingest_support import wait_until


async def test_append_and_read_back(log: PostgresEventLog) -> None:
    session = uuid4()
    events = [order_snapshot("acc-1", session, 1, "o-1", "o-2"), fill_event("acc-1", "f-1", session=session, seq=2)]
    result = await log.append(events)
    assert result.outcomes == (AppendOutcome.APPENDED, AppendOutcome.APPENDED)
    assert result.positions[0] < result.positions[1]
    assert result.last_position == result.positions[1]

    stored = await log.read(0)
    assert [e.id for e in stored] == list(result.positions)
    first, second = stored
    assert (first.account, first.venue, first.session, first.seq, first.kind, first.snapshot, first.source) == (
        "acc-1", "extended", session, 1, "order", True, "stream",
    )  # fmt: skip
    assert first.key == f"seq:{session}:1"
    assert first.body() == events[0].body
    assert second.body() == events[1].body
    assert second.raw == events[1].raw
    assert first.content_hash == encode_event(events[0]).content_hash
    assert first.venue_time == events[0].venue_time
    assert first.venue_time.tzinfo is not None and first.received_at.tzinfo is not None
    assert await log.head() == result.positions[1]


async def test_read_pages_and_filters_accounts(log: PostgresEventLog) -> None:
    await log.append([fill_event(f"acc-{i % 3}", str(i)) for i in range(30)])
    page1 = await log.read(0, limit=10)
    page2 = await log.read(page1[-1].id, limit=10)
    assert len(page1) == len(page2) == 10
    assert page1[-1].id < page2[0].id
    only = await log.read(0, accounts=["acc-1"])
    assert len(only) == 10
    assert {e.account for e in only} == {"acc-1"}


async def test_decimals_survive_exactly(log: PostgresEventLog) -> None:
    event = fill_event(qty="0.0900000000000000")
    await log.append([event])
    (stored,) = await log.read(0)
    body = stored.body()
    assert isinstance(body, FillBody)
    assert body.fills[0].qty == Decimal("0.0900000000000000")
    assert str(body.fills[0].qty) == "0.0900000000000000"


async def test_same_message_twice_is_one_event(log: PostgresEventLog) -> None:
    session = uuid4()
    event = fill_event(session=session, seq=1)
    first = await log.append([event])
    # received again, later, in another batch: a repeated frame
    again = event.model_copy(update={"received_at": event.received_at + timedelta(seconds=3)})
    second = await log.append([again])
    assert second.outcomes == (AppendOutcome.DUPLICATE,)
    assert second.positions == first.positions
    # and twice within one batch
    third = await log.append([fill_event(session=session, seq=2), fill_event(session=session, seq=2)])
    assert third.outcomes == (AppendOutcome.APPENDED, AppendOutcome.DUPLICATE)
    assert third.positions[0] == third.positions[1]
    assert len(await log.read(0)) == 2
    assert await log.pool.fetchval("SELECT count(*) FROM event_conflicts") == 0


async def test_same_key_different_content_is_a_recorded_conflict(log: PostgresEventLog) -> None:
    session = uuid4()
    original = fill_event(session=session, seq=5, qty="0.5")
    altered = fill_event(session=session, seq=5, qty="0.7")
    first = await log.append([original])
    result = await log.append([altered])
    assert result.outcomes == (AppendOutcome.CONFLICT,)
    assert result.positions == first.positions
    # the stored event is untouched
    (stored,) = await log.read(0)
    assert stored.body() == original.body

    # the conflict is kept, visible and counted
    rows = await log.pool.fetch("SELECT * FROM event_conflicts")
    assert len(rows) == 1
    row = rows[0]
    assert row["existing_event_id"] == first.positions[0]
    assert row["event_key"] == original.key
    assert row["occurrences"] == 1
    assert row["payload"]["fills"][0]["qty"] == "0.7"
    assert row["raw"] == altered.raw

    # the same conflicting message again, twice in one batch: counted, not a new row
    again = await log.append([altered, altered])
    assert again.conflicts == 2
    assert await log.pool.fetchval("SELECT occurrences FROM event_conflicts") == 3
    # a different conflicting content is a second row
    await log.append([fill_event(session=session, seq=5, qty="0.9")])
    assert await log.pool.fetchval("SELECT count(*) FROM event_conflicts") == 2


async def test_natural_keys_deduplicate_across_sessions(log: PostgresEventLog) -> None:
    # a REST item fetched twice, once per reconnect: one event
    a = fill_event("acc-1", "777")
    b = fill_event("acc-1", "777", received_at=T0 + timedelta(minutes=5), raw='{"other":"formatting"}')
    assert (await log.append([a])).appended == 1
    assert (await log.append([b])).outcomes == (AppendOutcome.DUPLICATE,)
    # the same key on another account is another event
    assert (await log.append([fill_event("acc-2", "777")])).appended == 1


async def test_invalid_event_fails_before_touching_the_database(log: PostgresEventLog) -> None:
    good = fill_event("acc-1", "1")
    bad = good.model_copy(
        update={"key": "k2", "body": FillBody(fills=(fill("1").model_copy(update={"market": "x\x00"}),))}
    )
    with pytest.raises(InvalidEvent):
        await log.append([good, bad])
    assert await log.head() == 0


async def test_append_joins_the_callers_transaction(log: PostgresEventLog) -> None:
    async with log.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        result = await log.append([fill_event("acc-1", "1")], connection=conn)
        assert result.appended == 1
        await transaction.rollback()
    assert await log.head() == 0


async def test_an_appending_transaction_holds_the_lock_from_its_begin(log: PostgresEventLog) -> None:
    """``appending``: the lock with the BEGIN; appends in it take no other; commit on exit, roll back on error."""
    async with log.pool.acquire() as conn:
        async with log.appending(conn):
            assert conn.is_in_transaction()
            other = asyncio.create_task(log.append([fill_event("acc-2", "2")]))  # another appender waits for the lock
            async with log.pool.acquire() as probe:
                waiting = (
                    "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND classid = 21323 AND NOT granted"
                )
                await wait_until(lambda: probe.fetchval(waiting), within=10, what="the other appender waiting")
            assert not other.done()
            result = await log.append([fill_event("acc-1", "1")], connection=conn)
            assert result.appended == 1
        assert not conn.is_in_transaction()
        assert (await other).appended == 1

        async def fail_inside() -> None:
            async with log.appending(conn):
                await log.append([fill_event("acc-1", "3")], connection=conn)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await fail_inside()
        assert not conn.is_in_transaction()
    assert [(e.account, e.key) for e in await log.read(0)] == [("acc-1", "fill:1:TRADE"), ("acc-2", "fill:2:TRADE")]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET kind = kind",
        "UPDATE events SET kind = kind WHERE false",  # refused even when nothing would change
        "DELETE FROM events",
        "DELETE FROM events WHERE id = -1",
        "TRUNCATE events",
        "TRUNCATE events CASCADE",
    ],
)
async def test_events_are_append_only(log: PostgresEventLog, statement: str) -> None:
    await log.append([fill_event("acc-1", "1")])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await log.pool.execute(statement)
    assert len(await log.read(0)) == 1


async def test_append_only_holds_in_replica_mode(log: PostgresEventLog) -> None:
    """session_replication_role = replica disables ordinary triggers; ours are ENABLE ALWAYS."""
    await log.append([fill_event("acc-1", "1")])
    async with log.pool.acquire() as conn:
        await conn.execute("SET session_replication_role = replica")
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM events")
        finally:
            await conn.execute("RESET session_replication_role")
    assert len(await log.read(0)) == 1


async def test_rejected_frames_keep_every_byte(log: PostgresEventLog) -> None:
    raw = b'{"type":"ORDER",\x00\xff\xfe not json'
    frame = RejectedFrame("acc-1", "extended", Source.STREAM, T0, "not JSON: unexpected byte 0x00", raw,
                          session=uuid4(), seq=12)  # fmt: skip
    (rejected_id,) = await log.reject([frame])
    row = await log.pool.fetchrow("SELECT * FROM rejected_frames WHERE id = $1", rejected_id)
    assert row is not None
    assert bytes(row["raw"]) == raw
    assert row["reason"] == frame.reason
    assert row["seq"] == 12
    assert row["session"] == frame.session
    assert await log.head() == 0  # rejected frames are not events


async def test_checkpoints_move_forward_only(log: PostgresEventLog) -> None:
    async with log.pool.acquire() as conn:
        assert await get_checkpoint(conn, name="balances", account="acc-1") == 0
        await advance_checkpoint(conn, name="balances", account="acc-1", position=10)
        await advance_checkpoint(conn, name="balances", account="acc-1", position=10)  # idempotent
        assert await get_checkpoint(conn, name="balances", account="acc-1") == 10
        with pytest.raises(CheckpointError, match="backwards"):
            await advance_checkpoint(conn, name="balances", account="acc-1", position=9)
        assert await get_checkpoint(conn, name="balances", account="acc-2") == 0


async def test_every_statement_prepares_against_the_schema(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for name, sql in statements.ALL.items():
            prepared = await conn.prepare(sql)
            assert prepared is not None, name


async def test_tail_is_woken_by_notify(database_url: str, log: PostgresEventLog) -> None:
    # A poll interval far longer than the test: only NOTIFY can deliver in time.
    async with LogWaiter(database_url, poll_interval=3600) as waiter:
        received: list[int] = []

        async def follow() -> None:
            async for batch in log.tail(0, waiter=waiter):
                received.extend(e.id for e in batch)
                if len(received) >= 3:
                    return

        follower = asyncio.create_task(follow())
        for i in range(3):
            await log.append([fill_event("acc-1", str(i))])
        await asyncio.wait_for(follower, timeout=30)
    assert received == sorted(received)
    assert len(received) == 3


async def test_waiter_falls_back_to_polling_without_a_database() -> None:
    waiter = LogWaiter("postgresql://nobody@127.0.0.1:1/none", poll_interval=0.01)
    assert await waiter.wait() is False
    await waiter.close()


async def test_lost_connection_is_reported_as_unavailable(log: PostgresEventLog) -> None:
    async with log.pool.acquire() as conn:
        await log.pool.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        with pytest.raises(EventLogUnavailable):
            await log.append([fill_event("acc-1", "1")], connection=conn)
    # the pool replaces the connection: the next append works
    assert (await log.append([fill_event("acc-1", "1")])).appended == 1


async def test_mixed_batch_positions_point_at_the_right_events(log: PostgresEventLog) -> None:
    stored = await log.append([fill_event("acc-1", "b"), fill_event("acc-1", "d", qty="1")])
    batch = [
        fill_event("acc-1", "a"),  # new
        fill_event("acc-1", "b"),  # already stored: duplicate
        fill_event("acc-2", "a"),  # new: same key, another account
        fill_event("acc-1", "a"),  # repeated within the batch: duplicate of the first
        fill_event("acc-1", "d", qty="2"),  # stored with other content: conflict
        fill_event("acc-1", "c"),  # new
    ]
    result = await log.append(batch)
    assert result.outcomes == (
        AppendOutcome.APPENDED, AppendOutcome.DUPLICATE, AppendOutcome.APPENDED,
        AppendOutcome.DUPLICATE, AppendOutcome.CONFLICT, AppendOutcome.APPENDED,
    )  # fmt: skip
    assert result.positions[1] == stored.positions[0]
    assert result.positions[4] == stored.positions[1]
    assert result.positions[3] == result.positions[0]
    by_position = {e.id: (e.account, e.key) for e in await log.read(0)}
    for event, position in zip(batch, result.positions, strict=True):
        assert by_position[position] == (event.account, event.key)
    new_positions = [p for o, p in zip(result.outcomes, result.positions, strict=True) if o is AppendOutcome.APPENDED]
    assert new_positions == sorted(new_positions)  # log order follows batch order


@pytest.mark.parametrize("size", [1, statements.COPY_FROM_ROWS - 1, statements.COPY_FROM_ROWS, 120])
async def test_both_ways_of_storing_give_positions_in_log_order_and_an_unbroken_chain(
    log: PostgresEventLog, pool: asyncpg.Pool, size: int
) -> None:
    """Under COPY_FROM_ROWS new rows an append is one INSERT ... RETURNING, from there COPY and a read back: either
    way the positions point at the right events, in batch order, and each account's hash chain links up."""
    await log.append([fill_event("acc-1", "before"), fill_event("acc-2", "before")])
    batch = [fill_event(f"acc-{1 + n % 2}", f"f-{n}") for n in range(size)]
    result = await log.append(batch)
    assert result.outcomes == (AppendOutcome.APPENDED,) * size
    assert list(result.positions) == sorted(result.positions)
    by_position = {e.id: (e.account, e.key) for e in await log.read(0)}
    assert [by_position[p] for p in result.positions] == [(e.account, e.key) for e in batch]
    async with pool.acquire() as conn:
        reports = await verify_log(conn, ["acc-1", "acc-2"])
    assert [r.broken for r in reports] == [None, None]
    assert sum(r.events for r in reports) == size + 2


async def test_append_refuses_a_longer_lived_snapshot(log: PostgresEventLog) -> None:
    async with log.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        with pytest.raises(EventLogError, match="READ COMMITTED"):
            await log.append([fill_event("acc-1", "1")], connection=conn)


async def test_the_schema_accepts_every_kind(log: PostgresEventLog) -> None:
    """The kind CHECK constraint is hand-migrated: every kind of the model must be storable."""
    bodies: list[Body] = [
        VenueMessage(message_type="DEPOSIT", data={"amount": "10", "asset": 1}),
        ProtocolMessage(method="subscribe", request_id=3, result={"channel": "orders.ALL"}),
    ]
    events = [
        Event(
            account="acc-1",
            venue="paradex",
            source=Source.STREAM,
            body=body,
            venue_time=T0,
            received_at=T0,
            key=natural_key("test", i),
        )
        for i, body in enumerate(bodies)
    ]
    assert (await log.append(events)).appended == 2
    stored = await log.read(0)
    assert [e.body() for e in stored] == bodies
    kinds = await log.pool.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_events_kind'"
    )
    for kind in EventKind:
        assert f"'{kind.value}'" in kinds
