"""Balance scopes; open orders indexed by status and by time. Owned by the projections work (issue 5).

``balances.scope``: the venue's balance statement an asset belongs to (``statekeeper.events.BalanceScope``:
Extended ``collateral`` or ``spot``, Paradex ``token``). A balance snapshot replaces the rows of its scope, and an
asset of that scope it no longer lists leaves ``balances``. The rows already projected came from events logged
without a scope: they keep none (replay folds those events the same way), and such a row is replaced, never removed.

The column sits after ``asset``, where the row class has it: the projector writes rows as the table's composite type,
whose fields follow the physical column order, and ADD COLUMN can only append. So ``balances`` is rebuilt in this
transaction: renamed, created anew, its rows copied, its privileges copied (whatever migration 0007 or an operator
granted), the ``account_summary`` view replaced by its own query (as the server held it before the rename) so that
it reads the new table (CREATE OR REPLACE keeps the view's privileges), and the old table dropped. The table holds
a row per account and asset: the copy is small.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "balances_0007"

COLUMNS = (
    "account, venue, asset, balance, equity, available_for_trade, available_for_withdrawal, unrealised_pnl, "
    "initial_margin, maintenance_margin, margin_ratio, exposure, leverage, status, updated_at, event_id"
)

# Every table-level privilege held on the old table (OLD), granted again on the new one (PUBLIC is grantee 0).
COPY_PRIVILEGES = """
DO $$
DECLARE
    held record;
BEGIN
    FOR held IN
        SELECT a.privilege_type, a.grantee, a.is_grantable
        FROM pg_class AS c, aclexplode(c.relacl) AS a
        WHERE c.oid = 'balances_0007'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format(
            'GRANT %s ON balances TO %s%s',
            held.privilege_type,
            CASE WHEN held.grantee = 0 THEN 'PUBLIC' ELSE held.grantee::regrole::text END,  -- quoted as needed
            CASE WHEN held.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
        );
    END LOOP;
END
$$
"""

VIEW_DEFINITION = sa.text("SELECT pg_get_viewdef('account_summary'::regclass)")
"""The view's query as the server holds it, read before the rename (which it would follow)."""


def upgrade() -> None:
    view = op.get_bind().execute(VIEW_DEFINITION).scalar_one()
    op.rename_table("balances", OLD)
    op.execute(f"ALTER TABLE {OLD} RENAME CONSTRAINT pk_balances TO pk_{OLD}")
    op.create_table(
        "balances",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("asset", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("balance", sa.Numeric(), nullable=False),
        sa.Column("equity", sa.Numeric(), nullable=True),
        sa.Column("available_for_trade", sa.Numeric(), nullable=True),
        sa.Column("available_for_withdrawal", sa.Numeric(), nullable=True),
        sa.Column("unrealised_pnl", sa.Numeric(), nullable=True),
        sa.Column("initial_margin", sa.Numeric(), nullable=True),
        sa.Column("maintenance_margin", sa.Numeric(), nullable=True),
        sa.Column("margin_ratio", sa.Numeric(), nullable=True),
        sa.Column("exposure", sa.Numeric(), nullable=True),
        sa.Column("leverage", sa.Numeric(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "asset", name=op.f("pk_balances")),
        comment="one row per account and asset: the latest balance the venue reported",
    )
    op.execute(f"INSERT INTO balances ({COLUMNS}) SELECT {COLUMNS} FROM {OLD}")  # noqa: S608 - constants
    op.execute(COPY_PRIVILEGES)
    # The same query, now naming the new table (the text is the server's own; CREATE OR REPLACE keeps the grants).
    op.execute(f"CREATE OR REPLACE VIEW account_summary AS {view}")
    op.drop_table(OLD)
    op.create_index(op.f("ix_open_orders_account_status"), "open_orders", ["account", "status"])
    op.create_index(op.f("ix_open_orders_account_updated_at"), "open_orders", ["account", "updated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_open_orders_account_updated_at"), table_name="open_orders")
    op.drop_index(op.f("ix_open_orders_account_status"), table_name="open_orders")
    # Rows of a composite type skip dropped columns: the table reads as migration 0007 left it.
    op.drop_column("balances", "scope")
