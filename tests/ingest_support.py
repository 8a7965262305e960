"""Helpers for the ingest daemon's tests: settings for simulated venues, a daemon running in-process, conditions
waited for with a deadline, and what the log holds compared with what a simulated venue sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self

import asyncpg
import orjson

from statekeeper.config import AccountSettings, Settings, resolve_secrets
from statekeeper.database import connect
from statekeeper.ingest.daemon import Daemon
from statekeeper.simulator import Simulator

FAST_INGEST: dict[str, Any] = {
    "metrics_port": 0,
    "reconnect_initial_seconds": 0.05,
    "reconnect_max_seconds": 0.5,
    "healthy_after_seconds": 2.0,
    "poll_interval_seconds": 0.5,
    "shutdown_grace_seconds": 20.0,
    "drain_timeout_seconds": 2.0,
}
"""Ingest settings that make a test's reconnects and polls quick."""


def settings_for(
    accounts: Mapping[str, Simulator],
    *,
    credentials: Mapping[str, str] | None = None,
    modes: Mapping[str, str] | None = None,
    **ingest: Any,
) -> Settings:
    """Settings with one account per entry (account name -> the simulator serving it), secrets resolved.

    ``credentials`` overrides an account's credential (a bad key); ``modes`` sets ``mode = "rest"``.
    """
    environ: dict[str, str] = {}
    configured = []
    for index, (name, sim) in enumerate(accounts.items()):
        variable = f"SK_TEST_KEY_{index}"
        environ[variable] = (credentials or {}).get(name) or sim.credential(name)
        configured.append(
            AccountSettings(
                name=name,
                venue=sim.config.venue,
                api_key_env=variable,
                ws_url=sim.ws_url,
                rest_url=sim.rest_url,
                mode=(modes or {}).get(name, "stream"),  # type: ignore[arg-type]
            )
        )
    settings = Settings(accounts=tuple(configured), ingest={**FAST_INGEST, **ingest})  # type: ignore[arg-type]
    return resolve_secrets(settings, origin="test", environ=environ)


@asynccontextmanager
async def running_daemon(settings: Settings, url: str, *, stop_within: float = 30.0) -> AsyncIterator[Daemon]:
    """A daemon running in this event loop; stopped (as by SIGTERM) and awaited when the block ends."""
    daemon = Daemon(settings, url)
    task = asyncio.create_task(daemon.run(), name="daemon")
    started = asyncio.ensure_future(daemon.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()  # raises the daemon's error
    try:
        yield daemon
    finally:
        daemon.stop.set()
        async with asyncio.timeout(stop_within):
            await task


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool], *, within: float = 30.0, what: str = "condition"
) -> None:
    """Check ``condition`` until it holds; fail after ``within`` seconds (no test sleeps and hopes)."""
    deadline = time.monotonic() + within
    delay = 0.01
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g} s")
        await asyncio.sleep(delay)
        delay = min(0.2, delay * 2)


@dataclass
class Stored:
    """What the database holds for one account."""

    event_raws: list[str]
    """``raw`` of every stream event, in log order."""
    rejected_raws: list[bytes]
    keys: list[str]
    kinds: list[str]
    sessions: list[asyncpg.Record]

    def frames(self) -> set[str]:
        return set(self.event_raws) | {r.decode("utf-8", errors="surrogateescape") for r in self.rejected_raws}


async def stored(url: str, account: str) -> Stored:
    connection = await connect(url)
    try:
        events = await connection.fetch(
            "SELECT event_key, kind, source, raw FROM events WHERE account = $1 ORDER BY id", account
        )
        rejected = await connection.fetch("SELECT raw FROM rejected_frames WHERE account = $1 ORDER BY id", account)
        sessions = await connection.fetch(
            "SELECT * FROM stream_sessions WHERE account = $1 ORDER BY opened_at", account
        )
    finally:
        await connection.close()
    return Stored(
        event_raws=[r["raw"] for r in events if r["source"] == "stream" and r["raw"] is not None],
        rejected_raws=[bytes(r["raw"]) for r in rejected],
        keys=[r["event_key"] for r in events],
        kinds=[r["kind"] for r in events],
        sessions=list(sessions),
    )


def sent_frames(sim: Simulator, account: str) -> list[str]:
    """Every frame the simulated venue sent to the account, over all its connections."""
    return [frame for connection in sim.frames(account) for frame in connection.sent]


async def payloads(url: str, account: str, kind: str) -> list[dict[str, Any]]:
    connection = await connect(url)
    try:
        rows = await connection.fetch(
            "SELECT payload FROM events WHERE account = $1 AND kind = $2 ORDER BY id", account, kind
        )
    finally:
        await connection.close()
    return [r["payload"] if isinstance(r["payload"], dict) else orjson.loads(r["payload"]) for r in rows]


class Activity:
    """Drives a simulator (started with ``rate=0``) at ``rate`` steps per second until :meth:`stop`.

    A test stops the activity to let the daemon settle: no new frame, no new fault, a truth that holds still.
    """

    def __init__(self, *sims: Simulator, rate: float = 150.0) -> None:
        self.sims = sims
        self.rate = rate
        self.steps = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="activity")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            for sim in self.sims:
                await sim.step()
            self.steps += 1
            next_at += 1.0 / self.rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
