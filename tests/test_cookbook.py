"""docs/cookbook.md: every query in it runs, with the role it names, against a demo database, and answers what it
says it answers (each one checked against the rows it is computed from, by Python).

The demo database is built once for the module: the ingest daemon (projector included) against two simulated
venues, ``ext-main`` on Extended and ``pdx-main`` on Paradex, stepped through three days of venue time (ten
minutes a step, funding every hour) that end a few minutes before now, so that "the last 24 hours" and "open for
more than an hour" mean what they say. The queries are read from the markdown, so the document and the test
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from uuid import uuid4

import asyncpg
import pytest

from statekeeper.database import connect
from statekeeper.projections import store
from statekeeper.simulator import FaultKind, Simulator, SimulatorConfig
from tests.conftest import PgServer, login_url
from tests.ingest_support import running_daemon, settings_for, wait_until

COOKBOOK = Path(__file__).resolve().parent.parent / "docs" / "cookbook.md"
ACCOUNTS: dict[str, Literal["extended", "paradex"]] = {"ext-main": "extended", "pdx-main": "paradex"}
STEP = timedelta(minutes=10)
"""Venue time per simulated step."""
WARMUP, STEPS = 200, 230
"""Steps before the venue opens (history to backfill) and while the daemon listens: three days in all."""
END_BEFORE_NOW = timedelta(minutes=5)


# ------------------------------------------------------------------------------------------ the demo database


async def _caught_up(url: str) -> bool:
    conn = await connect(url)
    try:
        rows = await conn.fetch(store.LAG, list(ACCOUNTS), store.CHECKPOINT)
    finally:
        await conn.close()
    return all(r["position"] is not None and r["events"] == 0 for r in rows)


async def fill_demo(url: str) -> None:
    """Run the daemon against both simulated venues through :data:`STEPS` steps, then apply the whole log."""
    start = datetime.now(UTC) - (WARMUP + STEPS) * STEP - END_BEFORE_NOW
    sims = [
        await Simulator.start(
            SimulatorConfig(
                venue=venue,
                seed=11,
                accounts=(account,),
                rate=0,
                step_ms=int(STEP.total_seconds() * 1000),
                start_ms=int(start.timestamp() * 1000),
                warmup_steps=WARMUP,
                funding_interval_ms=3_600_000,
            )
        )
        for account, venue in ACCOUNTS.items()
    ]
    try:
        venues = dict(zip(ACCOUNTS, sims, strict=True))
        settings = settings_for(venues, resolve_interval_seconds=0.2, funding_poll_interval_seconds=0.5)

        def connected(sessions: int) -> Callable[[], bool]:
            return lambda: all(sim.connections(a) == 1 and len(sim.frames(a)) == sessions for a, sim in venues.items())

        async with running_daemon(settings, url):
            await wait_until(connected(1), within=20, what="both accounts connected")
            for step in range(STEPS):
                if step == STEPS // 2:  # one dropped connection each: a second session, resynced
                    for account, sim in venues.items():
                        sim.inject(FaultKind.DISCONNECT, account)
                    await wait_until(connected(2), within=20, what="both accounts connected again")
                for sim in sims:
                    await sim.step()
                await asyncio.sleep(0.005)
            await wait_until(lambda: _caught_up(url), within=30, what="the projector caught up")
    finally:
        for sim in sims:
            await sim.stop()
    conn = await connect(url)  # the sessions' closing events, appended once the projector had stopped
    try:
        await store.catch_up(conn, list(ACCOUNTS), limit=10_000)
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------- the queries


@dataclass(frozen=True)
class Query:
    number: int
    title: str
    role: str
    sql: str


def read_cookbook(text: str) -> list[Query]:
    """Every ``### N. title`` section: the role it names and its ```sql block."""
    found = []
    pattern = r"^### (\d+)\. (.+?)\n(.*?)(?=^### |\Z)"
    for number, title, body in re.findall(pattern, text, flags=re.MULTILINE | re.DOTALL):
        role = re.search(r"^Role: `(\w+)`$", body, flags=re.MULTILINE)
        blocks = re.findall(r"^```sql\n(.*?)^```$", body, flags=re.MULTILINE | re.DOTALL)
        assert role and len(blocks) == 1, f"query {number} needs one `Role:` line and one sql block"
        found.append(Query(int(number), title, role.group(1), blocks[0]))
    return found


