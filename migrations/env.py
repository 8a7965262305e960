"""Alembic environment: runs migrations over an asyncpg connection.

statekeeper's commands hand over an open connection in ``config.attributes["connection"]``. When Alembic's own
CLI is used (``alembic upgrade head``, ``alembic revision --autogenerate``), the database is resolved like
everywhere else in statekeeper: STATEKEEPER_DATABASE_URL, [database] url, or the embedded server.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from statekeeper.migrations import include_object, run_with_url
from statekeeper.schema import metadata

config = context.config


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_with_url(do_run_migrations))


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: statekeeper migrates a live database")
run_migrations_online()
