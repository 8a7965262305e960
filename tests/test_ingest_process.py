"""The ingest daemon as the process an operator runs: ``statekeeper run`` killed, stopped, misconfigured, watched.

A simulated venue runs in the test process; the daemon runs as a real ``statekeeper run`` subprocess (or, where
the test needs to look inside, in-process); PostgreSQL is real, and one test stops and restarts its server while
frames flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from statekeeper.database import connect
from statekeeper.embedded import EmbeddedPostgres, bin_dir
from statekeeper.migrations import upgrade
from statekeeper.simulator import FaultKind, Simulator, SimulatorConfig, Truth
from tests.ingest_support import running_daemon, sent_frames, settings_for, stored, wait_until

ACCOUNT = "x1"
Venue = Literal["extended", "paradex"]
KEY_VARIABLE = "SK_PROC_TEST_KEY"
HOST = socket.gethostname()
_CONSOLE_SCRIPT = Path(sys.executable).with_name("statekeeper")
COMMAND = [str(_CONSOLE_SCRIPT)] if _CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "statekeeper"]

FAST_ENV = {
    "STATEKEEPER_INGEST_METRICS_PORT": "0",
    "STATEKEEPER_INGEST_RECONNECT_INITIAL_SECONDS": "0.05",
    "STATEKEEPER_INGEST_RECONNECT_MAX_SECONDS": "0.5",
    "STATEKEEPER_INGEST_DRAIN_TIMEOUT_SECONDS": "2",
    "STATEKEEPER_INGEST_SHUTDOWN_GRACE_SECONDS": "10",
}
GRACE_SECONDS = 10.0


# ------------------------------------------------------------------------------------------------ helpers


def simulator_config(venue: Venue, seed: int) -> SimulatorConfig:
    """A busy account: 100 steps a second, 50 ms of venue time per step, funding every 20 steps."""
    return SimulatorConfig(
        venue=venue,
        seed=seed,
        accounts=(ACCOUNT,),
        rate=100,
        funding_interval_ms=1000,
        step_ms=50,
    )


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII text is a TOML basic string


def write_config(path: Path, sim: Simulator | None, *, venue: Venue = "extended") -> Path:
    """A configuration file with one account: served by ``sim``, or with the venue's own URLs when ``sim`` is None."""
    lines = [
        "[log]",
        'level = "INFO"',
        "",
        "[[accounts]]",
        f"name = {toml_string(ACCOUNT)}",
        f"venue = {toml_string(sim.config.venue if sim is not None else venue)}",
        f"api_key_env = {toml_string(KEY_VARIABLE)}",
    ]
    if sim is not None:
        lines += [f"ws_url = {toml_string(sim.ws_url)}", f"rest_url = {toml_string(sim.rest_url)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def process_env(database_url: str, credential: str | None) -> dict[str, str]:
    """The daemon's environment: this one without any STATEKEEPER_ variable, plus the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_") and k != KEY_VARIABLE}
    env.update(FAST_ENV)
    env["STATEKEEPER_DATABASE_URL"] = database_url
    if credential is not None:
        env[KEY_VARIABLE] = credential
    return env


@dataclass
class DaemonProcess:
    """A ``statekeeper run`` subprocess and what it wrote."""

    process: asyncio.subprocess.Process
    stderr: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def owner(self) -> str:
        """The ``owner`` its stream sessions carry."""
        return f"{HOST}:{self.pid}"

    def output(self) -> str:
        return "".join(self.stderr[-60:])

    def records(self) -> list[dict[str, Any]]:
        """Its stderr lines read as JSON (``--log-format json``); a line that is not JSON fails the test."""
        records = []
        for line in self.stderr:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
            assert isinstance(record, dict), f"a stderr line is not a JSON object: {line!r}"
            records.append(record)
        return records

    def port(self) -> int | None:
        """The /healthz and /metrics port, once its ``daemon_started`` line is written."""
        for line in self.stderr:
            if "daemon_started" in line and (found := re.search(r"http://[^/\s]+:(\d+)/", line)):
                return int(found.group(1))
        return None

    async def health(self) -> tuple[int, dict[str, Any]] | None:
        """Its /healthz now (status code, body); None before it serves it."""
        port = self.port()
        if port is None:
            return None
        async with aiohttp.ClientSession() as http:
            return await get_json(http, f"http://127.0.0.1:{port}/healthz")

    async def projector_pid(self) -> int:
        """The pid of its projector process, once /healthz shows the process's worker."""
        found: list[int] = []

        async def reported() -> bool:
            served = await self.health()
            if served is None:
                return False
            health = served[1]
            found[:] = [
                int(p["worker"].rsplit(":", 1)[1].split("/")[0]) for p in health["projectors"] if p["slot"] is not None
            ]
            return bool(found)

        await self.wait_until(reported, what="the projector process's worker in /healthz")
        assert found[0] != self.pid, "the projector worker runs in a process of its own"
        return found[0]

    async def wait_until(self, condition: Callable[[], Awaitable[bool]], *, what: str, within: float = 30.0) -> None:
        """Like :func:`wait_until`, failing at once (with its output) if the daemon exits meanwhile."""

        async def check() -> bool:
            if self.process.returncode is not None:
                await self.finish_reading()
                raise AssertionError(f"the daemon exited with code {self.process.returncode} while waiting for {what}")
            return await condition()

        try:
            await wait_until(check, within=within, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the daemon's last lines:\n{self.output()}") from None

    async def signal_and_wait(self, sig: signal.Signals, within: float) -> int:
        self.process.send_signal(sig)
        async with asyncio.timeout(within):
            code = await self.process.wait()
        await self.finish_reading()
        return code

    async def finish_reading(self) -> None:
        async with asyncio.timeout(10):
            for reader in self.readers:
                await reader

    async def ensure_stopped(self) -> None:
        """Whatever happened: the process is gone and its pipes are read to the end."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            async with asyncio.timeout(10):
                await self.process.wait()
        for reader in self.readers:
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (neither gone nor a zombie left for a parent that will never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _read_lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode("utf-8", errors="replace"))


async def start_daemon(config: Path, env: Mapping[str, str], *, cwd: Path, log_format: str = "json") -> DaemonProcess:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "run", "--config", str(config), "--log-format", log_format,
        cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    daemon = DaemonProcess(process)
    assert process.stdout is not None and process.stderr is not None
    daemon.readers = [
        asyncio.create_task(_read_lines(process.stderr, daemon.stderr)),
        asyncio.create_task(_read_lines(process.stdout, daemon.stdout)),
    ]
    return daemon


@contextlib.asynccontextmanager
async def daemon_process(config: Path, env: Mapping[str, str], *, cwd: Path) -> AsyncIterator[DaemonProcess]:
    """A ``statekeeper run`` subprocess, killed at the end of the block if it still runs (no leftover process)."""
    daemon = await start_daemon(config, env, cwd=cwd)
    try:
        yield daemon
    finally:
        await daemon.ensure_stopped()


async def run_statekeeper(*args: str, env: Mapping[str, str], cwd: Path, within: float = 60.0) -> tuple[int, str]:
    """Run a statekeeper command to its end; its exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND, *args, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(within):
            _, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, err.decode("utf-8", errors="replace")


async def query(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    connection = await connect(url)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def websocket_sessions(url: str, owner: str | None = None) -> list[asyncpg.Record]:
    rows = await query(
        url, "SELECT * FROM stream_sessions WHERE account = $1 AND transport = 'websocket' ORDER BY opened_at", ACCOUNT
    )
    return [r for r in rows if owner is None or r["owner"] == owner]


async def control_event(url: str, kind: str, session: UUID) -> dict[str, Any] | None:
    rows = await query(
        url, "SELECT payload FROM events WHERE account = $1 AND kind = $2 AND session = $3", ACCOUNT, kind, session
    )
    return _payload(rows[0]["payload"]) if rows else None


def _payload(value: Any) -> dict[str, Any]:
    payload = value if isinstance(value, dict) else json.loads(value)
    assert isinstance(payload, dict)
    return payload


@dataclass
class Ledgers:
    """The fills and funding payments the log holds, with the source of each copy."""

    fills: Counter[tuple[str, str, str]]
    """(fill_id, fill_type, source) -> copies."""
    funding: Counter[tuple[str, str]]
    """(payment_id, source) -> copies."""

    def fill_ids(self) -> set[tuple[str, str]]:
        return {(fill_id, fill_type) for fill_id, fill_type, _ in self.fills}

    def payment_ids(self) -> set[str]:
        return {payment_id for payment_id, _ in self.funding}

    def missing(self, truth: Truth) -> tuple[set[tuple[str, str]], set[str]]:
        """The fills and funding payments of ``truth`` the log lacks."""
        return set(truth.fills) - self.fill_ids(), set(truth.funding) - self.payment_ids()


async def ledgers(url: str) -> Ledgers:
    rows = await query(
        url, "SELECT kind, source, payload FROM events WHERE account = $1 AND kind IN ('fill', 'funding')", ACCOUNT
    )
    fills: Counter[tuple[str, str, str]] = Counter()
    funding: Counter[tuple[str, str]] = Counter()
    for row in rows:
        payload = _payload(row["payload"])
        if row["kind"] == "fill":
            fills.update((f["fill_id"], f["fill_type"], row["source"]) for f in payload["fills"])
        else:
            funding.update((p["payment_id"], row["source"]) for p in payload["payments"])
    return Ledgers(fills, funding)


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as response:
        body = await response.json(content_type=None)
        assert isinstance(body, dict)
        return response.status, body


def assert_no_duplicate_copies(held: Ledgers) -> None:
    twice = {k: n for k, n in held.fills.items() if n > 1} | {k: n for k, n in held.funding.items() if n > 1}
    assert twice == {}, f"ledger items stored more than once from the same source: {twice}"


# ------------------------------------------------------------------------------------- 1. kill -9, restart


@pytest.mark.parametrize("venue", ["extended", "paradex"])
async def test_kill_9_then_restart_closes_the_abandoned_session_and_backfills_what_was_missed(
    venue: Venue, database_url: str, tmp_path: Path
) -> None:
    async with await Simulator.start(simulator_config(venue, seed=31)) as sim:
        config = write_config(tmp_path / "statekeeper.toml", sim)
        env = process_env(database_url, sim.credential(ACCOUNT))

        # --- the first daemon streams, then dies without a word
        async with daemon_process(config, env, cwd=tmp_path) as first:

            async def first_session_busy() -> bool:
                sessions = await websocket_sessions(database_url, first.owner)
                if not sessions:
                    return False
                if await control_event(database_url, "resync_completed", sessions[0]["session"]) is None:
                    return False
                return len((await stored(database_url, ACCOUNT)).event_raws) >= 150

            await first.wait_until(first_session_busy, what="the first daemon's session resynced and streaming")
            projector = await first.projector_pid()
            first.process.kill()
            async with asyncio.timeout(10):
                assert await first.process.wait() == -signal.SIGKILL
            # its projector process sees its input end, and stops: no orphan
            await wait_until(lambda: not alive(projector), within=15, what="the orphaned projector process ending")
        [killed] = await websocket_sessions(database_url, first.owner)
        assert killed["closed_at"] is None, "a killed daemon cannot have closed its session"
        connections_before = len(sim.frames(ACCOUNT))

        # --- the venue goes on while no daemon runs: fills and funding payments the log does not have
        at_kill = await ledgers(database_url)

        def missed_enough() -> bool:
            fills, funding = at_kill.missing(sim.truth(ACCOUNT))
            return len(fills) >= 20 and len(funding) >= 5

        await wait_until(missed_enough, what="fills and funding payments made while the daemon was down")
        missed_truth = sim.truth(ACCOUNT)

        # --- a new daemon: closes the abandoned session, streams, backfills what it missed
        async with daemon_process(config, env, cwd=tmp_path) as second:
            assert second.pid != first.pid
            new_session: list[UUID] = []

            async def streaming_and_resynced() -> bool:
                served = await second.health()
                if served is None:
                    return False
                code, health = served
                account = health["accounts"][ACCOUNT]
                if code != 200 or account["state"] != "streaming" or account["session"] is None:
                    return False
                session = UUID(account["session"])
                if await control_event(database_url, "resync_completed", session) is None:
                    return False
                new_session[:] = [session]
                return True

            await second.wait_until(streaming_and_resynced, what="the restarted daemon streaming, its resync stored")
            # the resync's backfill is stored before its resync_completed: what was missed is in the log now
            after_resync = await ledgers(database_url)
            fills_missing, funding_missing = after_resync.missing(missed_truth)
            assert fills_missing == set(), f"fills made while the daemon was down, not backfilled: {fills_missing}"
            assert funding_missing == set(), (
                f"funding made while the daemon was down, not backfilled: {funding_missing}"
            )
            # ... and over REST: the stream never replays them
            missed_fills, missed_funding = at_kill.missing(missed_truth)
            rest_fills = {(i, t) for i, t, source in after_resync.fills if source == "rest"}
            rest_funding = {i for i, source in after_resync.funding if source == "rest"}
            assert missed_fills <= rest_fills and missed_funding <= rest_funding
            completed = await control_event(database_url, "resync_completed", new_session[0])
            assert completed is not None and completed["fills_backfilled"] >= len(missed_fills), completed

            # fills go on arriving over the stream: wait until every fill the venue made so far is stored
            latest_truth = sim.truth(ACCOUNT)

            async def latest_fills_stored() -> bool:
                return not (await ledgers(database_url)).missing(latest_truth)[0]

            await second.wait_until(latest_fills_stored, what="every fill made so far stored")
            code = await second.signal_and_wait(signal.SIGTERM, within=GRACE_SECONDS + 10)
            assert code == 0, second.output()

        # --- what the log holds
        held = await stored(database_url, ACCOUNT)
        assert len(held.keys) == len(set(held.keys)), "event keys are unique"
        final = await ledgers(database_url)
        assert_no_duplicate_copies(final)
        assert final.missing(latest_truth)[0] == set()
        if venue == "paradex":  # Paradex streams funding too; Extended's is polled hourly (backfill proven above)
            assert final.missing(latest_truth)[1] == set()

        sessions = {s["session"]: s for s in await websocket_sessions(database_url)}
        abandoned = sessions[killed["session"]]
        assert abandoned["close_reason"] == "abandoned", abandoned
        assert abandoned["closed_at"] is not None
        closed = await control_event(database_url, "session_closed", killed["session"])
        assert closed is not None and closed["reason"] == "abandoned", closed
        [restarted] = new_session
        assert sessions[restarted]["close_reason"] == "shutdown"
        started = await control_event(database_url, "resync_started", restarted)
        assert started is not None and started["reason"] == "startup", started

        # every frame the venue sent after the restart is stored (those sent to the dead daemon are not)
        after_restart = [f for c in sim.frames(ACCOUNT)[connections_before:] for f in c.sent]
        assert after_restart, "the restarted daemon received frames"
        missing = [f for f in after_restart if f not in held.frames()]
        assert missing == [], f"{len(missing)} of {len(after_restart)} frames sent after the restart are not stored"

        # The abandoned session's close records ledger marks, and a later restart resumes its backfills from the
        # newest marks in the log (statements.LATEST_MARKS): they must not be behind those the log already had.
        recorded = await control_event(database_url, "resync_completed", killed["session"])
        assert recorded is not None
        behind = {
            what: (mark, (closed["marks"] or {}).get(what))
            for what, mark in recorded["marks"].items()
            if mark.get("time") and ((closed["marks"] or {}).get(what, {}).get("time") or "") < mark["time"]
        }
        assert behind == {}, f"the abandoned session's close takes the ledger marks back (recorded, closed): {behind}"


# ------------------------------------------------------------------------------------------ 2. SIGTERM


async def test_sigterm_closes_every_session_and_stores_every_frame(database_url: str, tmp_path: Path) -> None:
    async with await Simulator.start(simulator_config("extended", seed=32)) as sim:
        config = write_config(tmp_path / "statekeeper.toml", sim)
        async with daemon_process(config, process_env(database_url, sim.credential(ACCOUNT)), cwd=tmp_path) as daemon:

            async def flowing() -> bool:
                return len((await stored(database_url, ACCOUNT)).event_raws) >= 200

            await daemon.wait_until(flowing, what="200 frames stored")
            started = time.monotonic()
            code = await daemon.signal_and_wait(signal.SIGTERM, within=GRACE_SECONDS + 10)
            took = time.monotonic() - started
        assert code == 0, daemon.output()
        assert took < GRACE_SECONDS, f"SIGTERM took {took:.1f} s, more than the grace period"
        held = await stored(database_url, ACCOUNT)
        assert held.sessions, "the daemon opened a session"
        assert [s["close_reason"] for s in held.sessions] == ["shutdown"] * len(held.sessions)
        assert all(s["closed_at"] is not None for s in held.sessions)
        sent = sent_frames(sim, ACCOUNT)
        missing = [f for f in sent if f not in held.frames()]
        assert missing == [], f"{len(missing)} of {len(sent)} frames sent but not stored"
        assert len(held.keys) == len(set(held.keys))
        actions = [r.get("action") for r in daemon.records()]
        assert "daemon_stopping" in actions and actions[-1] == "daemon_stopped", daemon.output()


# -------------------------------------------------------------------------- 3. PostgreSQL stopped, restarted


@dataclass
class RestartablePostgres:
    """A dedicated embedded server that a test stops and starts with pg_ctl."""

    server: EmbeddedPostgres
    url: str
    options: str
    """The server's own command-line options (from postmaster.opts), to start it again as pgserver did."""

    @property
    def pgdata(self) -> Path:
        return self.server.pgdata

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    async def pg_ctl(self, *args: str) -> None:
        # pgserver runs the server as the owner of its data directory (its own user when we are root)
        user = self.pgdata.owner() if os.geteuid() == 0 else None
        process = await asyncio.create_subprocess_exec(
            str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            user=user,
        )  # fmt: skip
        async with asyncio.timeout(90):
            code = await process.wait()
        log = self.pgdata / "log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        assert code == 0, f"pg_ctl {' '.join(args)} failed with code {code}; server log:\n{tail}"

    async def stop(self) -> None:
        await self.pg_ctl("stop", "-m", "fast")

    async def start(self) -> None:
        await self.pg_ctl("-l", str(self.pgdata / "log"), "-o", self.options, "start")


def _server_options(pgdata: Path) -> str:
    """The options pgserver started postgres with (``-h "" -k <socket dir>``), from ``postmaster.opts``."""
    words = shlex.split((pgdata / "postmaster.opts").read_text())[1:]
    options: list[str] = []
    index = 0
    while index < len(words):
        if words[index] == "-D":
            index += 2
            continue
        options.append(words[index])
        index += 1
    return shlex.join(options)


@pytest.fixture
async def restartable_pg(tmp_path: Path) -> AsyncIterator[RestartablePostgres]:
    """A migrated database on a server of this test's own, stopped at the end whatever happened."""
    server = EmbeddedPostgres(tmp_path / "pg")
    admin_url = server.start()
    pg = RestartablePostgres(server, server.url("outage"), _server_options(server.pgdata))
    try:
        admin = await connect(admin_url)
        try:
            await admin.execute('CREATE DATABASE "outage"')
        finally:
            await admin.close()
        await upgrade(pg.url)
        yield pg
    finally:
        # pgserver stops only the postmaster it started itself: a restarted one is ours to stop
        if pg.running:
            await pg.stop()
        server.stop()


@pytest.mark.parametrize("queue_size", [50_000, 200], ids=["buffered", "backpressure"])
async def test_postgres_stopped_and_restarted_while_frames_flow(
    queue_size: int, restartable_pg: RestartablePostgres
) -> None:
    url = restartable_pg.url
    async with await Simulator.start(simulator_config("extended", seed=33)) as sim:
        settings = settings_for({ACCOUNT: sim}, queue_size=queue_size)
        async with running_daemon(settings, url) as daemon, aiohttp.ClientSession() as http:
            runtime = daemon.accounts[ACCOUNT]
            health_url = f"http://127.0.0.1:{daemon.port}/healthz"

            async def resynced() -> bool:
                ingest = runtime.ingest
                return (
                    ingest is not None
                    and ingest.session is not None
                    and await control_event(url, "resync_completed", ingest.session) is not None
                    and len((await stored(url, ACCOUNT)).event_raws) >= 100
                )

            await wait_until(resynced, what="the session resynced and streaming")
            assert runtime.ingest is not None
            first_session = runtime.ingest.session
            assert first_session is not None

            # --- the database goes away; the venue does not
            await restartable_pg.stop()
            sent_at_stop = len(sent_frames(sim, ACCOUNT))
            await wait_until(lambda: daemon.health()[0] == 503, what="/healthz reporting the database failing")
            code, health = await get_json(http, health_url)
            assert code == 503 and health["database"] == "failing", health
            assert health["accounts"][ACCOUNT]["database_failing_seconds"] is not None

            if queue_size >= 10_000:
                # a couple of seconds of frames, buffered: the session goes on
                def outage_lasted() -> bool:
                    failing = daemon.health()[1]["accounts"][ACCOUNT]["database_failing_seconds"]
                    return len(sent_frames(sim, ACCOUNT)) >= sent_at_stop + 300 and (failing or 0) >= 2.0

                await wait_until(outage_lasted, what="2 s and 300 frames sent while the database is down")
                assert runtime.ingest.session == first_session, "the outage cost the stream session"
                assert runtime.writer.backlog > 0
            else:
                # the buffer's bound is hit: the session ends (backpressure) and the account waits for the database
                await wait_until(lambda: runtime.ingest is not None and runtime.ingest.session is None
                                 and runtime.ingest.state.value == "waiting",
                                 what="the session given up, the account waiting for the database")  # fmt: skip
                missed_truth = sim.truth(ACCOUNT)
                await wait_until(lambda: len(sim.truth(ACCOUNT).fills) >= len(missed_truth.fills) + 10,
                                 what="fills made while no session is open")  # fmt: skip
                missed_truth = sim.truth(ACCOUNT)

            # --- the database is back: the backlog drains (read before the start: the writer may drain it at once)
            backlog = runtime.writer.backlog
            await restartable_pg.start()

            async with asyncio.timeout(40):  # everything buffered so far is stored (frames go on arriving)
                await runtime.writer.flushed()
            assert runtime.writer.healthy and backlog > 0
            await wait_until(lambda: daemon.health()[0] == 200, what="/healthz ok again")
            if queue_size < 10_000:

                async def resynced_again() -> bool:
                    ingest = runtime.ingest
                    return (
                        ingest is not None
                        and ingest.session not in (None, first_session)
                        and await control_event(url, "resync_completed", ingest.session) is not None
                    )

                await wait_until(resynced_again, what="a new session resynced after the database came back")
            code, health = await get_json(http, health_url)
            assert code == 200 and health["status"] == "ok", health

        held = await stored(url, ACCOUNT)
        sent = sent_frames(sim, ACCOUNT)
        missing = [f for f in sent if f not in held.frames()]
        assert missing == [], f"{len(missing)} of {len(sent)} frames sent but not stored"
        assert held.rejected_raws == [], "no frame is set aside because the database was down"
        assert len(held.keys) == len(set(held.keys))
        assert_no_duplicate_copies(await ledgers(url))
        websocket = [s for s in held.sessions if s["transport"] == "websocket"]
        if queue_size >= 10_000:
            assert [s["session"] for s in websocket] == [first_session]
            assert websocket[0]["close_reason"] == "shutdown"
        else:
            assert websocket[0]["session"] == first_session
            assert websocket[0]["close_reason"] == "backpressure", websocket[0]
            closed = await control_event(url, "session_closed", first_session)
            assert closed is not None and closed["reason"] == "backpressure"
            later = websocket[1:]
            assert later and later[-1]["close_reason"] == "shutdown"
            started = await control_event(url, "resync_started", later[0]["session"])
            assert started is not None and started["reason"] == "backpressure", started
            assert started["previous_session"] == str(first_session)
            fills_missing, funding_missing = (await ledgers(url)).missing(missed_truth)
            assert fills_missing == set() and funding_missing == set(), (fills_missing, funding_missing)


# ------------------------------------------------------------------------------------------ 4. errors


async def test_run_refuses_to_start_without_credential_schema_or_accounts(
    database_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    with_account = write_config(tmp_path / "account.toml", None, venue="extended")
    no_accounts = tmp_path / "none.toml"
    no_accounts.write_text('[log]\nlevel = "INFO"\n', encoding="utf-8")
    credential = "sk-proc-test-credential-1234"
    (missing_code, missing), (schema_code, schema), (none_code, none) = await asyncio.gather(
        run_statekeeper("run", "--config", str(with_account), env=process_env(database_url, None), cwd=tmp_path),
        run_statekeeper(
            "run", "--config", str(with_account), env=process_env(empty_database_url, credential), cwd=tmp_path
        ),
        run_statekeeper("run", "--config", str(no_accounts), env=process_env(database_url, credential), cwd=tmp_path),
    )
    assert missing_code == 2, missing
    assert KEY_VARIABLE in missing and str(with_account) in missing and "is not set" in missing, missing
    assert schema_code == 2, schema
    assert "statekeeper db upgrade" in schema, schema
    assert none_code == 2, none
    assert "no accounts" in none, none
    assert credential not in missing + schema + none


# --------------------------------------------------------------------------------- 5. /healthz, /metrics


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return found


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    values = [v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items())]
    assert len(values) == 1, f"{name}{labels}: {samples.get(name)}"
    return values[0]


async def test_healthz_and_metrics_over_http(database_url: str) -> None:
    async with await Simulator.start(simulator_config("extended", seed=34)) as sim:
        async with (
            running_daemon(settings_for({ACCOUNT: sim}), database_url) as daemon,
            aiohttp.ClientSession() as http,
        ):
            base = f"http://127.0.0.1:{daemon.port}"

            async def healthy() -> bool:
                code, body = await get_json(http, f"{base}/healthz")
                return code == 200 and body["accounts"][ACCOUNT]["state"] == "streaming"

            await wait_until(healthy, what="/healthz ok with the account streaming")
            await wait_until(lambda: daemon.accounts[ACCOUNT].writer.last_stored is not None, what="an event stored")
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                health = await response.json()
            assert health["status"] == "ok" and health["database"] == "ok", health
            account = health["accounts"][ACCOUNT]
            assert account["venue"] == "extended" and account["mode"] == "stream"
            assert account["session"] is not None and account["error"] is None
            assert account["database_failing_seconds"] is None

            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.content_type == "text/plain"
                text = await response.text()
            samples = _samples(text)
            assert _value(samples, "statekeeper_frames_received_total", account=ACCOUNT, venue="extended") > 0
            assert _value(samples, "statekeeper_events_appended_total", account=ACCOUNT) > 0
            assert _value(samples, "statekeeper_append_seconds_bucket", account=ACCOUNT, le="+Inf") > 0
            assert _value(samples, "statekeeper_queue_depth", account=ACCOUNT) >= 0
            age = _value(samples, "statekeeper_last_event_age_seconds", account=ACCOUNT)
            assert math.isfinite(age) and 0 <= age < 30
            assert _value(samples, "statekeeper_account_state", account=ACCOUNT, state="streaming") == 1

        # once stopped, the counters agree with what the database holds
        held = await stored(database_url, ACCOUNT)
        final = _samples(generate_latest(daemon.metrics.registry).decode())
        assert _value(final, "statekeeper_events_appended_total", account=ACCOUNT) == len(held.keys)
        received = _value(final, "statekeeper_frames_received_total", account=ACCOUNT, venue="extended")
        assert received == len(held.event_raws) + len(held.rejected_raws)
        assert _value(final, "statekeeper_queue_depth", account=ACCOUNT) == 0


# --------------------------------------------------------------------------------------------- 6. logs


async def test_json_logs_carry_account_and_session_and_never_the_credential(database_url: str, tmp_path: Path) -> None:
    async with await Simulator.start(simulator_config("paradex", seed=35)) as sim:
        credential = sim.credential(ACCOUNT)
        config = write_config(tmp_path / "statekeeper.toml", sim)
        async with daemon_process(config, process_env(database_url, credential), cwd=tmp_path) as daemon:

            async def resynced(count: int) -> bool:
                sessions = await websocket_sessions(database_url)
                return len(sessions) >= count and all(
                    [await control_event(database_url, "resync_completed", s["session"]) for s in sessions]
                )

            await daemon.wait_until(lambda: resynced(1), what="the first session resynced")
            sim.inject(FaultKind.DISCONNECT, ACCOUNT)  # a second session: more lines to check
            await daemon.wait_until(lambda: resynced(2), what="a second session resynced")
            code = await daemon.signal_and_wait(signal.SIGTERM, within=GRACE_SECONDS + 10)
        assert code == 0, daemon.output()

        records = daemon.records()
        assert records, "the daemon wrote log lines"
        for record in records:
            assert {"ts", "level", "logger", "message"} <= record.keys(), record
        sessions = {str(s["session"]) for s in await websocket_sessions(database_url)}
        assert len(sessions) >= 2
        for action in ("session_opened", "session_closed"):
            lines = [r for r in records if r.get("action") == action]
            assert lines, f"no {action} line"
            for line in lines:
                assert line.get("account") == ACCOUNT, line
            assert {line.get("session") for line in lines} == sessions, (action, lines)
        everything = "".join(daemon.stderr) + "".join(daemon.stdout)
        assert credential not in everything
        signature = credential.rsplit(".", 1)[-1]
        assert signature not in everything, "part of the credential (its signature) is in the output"