QUERIES = read_cookbook(COOKBOOK.read_text(encoding="utf-8"))


@dataclass
class Demo:
    """The demo database, logins for the roles the queries need, and its rows as Python sees them."""

    url: str
    logins: dict[str, str]
    tables: dict[str, list[dict[str, Any]]]
    balance_events: list[dict[str, Any]]
    now: datetime

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        return [r for r in self.tables[table] if all(r[k] == v for k, v in where.items())]


async def _snapshot(url: str) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    conn = await connect(url)
    try:
        names = ["balances", "account_margins", "open_orders", "orders", "positions", "fills", "fill_busts",
                 "funding_payments", "stream_sessions", "projector_checkpoints", "account_summary"]  # fmt: skip
        tables = {name: [dict(r) for r in await conn.fetch(f"SELECT * FROM {name}")] for name in names}
        events = [dict(r) for r in await conn.fetch(
            "SELECT id, account, venue_time, payload FROM events WHERE kind = 'balance' ORDER BY id"
        )]  # fmt: skip
    finally:
        await conn.close()
    return tables, events


@pytest.fixture(scope="module")
def demo(pg_server: PgServer, template_db: str) -> Iterator[Demo]:
    name = f"sk_cookbook_{uuid4().hex[:10]}"
    with pg_server.janitor(name, template=template_db):
        url = pg_server.url(name)
        asyncio.run(fill_demo(url))
        roles = {query.role for query in QUERIES}
        logins = {role: f"sk_cookbook_{role.removeprefix('statekeeper_')}_{uuid4().hex[:8]}" for role in roles}

        async def manage(statement: str) -> None:
            conn = await connect(url)
            try:
                for role, login in logins.items():  # our own constants and a uuid: never input
                    await conn.execute(statement.format(role=role, login=login))
            finally:
                await conn.close()

        asyncio.run(manage("CREATE ROLE {login} LOGIN IN ROLE {role}"))
        tables, events = asyncio.run(_snapshot(url))
        try:
            yield Demo(url, {role: login_url(url, login) for role, login in logins.items()}, tables, events,
                       datetime.now(UTC))  # fmt: skip
        finally:
            asyncio.run(manage("DROP ROLE {login}"))


# ------------------------------------------------------------------------------- what each answer must be

Rows = list[dict[str, Any]]
ZERO = Decimal(0)


def notional(p: dict[str, Any]) -> Decimal:
    value: Decimal = p["value"] if p["value"] is not None else p["size"] * (p["mark_price"] or p["entry_price"])
    return abs(value)


def check_summary(rows: Rows, demo: Demo) -> None:
    assert [r["account"] for r in rows] == sorted(ACCOUNTS)
    for r in rows:
        margins = demo.rows("account_margins", account=r["account"])
        expected = (
            margins[0]["equity"] if margins else sum(b["equity"] for b in demo.rows("balances", account=r["account"]))
        )
        assert r["equity"] == expected > 0
        assert r["positions"] == len(demo.rows("positions", account=r["account"]))
        assert r["gross_exposure"] == sum(notional(p) for p in demo.rows("positions", account=r["account"]))
        assert r["leverage"] == round(r["gross_exposure"] / r["equity"], 4)


