"""``statekeeper status``: what it reads from a real database, and the command's output and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from statekeeper import statements, status
from statekeeper.errors import MigrationError
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import Event, ReconciliationPass, Source, natural_key
from statekeeper.projections import store
from statekeeper.reconcile.runner import INSERT_RUN
from tests.factories import fill_event, order_snapshot

HOUR = timedelta(hours=1)


def reconciliation_pass(account: str, run_id: str, at: datetime, status_: str, discrepancies: int) -> Event:
    body = ReconciliationPass(
        run_id=run_id,
        status=status_,  # type: ignore[arg-type]
        log_position=0,
        discrepancies=discrepancies,
    )
    return Event(
        account=account,
        venue="extended",
        source=Source.RECONCILIATION,
        body=body,
        venue_time=at,
        received_at=at,
        key=natural_key("reconciliation", run_id),
    )


RUN_1, RUN_2, RUN_3 = (UUID(int=n) for n in (1, 2, 3))


async def record_run(
    conn: asyncpg.Connection, account: str, run_id: UUID, at: datetime, status_: str, *, found: int = 0,
    healed: int = 0, remaining: int = 0, error: str | None = None,
) -> None:  # fmt: skip
    """A row of ``reconciliation_runs``, as a pass of :mod:`statekeeper.reconcile` records it."""
    await conn.execute(INSERT_RUN, account, run_id, "extended", at, at + timedelta(seconds=2), status_, False, 0, 2,
                       10, found, healed, 0, remaining, error)  # fmt: skip


async def open_session(
    conn: asyncpg.Connection, account: str, transport: str, opened_at: datetime, owner: str = "host:1"
) -> UUID:
    session = uuid4()
    venue = "paradex" if account.startswith("pdx") else "extended"
    await conn.execute(statements.OPEN_SESSION, account, session, venue, transport, None, owner, opened_at)
    return session


async def close_session(
    conn: asyncpg.Connection, account: str, session: UUID, closed_at: datetime, *, reason: str, detail: str | None
) -> None:
    await conn.execute(statements.CLOSE_SESSION, account, session, closed_at, reason, detail, None)


def by_account(found: list[status.AccountStatus]) -> dict[str, status.AccountStatus]:
    return {s.account: s for s in found}


# ------------------------------------------------------------------------------------------------ statements


async def test_every_statement_prepares(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for name, sql in status.STATEMENTS.items():
            assert await conn.prepare(sql) is not None, name


# ------------------------------------------------------------------------------------------------ gather


async def test_gather_reports_stream_events_projector_and_reconciliation(
    pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    now = datetime.now(UTC)
    started = now - 2 * HOUR
    session = uuid4()
    appended = await log.append(
        [
            order_snapshot("ext-a", session, 1, "o1", at=started),
            fill_event("ext-a", "f1", received_at=started + timedelta(seconds=1)),
            reconciliation_pass("ext-a", "run-1", started + timedelta(minutes=1), "clean", 0),
            reconciliation_pass("ext-a", "run-2", started + timedelta(minutes=2), "discrepancies", 3),
            fill_event("pdx-b", "f9", received_at=now - HOUR, venue="paradex"),
        ]
    )
    assert len(appended.positions) == 5
    async with pool.acquire() as conn:
        # ext-a: two passes, the last with discrepancies (one healed, three still open); a failed pass elsewhere
        await record_run(conn, "ext-a", RUN_1, started + timedelta(minutes=1), "clean")
        await record_run(conn, "ext-a", RUN_2, started + timedelta(minutes=2), "discrepancies", found=4, healed=1,
                         remaining=3)  # fmt: skip
        await record_run(conn, "down-c", RUN_3, started, "failed", error="HTTP 503")
        # ext-a: a WebSocket session closed on a gap, a newer one streaming; a polling session left open too
        first = await open_session(conn, "ext-a", "websocket", started)
        await close_session(
            conn, "ext-a", first, started + timedelta(minutes=5), reason="gap", detail="expected 5, got 7"
        )
        live = await open_session(conn, "ext-a", "websocket", started + timedelta(minutes=6), owner="host:42")
        await open_session(conn, "ext-a", "rest_poll", started + timedelta(minutes=5), owner="host:42")
        # pdx-b: only polling; down-c: every session closed
        polling = await open_session(conn, "pdx-b", "rest_poll", now - HOUR, owner="host:7")
        gone = await open_session(conn, "down-c", "websocket", started)
        await close_session(conn, "down-c", gone, started + HOUR, reason="shutdown", detail=None)

        found = await status.gather(conn, None, configured={"ext-a": "extended", "cfg-only": "paradex"})

    assert [s.account for s in found] == ["cfg-only", "ext-a", "pdx-b"]  # down-c has no events
    accounts = by_account(found)
    a, b, cfg = accounts["ext-a"], accounts["pdx-b"], accounts["cfg-only"]
    assert all(s.as_of == found[0].as_of for s in found)
    assert now - timedelta(minutes=5) < a.as_of < datetime.now(UTC) + timedelta(minutes=5)

    assert a.venue == "extended" and a.configured
    assert a.stream == status.StreamStatus(
        state="streaming",
        since=started + timedelta(minutes=6),
        session=live,
        open_sessions=2,
        owners=("host:42",),
        last_close_at=started + timedelta(minutes=5),
        last_close_reason="gap",
        last_close_detail="expected 5, got 7",
    )
    assert a.last_event is not None
    assert a.last_event.id == appended.positions[3]
    assert a.last_event.kind == "reconciliation_pass"
    assert a.last_event.venue_time == started + timedelta(minutes=2)
    assert a.reconciliation == status.ReconciliationStatus(
        at=started + timedelta(minutes=2),
        finished_at=started + timedelta(minutes=2, seconds=2),
        run_id=str(RUN_2),
        status="discrepancies",
        discrepancies=3,
        found=4,
        healed=1,
        error=None,
    )
    # never projected: every event is lag, and the oldest waited since `started`
    assert a.projector.position is None and a.projector.updated_at is None
    assert a.projector.lag_events == 4
    assert a.projector.oldest_unapplied_received_at == started
    assert a.projector.lag_seconds >= Decimal(2 * 3600)

    assert b.venue == "paradex" and not b.configured
    assert b.stream.state == "polling" and b.stream.session == polling and b.stream.since == now - HOUR
    assert b.stream.owners == ("host:7",) and b.stream.last_close_reason is None
    assert b.reconciliation is None
    assert b.projector.lag_events == 1

    assert cfg.venue == "paradex" and cfg.configured
    assert cfg.stream == status.StreamStatus("none", None, None, 0, (), None, None, None)
    assert cfg.last_event is None and cfg.reconciliation is None
    assert cfg.projector == status.ProjectorStatus(None, None, 0, Decimal(0), None)
    assert not cfg.claimed


async def test_lag_goes_to_zero_once_the_projector_applied_the_log(pool: asyncpg.Pool, log: PostgresEventLog) -> None:
    received = datetime.now(UTC) - HOUR
    await log.append([fill_event("acc", str(i), received_at=received + timedelta(seconds=i)) for i in range(3)])
    async with pool.acquire() as conn:
        await store.ensure_checkpoint(conn, "acc")
        [before] = await status.gather(conn, ["acc"])
        assert before.projector.position == 0
        assert before.projector.lag_events == 3
        assert before.projector.oldest_unapplied_received_at == received
        assert Decimal(3590) < before.projector.lag_seconds < Decimal(3 * 3600)

        result = await store.apply_batch(conn, "acc", limit=1000)
        assert result.events == 3
        [after] = await status.gather(conn, ["acc"])

        await log.append([fill_event("acc", "late", received_at=received + timedelta(minutes=10))])
        [behind] = await status.gather(conn, ["acc"])

    assert after.projector.position == result.position
    assert after.last_event is not None and after.last_event.id == result.position
    assert after.projector.updated_at is not None
    assert after.projector.lag_events == 0
    assert after.projector.lag_seconds == 0
    assert after.projector.oldest_unapplied_received_at is None
    assert behind.projector.position == result.position
    assert behind.projector.lag_events == 1
    assert behind.projector.oldest_unapplied_received_at == received + timedelta(minutes=10)


async def test_claimed_follows_the_daemon_lock(pool: asyncpg.Pool, database_url: str, log: PostgresEventLog) -> None:
    await log.append([fill_event("held"), fill_event("free", "2")])
    daemon = await asyncpg.connect(database_url)
    try:
        assert await daemon.fetchval(statements.TRY_CLAIM_ACCOUNT, "held")
        async with pool.acquire() as conn:
            claimed = by_account(await status.gather(conn, None))
        assert claimed["held"].claimed and not claimed["free"].claimed
    finally:
        await daemon.close()
    async with pool.acquire() as conn:
        released = by_account(await status.gather(conn, None))
    assert not released["held"].claimed


async def test_named_accounts_keep_their_order_and_unknown_ones_are_empty(
    pool: asyncpg.Pool, log: PostgresEventLog
) -> None:
    await log.append([fill_event("b"), fill_event("a", "2")])
    async with pool.acquire() as conn:
        found = await status.gather(conn, ["b", "nobody", "b", "a"])
        assert await status.gather(conn, []) == []
        assert await status.gather(conn, None) != []
    assert [s.account for s in found] == ["b", "nobody", "a"]
    nobody = found[1]
    assert nobody.venue is None and not nobody.configured
    assert nobody.last_event is None and nobody.reconciliation is None and nobody.stream.state == "none"


async def test_an_empty_log_has_no_accounts(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await status.gather(conn, None) == []
        [configured] = await status.gather(conn, None, configured={"x": "extended"})
    assert configured.account == "x" and configured.last_event is None


async def test_an_unmigrated_database_is_refused(empty_database_url: str) -> None:
    with pytest.raises(MigrationError, match=r"statekeeper db upgrade") as raised:
        await status.collect(empty_database_url, None)
    assert raised.value.exit_code == 2


# ------------------------------------------------------------------------------------------------ pure parts


def session_row(transport: str, opened: int, closed: int | None = None, **extra: Any) -> Mapping[str, Any]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "session": uuid4(),
        "venue": "extended",
        "transport": transport,
        "owner": extra.get("owner", "h:1"),
        "opened_at": t0 + timedelta(minutes=opened),
        "closed_at": None if closed is None else t0 + timedelta(minutes=closed),
        "close_reason": None if closed is None else "error",
        "close_detail": extra.get("detail"),
    }


def test_stream_state_rules() -> None:
    assert status.stream_status([]).state == "none"
    stale, newer = session_row("websocket", 1, owner="dead:1"), session_row("websocket", 5, owner="h:2")
    streaming = status.stream_status([newer, session_row("rest_poll", 7), stale])
    assert streaming.state == "streaming"
    assert streaming.session == newer["session"] and streaming.since == newer["opened_at"]
    assert streaming.owners == ("dead:1", "h:1", "h:2") and streaming.open_sessions == 3
    polling = status.stream_status([session_row("rest_poll", 2), session_row("websocket", 0, 1, detail="boom")])
    assert polling.state == "polling"
    assert polling.last_close_reason == "error" and polling.last_close_detail == "boom"
    closed = session_row("websocket", 0, 3)
    down = status.stream_status([closed])
    assert down.state == "down" and down.since == closed["closed_at"] and down.session == closed["session"]
    assert down.owners == () and down.open_sessions == 0


def test_lag_seconds() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert str(status.lag_seconds(now, None)) == "0.000"
    assert status.lag_seconds(now, now - timedelta(seconds=90, microseconds=1500)) == Decimal("90.002")
    assert status.lag_seconds(now, now + timedelta(seconds=5)) == 0  # a clock ahead is no lag


# ------------------------------------------------------------------------------------------------ the command


def run_cli(*args: str, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_")}
    environment.update(env)
    environment["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "statekeeper", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


async def test_status_command_json_and_table(
    database_url: str, pool: asyncpg.Pool, log: PostgresEventLog, tmp_path: Path
) -> None:
    received = datetime.now(UTC) - HOUR
    await log.append([fill_event("ext-a", str(i), received_at=received) for i in range(2)])
    await log.append([reconciliation_pass("ext-a", "r1", received, "clean", 0)])
    async with pool.acquire() as conn:
        await record_run(conn, "ext-a", RUN_1, received, "clean")
        await open_session(conn, "ext-a", "websocket", received, owner="box:99")
        await store.apply_batch(conn, "ext-a", limit=1)
    (tmp_path / "statekeeper.toml").write_text(
        '[[accounts]]\nname = "ext-a"\nvenue = "extended"\napi_key_env = "SK_TEST_UNSET_KEY_A"\n\n'
        '[[accounts]]\nname = "pdx-idle"\nvenue = "paradex"\napi_key_env = "SK_TEST_UNSET_KEY_B"\n'
    )
    env = {"STATEKEEPER_DATABASE_URL": database_url}

    result = await asyncio.to_thread(run_cli, "status", "--format", "json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    accounts = {a["account"]: a for a in document["accounts"]}
    assert list(accounts) == ["ext-a", "pdx-idle"]
    a = accounts["ext-a"]
    assert a["venue"] == "extended" and a["configured"] is True and a["claimed"] is False
    assert a["stream"]["state"] == "streaming" and a["stream"]["owners"] == ["box:99"]
    assert datetime.fromisoformat(a["stream"]["since"]) == received
    assert a["last_event"]["kind"] == "reconciliation_pass"
    assert a["projector"]["lag_events"] == 2
    assert isinstance(a["projector"]["lag_seconds"], str) and Decimal(a["projector"]["lag_seconds"]) > 3590
    assert datetime.fromisoformat(a["projector"]["oldest_unapplied_received_at"]) == received
    assert a["reconciliation"]["status"] == "clean" and a["reconciliation"]["run_id"] == str(RUN_1)
    idle = accounts["pdx-idle"]
    assert idle["venue"] == "paradex" and idle["stream"]["state"] == "none"
    assert idle["last_event"] is None and idle["reconciliation"] is None
    assert idle["projector"] == {
        "position": None,
        "updated_at": None,
        "lag_events": 0,
        "lag_seconds": "0.000",
        "oldest_unapplied_received_at": None,
    }

    filtered = await asyncio.to_thread(
        run_cli, "status", "--account", "pdx-idle", "--account", "other", "--format", "json", cwd=tmp_path, env=env
    )
    assert filtered.returncode == 0, filtered.stderr
    assert [x["account"] for x in json.loads(filtered.stdout)["accounts"]] == ["pdx-idle", "other"]

    table = await asyncio.to_thread(run_cli, "status", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    for text in ("ext-a", "pdx-idle", "streaming", "box:99", "2 behind", "clean", "never", "none"):
        assert text in table.stdout, text


async def test_status_command_on_an_unmigrated_database_exits_2(empty_database_url: str, tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        run_cli, "status", cwd=tmp_path, env={"STATEKEEPER_DATABASE_URL": empty_database_url}
    )
    assert result.returncode == 2
    assert "statekeeper db upgrade" in result.stderr
    assert result.stdout == ""


async def test_status_command_with_nothing_to_show(database_url: str, tmp_path: Path) -> None:
    env = {"STATEKEEPER_DATABASE_URL": database_url}
    table = await asyncio.to_thread(run_cli, "status", cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    assert "no accounts" in table.stdout
    document = await asyncio.to_thread(run_cli, "status", "--format", "json", cwd=tmp_path, env=env)
    assert json.loads(document.stdout) == {"accounts": []}
