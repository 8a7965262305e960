"""``statekeeper status``: per account, the stream state, the last event, the projector lag, the last reconciliation.

Read-only. :func:`gather` runs one statement per concern for all the accounts at once (``unnest`` of the account
names joined ``LATERAL`` to an index probe per account), inside one ``REPEATABLE READ`` read-only transaction, so
every figure describes the same instant (the database's ``now()``), whatever the number of accounts.

The statements are named module constants with bind parameters only, listed in :data:`STATEMENTS` for the test
that prepares them against a migrated database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import asyncpg
from rich.markup import escape
from rich.table import Table

from statekeeper import statements
from statekeeper.database import connect
from statekeeper.errors import MigrationError
from statekeeper.events import Transport
from statekeeper.projections.store import ALL_ACCOUNTS, CHECKPOINT, LAG

StreamState = Literal["streaming", "polling", "down", "none"]


NOW = "SELECT now() AS as_of"

# The newest event of each account: one backward probe of the primary key (account, id).
LAST_EVENTS = """
SELECT a.account, e.id, e.venue, e.kind, e.venue_time, e.received_at, e.appended_at
FROM unnest($1::text[]) AS a(account)
JOIN LATERAL (
    SELECT id, venue, kind, venue_time, received_at, appended_at
    FROM events
    WHERE events.account = a.account
    ORDER BY id DESC
    LIMIT 1
) AS e ON true
"""

# The open sessions of each account, and its most recently opened closed one (for the last close reason), both
# from the index (account, opened_at). Open sessions are few: the daemon closes what it leaves behind.
SESSIONS = """
SELECT a.account, s.session, s.venue, s.transport, s.owner, s.opened_at, s.closed_at, s.close_reason,
       s.close_detail
