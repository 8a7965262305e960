"""Reconciliation end to end against the simulated venues, with the ingest daemon (and its projector) running.

* drift (a change of the venue's truth that never reaches the stream) is found with the right entity, key, field
  and values, kept open across passes, healed through the log, and the next pass is clean;
* REST 5xx, 429, timeouts and a failure halfway through a pass fail it cleanly: recorded as failed, nothing healed,
  no discrepancy;
* with the venue trading live on the stream and no drift, many passes in a row find nothing;
* inside ``statekeeper run``: passes every interval and after a resync, healing, metrics;
* ``statekeeper reconcile`` as a real process: the report, ``--json``, ``--heal`` and the exit codes.

The simulated venues' times start at 2026-01-01, so the ledgers are compared over a lookback that reaches them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import asyncpg
import orjson
import pytest

from statekeeper.config import ReconcileSettings, Settings
from statekeeper.database import create_pool
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import Balance, BalanceBody, BalanceScope, Event, LedgerMark, Source, natural_key
from statekeeper.ingest.drivers import Snapshot, VenueDriver, make_driver
from statekeeper.reconcile import diff
from statekeeper.reconcile.runner import PassResult, Reconciler
from statekeeper.simulator import FaultKind, FaultPlan, Simulator, SimulatorConfig
from statekeeper.venues.base import Item
from statekeeper.venues.errors import RetryableVenueError
from statekeeper.venues.http import RetryPolicy
from tests.ingest_support import Activity, running_daemon, settings_for, wait_until

Venue = Literal["extended", "paradex"]
VENUES: tuple[Venue, ...] = ("extended", "paradex")
ACCOUNT = "acc-1"
YEAR = 365 * 86_400.0

FAST = ReconcileSettings(
    race_window_seconds=0.05, timeout_seconds=20.0, history_lookback_seconds=YEAR, history_overlap_seconds=0.5
)
"""A short race window (the tests' venue and daemon are on this host) and a lookback that reaches the simulated
venue's history."""
LIVE = FAST.model_copy(update={"race_window_seconds": 0.5})
"""The race window of the live tests: longer than the stream's lag on a busy test machine."""
LIVE_RATE = 30.0
"""Steps per second of the live tests' venue: orders, fills, cancels, funding, marks moving on every tenth."""
QUICK_RETRY = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


@dataclass
class Setup:
    sim: Simulator
    settings: Settings
    pool: asyncpg.Pool
    driver: VenueDriver
    url: str

    def reconciler(self, settings: ReconcileSettings = FAST, driver: VenueDriver | None = None) -> Reconciler:
        return Reconciler(account=ACCOUNT, venue=self.sim.config.venue, driver=driver or self.driver, pool=self.pool,
                          settings=settings)  # fmt: skip


def simulator_config(venue: Venue, faults: FaultPlan | None = None) -> SimulatorConfig:
    return SimulatorConfig(venue=venue, seed=11, accounts=(ACCOUNT,), rate=0, step_ms=10,
                           faults=faults or FaultPlan(retry_after_seconds=0))  # fmt: skip


@asynccontextmanager
async def setup(database_url: str, venue: Venue, *, faults: FaultPlan | None = None,
                reconcile: dict[str, Any] | None = None) -> AsyncIterator[Setup]:  # fmt: skip
    async with await Simulator.start(simulator_config(venue, faults)) as sim:
        settings = settings_for({ACCOUNT: sim})
        # The daemon's own passes are out of the way unless a test asks for them.
        reconcile_settings = {"interval_seconds": 3600, **FAST.model_dump(), **(reconcile or {})}
        settings = settings.model_copy(update={"reconcile": ReconcileSettings(**reconcile_settings)})
        account = settings.accounts[0]
        assert account.api_key is not None
        driver = make_driver(venue, credential=account.api_key, ws_url=sim.ws_url, rest_url=sim.rest_url,
                             backfill_from=None, retry=QUICK_RETRY)  # fmt: skip
        pool = await create_pool(database_url, max_size=4)
        try:
            async with running_daemon(settings, database_url):
                await sim.wait_connected(ACCOUNT)
                await sim.step(30)
                yield Setup(sim, settings, pool, driver, database_url)
        finally:
            await driver.close()
            await pool.close()


async def settled(s: Setup) -> None:
    """Wait until a pass finds nothing (the seed, its backfill and the resolver are done): where a test starts."""

    async def clean() -> bool:
        result = await s.reconciler().run_pass(heal=False)
        return result.status == "clean" and not result.found

    await wait_until(clean, within=30, what="a clean pass")


async def discrepancy_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM reconciliation_discrepancies WHERE account = $1 ORDER BY id", ACCOUNT
    )
    return rows


