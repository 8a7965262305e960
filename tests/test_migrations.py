"""Migrations: upgrade from empty, downgrade, upgrade again; the migrated schema equals the declared metadata."""

from __future__ import annotations

import asyncpg
import pytest

from statekeeper.migrations import check, current_revisions, downgrade, head_revisions, upgrade
from statekeeper.schema import EVENTS_TRIGGERS, metadata


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        functions = await conn.fetch("SELECT proname FROM pg_proc WHERE proname LIKE 'statekeeper_%'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows} | {f"function:{r['proname']}" for r in functions}


async def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    url = empty_database_url
    assert await current_revisions(url) == ()
    problems = await check(url)
    assert len(problems) == 1 and "statekeeper db upgrade" in problems[0]

    await upgrade(url)
    assert await current_revisions(url) == head_revisions()
    assert await check(url) == []
    declared = set(metadata.tables)
    assert declared <= await _tables(url)

    await downgrade(url, "base")
    assert await current_revisions(url) == ()
    assert await _tables(url) <= {"alembic_version"}  # no table, no trigger function left behind

    await upgrade(url)
    assert await check(url) == []


async def test_check_reports_drift(database_url: str) -> None:
    assert await check(database_url) == []
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP INDEX ix_events_id")
        await conn.execute("ALTER TABLE stream_sessions ADD COLUMN surprise int")
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        await conn.execute("DROP TRIGGER events_notify ON events")
        await conn.execute("ALTER TABLE events DROP CONSTRAINT ck_events_kind")
        await conn.execute("ALTER TABLE events ADD CONSTRAINT ck_events_kind CHECK (kind IN ('order', 'bogus'))")
    finally:
        await conn.close()
    problems = "\n".join(await check(database_url))
    assert "ix_events_id" in problems
    assert "surprise" in problems
    assert "events_append_only" in problems and "ENABLE ALWAYS" in problems
    assert "events_notify on events is missing" in problems
    assert "ck_events_kind differs" in problems and "'bogus'" in problems and "'fill'" in problems


@pytest.mark.parametrize("trigger", sorted(EVENTS_TRIGGERS))
async def test_migrated_triggers_fire_always(database_url: str, trigger: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        state = await conn.fetchval(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'events'::regclass AND tgname = $1", trigger
        )
    finally:
        await conn.close()
    assert state == "A"


async def test_check_reports_projection_columns_out_of_order(database_url: str) -> None:
    """The projector writes rows as the table's composite type: a column moved to the end (dropped and added again)
    is a problem ``db check`` names, as a missing column is."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ALTER TABLE balances DROP COLUMN scope")
        await conn.execute("ALTER TABLE balances ADD COLUMN scope text")
    finally:
        await conn.close()
    problems = "\n".join(await check(database_url))
    assert "the columns of balances are not in the declared order" in problems
    assert "event_id, scope; expected account, venue, asset, scope, balance" in problems


async def test_balance_scope_migration_keeps_rows_and_privileges(empty_database_url: str) -> None:
    """Migration 0008 rebuilds ``balances`` (to put ``scope`` after ``asset``): the rows are kept, without a scope,
    every privilege on the table is granted again, and ``account_summary`` reads the new table."""
    url = empty_database_url
    await upgrade(url, "0007")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO balances (account, venue, asset, balance, equity, updated_at, event_id)"
            " VALUES ('acc', 'extended', 'USD', 12.5, 13, '2026-11-23T10:00:00Z', 7)"
        )
        await conn.execute(
            "INSERT INTO projector_checkpoints (account, name, position) VALUES ('acc', 'projections', 7)"
        )
        await conn.execute("GRANT SELECT, UPDATE ON balances TO PUBLIC")
        await upgrade(url)
        row = await conn.fetchrow("SELECT * FROM balances")
        privileges = {
            (r["grantee"], r["privilege_type"])
            for r in await conn.fetch(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants WHERE table_name = 'balances'"
            )
        }
        equity = await conn.fetchval("SELECT equity FROM account_summary WHERE account = 'acc'")
        tables = await conn.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'balances_%'")
    finally:
        await conn.close()
    assert row is not None and list(row.keys())[:5] == ["account", "venue", "asset", "scope", "balance"]
    assert (row["asset"], row["scope"], row["balance"], row["event_id"]) == ("USD", None, 12.5, 7)
    assert {("PUBLIC", "SELECT"), ("PUBLIC", "UPDATE"), ("statekeeper_projector", "DELETE"),
            ("statekeeper_reader", "SELECT"), ("statekeeper_auditor", "SELECT")} <= privileges  # fmt: skip
    assert equity == 13
    assert tables == 0
    assert await check(url) == []