def check_exposure(rows: Rows, demo: Demo) -> None:
    net: dict[str, Decimal] = defaultdict(Decimal)
    gross: dict[str, Decimal] = defaultdict(Decimal)
    for p in demo.tables["positions"]:
        asset, sign = p["market"].split("-")[0], 1 if p["side"] == "LONG" else -1
        net[asset] += sign * p["size"]
        gross[asset] += notional(p)
    assert {r["asset"]: (r["net_size"], r["gross_notional"]) for r in rows} == {a: (net[a], gross[a]) for a in net}
    assert [r["gross_notional"] for r in rows] == sorted(gross.values(), reverse=True)
    assert all(abs(r["net_notional"]) <= r["gross_notional"] for r in rows)
    assert {"BTC", "ETH", "SOL"} <= set(net)  # the same asset on both venues is one row


def check_resting(rows: Rows, demo: Demo) -> None:
    assert sum(r["orders"] for r in rows) == len(demo.tables["open_orders"]) > 0
    for r in rows:
        orders = demo.rows("open_orders", account=r["account"], market=r["market"], side=r["side"])
        assert r["remaining_qty"] == sum(o["remaining_qty"] for o in orders) > 0
        assert r["lowest_price"] <= r["highest_price"]


def check_stale_orders(rows: Rows, demo: Demo) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    stale = {o["order_id"] for o in demo.tables["open_orders"] if o["created_at"] < hour_ago}
    assert {r["order_id"] for r in rows} == stale
    assert 0 < len(stale) < len(demo.tables["open_orders"])  # some are older than an hour, some are not
    assert all(r["open_for"] > timedelta(hours=1) for r in rows)


def check_fills_per_day(rows: Rows, demo: Demo) -> None:
    for account in ACCOUNTS:
        fills = [f for f in demo.rows("fills", account=account) if f["busted_at"] is None]
        mine = [r for r in rows if r["account"] == account]
        assert sum(r["fills"] for r in mine) == len(fills) > 0
        assert sum(r["fees"] for r in mine) == sum(f["fee"] for f in fills)
        assert sum(r["volume"] for r in mine) == sum(f["qty"] * f["price"] for f in fills)
        days = {f["created_at"].astimezone(UTC).date() for f in fills}
        assert [r["day"].date() for r in mine] == sorted(days) and len(days) >= 3
        assert all(0 <= r["maker_percent"] <= 100 for r in mine)


def check_order_fills(rows: Rows, demo: Demo) -> None:
    assert rows and {r["account"] for r in rows} == set(ACCOUNTS)
    for r in rows:
        fills = [f for f in demo.rows("fills", account=r["account"], order_id=r["order_id"]) if f["busted_at"] is None]
        assert r["fills"] == len(fills) and r["filled"] == sum(f["qty"] for f in fills) <= r["qty"]
        assert min(f["price"] for f in fills) <= r["average_fill_price"] <= max(f["price"] for f in fills)


def check_busts(rows: Rows, demo: Demo) -> None:
    busted = {(f["account"], f["fill_id"]) for f in demo.tables["fills"] if f["busted_at"] is not None}
    assert {(r["account"], r["fill_id"]) for r in rows} == busted
    assert busted <= {(b["account"], b["fill_id"]) for b in demo.tables["fill_busts"]}
    assert {account for account, _ in busted} == {"pdx-main"}  # Paradex busts fills; Extended does not


def check_funding_per_position(rows: Rows, demo: Demo) -> None:
    assert len(rows) == len(demo.tables["positions"])
    for r in rows:
        payments = [f for f in demo.rows("funding_payments", account=r["account"], market=r["market"])
                    if f["paid_at"] >= r["opened_at"]]  # fmt: skip
        assert (r["payments"], r["funding"]) == (len(payments), sum((f["amount"] for f in payments), ZERO))
    assert any(r["payments"] for r in rows)
    assert [r["funding"] for r in rows] == sorted(r["funding"] for r in rows)


