"""Reconciliation runs and discrepancies (statekeeper.schema.reconciliation_runs, reconciliation_discrepancies).

A pass per account is one row of reconciliation_runs; what it finds is one row of reconciliation_discrepancies
per entity, key and field, open (resolved_at IS NULL, at most one open row per entity, key and field) until a
later pass sees it gone or heals it (healed_by_event_id: the event that healed it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_runs",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("started_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("finished_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, comment="clean, discrepancies (some remain open) or failed"),
        sa.Column("heal", sa.Boolean(), nullable=False, comment="whether the pass was allowed to heal"),
        sa.Column(
            "log_position", sa.BigInteger(), nullable=True, comment="the projector checkpoint the last comparison read"
        ),
        sa.Column("rounds", sa.Integer(), nullable=False, comment="REST answers taken"),
        sa.Column("compared", sa.Integer(), nullable=False, comment="entities and ledger items compared"),
        sa.Column("found", sa.Integer(), nullable=False, comment="discrepancies confirmed by this pass"),
        sa.Column(
            "healed", sa.Integer(), nullable=False, comment="discrepancies resolved by the events this pass appended"
        ),
        sa.Column(
            "unsettled", sa.Integer(), nullable=False, comment="entities that kept changing: left for the next pass"
        ),
        sa.Column(
            "remaining", sa.Integer(), nullable=False, comment="discrepancies of the account still open after the pass"
        ),
        sa.Column("error", sa.Text(), nullable=True, comment="why the pass failed"),
        sa.CheckConstraint(
            "status IN ('clean', 'discrepancies', 'failed')", name=op.f("ck_reconciliation_runs_status")
        ),
        sa.CheckConstraint(
            "(status = 'failed') = (error IS NOT NULL)", name=op.f("ck_reconciliation_runs_failed_with_error")
        ),
        sa.PrimaryKeyConstraint("account", "run_id", name=op.f("pk_reconciliation_runs")),
        comment="one row per reconciliation pass of an account",
    )
    op.create_index(
        "ix_reconciliation_runs_account_started_at", "reconciliation_runs", ["account", "started_at"], unique=False
    )
    op.create_table(
        "reconciliation_discrepancies",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False, comment="balance, order, position, account, fill or funding"),
        sa.Column("entity_key", sa.Text(), nullable=False, comment="asset, order id, market, fill id:type, payment id"),
        sa.Column(
            "field", sa.Text(), nullable=False, comment="the field that differs; 'present' when one side lacks it"
        ),
        sa.Column("projected", sa.Text(), nullable=True, comment="the projection's value (the last time it was seen)"),
        sa.Column("venue_value", sa.Text(), nullable=True, comment="the venue's value (the last time it was seen)"),
        sa.Column("first_seen_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("last_seen_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("first_run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("last_run_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("occurrences", sa.Integer(), nullable=False, comment="passes that confirmed it"),
        sa.Column("resolved_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("resolved_run_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("healed_by_event_id", sa.BigInteger(), nullable=True, comment="the event that healed it (events.id)"),
        sa.CheckConstraint(
            "entity IN ('balance', 'order', 'position', 'account', 'fill', 'funding')",
            name=op.f("ck_reconciliation_discrepancies_entity"),
        ),
        sa.CheckConstraint(
            "(resolved_at IS NULL) = (resolved_run_id IS NULL)",
            name=op.f("ck_reconciliation_discrepancies_resolved_by_run"),
        ),
        sa.PrimaryKeyConstraint("account", "id", name=op.f("pk_reconciliation_discrepancies")),
        comment="what reconciliation found: one row per difference, open until resolved",
    )
    op.create_index(
        "ix_reconciliation_discrepancies_open",
        "reconciliation_discrepancies",
        ["account", "entity", "entity_key", "field"],
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_index(
        "ix_reconciliation_discrepancies_account_last_seen_at",
        "reconciliation_discrepancies",
        ["account", "last_seen_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_reconciliation_discrepancies_account_last_seen_at", table_name="reconciliation_discrepancies")
    op.drop_index("ix_reconciliation_discrepancies_open", table_name="reconciliation_discrepancies")
    op.drop_table("reconciliation_discrepancies")
    op.drop_index("ix_reconciliation_runs_account_started_at", table_name="reconciliation_runs")
    op.drop_table("reconciliation_runs")
