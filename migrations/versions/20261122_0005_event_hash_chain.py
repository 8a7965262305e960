"""Per-account hash chain over events (tamper evidence). Owned by the audit work (issue 7).

``events.chain_hash``: each event's link in its account's hash chain (:mod:`statekeeper.audit.chain`), written by
``PostgresEventLog.append`` from then on. The events already stored are linked here, account by account in log
order, with the same function: the only UPDATE the log ever sees, so the append-only trigger is disabled for it
and enabled again (ALWAYS) in the same transaction; nobody can append meanwhile (ALTER TABLE holds the table's
ACCESS EXCLUSIVE lock until commit).

The column stays nullable: a row inserted without the append API (plain SQL) has no link, and
``statekeeper verify-log`` reports it as a broken link.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from statekeeper.audit.chain import GENESIS, stored_link

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAGE = 5_000

ACCOUNTS = sa.text("SELECT DISTINCT account FROM events ORDER BY account")
PAGE_OF_ACCOUNT = sa.text(
    "SELECT id, account, venue, session, seq, event_key, kind, snapshot, source, venue_time, received_at, raw, "
    "content_hash FROM events WHERE account = :account AND id > :after ORDER BY id LIMIT :limit"
)
SET_LINK = sa.text("UPDATE events SET chain_hash = :link WHERE account = :account AND id = :id")


def _link_existing_events() -> None:
    bind = op.get_bind()
    accounts = [row[0] for row in bind.execute(ACCOUNTS)]
    if not accounts:
        return
    op.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
    for account in accounts:
        previous, after = GENESIS, 0
        while True:
            page = bind.execute(PAGE_OF_ACCOUNT, {"account": account, "after": after, "limit": PAGE}).mappings().all()
            if not page:
                break
            links = []
            for row in page:
                previous = stored_link(previous, dict(row))
                links.append({"link": previous, "account": account, "id": row["id"]})
            bind.execute(SET_LINK, links)
            after = page[-1]["id"]
    op.execute("ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only")


def upgrade() -> None:
    op.add_column(
        "events",
        sa.Column(
            "chain_hash",
            sa.LargeBinary(),
            nullable=True,
            comment="link in the account's hash chain: SHA-256 over this event and the previous link (verify-log)",
        ),
    )
    op.create_check_constraint(op.f("ck_events_chain_hash_length"), "events", "octet_length(chain_hash) = 32")
    _link_existing_events()


def downgrade() -> None:
    op.drop_constraint(op.f("ck_events_chain_hash_length"), "events", type_="check")
    op.drop_column("events", "chain_hash")
