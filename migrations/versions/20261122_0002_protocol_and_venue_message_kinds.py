"""Event kinds protocol (a venue's answers: JSON-RPC results and errors) and venue_message (kept, not modeled).

Every frame a venue sends becomes an event or a rejected frame (invariant 1); these kinds hold the frames that
are neither account state nor malformed. Alembic does not compare CHECK constraints, so this is hand-written;
tests/test_migrations.py checks the migrated constraint against statekeeper.schema.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_0001 = (
    "'account', 'balance', 'discrepancy', 'fill', 'fill_bust', 'funding', 'gap_detected', 'order', 'position', "
    "'reconciliation_pass', 'resync_completed', 'resync_started', 'session_closed', 'session_opened', 'transfer'"
)
KINDS_0002 = (
    "'account', 'balance', 'discrepancy', 'fill', 'fill_bust', 'funding', 'gap_detected', 'order', 'position', "
    "'protocol', 'reconciliation_pass', 'resync_completed', 'resync_started', 'session_closed', 'session_opened', "
    "'transfer', 'venue_message'"
)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_events_kind"), "events", type_="check")
    op.create_check_constraint(op.f("ck_events_kind"), "events", f"kind IN ({KINDS_0002})")


def downgrade() -> None:
    # Fails, as it must, if the log already holds events of the new kinds: the log is append-only.
    op.drop_constraint(op.f("ck_events_kind"), "events", type_="check")
    op.create_check_constraint(op.f("ck_events_kind"), "events", f"kind IN ({KINDS_0001})")
