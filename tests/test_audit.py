"""The hash chain: maintained on every append (concurrent ones included), recomputed from the stored rows alone,
broken by any change a superuser makes past the append-only trigger, established by the migration for events
stored before it, and reported by ``statekeeper verify-log`` with the first broken link's position."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from typer.testing import CliRunner

from statekeeper.audit.chain import GENESIS, stored_link
from statekeeper.audit.verify_log import ChainReport, verify_account
from statekeeper.cli import app
from statekeeper.database import connect, create_pool
from statekeeper.eventlog import PostgresEventLog, chain_link, copy_record
from statekeeper.events import Balance, BalanceBody, Event, Fill, FillBody, Side, Source, encode_event, natural_key
from statekeeper.migrations import upgrade
from statekeeper.statements import COPY_COLUMNS

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def fills(account: str, count: int, *, start: int = 0) -> list[Event]:
    return [
        Event(
            account=account,
            venue="extended",
            source=Source.REST,
            body=FillBody(
                fills=(
                    Fill(
                        fill_id=str(n),
                        market="BTC-USD",
                        side=Side.BUY,
                        price=Decimal("58850.5"),
                        qty=Decimal("0.01"),
                        fee=Decimal("0.1"),
                        created_at=T0 + timedelta(seconds=n),
                    ),
                )
            ),
            venue_time=T0 + timedelta(seconds=n),
            received_at=T0 + timedelta(seconds=n, milliseconds=5),
            key=natural_key("fill", n),
            raw=f'{{"id":{n}}}',
        )
        for n in range(start, start + count)
    ]


async def check(conn: asyncpg.Connection, account: str) -> ChainReport:
    return await verify_account(conn, account, page_size=7)  # small pages: the chain goes on across them


async def ids(conn: asyncpg.Connection, account: str) -> list[int]:
    return [r["id"] for r in await conn.fetch("SELECT id FROM events WHERE account = $1 ORDER BY id", account)]


async def as_superuser(conn: asyncpg.Connection, statement: str, *args: object) -> None:
    """What a superuser can do: switch the append-only trigger off, change the log, switch it on again."""
    async with conn.transaction():
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute(statement, *args)
        await conn.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only")


async def test_appends_link_every_event_to_the_one_before_it(log: PostgresEventLog, database_url: str) -> None:
    await log.append(fills("a", 10) + fills("b", 4))
    await log.append(fills("a", 10, start=5))  # five duplicates, five new
    await log.append(fills("b", 3, start=4) + fills("a", 2, start=15))
    conn = await connect(database_url)
    try:
        for account, count in (("a", 17), ("b", 7)):
            report = await check(conn, account)
            assert report.ok, report.broken
            assert report.events == count
            rows = await conn.fetch("SELECT * FROM events WHERE account = $1 ORDER BY id", account)
            previous = GENESIS
            for row in rows:  # recomputed from the row alone
                assert bytes(row["chain_hash"]) == stored_link(previous, row)
                previous = bytes(row["chain_hash"])
            assert report.tip == previous
            assert report.last_position == rows[-1]["id"]
    finally:
        await conn.close()


async def test_concurrent_appends_keep_each_chain_whole(log: PostgresEventLog, database_url: str) -> None:
    async def appender(n: int) -> None:
        for batch in range(5):
            await log.append(fills("shared", 3, start=n * 100 + batch * 3) + fills(f"own-{n}", 2, start=batch * 2))

    await asyncio.gather(*(appender(n) for n in range(4)))
    conn = await connect(database_url)
    try:
        for account in ("shared", "own-0", "own-3"):
            report = await check(conn, account)
            assert report.ok, (account, report.broken)
        assert (await check(conn, "shared")).events == 60
    finally:
        await conn.close()


async def test_verify_log_finds_each_kind_of_tampering(log: PostgresEventLog, database_url: str) -> None:
    for account in ("payload", "raw", "rehashed", "deleted", "inserted"):
        await log.append(fills(account, 12))
    conn = await connect(database_url)
    try:
        # the payload changed (a fill's price): its content no longer gives its content hash
        target = (await ids(conn, "payload"))[5]
        await as_superuser(conn, "UPDATE events SET payload = jsonb_set(payload, '{fills,0,price}', '\"1\"') "
                                 "WHERE account = 'payload' AND id = $1", target)  # fmt: skip
        assert (report := await check(conn, "payload")).broken is not None
        assert report.broken.position == target
        assert "content" in report.broken.reason
        assert report.events == 12

        # the raw frame changed: the link no longer matches
        target = (await ids(conn, "raw"))[3]
        await as_superuser(conn, "UPDATE events SET raw = '{}' WHERE account = 'raw' AND id = $1", target)
        assert (report := await check(conn, "raw")).broken is not None
        assert report.broken.position == target
        assert "chain link" in report.broken.reason

        # altered with both hashes recomputed: the next event's link (over the old one) breaks
        positions = await ids(conn, "rehashed")
        row = dict(await conn.fetchrow("SELECT * FROM events WHERE id = $1", positions[6]))
        previous = bytes(await conn.fetchval("SELECT chain_hash FROM events WHERE id = $1", positions[5]))
        row["received_at"] = row["received_at"] + timedelta(hours=1)
        await as_superuser(conn, "UPDATE events SET received_at = $2, chain_hash = $3 WHERE id = $1",
                           positions[6], row["received_at"], stored_link(previous, row))  # fmt: skip
        assert (report := await check(conn, "rehashed")).broken is not None
        assert report.broken.position == positions[7]

        # an event deleted: the one after it breaks
        positions = await ids(conn, "deleted")
        await as_superuser(conn, "DELETE FROM events WHERE id = $1", positions[4])
        assert (report := await check(conn, "deleted")).broken is not None
        assert report.broken.position == positions[5]
        assert report.events == 11

        # a row inserted with plain SQL, past the append API: no link
        event = fills("inserted", 1, start=99)[0]
        await conn.execute(
            f"INSERT INTO events ({', '.join(COPY_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
            "$12, $13)",
            *copy_record(encode_event(event)),
        )
        assert (report := await check(conn, "inserted")).broken is not None
        assert report.broken.position == (await ids(conn, "inserted"))[-1]
        assert "no chain link" in report.broken.reason

        # the command: exit 1, each account's first broken link with its position
        result = await asyncio.to_thread(
            CliRunner().invoke, app, ["verify-log"], env={"STATEKEEPER_DATABASE_URL": database_url}
        )
        assert result.exit_code == 1
        assert f"raw: broken link at position {target}" in result.output
        intact = await asyncio.to_thread(
            CliRunner().invoke, app, ["verify-log", "--account", "raw", "--account", "payload"],
            env={"STATEKEEPER_DATABASE_URL": database_url},
        )  # fmt: skip
        assert intact.exit_code == 1
    finally:
        await conn.close()


async def test_an_intact_log_verifies(log: PostgresEventLog, database_url: str) -> None:
    await log.append(fills("fine", 5))
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["verify-log"], env={"STATEKEEPER_DATABASE_URL": database_url}
    )
    assert result.exit_code == 0, result.output
    assert "fine: 5 events, chain intact" in result.output
    mistyped = await asyncio.to_thread(
        CliRunner().invoke, app, ["verify-log", "--account", "fnie"], env={"STATEKEEPER_DATABASE_URL": database_url}
    )
    assert mistyped.exit_code == 2, mistyped.output
    assert "account 'fnie' has no events in the log" in mistyped.output


async def test_the_migration_links_events_stored_before_it(empty_database_url: str) -> None:
    await upgrade(empty_database_url, "0004")
    conn = await connect(empty_database_url)
    try:
        events = fills("old", 6) + fills("older", 3)
        events.append(
            Event(
                account="old",
                venue="extended",
                source=Source.STREAM,
                body=BalanceBody(balances=(Balance(asset="USD", balance=Decimal("10.50")),)),
                venue_time=T0,
                received_at=T0,
                key="balance-1",
                raw=None,
            )
        )
        for event in events:  # the 0004 schema has no chain_hash: written as the append API then did
            await conn.execute(
                f"INSERT INTO events ({', '.join(COPY_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
                "$11, $12, $13)",
                *copy_record(encode_event(event)),
            )
        await upgrade(empty_database_url)
        for account, count in (("old", 7), ("older", 3)):
            report = await check(conn, account)
            assert report.ok, report.broken
            assert report.events == count
        # appends go on from the migrated chain, and the trigger is back
        pool_log = PostgresEventLog(await create_pool(empty_database_url, max_size=2))
        try:
            await pool_log.append(fills("old", 2, start=50))
        finally:
            await pool_log.pool.close()
        assert (await check(conn, "old")).ok
        tip = await conn.fetchval("SELECT chain_hash FROM events WHERE account = 'old' ORDER BY id DESC LIMIT 1")
        assert tip == chain_link(
            bytes(await conn.fetchval("SELECT chain_hash FROM events WHERE account = 'old' ORDER BY id DESC "
                                      "OFFSET 1 LIMIT 1")),
            encode_event(fills("old", 2, start=50)[1]),
        )  # fmt: skip
        try:
            await conn.execute("UPDATE events SET raw = 'x'")
        except asyncpg.InsufficientPrivilegeError:
            pass
        else:
            raise AssertionError("the append-only trigger is not back after the migration")
    finally:
        await conn.close()