async def reconciliation_events(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT id, kind, snapshot, event_key, payload FROM events WHERE account = $1 AND source = 'reconciliation'"
        " ORDER BY id",
        ACCOUNT,
    )
    return rows


def expected_drift(s: Setup, description: str, before: Any) -> diff.Difference:
    """The discrepancy a drift must produce, from the simulator's description and the truth before it."""
    truth = s.sim.truth(ACCOUNT)
    if description.startswith("order "):
        order_id = description.split()[1]
        return diff.Difference(diff.ORDER, order_id, diff.PRESENT, diff.YES, diff.NO)
    asset = truth.balance.asset
    return diff.Difference(diff.BALANCE, asset, "balance", str(before.balance.balance), str(truth.balance.balance))


@pytest.mark.parametrize("venue", VENUES)
async def test_drift_is_reported_kept_open_healed_and_the_next_pass_is_clean(database_url: str, venue: Venue) -> None:
    async with setup(database_url, venue) as s:
        await settled(s)
        for _ in range(2):  # one drift of each kind (the simulator draws which): an order, then the balance
            before = s.sim.truth(ACCOUNT)
            description = s.sim.inject(FaultKind.DRIFT, ACCOUNT)[0]
            expected = expected_drift(s, description, before)

            first = await s.reconciler().run_pass(heal=False)
            assert first.status == "discrepancies"
            assert [d for d in first.found if d.entity_key == expected.entity_key] == [expected], description
            assert first.remaining == len(first.found) and not first.healed and not first.appended
            second = await s.reconciler().run_pass(heal=False)
            assert second.status == "discrepancies" and expected in second.found
            rows = [r for r in await discrepancy_rows(s.pool) if r["resolved_at"] is None]
            row = next(r for r in rows if (r["entity"], r["entity_key"], r["field"]) == expected.ident)
            assert (row["projected"], row["venue_value"]) == (expected.projected, expected.venue)
            # (The daemon's own pass after its startup resync may have seen it too.)
            assert row["occurrences"] >= 2 and row["last_seen_at"] > row["first_seen_at"]

            healing = await s.reconciler().run_pass(heal=True)
            assert expected in healing.healed and healing.remaining == 0 and healing.status == "clean"
            healed_row = await s.pool.fetchrow("SELECT * FROM reconciliation_discrepancies WHERE id = $1", row["id"])
            assert healed_row["resolved_run_id"] == healing.run_id
            event = await s.pool.fetchrow("SELECT * FROM events WHERE account = $1 AND id = $2", ACCOUNT,
                                          healed_row["healed_by_event_id"])  # fmt: skip
            assert event["source"] == "reconciliation" and event["snapshot"]
            assert event["kind"] == ("order" if expected.entity == diff.ORDER else "balance")
            assert event["event_key"] == f"reconciliation:{healing.run_id}:" + (
                "open_orders" if expected.entity == diff.ORDER else "balances"
            )
            logged = [e for e in await reconciliation_events(s.pool) if e["kind"] == "discrepancy"]
            assert logged and logged[-1]["payload"]["entity_key"] == expected.key

            after = await s.reconciler().run_pass(heal=False)
            assert after.status == "clean" and not after.found, after
        assert all(r["resolved_at"] is not None for r in await discrepancy_rows(s.pool))