def check_costs(rows: Rows, demo: Demo) -> None:
    since = datetime.now(UTC) - timedelta(hours=24)
    assert {r["account"] for r in rows} == set(ACCOUNTS)
    for r in rows:
        fills = [
            f for f in demo.rows("fills", account=r["account"]) if f["busted_at"] is None and f["created_at"] > since
        ]
        funding = [f for f in demo.rows("funding_payments", account=r["account"]) if f["paid_at"] > since]
        assert r["fees"] == sum((f["fee"] for f in fills), ZERO) > 0
        assert r["funding"] == sum((f["amount"] for f in funding), ZERO)
        assert r["net"] == r["funding"] - r["fees"]


def check_balance_history(rows: Rows, demo: Demo) -> None:
    assert len(rows) == len([e for e in demo.balance_events if e["account"] == "ext-main"]) > 10
    (current,) = demo.rows("balances", account="ext-main")
    last = rows[-1]
    assert (last["asset"], last["balance"], last["event_id"]) == (
        current["asset"],
        current["balance"],
        current["event_id"],
    )
    assert rows[0]["change"] is None and all(r["change"] is not None for r in rows[1:])
    assert sum(r["change"] for r in rows[1:]) == last["balance"] - rows[0]["balance"]


def check_balance_a_day_ago(rows: Rows, demo: Demo) -> None:
    day_ago = datetime.now(UTC) - timedelta(days=1)
    latest: dict[tuple[str, str], tuple[datetime, int, Decimal]] = {}
    for event in demo.balance_events:
        if event["venue_time"] <= day_ago:
            for b in event["payload"]["balances"]:
                found = (event["venue_time"], event["id"], Decimal(b["balance"]))
                latest[(event["account"], b["asset"])] = max(latest.get((event["account"], b["asset"]), found), found)
    expected = {key: (balance, event_id) for key, (_, event_id, balance) in latest.items()}
    assert {(r["account"], r["asset"]): (r["balance"], r["event_id"]) for r in rows} == expected
    assert {account for account, _ in expected} == set(ACCOUNTS)


def check_lag(rows: Rows, demo: Demo) -> None:
    assert [(r["account"], r["events_behind"], r["oldest_waiting_for"]) for r in rows] == [
        (account, 0, None) for account in sorted(ACCOUNTS)
    ]


def check_sessions(rows: Rows, demo: Demo) -> None:
    for account in ACCOUNTS:
        sessions = demo.rows("stream_sessions", account=account)
        mine = [r for r in rows if r["account"] == account]
        assert sum(r["sessions"] for r in mine) == len(sessions) == 2  # the disconnect, then the shutdown
        assert sum(r["dropped"] for r in mine) == 1
        assert "shutdown" in " ".join(r["close_reasons"] for r in mine)


CHECKS: dict[int, Callable[[Rows, Demo], None]] = {
    1: check_summary,
    2: check_exposure,
    3: check_resting,
    4: check_stale_orders,
    5: check_fills_per_day,
    6: check_order_fills,
    7: check_busts,
    8: check_funding_per_position,
    9: check_costs,
    10: check_balance_history,
    11: check_balance_a_day_ago,
    12: check_lag,
    13: check_sessions,
}
"""Per query number, what its answer must be."""


def test_the_cookbook_answers_at_least_ten_questions_each_checked() -> None:
    assert len(QUERIES) >= 10
    assert [q.number for q in QUERIES] == list(range(1, len(QUERIES) + 1))
    assert set(CHECKS) == {q.number for q in QUERIES}
    assert {q.role for q in QUERIES} == {"statekeeper_reader", "statekeeper_auditor"}


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.number}")
async def test_each_query_runs_with_its_role_and_answers_the_question(demo: Demo, query: Query) -> None:
    conn = await asyncpg.connect(demo.logins[query.role])  # plain asyncpg: what a SQL user's client sees
    try:
        rows = [dict(r) for r in await conn.fetch(query.sql)]
    finally:
        await conn.close()
    CHECKS[query.number](rows, demo)
