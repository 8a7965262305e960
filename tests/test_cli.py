"""The statekeeper command, run as a real process: database commands, the demo, exit codes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from statekeeper.migrations import head_revisions


def statekeeper(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "statekeeper", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_db_upgrade_check_current(empty_database_url: str, tmp_path: Path) -> None:
    env = {"STATEKEEPER_DATABASE_URL": empty_database_url}
    before = statekeeper("db", "check", cwd=tmp_path, env=env)
    assert before.returncode == 1
    assert "statekeeper db upgrade" in before.stderr

    upgraded = statekeeper("db", "upgrade", cwd=tmp_path, env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    head = ", ".join(head_revisions())
    assert f"is at revision {head}" in upgraded.stdout

    checked = statekeeper("db", "check", cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "matches the declared schema" in checked.stdout

    current = statekeeper("db", "current", cwd=tmp_path, env=env)
    assert current.returncode == 0
    assert f"current:  {head}" in current.stdout

    down = statekeeper("db", "downgrade", "base", cwd=tmp_path, env=env)
    assert down.returncode == 0, down.stderr
    assert "is at revision (none)" in down.stdout
    assert statekeeper("db", "check", cwd=tmp_path, env=env).returncode == 1


async def test_db_check_exits_1_on_drift(database_url: str, tmp_path: Path) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP INDEX ix_events_id")
    finally:
        await conn.close()
    result = statekeeper("db", "check", cwd=tmp_path, env={"STATEKEEPER_DATABASE_URL": database_url})
    assert result.returncode == 1
    assert "ix_events_id" in result.stderr


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    url = "postgresql://sk:hunter2secret@127.0.0.1:1/statekeeper"
    result = statekeeper("db", "upgrade", cwd=tmp_path, env={"STATEKEEPER_DATABASE_URL": url})
    assert result.returncode == 2
    assert "error:" in result.stderr and "127.0.0.1:1" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout


def test_demo_runs_unattended_and_heals_its_drift(database_url: str, tmp_path: Path) -> None:
    """`statekeeper demo --duration`: simulated venues, the daemon, reconciliation; a final summary, exit 0."""
    result = statekeeper("demo", "--duration", "24", cwd=tmp_path, env={"STATEKEEPER_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "what happened" in out and "the drift was injected" in out, out
    assert 'statekeeper db psql -c "SELECT * FROM account_summary"' in out

    async def figures() -> tuple[dict[str, int], dict[str, int], int]:
        conn = await asyncpg.connect(database_url)
        try:
            events = {r["account"]: r["n"] for r in await conn.fetch(
                "SELECT account, count(*) AS n FROM events GROUP BY account")}  # fmt: skip
            passes = {r["account"]: r["n"] for r in await conn.fetch(
                "SELECT account, count(*) AS n FROM reconciliation_runs GROUP BY account")}  # fmt: skip
            healed = await conn.fetchval(
                "SELECT count(*) FROM reconciliation_discrepancies WHERE account = 'pdx-beta' "
                "AND healed_by_event_id IS NOT NULL"
            )
            return events, passes, healed
        finally:
            await conn.close()

    events, passes, healed = asyncio.run(figures())
    accounts = {"ext-alpha", "ext-beta", "pdx-alpha", "pdx-beta"}
    assert set(events) == accounts and min(events.values()) > 50, events
    assert set(passes) == accounts, passes
    assert healed >= 1, f"the drift was not found and healed by reconciliation:\n{result.stdout}"


@pytest.mark.slow
def test_demo_and_psql_on_the_embedded_database(tmp_path: Path) -> None:
    """The README's first command on a fresh directory: nothing configured, nothing installed but the package."""
    env = {"COLUMNS": "160"}
    first = statekeeper("demo", "--duration", "6", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "embedded PostgreSQL" in first.stdout and "what happened" in first.stdout
    assert (tmp_path / ".statekeeper" / "pgdata" / "PG_VERSION").is_file()

    # the data stays, and psql reaches it
    count = statekeeper("db", "psql", "-At", "-c", "SELECT count(*) FROM events", cwd=tmp_path, env=env)
    assert count.returncode == 0, count.stderr
    assert int(count.stdout.strip()) > 0

    # and the embedded server was stopped when the last command ended
    assert not (tmp_path / ".statekeeper" / "pgdata" / "postmaster.pid").exists()


def test_version_and_help(tmp_path: Path) -> None:
    assert statekeeper("--version", cwd=tmp_path).stdout.startswith("statekeeper ")
    usage = statekeeper("no-such-command", cwd=tmp_path)
    assert usage.returncode == 2
