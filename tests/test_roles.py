"""Database roles (migration 0007): each group role holds exactly its privileges, a reader cannot write, ingest
cannot rewrite the log, each part of the daemon runs with only its role, and the roles survive a downgrade of one
database while another still uses them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from statekeeper.database import connect, create_pool
from statekeeper.eventlog import PostgresEventLog
from statekeeper.ingest.daemon import Daemon
from statekeeper.migrations import check, downgrade, upgrade
from statekeeper.projections import store
from statekeeper.schema import PROJECTION_TABLES, VIEWS
from statekeeper.simulator import Simulator, SimulatorConfig
from tests.factories import fill_event
from tests.ingest_support import Activity, settings_for, wait_until

INGEST, PROJECTOR, RECONCILER, READER, AUDITOR = (
    "statekeeper_ingest",
    "statekeeper_projector",
    "statekeeper_reconciler",
    "statekeeper_reader",
    "statekeeper_auditor",
)
ROLES = (INGEST, PROJECTOR, RECONCILER, READER, AUDITOR)

PROJECTIONS = {t.name for t in PROJECTION_TABLES}
READ_MODELS = PROJECTIONS | set(VIEWS)
SEL, INS, UPD, DEL = "SELECT", "INSERT", "UPDATE", "DELETE"

# Written out again here, independently of the migration: a privilege granted or lost by mistake fails the test.
EXPECTED: dict[str, dict[str, set[str]]] = {
    INGEST: {
        "events": {SEL, INS},
        "event_conflicts": {SEL, INS, UPD},  # UPDATE of (occurrences, last_seen_at) only
        "rejected_frames": {SEL, INS},
        "stream_sessions": {SEL, INS, UPD},  # UPDATE of the closing columns only
        "orders": {SEL},
        "alembic_version": {SEL},
    },
    PROJECTOR: {
        "events": {SEL},
        **{t: {SEL, INS, UPD, DEL} for t in PROJECTIONS},
        "projector_checkpoints": {SEL, INS, UPD},
        "alembic_version": {SEL},
    },
    RECONCILER: {
        "events": {SEL, INS},
        "event_conflicts": {SEL, INS, UPD},
        "rejected_frames": {SEL, INS},
        "stream_sessions": {SEL},
        "projector_checkpoints": {SEL},
        **{t: {SEL} for t in READ_MODELS},
        "reconciliation_runs": {SEL, INS, UPD},
        "reconciliation_discrepancies": {SEL, INS, UPD},
        "alembic_version": {SEL},
    },
    READER: {t: {SEL} for t in READ_MODELS},
}


async def _relations(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'v')"
    )
    return sorted(r["relname"] for r in rows)


async def _privileges(conn: asyncpg.Connection, role: str, relation: str) -> set[str]:
    found = set()
    for privilege in (SEL, INS, UPD, DEL, "TRUNCATE"):
        # a column-level UPDATE counts as UPDATE here; which columns is checked apart
        table_level = await conn.fetchval("SELECT has_table_privilege($1, $2, $3)", role, relation, privilege)
        any_column = privilege in (INS, UPD) and await conn.fetchval(
            "SELECT has_any_column_privilege($1, $2, $3)", role, relation, privilege
        )
        if table_level or any_column:
            found.add(privilege)
    return found


async def test_each_role_holds_exactly_its_privileges(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        relations = await _relations(conn)
        for role in ROLES:
            assert await conn.fetchval("SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = $1", role), role
            for relation in relations:
                expected = EXPECTED.get(role, {}).get(relation, set()) if role != AUDITOR else {SEL}
                assert await _privileges(conn, role, relation) == expected, (role, relation)
        # every relation of the schema is covered: a table added later without grants fails here
        assert set(relations) - {"alembic_version"} <= {t for grants in EXPECTED.values() for t in grants}
        # the column-level grants: ingest closes sessions and counts conflicts, nothing more
        updatable = {
            table: {
                r["attname"]
                for r in await conn.fetch(
                    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
                    " AND has_column_privilege($2, attrelid, attnum, 'UPDATE')",
                    table,
                    INGEST,
                )
            }
            for table in ("stream_sessions", "event_conflicts")
        }
    finally:
        await conn.close()
    assert updatable == {
        "stream_sessions": {"closed_at", "close_reason", "close_detail", "last_seq"},
        "event_conflicts": {"occurrences", "last_seen_at"},
    }


# ------------------------------------------------------------------------------------------ login roles


async def test_a_reader_reads_the_projections_and_writes_nothing(
    database_url: str, login_as: Callable[..., Awaitable[str]]
) -> None:
    conn = await connect(await login_as(READER))
    try:
        assert await conn.fetch("SELECT * FROM balances") == []
        assert await conn.fetch("SELECT * FROM account_summary") == []
        writes = [
            "INSERT INTO balances (account, venue, asset, balance, updated_at, event_id) "
            "VALUES ('a', 'extended', 'USD', 1, now(), 1)",
            "UPDATE positions SET size = 0",
            "DELETE FROM orders",
            "TRUNCATE fills",
            "SELECT count(*) FROM events",  # not even the log
            "SELECT count(*) FROM stream_sessions",
            "CREATE TABLE mine (x int)",
        ]
        for sql in writes:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_ingest_appends_but_cannot_update_or_delete_events(
    database_url: str, login_as: Callable[..., Awaitable[str]]
) -> None:
    pool = await create_pool(await login_as(INGEST), max_size=2)
    try:
        log = PostgresEventLog(pool)
        result = await log.append([fill_event("acc-1", "1"), fill_event("acc-1", "2")])
        assert result.appended == 2
        again = await log.append([fill_event("acc-1", "1"), fill_event("acc-1", "2", qty="9")])  # repeat, conflict
        assert (again.duplicates, again.conflicts) == (1, 1)
        async with pool.acquire() as conn:
            for sql in ("UPDATE events SET kind = kind", "DELETE FROM events", "TRUNCATE events",
                        "DELETE FROM event_conflicts", "UPDATE stream_sessions SET venue = 'x'",
                        "DELETE FROM projector_checkpoints", "UPDATE balances SET balance = 0"):  # fmt: skip
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                    await conn.execute(sql)
    finally:
        await pool.close()
    # The append-only triggers still hold for the owner, who has every privilege.
    owner = await connect(database_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("UPDATE events SET kind = kind")
        assert await owner.fetchval("SELECT count(*) FROM events") == 2
    finally:
        await owner.close()


# ------------------------------------------------------------------------------------- the daemon's parts


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """``daemon`` running in this event loop; stopped (as by SIGTERM) and awaited when the block ends."""
    task = asyncio.create_task(daemon.run(), name="daemon")
    started = asyncio.ensure_future(daemon.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()  # raises the daemon's error
    try:
        yield daemon
    finally:
        daemon.stop.set()
        async with asyncio.timeout(30):
            await task


async def _sessions_closed(url: str, account: str) -> bool:
    conn = await connect(url)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) > 0 AND bool_and(close_reason IS NOT NULL) FROM stream_sessions WHERE account = $1",
            account,
        ))  # fmt: skip
    finally:
        await conn.close()


async def test_each_part_of_the_daemon_runs_with_only_its_role(
    database_url: str, login_as: Callable[..., Awaitable[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``statekeeper run --only ingest`` (the account's ingest and its reconciliation passes) as ingest and
    reconciler, ``--only project`` as projector, side by side against a simulated venue: the log fills, the
    projections follow, a reconciliation pass is recorded, sessions close on shutdown, no task ever fails for want
    of a privilege; then ``statekeeper status --json`` as the auditor sees it all."""
    ingest_url = await login_as(INGEST, RECONCILER)
    projector_url, auditor_url = await login_as(PROJECTOR), await login_as(AUDITOR)
    config = SimulatorConfig(venue="extended", seed=3, accounts=("a1",), rate=0, step_ms=10)
    async with await Simulator.start(config) as sim:
        settings = settings_for({"a1": sim}, resolve_interval_seconds=0.2)
        quick = settings.reconcile.model_copy(update={"race_window_seconds": 0.1, "interval_seconds": 0.5})
        settings = settings.model_copy(update={"reconcile": quick})
        # what `statekeeper run --only ingest` and `statekeeper run --only project` run
        ingest_only, project_only = (
            Daemon(settings, ingest_url, project=False),
            Daemon(settings, projector_url, ingest=False),
        )
        async with running(ingest_only) as ingest, running(project_only) as projector:
            async with Activity(sim, rate=100.0) as activity:
                await wait_until(lambda: activity.steps >= 100, within=15, what="the activity")

            async def projected() -> bool:
                conn = await connect(auditor_url)
                try:
                    head = await conn.fetchval("SELECT max(id) FROM events WHERE account = 'a1'")
                    applied = await conn.fetchval(
                        "SELECT position FROM projector_checkpoints WHERE account = 'a1' AND name = $1",
                        store.CHECKPOINT,
                    )
                    return bool(head) and applied == head and await conn.fetchval("SELECT count(*) FROM fills") > 0
                finally:
                    await conn.close()

            await wait_until(projected, within=20, what="the projector caught up with the log")

            async def reconciled() -> bool:
                conn = await connect(auditor_url)
                try:
                    return bool(await conn.fetchval("SELECT count(*) FROM reconciliation_runs WHERE account = 'a1'"))
                finally:
                    await conn.close()

            await wait_until(reconciled, within=20, what="a reconciliation pass recorded")
            restarts = [rt.restarts for rt in ingest.accounts.values()]
        assert restarts == [[]] and projector._projector_restarts == []
        assert ingest.projectors == [] and len(projector.projectors) == 1 and list(ingest.accounts) == ["a1"]
        assert projector.accounts == {}
    # not even a failure that is only logged and retried (the order resolver reading `orders`, say)
    complaints = [r for r in caplog.records if r.name.startswith("statekeeper") and r.levelno >= logging.WARNING]
    assert complaints == []
    assert await _sessions_closed(database_url, "a1")
    conn = await connect(auditor_url)
    try:
        runs = await conn.fetch("SELECT status, error FROM reconciliation_runs WHERE account = 'a1'")
    finally:
        await conn.close()
    assert [r["error"] for r in runs if r["status"] == "failed"] == []
    conn = await connect(projector_url)  # what `statekeeper project --once` does: the session_closed left over
    try:
        assert await store.catch_up(conn, ["a1"], limit=1000) >= 1
    finally:
        await conn.close()

    env = {**os.environ, "STATEKEEPER_DATABASE_URL": auditor_url}
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "statekeeper", "status", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (account,) = json.loads(result.stdout)["accounts"]
    assert account["account"] == "a1" and account["stream"]["state"] == "down"
    assert account["projector"]["lag_events"] == 0 and account["last_event"]["kind"] == "session_closed"


# --------------------------------------------------------------------------------- migration and roles


async def test_downgrade_keeps_the_roles_another_database_uses(database_url: str) -> None:
    """The template database (and every test database) grants the roles: downgrading this one revokes its own
    privileges only; upgrading again finds the roles there and grants again."""
    await downgrade(database_url, "0006")
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1::text[])", ROLES) == 5
        granted = await conn.fetchval(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = ANY($1::text[])", ROLES
        )
        assert granted == 0
    finally:
        await conn.close()
    await upgrade(database_url)
    assert await check(database_url) == []
    conn = await connect(database_url)
    try:
        assert await _privileges(conn, READER, "balances") == {SEL}
        assert await _privileges(conn, INGEST, "events") == {SEL, INS}
    finally:
        await conn.close()
