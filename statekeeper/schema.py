"""The database schema, declared once. Alembic migrations are generated from this metadata and reviewed.

Every table leads with ``account`` and every unique key includes it, so that the same schema can be distributed
by account (Citus) when one server is no longer enough (DESIGN.md section 7).

What metadata cannot declare (trigger functions and triggers) lives in the migrations, and
:data:`EVENTS_TRIGGERS` names them so that ``statekeeper db check`` can verify they are in place.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID

from statekeeper.events import CloseReason, EventKind, Source, Transport
from statekeeper.projections import rows

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

TimestampTZ = TIMESTAMP(timezone=True)


def _one_of(column: str, values: list[str]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)  # static values from our own enums, never user input
    return f"{column} IN ({quoted})"


KINDS = sorted(k.value for k in EventKind)
SOURCES = sorted(s.value for s in Source)


def _message_columns() -> list[Column[object]]:
    """The columns that describe one venue message: ``events`` and ``event_conflicts`` both hold them."""
    return [
        Column("venue", Text, nullable=False),
        Column("session", UUID(as_uuid=True), nullable=True, comment="stream session (connection) it arrived on"),
        Column("seq", BigInteger, nullable=True, comment="the venue's frame number within the session"),
        Column("event_key", Text, nullable=False, comment="idempotency key, unique per account"),
        Column("kind", Text, nullable=False),
        Column("snapshot", Boolean, nullable=False),
        Column("source", Text, nullable=False),
        Column("venue_time", TimestampTZ, nullable=False),
        Column("received_at", TimestampTZ, nullable=False),
        Column("payload", JSONB, nullable=False, comment="normalized body, canonical JSON"),
        Column("raw", Text, nullable=True, comment="the frame or REST item exactly as received"),
        Column("content_hash", LargeBinary, nullable=False, comment="SHA-256 of the normalized content"),
    ]


events = Table(
    "events",
    metadata,
    Column("account", Text, nullable=False),
    Column("id", BigInteger, Identity(always=True), nullable=False, comment="global log position"),
    *_message_columns(),
    Column("appended_at", TimestampTZ, nullable=False, server_default=func.now()),
    Column(
        "chain_hash",
        LargeBinary,
        nullable=True,
        comment="link in the account's hash chain: SHA-256 over this event and the previous link (verify-log)",
    ),
    PrimaryKeyConstraint("account", "id"),
    UniqueConstraint("account", "event_key"),
    CheckConstraint(_one_of("kind", KINDS), name="kind"),
    CheckConstraint(_one_of("source", SOURCES), name="source"),
    # A numbered frame's key is its session and seq, so the unique key above also makes (account, session, seq)
    # unique, with one index instead of two; other keys cannot be mistaken for one.
    CheckConstraint(
        "CASE WHEN seq IS NULL THEN event_key NOT LIKE 'seq:%' "
        "ELSE seq >= 0 AND session IS NOT NULL AND event_key = 'seq:' || session::text || ':' || seq::text END",
        name="numbered_frame_key",
    ),
    CheckConstraint("octet_length(content_hash) = 32", name="content_hash_length"),
    CheckConstraint("octet_length(chain_hash) = 32", name="chain_hash_length"),
    Index("ix_events_id", "id"),
    comment="append-only event log: every venue message and control event",
)

event_conflicts = Table(
    "event_conflicts",
    metadata,
    Column("account", Text, nullable=False),
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("existing_event_id", BigInteger, nullable=False, comment="the event already stored under this key"),
    *_message_columns(),
    Column("first_seen_at", TimestampTZ, nullable=False, server_default=func.now()),
    Column("last_seen_at", TimestampTZ, nullable=False, server_default=func.now()),
    Column("occurrences", Integer, nullable=False, server_default=text("1")),
    PrimaryKeyConstraint("account", "id"),
    UniqueConstraint("account", "event_key", "content_hash"),
    comment="messages whose key was already taken by different content: kept, visible, counted",
)

rejected_frames = Table(
    "rejected_frames",
    metadata,
    Column("account", Text, nullable=False),
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("venue", Text, nullable=False),
    Column("session", UUID(as_uuid=True), nullable=True),
    Column("seq", BigInteger, nullable=True, comment="the frame's seq when it could still be read"),
    Column("source", Text, nullable=False),
    Column("received_at", TimestampTZ, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", LargeBinary, nullable=False, comment="the frame exactly as received, whatever its encoding"),
    Column("rejected_at", TimestampTZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("account", "id"),
    CheckConstraint(_one_of("source", SOURCES), name="source"),
    Index("ix_rejected_frames_account_received_at", "account", "received_at"),
    comment="frames that could not become events, with the reason",
)

stream_sessions = Table(
    "stream_sessions",
    metadata,
    Column("account", Text, nullable=False),
    Column("session", UUID(as_uuid=True), nullable=False),
    Column("venue", Text, nullable=False),
    Column("transport", Text, nullable=False),
    Column("url", Text, nullable=True),
    Column("owner", Text, nullable=True, comment="the daemon (host:pid) that holds the session"),
    Column("opened_at", TimestampTZ, nullable=False),
    Column("closed_at", TimestampTZ, nullable=True),
    Column("close_reason", Text, nullable=True),
    Column("close_detail", Text, nullable=True),
    Column("last_seq", BigInteger, nullable=True),
    PrimaryKeyConstraint("account", "session"),
    CheckConstraint(_one_of("transport", sorted(t.value for t in Transport)), name="transport"),
    CheckConstraint(
        "close_reason IS NULL OR " + _one_of("close_reason", sorted(r.value for r in CloseReason)),
        name="close_reason",
    ),
    CheckConstraint("(closed_at IS NULL) = (close_reason IS NULL)", name="closed_with_reason"),
    Index("ix_stream_sessions_account_opened_at", "account", "opened_at"),
    comment="one row per stream connection (or REST polling session)",
)

projector_checkpoints = Table(
    "projector_checkpoints",
    metadata,
    Column("account", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("position", BigInteger, nullable=False, comment="the last log position applied"),
    Column("updated_at", TimestampTZ, nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("account", "name"),
    CheckConstraint("position >= 0", name="position"),
    comment="how far each projector has applied the log, per account",
)

# ------------------------------------------------------------------------------------------- projections

_SQL_TYPES: dict[object, Any] = {str: Text, Decimal: Numeric, datetime: TimestampTZ, bool: Boolean, int: BigInteger}


def _projection_columns(row_type: type[rows.Row]) -> list[Column[Any]]:
    """The columns of a projection table, from its row class: one per field, nullable where the field is Optional."""
    hints = typing.get_type_hints(row_type)
    columns: list[Column[Any]] = []
    for name in rows.columns(row_type):
        hint = hints[name]
        args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else []
        base = args[0] if args else hint
        columns.append(Column(name, _SQL_TYPES[base], nullable=bool(args)))
    return columns


def _projection(row_type: type[rows.Row], *indexes: tuple[str, ...], comment: str) -> Table:
    name = row_type.table
    return Table(
        name,
        metadata,
        *_projection_columns(row_type),
        PrimaryKeyConstraint(*row_type.key),
        *(Index(f"ix_{name}_{'_'.join(columns)}", *columns) for columns in indexes),
        comment=comment,
    )


balances = _projection(rows.BalanceRow, comment="one row per account and asset: the latest balance the venue reported")
account_margins = _projection(
    rows.AccountRow, comment="one row per account: account-level margin figures, where the venue reports them apart"
)
orders = _projection(
    rows.OrderRow,
    ("account", "market"),
    ("account", "status"),
    ("account", "updated_at"),
    ("account", "client_order_id"),
    comment="every order ever seen, in its latest state",
)
open_orders = _projection(
    rows.OpenOrderRow,
    ("account", "market"),
    ("account", "status"),
    ("account", "updated_at"),
    comment="the orders still working",
)
positions = _projection(rows.PositionRow, comment="one row per open position (account and market)")
closed_positions = _projection(
    rows.ClosedPositionRow, ("account", "updated_at"), comment="the last position closed in each market"
)
fills = _projection(
    rows.FillRow,
    ("account", "created_at"),
    ("account", "market", "created_at"),
    ("account", "order_id"),
    comment="every execution; busted fills are marked (busted_at), never deleted",
)
fill_busts = _projection(rows.FillBustRow, comment="tradebusts as the venue reported them")
funding_payments = _projection(
    rows.FundingRow,
    ("account", "paid_at"),
    ("account", "market", "paid_at"),
    comment="every funding payment; amount is negative when the account paid",
)

PROJECTION_TABLES: tuple[Table, ...] = tuple(metadata.tables[t.table] for t in rows.ROW_TYPES)

# -------------------------------------------------------------------------------------------- reconciliation

RUN_STATUSES = ("clean", "discrepancies", "failed")
ENTITIES = ("balance", "order", "position", "account", "fill", "funding")

reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("account", Text, nullable=False),
    Column("run_id", UUID(as_uuid=True), nullable=False),
    Column("venue", Text, nullable=False),
    Column("started_at", TimestampTZ, nullable=False),
    Column("finished_at", TimestampTZ, nullable=False),
    Column("status", Text, nullable=False, comment="clean, discrepancies (some remain open) or failed"),
    Column("heal", Boolean, nullable=False, comment="whether the pass was allowed to heal"),
    Column("log_position", BigInteger, nullable=True, comment="the projector checkpoint the last comparison read"),
    Column("rounds", Integer, nullable=False, comment="REST answers taken"),
    Column("compared", Integer, nullable=False, comment="entities and ledger items compared"),
    Column("found", Integer, nullable=False, comment="discrepancies confirmed by this pass"),
    Column("healed", Integer, nullable=False, comment="discrepancies resolved by the events this pass appended"),
    Column("unsettled", Integer, nullable=False, comment="entities that kept changing: left for the next pass"),
    Column("remaining", Integer, nullable=False, comment="discrepancies of the account still open after the pass"),
    Column("error", Text, nullable=True, comment="why the pass failed"),
    PrimaryKeyConstraint("account", "run_id"),
    CheckConstraint(_one_of("status", list(RUN_STATUSES)), name="status"),
    CheckConstraint("(status = 'failed') = (error IS NOT NULL)", name="failed_with_error"),
    Index("ix_reconciliation_runs_account_started_at", "account", "started_at"),
    comment="one row per reconciliation pass of an account",
)

reconciliation_discrepancies = Table(
    "reconciliation_discrepancies",
    metadata,
    Column("account", Text, nullable=False),
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("entity", Text, nullable=False, comment="balance, order, position, account, fill or funding"),
    Column("entity_key", Text, nullable=False, comment="asset, order id, market, fill id:type, payment id"),
    Column("field", Text, nullable=False, comment="the field that differs; 'present' when one side lacks it"),
    Column("projected", Text, nullable=True, comment="the projection's value (the last time it was seen)"),
    Column("venue_value", Text, nullable=True, comment="the venue's value (the last time it was seen)"),
    Column("first_seen_at", TimestampTZ, nullable=False),
    Column("last_seen_at", TimestampTZ, nullable=False),
    Column("first_run_id", UUID(as_uuid=True), nullable=False),
    Column("last_run_id", UUID(as_uuid=True), nullable=False),
    Column("occurrences", Integer, nullable=False, comment="passes that confirmed it"),
    Column("resolved_at", TimestampTZ, nullable=True),
    Column("resolved_run_id", UUID(as_uuid=True), nullable=True),
    Column("healed_by_event_id", BigInteger, nullable=True, comment="the event that healed it (events.id)"),
    PrimaryKeyConstraint("account", "id"),
    CheckConstraint(_one_of("entity", list(ENTITIES)), name="entity"),
    CheckConstraint("(resolved_at IS NULL) = (resolved_run_id IS NULL)", name="resolved_by_run"),
    Index(
        "ix_reconciliation_discrepancies_open",
        "account",
        "entity",
        "entity_key",
        "field",
        unique=True,
        postgresql_where=text("resolved_at IS NULL"),
    ),
    Index("ix_reconciliation_discrepancies_account_last_seen_at", "account", "last_seen_at"),
    comment="what reconciliation found: one row per difference, open until resolved",
)
"""The tables the projectors write, in :data:`rows.ROW_TYPES` order."""

VIEWS: dict[str, str] = {
    "account_summary": "one row per account: equity, available balance, margin, open orders, exposure, stream state",
}
"""Views the migrations create (metadata cannot declare them) and ``db check`` verifies."""

EVENTS_TRIGGERS: dict[str, str] = {
    "events_append_only": "UPDATE and DELETE on events fail",
    "events_no_truncate": "TRUNCATE on events fails",
    "events_serialize_appends": "appends take one lock, so log positions become visible in order",
    "events_notify": "every append wakes the readers (NOTIFY statekeeper_events)",
}
"""Triggers on ``events`` that the migrations create and ``db check`` verifies (all ``ENABLE ALWAYS``)."""

NOTIFY_CHANNEL = "statekeeper_events"
