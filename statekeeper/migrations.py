"""Schema migrations (Alembic) driven from statekeeper: upgrade, downgrade, current revision, drift check."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from statekeeper.config import load_settings, redact_url
from statekeeper.database import database_target
from statekeeper.errors import DatabaseError, MigrationError
from statekeeper.events import CloseReason, Transport
from statekeeper.schema import EVENTS_TRIGGERS, KINDS, PROJECTION_TABLES, SOURCES, VIEWS, metadata


def script_location() -> Path:
    """The migration scripts: packaged inside the wheel, or the repository's ``migrations/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(f"the migration scripts are missing (looked in {here / '_migrations'} and {here.parent})")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    return config


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """What the drift check and autogenerate compare: everything but Alembic's own bookkeeping."""
    return not (type_ == "table" and name == "alembic_version")


def sqlalchemy_url(url: str) -> str:
    _scheme, sep, rest = url.partition("://")
    if not sep:
        raise DatabaseError("the database URL has no scheme")
    return f"postgresql+asyncpg://{rest}"


@asynccontextmanager
async def _connection(url: str, doing: str) -> AsyncIterator[AsyncConnection]:
    engine = create_async_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            yield connection
    except (OSError, OperationalError) as exc:
        raise DatabaseError(f"cannot {doing} {redact_url(url)}: {exc}") from exc
    except DBAPIError as exc:
        raise MigrationError(f"could not {doing} {redact_url(url)}: {exc.orig}") from exc
    finally:
        await engine.dispose()


async def run_with_url(fn: Callable[[Connection], None], url: str | None = None, *, doing: str = "migrate") -> None:
    """Run ``fn`` on a sync connection to ``url`` (or the configured database) in one transaction; an error says
    what could not be done (``doing``: "migrate", "check the schema of")."""
    if url is not None:
        async with _connection(url, doing) as connection:
            await connection.run_sync(fn)
        return
    async with database_target(load_settings().database) as target, _connection(target.url, doing) as connection:
        await connection.run_sync(fn)


def _with_alembic(command_fn: Callable[..., Any], *args: Any) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command_fn(config, *args)

    return run


async def upgrade(url: str, revision: str = "head") -> None:
    await run_with_url(_with_alembic(command.upgrade, revision), url)


async def downgrade(url: str, revision: str) -> None:
    await run_with_url(_with_alembic(command.downgrade, revision), url)


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


async def current_revisions(url: str) -> tuple[str, ...]:
    found: list[str] = []

    def read(connection: Connection) -> None:
        found.extend(MigrationContext.configure(connection).get_current_heads())

    await run_with_url(read, url, doing="read the schema revision of")
    return tuple(found)


def _describe_diff(diff: Any) -> str:
    if isinstance(diff, list):  # column-level changes come grouped
        return "; ".join(_describe_diff(d) for d in diff)
    op, *rest = diff
    subject = next(
        (getattr(item, "name", None) for item in rest if getattr(item, "name", None)),
        None,
    )
    table = next((item for item in rest if isinstance(item, str)), None)
    where = ".".join(part for part in (table, subject) if part)
    return f"{op} {where}".strip()


_CHECK_LISTS = text(
    """
    SELECT conname, pg_get_constraintdef(oid) AS definition
    FROM pg_constraint
    WHERE contype = 'c' AND (
        (conrelid = to_regclass('events') AND conname IN ('ck_events_kind', 'ck_events_source'))
        OR (conrelid = to_regclass('stream_sessions')
            AND conname IN ('ck_stream_sessions_close_reason', 'ck_stream_sessions_transport'))
    )
    """
)
_QUOTED = re.compile(r"'([^']*)'")

_TRIGGERS = text(
    """
    SELECT t.tgname, t.tgenabled::text AS tgenabled
    FROM pg_trigger AS t
    WHERE t.tgrelid = to_regclass('events') AND NOT t.tgisinternal
    """
)


_VIEWS = text("SELECT viewname FROM pg_views WHERE schemaname = current_schema()")

# The columns of a table in their physical order (the fields of its composite type), dropped ones aside.
_COLUMN_ORDER = text(
    """
    SELECT attname FROM pg_attribute
    WHERE attrelid = to_regclass(:table) AND attnum > 0 AND NOT attisdropped
    ORDER BY attnum
    """
)


def _check(connection: Connection, problems: list[str]) -> None:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "include_object": include_object, "target_metadata": metadata},
    )
    heads = set(head_revisions())
    current = set(context.get_current_heads())
    if current != heads:
        have = ", ".join(sorted(current)) or "none (an empty database)"
        problems.append(
            f"the database is at revision {have}; this version of statekeeper expects {', '.join(sorted(heads))}: "
            "run `statekeeper db upgrade`"
        )
        if not current:
            return
    problems.extend(
        f"schema differs from the declared metadata: {_describe_diff(d)}" for d in compare_metadata(context, metadata)
    )
    # Alembic does not compare CHECK constraints: compare the allowed kinds and sources with the enums here.
    declared = {
        "ck_events_kind": set(KINDS),
        "ck_events_source": set(SOURCES),
        "ck_stream_sessions_close_reason": {r.value for r in CloseReason},
        "ck_stream_sessions_transport": {t.value for t in Transport},
    }
    found = {row.conname: set(_QUOTED.findall(row.definition)) for row in connection.execute(_CHECK_LISTS)}
    for name, values in declared.items():
        if name not in found:
            problems.append(f"check constraint {name} is missing")
        elif found[name] != values:
            missing, extra = sorted(values - found[name]), sorted(found[name] - values)
            problems.append(f"check constraint {name} differs: missing {missing}, not declared {extra}")
    triggers = {row.tgname: row.tgenabled for row in connection.execute(_TRIGGERS)}
    for name, purpose in EVENTS_TRIGGERS.items():
        state = triggers.get(name)
        if state is None:
            problems.append(f"trigger {name} on events is missing ({purpose})")
        elif state != "A":
            problems.append(f"trigger {name} on events is not ENABLE ALWAYS (state {state!r}; {purpose})")
    # The projector writes rows as the table's composite type (``unnest($1::balances[])``): its fields, that is the
    # physical column order, must be the declared order, which Alembic does not compare.
    for table in PROJECTION_TABLES:
        order = [row.attname for row in connection.execute(_COLUMN_ORDER, {"table": table.name})]
        declared_order = [column.name for column in table.columns]
        if order and set(order) == set(declared_order) and order != declared_order:
            problems.append(f"the columns of {table.name} are not in the declared order: {', '.join(order)}; "
                            f"expected {', '.join(declared_order)}")  # fmt: skip
    views = {row.viewname for row in connection.execute(_VIEWS)}
    problems.extend(f"view {name} is missing ({purpose})" for name, purpose in VIEWS.items() if name not in views)


async def check(url: str) -> list[str]:
    """Differences between what this version declares and the database: empty when they agree."""
    problems: list[str] = []
    await run_with_url(lambda connection: _check(connection, problems), url, doing="check the schema of")
    return problems