@pytest.mark.parametrize("venue", VENUES)
async def test_an_asset_the_venue_no_longer_lists_is_healed_away_and_other_scopes_are_not_compared(
    database_url: str, venue: Venue
) -> None:
    """The account held ETH once and holds none now: the venue's balances no longer list it. On Paradex the REST
    answer states every token, so the row is a discrepancy, and the healing snapshot removes it. Extended's REST
    answer states only the collateral: its spot assets are not compared (and not removed)."""
    scope = BalanceScope.TOKEN if venue == "paradex" else BalanceScope.SPOT
    async with setup(database_url, venue) as s:
        await settled(s)
        when = datetime.now(UTC) - timedelta(minutes=1)
        eth_held = BalanceBody(balances=(Balance(asset="ETH", balance=Decimal(2), updated_at=when),), scope=scope)
        held = Event(account=ACCOUNT, venue=venue, source=Source.REST, venue_time=when, received_at=when,
                     body=eth_held, key=natural_key("test", "eth"))  # fmt: skip
        position = (await PostgresEventLog(s.pool).append([held])).positions[0]
        await wait_until(lambda: _projected(s.pool, position), within=30, what="the ETH balance projected")

        first = await s.reconciler().run_pass(heal=True)
        eth = diff.Difference(diff.BALANCE, "ETH", diff.PRESENT, diff.YES, diff.NO)
        assets = {r["asset"] for r in await s.pool.fetch("SELECT asset FROM balances WHERE account = $1", ACCOUNT)}
        if venue == "paradex":
            assert eth in first.found and eth in first.healed and first.status == "clean", first
            assert "ETH" not in assets
        else:
            assert first.status == "clean" and not first.found, first
            assert "ETH" in assets
        after = await s.reconciler().run_pass(heal=False)
        assert after.status == "clean" and not after.found, after


async def _projected(pool: asyncpg.Pool, position: int) -> bool:
    checkpoint = await pool.fetchval(
        "SELECT position FROM projector_checkpoints WHERE account = $1 AND name = 'projections'", ACCOUNT
    )
    return checkpoint is not None and checkpoint >= position


class FailingLedger:
    """The venue driver, whose history call fails: a pass that fails halfway, after its snapshots were taken."""

    def __init__(self, driver: VenueDriver) -> None:
        self.driver = driver
        self.venue = driver.venue
        self.rest_url = driver.rest_url

    async def snapshots(self) -> list[Snapshot]:
        return await self.driver.snapshots()

    def ledger(self, what: str, since: LedgerMark, markets: Collection[str]) -> AsyncIterator[Item[Any]]:
        raise RetryableVenueError("paradex GET /fills: failed after 2 attempts, last: HTTP 503", status=503)


FAULTS = ("rest_5xx", "rest_429", "timeout", "halfway")


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_failing_venue_fails_the_pass_heals_nothing_and_reports_nothing(database_url: str, fault: str) -> None:
    venue: Venue = "paradex" if fault == "halfway" else "extended"
    plan = FaultPlan(retry_after_seconds=0, slow_seconds=2.0)
    async with setup(database_url, venue, faults=plan) as s:
        await settled(s)
        s.sim.inject(FaultKind.DRIFT, ACCOUNT)  # something to find, and to heal, if the pass could conclude
        driver: Any = s.driver
        settings = FAST
        if fault == "halfway":
            driver = FailingLedger(s.driver)
        elif fault == "timeout":
            s.sim.inject(FaultKind.REST_SLOW, ACCOUNT, count=3)
            settings = FAST.model_copy(update={"timeout_seconds": 0.5})
        else:
            s.sim.inject(FaultKind(fault), ACCOUNT, count=20)
        events_before = await reconciliation_events(s.pool)
        result = await s.reconciler(settings, driver=driver).run_pass(heal=True)
        assert result.status == "failed"
        assert result.error is not None
        expected = {"rest_5xx": "HTTP 503", "rest_429": "HTTP 429", "timeout": "did not finish within 0.5 s",
                    "halfway": "GET /fills"}[fault]  # fmt: skip
        assert expected in result.error
        assert not result.found and not result.healed and not result.appended
        assert await reconciliation_events(s.pool) == events_before, "a failed pass heals nothing"
        assert await discrepancy_rows(s.pool) == [], "a failed pass reports nothing"
        run = await s.pool.fetchrow("SELECT * FROM reconciliation_runs WHERE account = $1 AND run_id = $2", ACCOUNT,
                                    result.run_id)  # fmt: skip
        assert run["status"] == "failed" and run["error"] == result.error and run["found"] == 0
        # Once the venue answers again, the drift is found and healed.
        s.sim.server.rest_faults.for_account(ACCOUNT).pending.clear()
        healed = await s.reconciler().run_pass(heal=True)
        assert healed.found and healed.healed and healed.status == "clean"


