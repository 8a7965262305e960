"""``statekeeper demo``: everything at once, on the embedded database, against built-in simulated venues.

What runs: the database chosen by the configuration (the embedded PostgreSQL by default), migrated; two simulated
venues in this process (Extended with two accounts, Paradex with two), with occasional faults on their streams and
REST APIs (disconnects, duplicates, reordered and delayed frames, malformed frames, REST 5xx) and one state drift (a
change the venue never announces on its stream); the daemon (ingest, projectors, reconciliation with healing) on
those accounts; and a live view of what it knows: per account equity, available balance, open orders, positions,
stream state, projector lag and the last reconciliation; the last events; the reconciliation's findings.

Ctrl-C (or ``--duration``) stops everything cleanly; a summary says what happened, where the data is and how to
query it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from statekeeper import status
from statekeeper.config import AccountSettings, Settings, resolve_secrets
from statekeeper.database import DatabaseTarget, connect, database_target
from statekeeper.ingest.daemon import Daemon
from statekeeper.migrations import upgrade
from statekeeper.simulator import FaultPlan, Simulator, SimulatorConfig
from statekeeper.simulator.faults import FaultKind

ACCOUNTS: dict[str, tuple[str, ...]] = {
    "extended": ("ext-alpha", "ext-beta"),
    "paradex": ("pdx-alpha", "pdx-beta"),
}
"""The simulated accounts, per venue."""

FAULTS = "disconnect=0.0002,duplicate=0.0003,reorder=0.0002,delay=0.0003,malformed=0.0003,rest_5xx=0.01"
"""Occasional faults: per frame on the streams (an account receives 20 to 40 frames a second: on the Extended stream
every duplicate, reorder or delay is a gap, and a resync), per request on REST."""

DRIFT_ACCOUNT = "pdx-beta"
DRIFT_AFTER_SECONDS = 15.0
"""When the drift happens (or at a quarter of ``--duration`` if that is sooner). On Paradex: on the Extended stream
the next resync (any duplicate or reordered frame causes one) would take it in before reconciliation does."""

RECONCILE_INTERVAL_SECONDS = 10.0
REFRESH_SECONDS = 0.5
SEED = 2026

SUMMARY = """
SELECT account, venue, equity, available_balance, open_orders, positions, gross_exposure, unrealised_pnl
FROM account_summary WHERE account = ANY($1::text[])
"""

LAST_EVENTS = """
SELECT id, account, kind, snapshot, source, venue_time FROM events ORDER BY id DESC LIMIT $1
"""

FINDINGS = """
SELECT account, entity, entity_key, field, projected, venue_value, first_seen_at, resolved_at, healed_by_event_id
FROM reconciliation_discrepancies WHERE account = ANY($1::text[])
ORDER BY last_seen_at DESC, id DESC LIMIT $2
"""

TOTALS = """
SELECT a.account,
       (SELECT count(*) FROM events AS e WHERE e.account = a.account) AS events,
       (SELECT count(*) FROM fills AS f WHERE f.account = a.account) AS fills,
       (SELECT count(*) FROM funding_payments AS p WHERE p.account = a.account) AS funding_payments,
       (SELECT count(*) FROM rejected_frames AS r WHERE r.account = a.account) AS rejected_frames,
       (SELECT count(*) FROM stream_sessions AS s WHERE s.account = a.account) AS sessions,
       (SELECT count(*) FROM reconciliation_runs AS r WHERE r.account = a.account) AS passes,
       (SELECT count(*) FROM reconciliation_discrepancies AS d WHERE d.account = a.account) AS found,
       (SELECT count(*) FROM reconciliation_discrepancies AS d
        WHERE d.account = a.account AND d.healed_by_event_id IS NOT NULL) AS healed,
       (SELECT count(*) FROM reconciliation_discrepancies AS d
        WHERE d.account = a.account AND d.resolved_at IS NULL) AS open
