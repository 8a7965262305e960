"""Projection tables (balances, account_margins, orders, open_orders, positions, closed_positions, fills,
fill_busts, funding_payments) and the account_summary view.

The tables are generated from statekeeper.schema (which derives them from statekeeper.projections.rows); the view
is hand-written here and statekeeper.schema.VIEWS names it for ``db check``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One row per account the projector has applied: figures from account_margins where the venue reports them
# (Paradex), otherwise summed over the account's balances (Extended); open orders and positions from their tables;
# the last applied event; the state of the account's latest stream session.
ACCOUNT_SUMMARY = """
CREATE VIEW account_summary AS
SELECT c.account,
       e.venue,
       coalesce(m.equity, b.equity) AS equity,
       coalesce(m.free_collateral, b.available_for_trade) AS available_balance,
       coalesce(m.initial_margin, b.initial_margin) AS initial_margin,
       coalesce(m.maintenance_margin, b.maintenance_margin) AS maintenance_margin,
       o.open_orders,
       p.positions,
       p.gross_exposure,
       coalesce(b.unrealised_pnl, p.unrealised_pnl, 0) AS unrealised_pnl,
       e.venue_time AS last_update,
       c.position AS last_event_id,
       CASE
           WHEN s.transport IS NULL THEN 'none'
           WHEN s.closed_at IS NOT NULL THEN 'down'
           WHEN s.transport = 'websocket' THEN 'streaming'
           ELSE 'polling'
       END AS stream_state,
       s.opened_at AS stream_since,
       s.close_reason AS stream_close_reason
