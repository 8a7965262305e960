"""Choosing, reaching and pooling the PostgreSQL database.

The database is ``STATEKEEPER_DATABASE_URL`` or ``[database] url``; with neither, an embedded server (see
:mod:`statekeeper.embedded`) in ``[database] data_dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from statekeeper.config import DatabaseSettings, redact_url
from statekeeper.embedded import DATABASE_NAME, EmbeddedPostgres
from statekeeper.errors import DatabaseError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0

TRANSIENT_ERROR_CLASSES = ("08", "25", "40", "53", "55", "57", "58")
"""SQLSTATE classes that blame the moment, not the statement or the login (connection, transaction state, deadlock
and serialization, resources, lock timeout, operator intervention such as a shutdown, system): trying again
later can succeed. Any other error is the data's, the schema's, the login's or a bug's."""


def error_class(exc: BaseException) -> str:
    """The SQLSTATE class (two characters) of a database error; ``""`` for anything else."""
    return str(getattr(exc, "sqlstate", "") or "")[:2]


def is_transient(exc: BaseException) -> bool:
    """Whether a database error blames the moment (:data:`TRANSIENT_ERROR_CLASSES`)."""
    return error_class(exc) in TRANSIENT_ERROR_CLASSES


_JSONB_VERSION = b"\x01"  # the binary jsonb format is a version byte followed by the JSON text


def _json_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else orjson.dumps(value)


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + _json_bytes(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def init_connection(connection: asyncpg.Connection) -> None:
    """Per-connection set-up: JSON and JSONB come back as Python objects and go in as JSON text or objects.

    The codecs use the binary wire format, so that COPY (which the event log uses to append) can carry them.
    """
    await connection.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )
    await connection.set_type_codec(
        "json", encoder=_json_bytes, decoder=orjson.loads, schema="pg_catalog", format="binary"
    )


def describe_connect_error(url: str, exc: BaseException) -> str:
    where = redact_url(url)
    match exc:
        case asyncpg.InvalidCatalogNameError():
            return f"database in {where} does not exist: {exc}"
        case asyncpg.InvalidPasswordError() | asyncpg.InvalidAuthorizationSpecificationError():
            return f"cannot log in to {where}: {exc}"
        case TimeoutError():
            return f"no answer from {where} within {CONNECT_TIMEOUT_SECONDS:g} s"
        case _:
            return f"cannot connect to {where}: {exc}"


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """One connection, with the statekeeper codecs; connection failures become :class:`DatabaseError`."""
    try:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS, **kwargs)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(describe_connect_error(url, exc)) from exc
    await init_connection(connection)
    return connection


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min(min_size, max_size),
            max_size=max_size,
            init=init_connection,
            timeout=CONNECT_TIMEOUT_SECONDS,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(describe_connect_error(url, exc)) from exc
    assert pool is not None
    return pool


async def ensure_database(admin_url: str, name: str = DATABASE_NAME) -> None:
    """Create database ``name`` on the server of ``admin_url`` if it does not exist yet."""
    connection = await connect(admin_url)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # An identifier cannot be a bind parameter; quote_ident is done by the server.
            statement = await connection.fetchval("SELECT format('CREATE DATABASE %I', $1::text)", name)
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # a concurrent process created it: fine
                await connection.execute(statement)
            logger.info("created database %s", name, extra={"action": "database_created", "database": name})
    finally:
        await connection.close()


@dataclass
class DatabaseTarget:
    """The database statekeeper uses, once chosen (and, if embedded, started)."""

    url: str = field(repr=False)
    embedded: EmbeddedPostgres | None = None

    @property
    def display_url(self) -> str:
        return redact_url(self.url)


@asynccontextmanager
async def database_target(settings: DatabaseSettings) -> AsyncIterator[DatabaseTarget]:
    """Choose the database; start the embedded server first if none is configured, and stop it after."""
    if settings.url is not None:
        yield DatabaseTarget(url=settings.url.get_secret_value())
        return
    server = EmbeddedPostgres(settings.data_dir)
    admin_url = await asyncio.to_thread(server.start)
    try:
        await ensure_database(admin_url)
        yield DatabaseTarget(url=server.url(), embedded=server)
    finally:
        await asyncio.to_thread(server.stop)
