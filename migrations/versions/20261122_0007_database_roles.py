"""Database roles: ingest, projector, reconciler, reader, auditor. Owned by the operations work (issue 8).

Group roles (NOLOGIN) that operators grant to their login roles (``GRANT statekeeper_ingest TO ingest_daemon``);
each holds the least privilege one part of statekeeper needs in this database (``docs/operations.md``):

* ``statekeeper_ingest``: appends to ``events`` (insert and select, never update or delete: the append-only
  triggers stay as they are, behind a missing privilege), keeps ``event_conflicts`` and ``rejected_frames``,
  opens and closes ``stream_sessions``, and reads ``orders`` (the order resolver asks the venue about the orders a
  snapshot stopped listing);
* ``statekeeper_projector``: reads ``events``, writes the projection tables and ``projector_checkpoints``;
* ``statekeeper_reconciler``: appends to the log like ingest (corrections are events), writes its own tables
  (``reconciliation_runs``, ``reconciliation_discrepancies``), reads the projections and checkpoints;
* ``statekeeper_reader``: selects the projections and views, nothing else (not even the log);
* ``statekeeper_auditor``: selects everything, writes nothing (``statekeeper status``, audits of the log).

Roles are cluster-wide while privileges belong to one database, and one server can hold several statekeeper
databases (and tests create many): the upgrade creates a role only when it does not exist yet (two databases
migrated at once included), and the downgrade revokes this database's privileges, then drops a role only when no
other database grants it anything and no login role is a member of it.

The migration's user must own the tables (it created them) and, to create the roles, hold CREATEROLE; without
it, a DBA creates the five NOLOGIN roles first and the migration only grants.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INGEST = "statekeeper_ingest"
PROJECTOR = "statekeeper_projector"
RECONCILER = "statekeeper_reconciler"
READER = "statekeeper_reader"
AUDITOR = "statekeeper_auditor"

ROLES: dict[str, str] = {
    INGEST: "statekeeper ingest daemon: appends venue messages to the event log, keeps stream sessions",
    PROJECTOR: "statekeeper projector workers: read the log, write the projection tables and checkpoints",
    RECONCILER: "statekeeper reconciliation: appends corrections, writes its runs and discrepancies",
    READER: "statekeeper SQL users: select on the projection tables and views only",
    AUDITOR: "statekeeper operators and auditors: select on everything, write nothing",
}

# The schema as of this revision (frozen here: a later migration that adds a table grants it itself).
LOG_TABLES = ("events", "event_conflicts", "rejected_frames", "stream_sessions", "projector_checkpoints")
PROJECTION_TABLES = (
    "account_margins",
    "balances",
    "closed_positions",
    "fill_busts",
    "fills",
    "funding_payments",
    "open_orders",
    "orders",
    "positions",
)
VIEWS = ("account_summary",)
RECONCILIATION_TABLES = ("reconciliation_runs", "reconciliation_discrepancies")
BOOKKEEPING = ("alembic_version",)  # every part checks the schema revision before it starts

APPEND = {"events": "SELECT, INSERT", "event_conflicts": "SELECT, INSERT, UPDATE (occurrences, last_seen_at)",
          "rejected_frames": "SELECT, INSERT"}  # fmt: skip

GRANTS: dict[str, dict[str, str]] = {
    INGEST: {
        **APPEND,
        "stream_sessions": "SELECT, INSERT, UPDATE (closed_at, close_reason, close_detail, last_seq)",
        "orders": "SELECT",
        "alembic_version": "SELECT",
    },
    PROJECTOR: {
        "events": "SELECT",
        **dict.fromkeys(PROJECTION_TABLES, "SELECT, INSERT, UPDATE, DELETE"),
        "projector_checkpoints": "SELECT, INSERT, UPDATE",
        "alembic_version": "SELECT",
    },
    RECONCILER: {
        **APPEND,
        "stream_sessions": "SELECT",
        "projector_checkpoints": "SELECT",
        **dict.fromkeys((*PROJECTION_TABLES, *VIEWS), "SELECT"),
        **dict.fromkeys(RECONCILIATION_TABLES, "SELECT, INSERT, UPDATE"),
        "alembic_version": "SELECT",
    },
    READER: dict.fromkeys((*PROJECTION_TABLES, *VIEWS), "SELECT"),
    AUDITOR: dict.fromkeys((*LOG_TABLES, *PROJECTION_TABLES, *VIEWS, *RECONCILIATION_TABLES, *BOOKKEEPING), "SELECT"),
}
"""Per role, per table: the privileges (SQL, column lists included)."""

OPTIONAL = frozenset(RECONCILIATION_TABLES)
"""Tables granted only if they exist: reconciliation's (migration 0006) is written alongside this one."""

# Role and table names are this module's constants; no value from outside is ever formatted into a statement.
CREATE_ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} NOLOGIN;
        COMMENT ON ROLE {role} IS '{comment}';
    END IF;
EXCEPTION
    -- another database's migration created it meanwhile (roles are cluster-wide)
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION 'statekeeper: role {role} does not exist and % may not create it', current_user
            USING HINT = 'Grant CREATEROLE to the migration''s user, or have a DBA run: CREATE ROLE {role} NOLOGIN';
END
$$
"""

SCHEMA_USAGE = """
DO $$
BEGIN
    EXECUTE format('{verb} USAGE ON SCHEMA %I {direction} {role}', current_schema());
END
$$
"""

DROP_ROLE = """
DO $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_auth_members AS m JOIN pg_roles AS r ON r.oid = m.roleid
        WHERE r.rolname = '{role}' AND m.member <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
    ) THEN
        RAISE NOTICE 'statekeeper: role {role} is kept: login roles are members of it';
        RETURN;
    END IF;
    DROP ROLE IF EXISTS {role};
EXCEPTION
    WHEN dependent_objects_still_exist THEN
        RAISE NOTICE 'statekeeper: role {role} is kept: another database still grants it privileges';
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'statekeeper: role {role} is kept: % may not drop it', current_user;
END
$$
"""


def _exists(table: str) -> bool:
    found = op.get_bind().execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": table}).scalar()
    return bool(found)


def _tables(role: str) -> dict[str, str]:
    return {table: privileges for table, privileges in GRANTS[role].items() if table not in OPTIONAL or _exists(table)}


def upgrade() -> None:
    for role, comment in ROLES.items():
        op.execute(CREATE_ROLE.format(role=role, comment=comment))
    for role in ROLES:
        op.execute(SCHEMA_USAGE.format(verb="GRANT", direction="TO", role=role))
        for table, privileges in _tables(role).items():
            op.execute(f"GRANT {privileges} ON {table} TO {role}")


def downgrade() -> None:
    for role in ROLES:
        for table in GRANTS[role]:
            if _exists(table):
                op.execute(f"REVOKE ALL ON {table} FROM {role}")
        op.execute(SCHEMA_USAGE.format(verb="REVOKE", direction="FROM", role=role))
    for role in ROLES:
        op.execute(DROP_ROLE.format(role=role))
