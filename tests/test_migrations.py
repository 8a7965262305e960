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
