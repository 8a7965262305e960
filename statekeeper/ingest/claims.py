"""Which daemon ingests which account: a PostgreSQL session-level advisory lock per account.

A daemon claims an account before ingesting it and holds the claim on one connection for as long as it runs. A
daemon that dies (even by ``kill -9``) loses its connection and with it its claims, so a restarted or standby
daemon takes the account at once; two daemons never ingest the same account together (DESIGN.md section 7).

If the claims connection is lost (a database restart), the claims are taken again on a new connection; an
account whose claim another daemon took meanwhile is handed back (:meth:`AccountClaims.lost` is set for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from statekeeper import statements
from statekeeper.database import connect
from statekeeper.errors import DatabaseError
from statekeeper.eventlog import CONNECTION_ERRORS

logger = logging.getLogger(__name__)

_ERRORS: tuple[type[BaseException], ...] = (DatabaseError, asyncpg.PostgresError, *CONNECTION_ERRORS)


class AccountClaims:
    def __init__(self, url: str, *, retry_seconds: float = 2.0, check_seconds: float = 5.0) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self.check_seconds = check_seconds
        self.held: set[str] = set()
        self.lost: dict[str, asyncio.Event] = {}
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def _conn(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = None
            self._connection = await connect(self.url)
            retaken = set()
            for account in sorted(self.held):
                if await self._connection.fetchval(statements.TRY_CLAIM_ACCOUNT, account):
                    retaken.add(account)
                else:
                    logger.error("the claim on account %s was taken by another daemon while the database was "
                                 "unreachable; handing the account back", account,
                                 extra={"action": "claim_lost", "account": account})  # fmt: skip
                    self.lost.setdefault(account, asyncio.Event()).set()
            self.held = retaken
        return self._connection

    async def try_claim(self, account: str) -> bool:
        async with self._lock:
            try:
                connection = await self._conn()
                claimed = bool(await connection.fetchval(statements.TRY_CLAIM_ACCOUNT, account))
            except _ERRORS as exc:
                self._drop(exc)
                return False
            if claimed:
                self.held.add(account)
                self.lost[account] = asyncio.Event()
            return claimed

    async def claim(self, account: str, stop: asyncio.Event) -> bool:
        """Wait until the account is claimed (True), or the daemon stops (False)."""
        waited = False
        while not stop.is_set():
            if await self.try_claim(account):
                if waited:
                    logger.info("claimed account %s", account, extra={"action": "claimed", "account": account})
                return True
            if not waited:
                logger.info("account %s is claimed by another daemon (or the database is unreachable); waiting",
                            account, extra={"action": "claim_wait", "account": account})  # fmt: skip
                waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_seconds)
        return False

    async def release(self, account: str) -> None:
        async with self._lock:
            self.held.discard(account)
            if self._connection is not None and not self._connection.is_closed():
                with contextlib.suppress(*_ERRORS):
                    await self._connection.fetchval(statements.RELEASE_ACCOUNT, account)

    async def watch(self, stop: asyncio.Event) -> None:
        """Check the claims connection periodically and take the claims again after it was lost."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_seconds)
            if stop.is_set():
                return
            async with self._lock:
                try:
                    connection = await self._conn()
                    await connection.fetchval("SELECT 1")
                except _ERRORS as exc:
                    self._drop(exc)

    def _drop(self, exc: BaseException) -> None:
        if self._connection is not None:
            logger.warning("the claims connection is lost (%s); claims are taken again when it is back", exc,
                           extra={"action": "claims_connection_lost"})  # fmt: skip
            self._connection.terminate()
        self._connection = None

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                await connection.close(timeout=5)
            except _ERRORS:
                connection.terminate()
