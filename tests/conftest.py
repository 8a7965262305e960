"""Test fixtures: a real PostgreSQL for every test, never a mock.

One server per test session: the embedded ``pgserver`` one, or the server of ``STATEKEEPER_TEST_DATABASE_URL``
(its user must be allowed to create databases). A template database is migrated once; every test that asks for
``database_url`` gets its own database copied from it (``CREATE DATABASE ... TEMPLATE``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit
from uuid import uuid4

import asyncpg
import pytest
from hypothesis import settings
from pytest_postgresql.janitor import DatabaseJanitor

from statekeeper.database import connect, create_pool
from statekeeper.embedded import EmbeddedPostgres
from statekeeper.eventlog import PostgresEventLog
from statekeeper.migrations import upgrade

TEST_URL_ENV = "STATEKEEPER_TEST_DATABASE_URL"

# CI runs the same examples every time (a failure there reproduces), without per-example deadlines on a busy
# shared machine; a developer's run explores new examples each time.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@dataclass(frozen=True)
class PgServer:
    """How to reach the test server as a user who may create databases."""

    user: str
    password: str | None
    host: str
    port: int
    maintenance_db: str

    @classmethod
    def from_url(cls, url: str) -> PgServer:
        parts = urlsplit(url)
        query = dict(item.split("=", 1) for item in parts.query.split("&") if "=" in item)
        return cls(
            user=parts.username or "postgres",
            password=parts.password or None,
            host=query.get("host") or parts.hostname or "localhost",
            port=parts.port or int(query.get("port", "5432")),
            maintenance_db=parts.path.lstrip("/") or "postgres",
        )

    def url(self, dbname: str) -> str:
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@/{dbname}?host={self.host}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def janitor(self, dbname: str, *, template: str | None = None, as_template: bool = False) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.user,
            host=self.host,
            port=self.port,
            password=self.password,
            dbname=dbname,
            template_dbname=template,
            maintenance_dbname=self.maintenance_db,
            as_template=as_template,
        )


def start_embedded(directory: Path) -> tuple[EmbeddedPostgres, PgServer]:
    server = EmbeddedPostgres(directory)
    return server, PgServer.from_url(server.start())


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    url = os.environ.get(TEST_URL_ENV)
    if url:
        yield PgServer.from_url(url)
        return
    server, info = start_embedded(tmp_path_factory.mktemp("pg"))
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    name = f"sk_template_{os.getpid()}_{uuid4().hex[:6]}"
    with pg_server.janitor(name, as_template=True):
        asyncio.run(upgrade(pg_server.url(name)))  # leaves no connection open: copies need none
        yield name


@pytest.fixture
def database_url(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    name = f"sk_test_{uuid4().hex[:12]}"
    with pg_server.janitor(name, template=template_db):
        yield pg_server.url(name)


@pytest.fixture
def empty_database_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with nothing in it (not even the migrations)."""
    name = f"sk_empty_{uuid4().hex[:12]}"
    with pg_server.janitor(name):
        yield pg_server.url(name)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def log(pool: asyncpg.Pool) -> PostgresEventLog:
    return PostgresEventLog(pool)


def login_url(database_url: str, user: str) -> str:
    parts = urlsplit(database_url)
    host = parts.netloc.split("@", 1)[1]
    return parts._replace(netloc=f"{quote(user, safe='')}@{host}").geturl()


@pytest.fixture
async def login_as(database_url: str) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await login_as(*group_roles)``: the URL of a new login role that is a member of those roles only."""
    created: list[str] = []
    owner = await connect(database_url)

    async def make(*groups: str) -> str:
        name = f"sk_login_{uuid4().hex[:10]}"
        # names from this module's constants and a uuid: never input
        await owner.execute(f"CREATE ROLE {name} LOGIN IN ROLE {', '.join(groups)}")
        created.append(name)
        return login_url(database_url, name)

    try:
        yield make
    finally:
        for name in created:
            await owner.execute(f"DROP ROLE {name}")
        await owner.close()
