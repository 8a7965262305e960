"""Close reason stream_restored: a REST polling fallback session ends because the stream is back.

Alembic does not compare CHECK constraints, so this is hand-written; tests/test_migrations.py checks the migrated
constraint against statekeeper.schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REASONS_0001 = "'abandoned', 'backpressure', 'error', 'fatal', 'gap', 'server_close', 'shutdown'"
REASONS_0003 = "'abandoned', 'backpressure', 'error', 'fatal', 'gap', 'server_close', 'shutdown', 'stream_restored'"


def _set(reasons: str) -> None:
    op.drop_constraint(op.f("ck_stream_sessions_close_reason"), "stream_sessions", type_="check")
    op.create_check_constraint(
        op.f("ck_stream_sessions_close_reason"),
        "stream_sessions",
        f"close_reason IS NULL OR close_reason IN ({reasons})",
    )


def upgrade() -> None:
    _set(REASONS_0003)


def downgrade() -> None:
    # Fails, as it must, if a session was already closed with the new reason.
    _set(REASONS_0001)