FROM projector_checkpoints AS c
LEFT JOIN account_margins AS m ON m.account = c.account
LEFT JOIN LATERAL (
    SELECT sum(equity) AS equity, sum(available_for_trade) AS available_for_trade,
           sum(initial_margin) AS initial_margin, sum(maintenance_margin) AS maintenance_margin,
           sum(unrealised_pnl) AS unrealised_pnl
    FROM balances WHERE balances.account = c.account
) AS b ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS open_orders FROM open_orders WHERE open_orders.account = c.account
) AS o ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS positions,
           coalesce(sum(abs(coalesce(value, size * mark_price, size * entry_price))), 0) AS gross_exposure,
           sum(unrealised_pnl) AS unrealised_pnl
    FROM positions WHERE positions.account = c.account
) AS p ON true
LEFT JOIN LATERAL (
    SELECT venue, venue_time FROM events WHERE events.account = c.account AND events.id = c.position
) AS e ON true
LEFT JOIN LATERAL (
    SELECT transport, opened_at, closed_at, close_reason FROM stream_sessions
    WHERE stream_sessions.account = c.account
    ORDER BY opened_at DESC
    LIMIT 1
) AS s ON true
WHERE c.name = 'projections'
"""


def upgrade() -> None:
    op.create_table(
        "account_margins",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("equity", sa.Numeric(), nullable=False),
        sa.Column("free_collateral", sa.Numeric(), nullable=True),
        sa.Column("initial_margin", sa.Numeric(), nullable=True),
        sa.Column("maintenance_margin", sa.Numeric(), nullable=True),
        sa.Column("total_collateral", sa.Numeric(), nullable=True),
        sa.Column("margin_cushion", sa.Numeric(), nullable=True),
        sa.Column("settlement_asset", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("venue_seq", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_account_margins")),
        comment="one row per account: account-level margin figures, where the venue reports them apart",
    )
    op.create_table(
        "balances",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("asset", sa.Text(), nullable=False),
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
    op.create_table(
        "closed_positions",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("position_id", sa.Text(), nullable=True),
        sa.Column("size", sa.Numeric(), nullable=False),
        sa.Column("entry_price", sa.Numeric(), nullable=True),
        sa.Column("mark_price", sa.Numeric(), nullable=True),
        sa.Column("value", sa.Numeric(), nullable=True),
        sa.Column("liquidation_price", sa.Numeric(), nullable=True),
        sa.Column("unrealised_pnl", sa.Numeric(), nullable=True),
        sa.Column("realised_pnl", sa.Numeric(), nullable=True),
        sa.Column("leverage", sa.Numeric(), nullable=True),
        sa.Column("margin", sa.Numeric(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("venue_seq", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "market", name=op.f("pk_closed_positions")),
        comment="the last position closed in each market",
    )
    op.create_index(
        "ix_closed_positions_account_updated_at", "closed_positions", ["account", "updated_at"], unique=False
    )
    op.create_table(
        "fill_busts",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("fill_id", sa.Text(), nullable=False),
        sa.Column("busted_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "fill_id", name=op.f("pk_fill_busts")),
        comment="tradebusts as the venue reported them",
    )
    op.create_table(
        "fills",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("fill_id", sa.Text(), nullable=False),
        sa.Column("fill_type", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=True),
        sa.Column("client_order_id", sa.Text(), nullable=True),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(), nullable=False),
        sa.Column("qty", sa.Numeric(), nullable=False),
        sa.Column("value", sa.Numeric(), nullable=True),
        sa.Column("fee", sa.Numeric(), nullable=False),
        sa.Column("fee_asset", sa.Text(), nullable=True),
        sa.Column("is_taker", sa.Boolean(), nullable=True),
        sa.Column("realized_pnl", sa.Numeric(), nullable=True),
        sa.Column("realized_funding", sa.Numeric(), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("busted_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "fill_id", "fill_type", name=op.f("pk_fills")),
        comment="every execution; busted fills are marked (busted_at), never deleted",
    )
    op.create_index("ix_fills_account_created_at", "fills", ["account", "created_at"], unique=False)
    op.create_index("ix_fills_account_market_created_at", "fills", ["account", "market", "created_at"], unique=False)
    op.create_index("ix_fills_account_order_id", "fills", ["account", "order_id"], unique=False)
    op.create_table(
        "funding_payments",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("payment_id", sa.Text(), nullable=False),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("asset", sa.Text(), nullable=True),
        sa.Column("rate", sa.Numeric(), nullable=True),
        sa.Column("position_side", sa.Text(), nullable=True),
        sa.Column("position_size", sa.Numeric(), nullable=True),
        sa.Column("position_value", sa.Numeric(), nullable=True),
        sa.Column("mark_price", sa.Numeric(), nullable=True),
        sa.Column("funding_index", sa.Numeric(), nullable=True),
        sa.Column("fill_id", sa.Text(), nullable=True),
        sa.Column("paid_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "payment_id", name=op.f("pk_funding_payments")),
        comment="every funding payment; amount is negative when the account paid",
    )
    op.create_index(
        "ix_funding_payments_account_market_paid_at", "funding_payments", ["account", "market", "paid_at"], unique=False
    )
    op.create_index("ix_funding_payments_account_paid_at", "funding_payments", ["account", "paid_at"], unique=False)
    op.create_table(
        "open_orders",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("client_order_id", sa.Text(), nullable=True),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("order_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("price", sa.Numeric(), nullable=True),
        sa.Column("average_price", sa.Numeric(), nullable=True),
        sa.Column("qty", sa.Numeric(), nullable=False),
        sa.Column("filled_qty", sa.Numeric(), nullable=True),
        sa.Column("remaining_qty", sa.Numeric(), nullable=True),
        sa.Column("fee_paid", sa.Numeric(), nullable=True),
        sa.Column("trigger_price", sa.Numeric(), nullable=True),
        sa.Column("reduce_only", sa.Boolean(), nullable=True),
        sa.Column("post_only", sa.Boolean(), nullable=True),
        sa.Column("time_in_force", sa.Text(), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("venue_seq", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "order_id", name=op.f("pk_open_orders")),
        comment="the orders still working",
    )
    op.create_index("ix_open_orders_account_market", "open_orders", ["account", "market"], unique=False)
    op.create_table(
        "orders",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("client_order_id", sa.Text(), nullable=True),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("order_type", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("price", sa.Numeric(), nullable=True),
        sa.Column("average_price", sa.Numeric(), nullable=True),
        sa.Column("qty", sa.Numeric(), nullable=False),
        sa.Column("filled_qty", sa.Numeric(), nullable=True),
        sa.Column("remaining_qty", sa.Numeric(), nullable=True),
        sa.Column("fee_paid", sa.Numeric(), nullable=True),
        sa.Column("trigger_price", sa.Numeric(), nullable=True),
        sa.Column("reduce_only", sa.Boolean(), nullable=True),
        sa.Column("post_only", sa.Boolean(), nullable=True),
        sa.Column("time_in_force", sa.Text(), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("expires_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("venue_seq", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "order_id", name=op.f("pk_orders")),
        comment="every order ever seen, in its latest state",
    )
    op.create_index("ix_orders_account_client_order_id", "orders", ["account", "client_order_id"], unique=False)
    op.create_index("ix_orders_account_market", "orders", ["account", "market"], unique=False)
    op.create_index("ix_orders_account_status", "orders", ["account", "status"], unique=False)
    op.create_index("ix_orders_account_updated_at", "orders", ["account", "updated_at"], unique=False)
    op.create_table(
        "positions",
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("venue", sa.Text(), nullable=False),
        sa.Column("market", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("position_id", sa.Text(), nullable=True),
        sa.Column("size", sa.Numeric(), nullable=False),
        sa.Column("entry_price", sa.Numeric(), nullable=True),
        sa.Column("mark_price", sa.Numeric(), nullable=True),
        sa.Column("value", sa.Numeric(), nullable=True),
        sa.Column("liquidation_price", sa.Numeric(), nullable=True),
        sa.Column("unrealised_pnl", sa.Numeric(), nullable=True),
        sa.Column("realised_pnl", sa.Numeric(), nullable=True),
        sa.Column("leverage", sa.Numeric(), nullable=True),
        sa.Column("margin", sa.Numeric(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("venue_seq", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account", "market", name=op.f("pk_positions")),
        comment="one row per open position (account and market)",
    )
    op.execute(ACCOUNT_SUMMARY)


def downgrade() -> None:
    op.execute("DROP VIEW account_summary")
    op.drop_table("positions")
    op.drop_index("ix_orders_account_updated_at", table_name="orders")
    op.drop_index("ix_orders_account_status", table_name="orders")
    op.drop_index("ix_orders_account_market", table_name="orders")
    op.drop_index("ix_orders_account_client_order_id", table_name="orders")
    op.drop_table("orders")
    op.drop_index("ix_open_orders_account_market", table_name="open_orders")
    op.drop_table("open_orders")
    op.drop_index("ix_funding_payments_account_paid_at", table_name="funding_payments")
    op.drop_index("ix_funding_payments_account_market_paid_at", table_name="funding_payments")
    op.drop_table("funding_payments")
    op.drop_index("ix_fills_account_order_id", table_name="fills")
    op.drop_index("ix_fills_account_market_created_at", table_name="fills")
    op.drop_index("ix_fills_account_created_at", table_name="fills")
    op.drop_table("fills")
    op.drop_table("fill_busts")
    op.drop_index("ix_closed_positions_account_updated_at", table_name="closed_positions")
    op.drop_table("closed_positions")
    op.drop_table("balances")
    op.drop_table("account_margins")