@pytest.mark.parametrize(("venue", "passes"), [("extended", 100), ("paradex", 100)])
async def test_no_false_discrepancy_while_the_venue_trades_live(database_url: str, venue: Venue, passes: int) -> None:
    async with setup(database_url, venue) as s:
        await settled(s)
        results: list[PassResult] = []
        async with Activity(s.sim, rate=LIVE_RATE) as activity:
            reconciler = s.reconciler(LIVE)
            for _ in range(passes):
                results.append(await reconciler.run_pass(heal=False))
        assert activity.steps > passes, "the venue traded during the passes"
        found = [d for r in results for d in r.found]
        assert found == [], f"false discrepancies: {found[:10]}"
        assert [r.status for r in results] == ["clean"] * passes
        assert await discrepancy_rows(s.pool) == []
        assert sum(r.compared for r in results) > passes * 10


async def test_the_daemon_reconciles_every_interval_and_after_a_resync_and_heals(database_url: str) -> None:
    async with setup(database_url, "extended", reconcile={"interval_seconds": 0.3, "heal": True}) as s:
        daemon_runs = "SELECT count(*) FROM reconciliation_runs WHERE account = $1"

        async def runs() -> int:
            return int(await s.pool.fetchval(daemon_runs, ACCOUNT))

        await wait_until(lambda: runs_at_least(runs, 2), within=30, what="two passes of the daemon")
        s.sim.inject(FaultKind.DRIFT, ACCOUNT)

        async def healed() -> bool:
            rows = await discrepancy_rows(s.pool)
            return bool(rows) and all(r["healed_by_event_id"] is not None for r in rows)

        await wait_until(healed, within=30, what="the drift healed by the daemon")
    async with setup(database_url, "paradex", reconcile={"interval_seconds": 3600}) as s:
        await wait_until(lambda: runs_at_least(runs_of(s), 1), within=30, what="a pass after the startup resync")
        before = await runs_of(s)()
        await s.sim.server.disconnect(ACCOUNT)  # the next session resyncs: a pass follows it
        await wait_until(lambda: runs_at_least(runs_of(s), before + 1), within=30, what="a pass after a resync")


def runs_of(s: Setup) -> Any:
    async def count() -> int:
        return int(await s.pool.fetchval("SELECT count(*) FROM reconciliation_runs WHERE account = $1", ACCOUNT))

    return count


async def runs_at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


# ----------------------------------------------------------------------------------------------- the CLI


async def statekeeper(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """The command as a real process, awaited without blocking the simulated venue in this event loop."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_")}
    environment.update(env)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "statekeeper", *args, cwd=cwd, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_reconcile_command_reports_heals_and_exits_by_outcome(database_url: str, tmp_path: Path) -> None:
    async with await Simulator.start(simulator_config("paradex")) as sim:
        config = tmp_path / "statekeeper.toml"
        config.write_text(
            f'[[accounts]]\nname = "{ACCOUNT}"\nvenue = "paradex"\napi_key_env = "SK_RECONCILE_KEY"\n'
            f'ws_url = "{sim.ws_url}"\nrest_url = "{sim.rest_url}"\n\n'
            f"[reconcile]\nrace_window_seconds = 0.05\nhistory_lookback_seconds = {YEAR}\n"
        )
        env = {"STATEKEEPER_DATABASE_URL": database_url, "SK_RECONCILE_KEY": sim.credential(ACCOUNT)}
        # Nothing was ever ingested: everything the venue has is missing from the projections.
        code, out, err = await statekeeper("reconcile", "--json", cwd=tmp_path, env=env)
        assert code == 1, err
        report = orjson.loads(out)
        assert report["runs"][0]["status"] == "discrepancies"
        found = {(d["entity"], d["field"], d["projected"], d["venue"]) for d in report["discrepancies"]}
        assert ("balance", "present", "no", "yes") in found
        assert ("fill", "present", "no", "yes") in found
        assert sim.credential(ACCOUNT) not in out + err

        code, out, err = await statekeeper("reconcile", "--heal", cwd=tmp_path, env=env)
        assert code == 0, out + err
        assert "healed" in out and "clean" in out
        code, out, err = await statekeeper("reconcile", "--account", ACCOUNT, cwd=tmp_path, env=env)
        assert code == 0, out + err
        assert "clean" in out

        code, _, err = await statekeeper("reconcile", "--account", "nobody", cwd=tmp_path, env=env)
        assert code == 2 and "nobody" in err
        sim.inject(FaultKind.REST_429, ACCOUNT, count=50)
        code, out, err = await statekeeper("reconcile", cwd=tmp_path, env=env)
        assert code == 1
        assert "reconciliation of acc-1 failed" in err and "HTTP 429" in err