FROM unnest($1::text[]) AS a(account)
JOIN LATERAL (
    (SELECT session, venue, transport, owner, opened_at, closed_at, close_reason, close_detail
     FROM stream_sessions
     WHERE stream_sessions.account = a.account AND closed_at IS NULL)
    UNION ALL
    (SELECT session, venue, transport, owner, opened_at, closed_at, close_reason, close_detail
     FROM stream_sessions
     WHERE stream_sessions.account = a.account AND closed_at IS NOT NULL
     ORDER BY opened_at DESC
     LIMIT 1)
) AS s ON true
"""

# The latest reconciliation pass of each account: one backward probe of the index (account, started_at) of
# reconciliation_runs.
RECONCILIATIONS = """
SELECT a.account, r.run_id, r.started_at, r.finished_at, r.status, r.remaining, r.found, r.healed, r.error
FROM unnest($1::text[]) AS a(account)
JOIN LATERAL (
    SELECT run_id, started_at, finished_at, status, remaining, found, healed, error
    FROM reconciliation_runs
    WHERE reconciliation_runs.account = a.account
    ORDER BY started_at DESC
    LIMIT 1
) AS r ON true
"""

# Whether an ingest daemon holds each account's claim (a session-level advisory lock on (class, hashtext)).
CLAIMS = """
WITH held AS (
    SELECT objid FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $2::oid
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT a.account, hashtext(a.account)::oid IN (SELECT objid FROM held) AS claimed
FROM unnest($1::text[]) AS a(account)
"""

STATEMENTS: dict[str, str] = {
    "now": NOW,
    "all_accounts": ALL_ACCOUNTS,
    "last_events": LAST_EVENTS,
    "sessions": SESSIONS,
    "reconciliations": RECONCILIATIONS,
    "claims": CLAIMS,
}
"""Every statement of this module, for the test that prepares them against a migrated database."""


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """The account's stream, from ``stream_sessions``."""

    state: StreamState
    """streaming (a WebSocket session is open), polling (only a REST polling session is open), down (every
    session is closed) or none (the account never had a session)."""
    since: datetime | None
    """When the current state began: the live session's opening, or the last session's close when down."""
    session: UUID | None
    """The live session (the newest open one of the state's transport), or the last closed one when down."""
    open_sessions: int
    owners: tuple[str, ...]
    """The daemons (``host:pid``) recorded as owners of the open sessions."""
    last_close_at: datetime | None
    last_close_reason: str | None
    last_close_detail: str | None


@dataclass(frozen=True, slots=True)
class LastEvent:
    id: int
    kind: str
    venue_time: datetime
    received_at: datetime
    appended_at: datetime


@dataclass(frozen=True, slots=True)
class ProjectorStatus:
    position: int | None
    """The checkpoint: the last log position applied (None: the projector never ran for this account)."""
    updated_at: datetime | None
    lag_events: int
    """Events of the account not applied yet."""
    lag_seconds: Decimal
    """How long the oldest of them has waited (now - its receive time); 0 when caught up."""
    oldest_unapplied_received_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReconciliationStatus:
    """The account's latest pass, from ``reconciliation_runs``."""

    at: datetime
    """When the pass started."""
    finished_at: datetime
    run_id: str
    status: str
    """clean, discrepancies (some are open) or failed."""
    discrepancies: int
    """Discrepancies of the account still open after the pass."""
    found: int
    healed: int
    error: str | None


@dataclass(frozen=True, slots=True)
class AccountStatus:
    account: str
    venue: str | None
    configured: bool
    claimed: bool
    """An ingest daemon holds the account's claim now. Open sessions and no claim: their daemon died."""
    stream: StreamStatus
    last_event: LastEvent | None
    projector: ProjectorStatus
    reconciliation: ReconciliationStatus | None
    as_of: datetime
    """The database's time when the figures were read."""


# ------------------------------------------------------------------------------------------------ reading

_NO_STREAM = StreamStatus("none", None, None, 0, (), None, None, None)
_MILLISECOND = Decimal("0.001")


def stream_status(rows: Sequence[Mapping[str, Any]]) -> StreamStatus:
    """The stream state of one account from its :data:`SESSIONS` rows (the open ones and the last closed one)."""
    open_rows = sorted((r for r in rows if r["closed_at"] is None), key=lambda r: r["opened_at"])
    closed = next((r for r in rows if r["closed_at"] is not None), None)
    state: StreamState
    websockets = [r for r in open_rows if r["transport"] == Transport.WEBSOCKET]
    if websockets:  # the newest open session of the transport is the live one (an older one: a dead daemon's)
        state, current, since = "streaming", websockets[-1], websockets[-1]["opened_at"]
    elif open_rows:
        state, current, since = "polling", open_rows[-1], open_rows[-1]["opened_at"]
    elif closed is not None:
        state, current, since = "down", closed, closed["closed_at"]
    else:
        return _NO_STREAM
    return StreamStatus(
        state=state,
        since=since,
        session=current["session"],
        open_sessions=len(open_rows),
        owners=tuple(sorted({r["owner"] for r in open_rows if r["owner"]})),
        last_close_at=closed["closed_at"] if closed is not None else None,
        last_close_reason=closed["close_reason"] if closed is not None else None,
        last_close_detail=closed["close_detail"] if closed is not None else None,
    )


def lag_seconds(as_of: datetime, oldest: datetime | None) -> Decimal:
    """Seconds from ``oldest`` to ``as_of``, to the millisecond; 0 when nothing waits.

    A receive time ahead of ``as_of`` (the receiving host's clock ahead of the database's) is no lag either.
    """
    waited = timedelta(0) if oldest is None else max(as_of - oldest, timedelta(0))
    return (Decimal(waited // timedelta(microseconds=1)) / 1_000_000).quantize(_MILLISECOND)


async def gather(
    conn: asyncpg.Connection,
    accounts: Sequence[str] | None,
    *,
    configured: Mapping[str, str] | None = None,
) -> list[AccountStatus]:
    """The status of ``accounts``, in that order; with None, of every configured account and every account in
    the log, sorted by name. ``configured`` maps the configured accounts to their venues.

    A name that is neither configured nor in the log is reported all the same (state none, no event, never
    reconciled), as a configured account that has not run yet is.
    """
    configured = dict(configured or {})
    if conn.is_in_transaction():
        return await _gather(conn, accounts, configured)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _gather(conn, accounts, configured)


async def _gather(
    conn: asyncpg.Connection, accounts: Sequence[str] | None, configured: Mapping[str, str]
) -> list[AccountStatus]:
    try:
        if accounts is None:
            logged = [r["account"] for r in await conn.fetch(ALL_ACCOUNTS)]
            names = sorted({*configured, *logged})
        else:
            names = list(dict.fromkeys(accounts))
        as_of: datetime = await conn.fetchval(NOW)
        if not names:
            return []
        last_events = {r["account"]: r for r in await conn.fetch(LAST_EVENTS, names)}
        sessions: dict[str, list[asyncpg.Record]] = {}
        for row in await conn.fetch(SESSIONS, names):
            sessions.setdefault(row["account"], []).append(row)
        projectors = {r["account"]: r for r in await conn.fetch(LAG, names, CHECKPOINT)}
        passes = {r["account"]: r for r in await conn.fetch(RECONCILIATIONS, names)}
        claims = {r["account"]: r["claimed"] for r in await conn.fetch(CLAIMS, names, statements.CLAIM_LOCK_CLASS)}
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise MigrationError(
            f"the database schema is not the one this version expects ({exc}): "
            "run `statekeeper db upgrade` (and `statekeeper db check`)"
        ) from None
    found: list[AccountStatus] = []
    for name in names:
        last, account_sessions = last_events.get(name), sessions.get(name, [])
        venue = configured.get(name) or (last["venue"] if last is not None else None)
        if venue is None and account_sessions:
            venue = account_sessions[0]["venue"]
        found.append(
            AccountStatus(
                account=name,
                venue=venue,
                configured=name in configured,
                claimed=bool(claims.get(name)),
                stream=stream_status(account_sessions),
                last_event=_last_event(last),
                projector=_projector(projectors[name], as_of),
                reconciliation=_reconciliation(passes.get(name)),
                as_of=as_of,
            )
        )
    return found


def _last_event(row: asyncpg.Record | None) -> LastEvent | None:
    if row is None:
        return None
    return LastEvent(row["id"], row["kind"], row["venue_time"], row["received_at"], row["appended_at"])


def _projector(row: asyncpg.Record, as_of: datetime) -> ProjectorStatus:
    return ProjectorStatus(
        position=row["position"],
        updated_at=row["updated_at"],
        lag_events=row["events"],
        lag_seconds=lag_seconds(as_of, row["oldest"]),
        oldest_unapplied_received_at=row["oldest"],
    )


def _reconciliation(row: asyncpg.Record | None) -> ReconciliationStatus | None:
    if row is None:
        return None
    return ReconciliationStatus(
        at=row["started_at"],
        finished_at=row["finished_at"],
        run_id=str(row["run_id"]),
        status=row["status"],
        discrepancies=row["remaining"],
        found=row["found"],
        healed=row["healed"],
        error=row["error"],
    )


async def ensure_migrated(url: str) -> None:
    """Raise :class:`MigrationError` (exit 2) unless the database is at the revision this version expects.

    Only the revision: drift in an index or a constraint is ``statekeeper db check``'s business, and must not stop
    an operator from looking at the status.
    """
    from statekeeper.migrations import current_revisions, head_revisions  # noqa: PLC0415 - Alembic is slow to import

    current, heads = set(await current_revisions(url)), set(head_revisions())
    if current != heads:
        have = ", ".join(sorted(current)) or "none (an empty database)"
        raise MigrationError(
            f"the database is at revision {have}; this version of statekeeper expects {', '.join(sorted(heads))}: "
            "run `statekeeper db upgrade`"
        )


async def collect(
    url: str, accounts: Sequence[str] | None, *, configured: Mapping[str, str] | None = None
) -> list[AccountStatus]:
    """Check the schema revision, then :func:`gather` on a connection of its own."""
    conn = await connect(url)  # first: an unreachable database is reported as such
    try:
        await ensure_migrated(url)
        return await gather(conn, accounts, configured=configured)
    finally:
        await conn.close()


# ------------------------------------------------------------------------------------------------ rendering


def _plain(value: Any) -> Any:
    """JSON-ready: times in ISO 8601, decimals and ids as strings, dataclasses as objects."""
    match value:
        case datetime():
            return value.isoformat()
        case Decimal() | UUID():
            return str(value)
        case tuple() | list():
            return [_plain(v) for v in value]
        case _ if hasattr(value, "__dataclass_fields__"):
            return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
        case _:
            return value


def to_json(statuses: Sequence[AccountStatus]) -> str:
    """One JSON document: ``{"accounts": [...]}``, each account as the fields of :class:`AccountStatus`."""
    return json.dumps({"accounts": [_plain(s) for s in statuses]}, indent=2)


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _age(as_of: datetime, value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = max(int((as_of - value).total_seconds()), 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f" ({seconds // size}{unit} ago)"
    return f" ({seconds}s ago)"


_STATE_STYLE: dict[str, str] = {"streaming": "green", "polling": "yellow", "down": "red", "none": "dim"}
_RECONCILIATION_STYLE: dict[str, str] = {"clean": "green", "discrepancies": "red", "failed": "red"}


def _stream_cell(s: AccountStatus) -> str:
    stream = s.stream
    text = f"[{_STATE_STYLE[stream.state]}]{stream.state}[/]"
    if stream.since is not None:
        text += f" since {_time(stream.since)}{_age(s.as_of, stream.since)}"
    if stream.owners:
        text += f"\nowner {escape(', '.join(stream.owners))}"
    if stream.open_sessions and not s.claimed:
        text += "\n[red]no daemon holds the account: its sessions were left open[/]"
    if stream.last_close_reason is not None:
        text += f"\nlast close {_time(stream.last_close_at)}: {escape(stream.last_close_reason)}"
        if stream.last_close_detail:
            text += f" ({escape(stream.last_close_detail)})"
    return text


def _event_cell(s: AccountStatus) -> str:
    last = s.last_event
    if last is None:
        return "[dim]none[/]"
    return f"#{last.id} {escape(last.kind)}\n{_time(last.appended_at)}{_age(s.as_of, last.appended_at)}"


def _projector_cell(s: AccountStatus) -> str:
    p = s.projector
    position = "[dim]never ran[/]" if p.position is None else f"at #{p.position}"
    if p.lag_events == 0:
        return f"{position}\n[green]caught up[/]"
    return f"{position}\n[yellow]{p.lag_events} behind, oldest waiting {p.lag_seconds:.1f} s[/]"


def _reconciliation_cell(s: AccountStatus) -> str:
    r = s.reconciliation
    if r is None:
        return "[dim]never[/]"
    status = r.status
    text = f"[{_RECONCILIATION_STYLE.get(status, 'yellow')}]{escape(status)}[/]"
    if r.discrepancies:
        text += f", {r.discrepancies} open discrepancies"
    if r.healed:
        text += f", {r.healed} healed"
    if r.error:
        text += f" ({escape(r.error)})"
    return f"{text}\n{_time(r.at)}{_age(s.as_of, r.at)}"


def to_table(statuses: Sequence[AccountStatus]) -> Table:
    as_of = f" at {_time(statuses[0].as_of)}" if statuses else ""
    table = Table(title=f"statekeeper status{as_of}", show_lines=True)
    for column in ("account", "venue", "stream", "last event", "projector", "last reconciliation"):
        table.add_column(column)
    for s in statuses:
        venue = escape(s.venue) if s.venue else "-"
        account = escape(s.account) + ("" if s.configured else "\n[dim](not configured)[/]")
        table.add_row(account, venue, _stream_cell(s), _event_cell(s), _projector_cell(s), _reconciliation_cell(s))
    return table