FROM unnest($1::text[]) AS a(account)
ORDER BY a.account
"""

STATEMENTS: dict[str, str] = {"summary": SUMMARY, "last_events": LAST_EVENTS, "findings": FINDINGS, "totals": TOTALS}
"""Every statement of this module, for the test that prepares them against a migrated database."""

PSQL_EXAMPLES = (
    "SELECT * FROM account_summary",
    "SELECT account, market, side, size, unrealised_pnl FROM positions ORDER BY account, market",
    "SELECT * FROM reconciliation_discrepancies ORDER BY last_seen_at DESC",
)


def all_accounts() -> list[str]:
    return [name for names in ACCOUNTS.values() for name in names]


# --------------------------------------------------------------------------------------------- set-up


def demo_settings(settings: Settings, simulators: Sequence[Simulator]) -> Settings:
    """The user's settings (database, logging, projector) with the simulated accounts, reconciliation that heals
    every ``RECONCILE_INTERVAL_SECONDS``, and /metrics on a free port (a second demo or a daemon may be running)."""
    environ: dict[str, str] = {}
    accounts: list[AccountSettings] = []
    for sim in simulators:
        for name in sim.config.accounts:
            variable = f"STATEKEEPER_DEMO_KEY_{len(accounts)}"
            environ[variable] = sim.credential(name)
            accounts.append(
                AccountSettings(
                    name=name, venue=sim.config.venue, api_key_env=variable, ws_url=sim.ws_url, rest_url=sim.rest_url
                )
            )
    demo = settings.model_copy(
        update={
            "accounts": tuple(accounts),
            "ingest": settings.ingest.model_copy(update={"metrics_port": 0}),
            "reconcile": settings.reconcile.model_copy(
                update={"interval_seconds": RECONCILE_INTERVAL_SECONDS, "heal": True}
            ),
        }
    )
    return resolve_secrets(demo, origin="the demo", environ=environ)


def simulator_configs(seed: int = SEED) -> list[SimulatorConfig]:
    faults = FaultPlan.parse(FAULTS)
    return [
        SimulatorConfig(venue=venue, seed=seed + n, accounts=names, faults=faults)  # type: ignore[arg-type]
        for n, (venue, names) in enumerate(ACCOUNTS.items())
    ]


# --------------------------------------------------------------------------------------------- the view


@dataclass
class Snapshot:
    """What the view shows, read from the database in one go."""

    statuses: list[status.AccountStatus] = field(default_factory=list)
    summary: dict[str, asyncpg.Record] = field(default_factory=dict)
    events: list[asyncpg.Record] = field(default_factory=list)
    findings: list[asyncpg.Record] = field(default_factory=list)


async def read_snapshot(conn: asyncpg.Connection, accounts: Sequence[str], venues: dict[str, str]) -> Snapshot:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return Snapshot(
            statuses=await status.gather(conn, accounts, configured=venues),
            summary={r["account"]: r for r in await conn.fetch(SUMMARY, list(accounts))},
            events=await conn.fetch(LAST_EVENTS, 8),
            findings=await conn.fetch(FINDINGS, list(accounts), 6),
        )


def _money(value: Decimal | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%H:%M:%S")


def _ago(as_of: datetime, value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = max(0, int((as_of - value).total_seconds()))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


_STREAM_STYLE = {"streaming": "green", "polling": "yellow", "down": "red", "none": "dim"}
_PASS_STYLE = {"clean": "green", "discrepancies": "red", "failed": "red"}


def stream_cell(s: status.AccountStatus) -> str:
    stream = s.stream
    text = f"[{_STREAM_STYLE.get(stream.state, 'yellow')}]{stream.state}[/] {_ago(s.as_of, stream.since)}"
    if stream.state != "streaming" and stream.last_close_reason:
        text += f" ({escape(stream.last_close_reason)})"
    return text


def event_cell(s: status.AccountStatus) -> str:
    last = s.last_event
    return "none" if last is None else f"#{last.id} {last.kind}, {_ago(s.as_of, last.appended_at)} ago"


def lag_cell(s: status.AccountStatus) -> str:
    p = s.projector
    if p.position is None:
        return "[dim]not yet[/]"
    if p.lag_events == 0:
        return "[green]caught up[/]"
    return f"[yellow]{p.lag_events} events, {p.lag_seconds:.1f} s[/]"


def reconciliation_cell(s: status.AccountStatus) -> str:
    r = s.reconciliation
    if r is None:
        return "[dim]not yet[/]"
    text = f"[{_PASS_STYLE.get(r.status, 'yellow')}]{escape(r.status)}[/] {_ago(s.as_of, r.at)} ago"
    if r.found or r.healed or r.discrepancies:
        text += f": {r.found} found, {r.healed} healed, {r.discrepancies} open"
    if r.error:
        text += f" ([red]{escape(r.error)}[/])"
    return text


def accounts_table(snapshot: Snapshot) -> Table:
    table = Table(title="accounts (from the projections)", title_justify="left", expand=True)
    table.add_column("account", no_wrap=True)
    table.add_column("venue", no_wrap=True)
    for column in ("equity", "available", "open orders", "positions", "exposure", "unrealised PnL"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in snapshot.statuses:
        row = snapshot.summary.get(s.account)
        figures = (
            [_money(row["equity"]), _money(row["available_balance"]), str(row["open_orders"]), str(row["positions"]),
             _money(row["gross_exposure"]), _money(row["unrealised_pnl"])]
            if row is not None else [""] * 6
        )  # fmt: skip
        table.add_row(s.account, s.venue or "", *figures)
    return table


def pipeline_table(snapshot: Snapshot) -> Table:
    table = Table(title="ingest, projection, reconciliation", title_justify="left", expand=True)
    for column in ("account", "stream", "last event", "projector lag", "last reconciliation"):
        table.add_column(column, no_wrap=column != "last reconciliation")
    for s in snapshot.statuses:
        table.add_row(s.account, stream_cell(s), event_cell(s), lag_cell(s), reconciliation_cell(s))
    return table


def events_table(snapshot: Snapshot) -> Table:
    table = Table(title="the last events", title_justify="left", expand=True)
    for column in ("id", "account", "kind", "source", "venue time"):
        table.add_column(column, no_wrap=True)
    for e in snapshot.events:
        kind = f"{e['kind']} (snapshot)" if e["snapshot"] else e["kind"]
        table.add_row(str(e["id"]), e["account"], kind, e["source"], _when(e["venue_time"]))
    return table


def findings_table(snapshot: Snapshot) -> Table:
    table = Table(title="reconciliation findings", title_justify="left", expand=True)
    for column in ("account", "entity", "key", "field", "projected", "venue", "first seen", "state"):
        table.add_column(column, overflow="ellipsis", no_wrap=True, max_width=24)
    for f in snapshot.findings:
        if f["healed_by_event_id"] is not None:
            state = f"healed by event {f['healed_by_event_id']}"
        elif f["resolved_at"] is not None:
            state = "resolved"
        else:
            state = "open"
        table.add_row(f["account"], f["entity"], f["entity_key"], f["field"], f["projected"] or "",
                      f["venue_value"] or "", _when(f["first_seen_at"]), state)  # fmt: skip
    if not snapshot.findings:
        table.add_row("none yet", "", "", "", "", "", "", "")
    return table


def view(snapshot: Snapshot, *, elapsed: float, duration: float | None, notes: Sequence[str]) -> Group:
    left = f", {max(0.0, duration - elapsed):.0f} s left" if duration is not None else ", Ctrl-C to stop"
    header = Text.from_markup(f"[bold]statekeeper demo[/]: running for {elapsed:.0f} s{left}")
    parts: list[Any] = [
        header,
        accounts_table(snapshot),
        pipeline_table(snapshot),
        events_table(snapshot),
        findings_table(snapshot),
    ]
    parts.extend(Text(note, style="yellow") for note in notes[-3:])
    return Group(*parts)


# --------------------------------------------------------------------------------------------- summary


def _where(target: DatabaseTarget) -> str:
    if target.embedded is not None:
        return f"the embedded PostgreSQL, data directory {target.embedded.pgdata}"
    return target.display_url


def summary_table(totals: Sequence[asyncpg.Record]) -> Table:
    table = Table(title="what happened", title_justify="left")
    columns = ("account", "events", "fills", "funding_payments", "rejected_frames", "sessions", "passes", "found",
               "healed", "open")  # fmt: skip
    for column in columns:
        table.add_column(column.replace("_", " "), justify="left" if column == "account" else "right")
    for r in totals:
        table.add_row(*(str(r[c]) for c in columns))
    return table


def how_to_query(console: Console, target: DatabaseTarget) -> None:
    console.print(f"[bold]the data[/] stays in {_where(target)}", highlight=False)
    console.print("query it with psql (the same database, whatever the configuration says):", highlight=False)
    for example in PSQL_EXAMPLES:
        console.print(f'  [cyan]statekeeper db psql -c "{example}"[/]', highlight=False)
    console.print("or from the log: [cyan]statekeeper status[/], [cyan]statekeeper replay --verify[/]", highlight=False)


# --------------------------------------------------------------------------------------------- run


async def run_demo(settings: Settings, console: Console, *, duration: float | None = None) -> int:
    """Run the demo until Ctrl-C (or for ``duration`` seconds). Returns the exit code."""
    if not console.is_terminal:  # a log or a pipe: wide enough for the tables rather than squeezed to 80 columns
        console = Console(file=console.file, width=max(console.width, 160), force_terminal=False)
    async with database_target(settings.database) as target:
        console.print(f"[bold]database[/]: {_where(target)}", highlight=False)
        await upgrade(target.url)
        async with contextlib.AsyncExitStack() as stack:
            simulators = [await stack.enter_async_context(await Simulator.start(c)) for c in simulator_configs()]
            for sim in simulators:
                names = ", ".join(sim.config.accounts)
                console.print(f"[bold]simulated {sim.config.venue}[/] at {sim.rest_url}: accounts {names}; "
                              f"faults {sim.config.faults}", highlight=False)  # fmt: skip
            code = await _run(settings, console, target, simulators, duration)
    return code


def _looked_after(snapshot: Snapshot, account: str, since: datetime) -> bool:
    """Whether a reconciliation pass of the account that started after ``since`` has finished without failing."""
    return any(s.account == account and s.reconciliation is not None and s.reconciliation.at > since
               and s.reconciliation.status != "failed" for s in snapshot.statuses)  # fmt: skip


async def _run(
    settings: Settings,
    console: Console,
    target: DatabaseTarget,
    simulators: Sequence[Simulator],
    duration: float | None,
) -> int:
    daemon = Daemon(demo_settings(settings, simulators), target.url)
    # The view shows what the daemon does; its log keeps to warnings and errors meanwhile.
    quiet = logging.getLogger("statekeeper")
    level = quiet.level
    quiet.setLevel(max(logging.WARNING, quiet.getEffectiveLevel()))
    task = asyncio.create_task(daemon.run(), name="demo-daemon")
    accounts = all_accounts()
    venues = {name: venue for venue, names in ACCOUNTS.items() for name in names}
    drift_at = min(DRIFT_AFTER_SECONDS, duration / 4) if duration is not None else DRIFT_AFTER_SECONDS
    drifted_at: datetime | None = None
    calm = False
    drifting = next(s for s in simulators if DRIFT_ACCOUNT in s.config.accounts)
    notes: list[str] = []
    started = time.monotonic()
    conn = await connect(target.url)
    try:
        try:
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while not task.done() and not daemon.stop.is_set():
                    elapsed = time.monotonic() - started
                    if duration is not None and elapsed >= duration:
                        break
                    # an order cancelled behind the stream's back (the account needs an open order at that moment)
                    if drifted_at is None and elapsed >= drift_at and drifting.truth(DRIFT_ACCOUNT).open_orders:
                        drifted_at = datetime.now(UTC)
                        # A resync of the account's stream (after a fault) would take the drift in before
                        # reconciliation sees it: no random faults on the account until a pass has looked.
                        drifting.calm(DRIFT_ACCOUNT)
                        calm = True
                        for what in drifting.inject(FaultKind.DRIFT, DRIFT_ACCOUNT, drift="order"):
                            notes.append(f"{_when(drifted_at)} drift injected on {DRIFT_ACCOUNT}: {what} "
                                         "(never announced on the stream: reconciliation finds it)")  # fmt: skip
                    snapshot = await read_snapshot(conn, accounts, venues)
                    if calm and drifted_at is not None and _looked_after(snapshot, DRIFT_ACCOUNT, drifted_at):
                        calm = False
                        drifting.calm(DRIFT_ACCOUNT, False)
                    live.update(view(snapshot, elapsed=elapsed, duration=duration, notes=notes))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(task), REFRESH_SECONDS)
        finally:
            daemon.stop.set()
            try:
                await task  # the daemon's own error, if it failed, is the command's
            finally:
                quiet.setLevel(level)
        totals = await conn.fetch(TOTALS, accounts)
    finally:
        await conn.close()
    console.print()  # the live view's last frame may end without one
    console.print(summary_table(totals))
    console.print(
        f"[bold]stopped[/] after {time.monotonic() - started:.0f} s; "
        + ("the drift was injected" if drifted_at is not None else "no drift was injected (stopped before it)"),
        highlight=False,
    )
    how_to_query(console, target)
    return 0
