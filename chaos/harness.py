"""One chaos run: the schedule drawn from a seed, the faults applied to the real daemon, the checks at the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import asyncpg

from chaos.postgres import ChaosPostgres
from chaos.proxy import CuttableProxy
from statekeeper.database import connect
from statekeeper.projections import store
from statekeeper.projections.fold import AccountState, FoldEvent, fold
from statekeeper.simulator import FaultKind, FaultPlan, Simulator, SimulatorConfig
from tests.ingest_support import Activity
from tests.projection_support import compare_with_truth, projected, report, unresolved_orders

Venue = Literal["extended", "paradex"]
ACCOUNT = "chaos-1"
KEY_VARIABLE = "STATEKEEPER_CHAOS_KEY"
SKIP_CHECKS = "CHAOS_SKIP_CHECKS"
"""Commands among replay, verify-log and reconcile not to run after each run (comma-separated); by default every
one that exists runs."""
_SCRIPT = Path(sys.executable).with_name("statekeeper")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "statekeeper"]

# The faults of the harness, then the simulated venue's (each at least once per run, in an order the seed draws).
KILL, POSTGRES, NETWORK = "kill_9", "postgres_restart", "network_cut"
HARNESS_FAULTS = (KILL, POSTGRES, NETWORK)
VENUE_FAULTS = tuple(kind.value for kind in FaultKind)
FAULT_KINDS = (*HARNESS_FAULTS, *VENUE_FAULTS)

DAEMON_ENV = {
    "STATEKEEPER_INGEST_METRICS_PORT": "0",
    "STATEKEEPER_INGEST_RECONNECT_INITIAL_SECONDS": "0.05",
    "STATEKEEPER_INGEST_RECONNECT_MAX_SECONDS": "0.5",
    "STATEKEEPER_INGEST_HEALTHY_AFTER_SECONDS": "2",
    "STATEKEEPER_INGEST_POLL_INTERVAL_SECONDS": "0.5",
    "STATEKEEPER_INGEST_DRAIN_TIMEOUT_SECONDS": "2",
    "STATEKEEPER_INGEST_SHUTDOWN_GRACE_SECONDS": "10",
    "STATEKEEPER_INGEST_RESOLVE_INTERVAL_SECONDS": "0.2",
    "STATEKEEPER_PROJECTOR_POLL_INTERVAL_SECONDS": "0.2",
    "STATEKEEPER_PROJECTOR_REBALANCE_INTERVAL_SECONDS": "0.5",
}

OPEN_TRANSACTIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND state <> 'idle'
"""
LOG_EVENTS = """
SELECT id, venue, kind, snapshot, source, venue_time, received_at, payload
FROM events WHERE account = $1 AND id <= $2 ORDER BY id
"""
HEAD_AND_CHECKPOINT = """
SELECT (SELECT max(id) FROM events WHERE account = $1) AS head,
       (SELECT position FROM projector_checkpoints WHERE account = $1 AND name = $2) AS checkpoint
"""
STREAM_RAWS = "SELECT raw FROM events WHERE account = $1 AND source = 'stream' AND raw IS NOT NULL"
REJECTED_RAWS = "SELECT raw FROM rejected_frames WHERE account = $1"
EVENT_KEYS = "SELECT count(*) AS events, count(DISTINCT event_key) AS keys FROM events WHERE account = $1"
LEDGER_COPIES = """
SELECT kind, source, payload FROM events WHERE account = $1 AND kind IN ('fill', 'funding')
"""
SESSIONS = """
SELECT e.session, e.kind FROM events e
WHERE e.account = $1 AND e.kind IN ('session_opened', 'session_closed', 'resync_completed')
  AND (e.kind <> 'session_opened' OR e.payload ->> 'transport' = 'websocket')
ORDER BY e.id
"""


@dataclass(frozen=True)
class RunSize:
    """How long each part of an episode lasts (seconds of activity) and how many extra faults a run draws."""

    before: float = 1.5
    """Activity before the fault."""
    during: float = 1.0
    """Activity while the fault lasts (a kill, an outage, a cut)."""
    extra_episodes: int = 3
    """Episodes beyond one per fault kind, their kinds drawn at random."""
    converge_within: float = 30.0
    """Deadline for the projections to equal the truth after a fault; after ``help_after`` a resync is forced."""
    help_after: float = 10.0
    background: float = 0.0
    """Rate of every stream fault per frame during the activity, on top of the episodes' own (off by default: a
    frame lost at the very end of an episode is seen only with the next frame, after the activity stopped, and
    would be charged to the episode's fault)."""


@dataclass
class Episode:
    kind: str
    detail: str = ""
    converge_seconds: float | None = None
    forced_resync: bool = False


@dataclass
class RunResult:
    seed: int
    venue: Venue
    episodes: list[Episode] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    frames_sent: int = 0
    events: int = 0
    rejected: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    replay_mismatches: list[str] = field(default_factory=list)
    cli_checks: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        failed_cli = [name for name, outcome in self.cli_checks.items() if outcome.startswith("failed")]
        return not (self.lost or self.duplicates or self.mismatches or self.replay_mismatches or self.errors
                    or failed_cli)  # fmt: skip

    def problems(self) -> list[str]:
        found = [f"error: {e}" for e in self.errors] + [f"lost: {x}" for x in self.lost[:20]]
        found += [f"duplicate: {x}" for x in self.duplicates[:20]] + [f"mismatch: {x}" for x in self.mismatches[:40]]
        found += [f"replay: {x}" for x in self.replay_mismatches[:20]]
        found += [f"{name}: {outcome}" for name, outcome in self.cli_checks.items() if outcome.startswith("failed")]
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "venue": self.venue,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "faults": dict(self.faults),
            "frames_sent": self.frames_sent,
            "events": self.events,
            "rejected": self.rejected,
            "lost": len(self.lost),
            "duplicates": len(self.duplicates),
            "mismatches": len(self.mismatches) + len(self.replay_mismatches),
            "cli_checks": self.cli_checks,
            "episodes": [
                {"kind": e.kind, "detail": e.detail, "converge_seconds": e.converge_seconds, "forced": e.forced_resync}
                for e in self.episodes
            ],
            "problems": self.problems(),
        }


def reproduce_command(seed: int, size_name: str) -> str:
    return f".venv/bin/python -m chaos --seed {seed} --size {size_name}"


def schedule(seed: int, size: RunSize) -> tuple[Venue, list[str]]:
    """The run's venue and its episodes' fault kinds: every kind once, and a few drawn again, shuffled."""
    rng = random.Random(f"chaos/{seed}/schedule")
    venue: Venue = "extended" if seed % 2 else "paradex"
    kinds = [*FAULT_KINDS, *(rng.choice(FAULT_KINDS) for _ in range(size.extra_episodes))]
    rng.shuffle(kinds)
    return venue, kinds


# ---------------------------------------------------------------------------------------------- the daemon


class DaemonProcess:
    """``statekeeper run`` as a subprocess, its output in a file; killed with SIGKILL, started again."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config = config
        self.env = env
        self.log_path = log
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *COMMAND, "run", "--config", str(self.config), "--log-format", "json",
            cwd=self.config.parent, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )  # fmt: skip
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def crashed(self) -> bool:
        """It exited on its own (not killed by the harness)."""
        return self.process is not None and self.process.returncode not in (None, -signal.SIGKILL)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(10):
            await self.process.wait()
        self._close_log()

    async def stop(self) -> int | None:
        if self.process is None or self.process.returncode is not None:
            self._close_log()
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            code = await self.process.wait()
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------- the run


class ChaosRun:
    def __init__(self, seed: int, size: RunSize, pg: ChaosPostgres, workdir: Path) -> None:
        self.seed = seed
        self.size = size
        self.pg = pg
        self.workdir = workdir
        self.rng = random.Random(f"chaos/{seed}/faults")
        self.venue, self.kinds = schedule(seed, size)
        self.result = RunResult(seed, self.venue)
        self.url = ""
        self.sim: Simulator | None = None
        self.proxy: CuttableProxy | None = None
        self.daemon: DaemonProcess | None = None

    # ----------------------------------------------------------------------------------------- set-up

    async def run(self) -> RunResult:
        started = time.monotonic()
        database = f"chaos_{self.seed}"
        self.url = await self.pg.fresh_database(database)
        streams = ("gap", "duplicate", "reorder", "malformed", "delay")
        plan = FaultPlan(rates={FaultKind(k): self.size.background for k in streams}, delay_seconds=0.3,
                         slow_seconds=0.5, retry_after_seconds=1)  # fmt: skip
        config = SimulatorConfig(venue=self.venue, seed=self.seed, accounts=(ACCOUNT,), rate=0, step_ms=10,
                                 funding_interval_ms=1000, faults=plan)  # fmt: skip
        try:
            async with await Simulator.start(config) as sim:
                self.sim = sim
                self.proxy = CuttableProxy("127.0.0.1", sim.port)
                await self.proxy.start()
                self.daemon = DaemonProcess(
                    self._write_config(), self._env(sim), self.workdir / f"daemon-{self.seed}.log"
                )
                try:
                    await self.daemon.start()
                    await self._wait(self._settled, within=60, what="the first session resynced")
                    for kind in self.kinds:
                        await self._episode(kind)
                    await self._final_checks()
                finally:
                    if self.daemon.alive():
                        code = await self.daemon.stop()
                        if code not in (0, None):
                            self.result.errors.append(f"the daemon exited with code {code} on SIGTERM")
                    await self.proxy.close()
                    if not self.pg.running:
                        await self.pg.start()
                self.result.faults.update({str(k): v for k, v in sim.fault_counts.items()})
        except Exception as exc:  # noqa: BLE001 - a run that breaks is a failed run, reported with its seed
            tail = self.daemon.tail() if self.daemon is not None else ""
            self.result.errors.append(f"{type(exc).__name__}: {exc}\n--- the daemon's last lines:\n{tail}")
        finally:
            self.result.seconds = time.monotonic() - started
        if self.result.ok:
            with contextlib.suppress(Exception):
                await self.pg.drop_database(database)
        return self.result

    def _write_config(self) -> Path:
        assert self.sim is not None
        assert self.proxy is not None
        base = f"127.0.0.1:{self.proxy.port}"
        ws_path = "/stream.extended.exchange/v1/account" if self.venue == "extended" else "/v1"
        rest_path = "/api/v1" if self.venue == "extended" else "/v1"
        lines = [
            "[log]",
            'level = "INFO"',
            "",
            "[[accounts]]",
            f"name = {json.dumps(ACCOUNT)}",
            f"venue = {json.dumps(self.venue)}",
            f"api_key_env = {json.dumps(KEY_VARIABLE)}",
            f"ws_url = {json.dumps(f'ws://{base}{ws_path}')}",
            f"rest_url = {json.dumps(f'http://{base}{rest_path}')}",
        ]
        path = self.workdir / f"statekeeper-{self.seed}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def _env(self, sim: Simulator) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEKEEPER_")}
        env.update(DAEMON_ENV)
        env["STATEKEEPER_DATABASE_URL"] = self.url
        env[KEY_VARIABLE] = sim.credential(ACCOUNT)
        return env

    # --------------------------------------------------------------------------------------- episodes

    async def _episode(self, kind: str) -> None:
        assert self.sim is not None
        assert self.daemon is not None
        assert self.proxy is not None
        sim, size, rng = self.sim, self.size, self.rng
        episode = Episode(kind)
        self.result.episodes.append(episode)
        async with Activity(sim, rate=100) as activity:
            await self._activity(activity, size.before * rng.uniform(0.5, 1.5))
            if kind == KILL:
                episode.detail = await self._kill(activity)
            elif kind == POSTGRES:
                mode = rng.choice(["fast", "immediate"])
                await self.pg.stop(mode)
                await self._activity(activity, size.during * rng.uniform(0.5, 2.0))
                await self.pg.start()
                episode.detail = f"stop -m {mode}"
            elif kind == NETWORK:
                self.proxy.cut()
                await self._activity(activity, size.during * rng.uniform(0.5, 2.0))
                self.proxy.restore()
            else:
                fault = FaultKind(kind)
                before = sim.fault_counts[fault]
                count = {FaultKind.GAP: rng.randint(1, 30), FaultKind.DRIFT: rng.randint(1, 4),
                         FaultKind.REST_429: rng.randint(1, 5)}.get(fault, rng.randint(1, 3))  # fmt: skip
                if fault in (FaultKind.REST_5XX, FaultKind.REST_429, FaultKind.REST_SLOW):
                    sim.inject(fault, ACCOUNT, count=count)
                    sim.inject(FaultKind.DISCONNECT, ACCOUNT)  # the resync's REST calls meet the fault
                else:
                    sim.inject(fault, ACCOUNT, count=count)
                episode.detail = f"count {count}"
                await self._wait(lambda: sim.fault_counts[fault] > before, within=30, what=f"the {kind} fault injected",
                                 activity=activity)  # fmt: skip
                await self._activity(activity, size.during * rng.uniform(0.2, 1.0))
        fault_end = time.monotonic()
        await self._converge(episode, fault_end)

    async def _activity(self, activity: Activity, seconds: float) -> None:
        begun = activity.steps
        steps = max(1, round(seconds * activity.rate))
        await self._wait(lambda: activity.steps >= begun + steps, within=seconds * 10 + 10, what="the activity")

    async def _kill(self, activity: Activity) -> str:
        """SIGKILL: half the time while one of the daemon's transactions is open (an append, or a projector batch
        between its rows and its commit), otherwise at once; then a new daemon."""
        assert self.daemon is not None
        detail = "at a random moment"
        if self.rng.random() < 0.5:
            connection = await connect(self.url)
            try:
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    if await connection.fetchval(OPEN_TRANSACTIONS):
                        detail = "inside an open transaction"
                        break
                    await asyncio.sleep(0)
            finally:
                await connection.close()
        await self.daemon.kill()
        await self._activity(activity, self.size.during * self.rng.uniform(0.2, 1.0))  # the venue goes on
        await self.daemon.start()
        return detail

    async def _converge(self, episode: Episode, fault_end: float) -> None:
        """The activity has stopped: wait until the projections equal the truth (marks aside: they move without a
        word on the stream). After ``help_after`` seconds the venue drops the connection (the next session's
        snapshots heal what no stream message will: drift, a lost Paradex notification)."""
        assert self.sim is not None
        sim = self.sim
        helped = False
        while True:
            elapsed = time.monotonic() - fault_end
            if await self._caught_up():
                tables = await projected(self.url, ACCOUNT)
                if not compare_with_truth(tables, sim.truth(ACCOUNT), self.venue, fresh=False):
                    episode.converge_seconds = elapsed
                    episode.forced_resync = helped
                    return
            if elapsed > self.size.converge_within:
                tables = await projected(self.url, ACCOUNT)
                differences = compare_with_truth(tables, sim.truth(ACCOUNT), self.venue, fresh=False)
                raise AssertionError(f"no convergence {elapsed:.0f} s after {episode.kind}: {report(differences)}")
            if not helped and elapsed > self.size.help_after:
                helped = True
                await sim.server.disconnect(ACCOUNT)
            if self.daemon is None or self.daemon.crashed():
                raise AssertionError(f"the daemon died after {episode.kind}")
            await asyncio.sleep(0.05)

    async def _caught_up(self) -> bool:
        try:
            connection = await connect(self.url)
        except Exception:  # noqa: BLE001 - the server may still be starting
            return False
        try:
            row = await connection.fetchrow(HEAD_AND_CHECKPOINT, ACCOUNT, store.CHECKPOINT)
        finally:
            await connection.close()
        return row is not None and row["head"] is not None and row["head"] == row["checkpoint"]

    async def _wait(self, condition: Callable[[], Awaitable[bool] | bool], *, within: float, what: str,
                    activity: Activity | None = None) -> None:  # fmt: skip
        deadline = time.monotonic() + within
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if self.daemon is not None and self.daemon.crashed():
                raise AssertionError(f"the daemon exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {within:g} s")
            await asyncio.sleep(0.05)

    async def _settled(self) -> bool:
        """One clean connection with nothing left to send, its session resynced and open, its frames stored."""
        assert self.sim is not None
        sim = self.sim
        connections = sim.server.connections.get(ACCOUNT, [])
        history = sim.frames(ACCOUNT)
        if len(connections) != 1 or not history or connections[0].frames is not history[-1]:
            return False
        if not connections[0].queue.empty():
            return False
        try:
            connection = await connect(self.url)
        except Exception:  # noqa: BLE001 - the server may still be starting
            return False
        try:
            sessions = await connection.fetch(SESSIONS, ACCOUNT)
            kept = await _kept(connection)
        finally:
            await connection.close()
        opened = [r["session"] for r in sessions if r["kind"] == "session_opened"]
        if not opened:
            return False
        of_last = {r["kind"] for r in sessions if r["session"] == opened[-1]}
        return "resync_completed" in of_last and "session_closed" not in of_last and set(history[-1].sent) <= kept

    # ------------------------------------------------------------------------------------------ checks

    async def _final_checks(self) -> None:
        assert self.sim is not None
        sim, result = self.sim, self.result
        # the last resync, at rest: fresh snapshots, so every field (marks too) must match
        before = len(sim.frames(ACCOUNT))
        await sim.server.disconnect(ACCOUNT)
        await self._wait(lambda: len(sim.frames(ACCOUNT)) > before, within=30, what="a new connection")
        await self._wait(self._settled, within=60, what="the last session resynced, every frame stored")
        await self._wait(self._caught_up, within=60, what="the projector caught up")
        with contextlib.suppress(AssertionError):
            await self._wait(lambda: _no_unresolved(self.url), within=10, what="orders resolved")
        await self._wait(self._caught_up, within=60, what="the projector caught up")
        result.mismatches = compare_with_truth(await projected(self.url, ACCOUNT), sim.truth(ACCOUNT), self.venue)

        connection = await connect(self.url)
        try:
            kept = await _kept(connection)
            sessions = await connection.fetch(SESSIONS, ACCOUNT)
            counts = await connection.fetchrow(EVENT_KEYS, ACCOUNT)
            copies = await connection.fetch(LEDGER_COPIES, ACCOUNT)
            result.rejected = len(await connection.fetch(REJECTED_RAWS, ACCOUNT))
            result.replay_mismatches = await _replay_differences(connection)
        finally:
            await connection.close()
        result.events = int(counts["events"])

        # no frame lost: a connection's frames are stored, but for the tail of one that ended abnormally when a
        # later session was resynced (the frames were in flight to a killed daemon, or in a cut network)
        resyncs = sum(1 for r in sessions if r["kind"] == "resync_completed")
        connections = sim.frames(ACCOUNT)
        for number, sent in enumerate(connections):
            result.frames_sent += len(sent.sent)
            stored = [frame in kept for frame in sent.sent]
            last_stored = max((i for i, ok in enumerate(stored) if ok), default=-1)
            holes = [i for i in range(last_stored + 1) if not stored[i]]
            if holes:
                result.lost.append(f"connection {number}: frames {holes[:10]} of {len(sent.sent)} not stored, "
                                   f"before stored ones")  # fmt: skip
            tail = len(sent.sent) - last_stored - 1
            if tail and (number == len(connections) - 1 or not resyncs):
                result.lost.append(
                    f"connection {number}: its last {tail} frames are not stored, and no resync followed"
                )
        if result.frames_sent == 0:
            result.errors.append("the venue sent no frame")

        # no duplicate
        if counts["events"] != counts["keys"]:
            result.duplicates.append(f"{counts['events']} events but {counts['keys']} distinct keys")
        ledger: Counter[tuple[str, ...]] = Counter()
        for row in copies:
            payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
            if row["kind"] == "fill":
                ledger.update(("fill", f["fill_id"], f["fill_type"], row["source"]) for f in payload["fills"])
            else:
                ledger.update(("funding", p["payment_id"], row["source"]) for p in payload["payments"])
        result.duplicates += [f"{key} stored {n} times" for key, n in ledger.items() if n > 1]

        result.cli_checks = await self._cli_checks()

    async def _cli_checks(self) -> dict[str, str]:
        """``replay --verify``, ``verify-log`` and ``reconcile`` (exit 0 ok, 1 a check failed), where they exist."""
        assert self.daemon is not None
        checks = {
            "replay --verify": ["replay", "--account", ACCOUNT, "--verify"],
            "verify-log": ["verify-log"],
            "reconcile": ["reconcile", "--account", ACCOUNT],
        }
        outcomes: dict[str, str] = {}
        skipped = {name.strip() for name in os.environ.get(SKIP_CHECKS, "").split(",")}
        for name, args in checks.items():
            if args[0] in skipped:
                outcomes[name] = f"not run: skipped by {SKIP_CHECKS}"
                continue
            if not await command_exists(args[0], self.daemon.env):
                outcomes[name] = "not run: the command does not exist yet"
                continue
            code, output = await _run(
                *args, "--config", str(self.daemon.config), env={**self.daemon.env, "COLUMNS": "200"}
            )
            outcomes[name] = "passed" if code == 0 else f"failed (exit {code}): {output[-500:]}"
        return outcomes


# ---------------------------------------------------------------------------------------------- helpers


async def _kept(connection: asyncpg.Connection) -> set[str]:
    raws = await connection.fetch(STREAM_RAWS, ACCOUNT)
    rejected = await connection.fetch(REJECTED_RAWS, ACCOUNT)
    return {r["raw"] for r in raws} | {bytes(r["raw"]).decode("utf-8", errors="surrogateescape") for r in rejected}


async def _no_unresolved(url: str) -> bool:
    return await unresolved_orders(url, ACCOUNT) == 0


async def _replay_differences(connection: asyncpg.Connection) -> list[str]:
    """The live projection tables against the pure folds run over the log up to the projector's checkpoint."""
    row = await connection.fetchrow(HEAD_AND_CHECKPOINT, ACCOUNT, store.CHECKPOINT)
    assert row is not None
    position = int(row["checkpoint"] or 0)
    records = await connection.fetch(LOG_EVENTS, ACCOUNT, position)
    events = [
        FoldEvent(
            r["id"],
            r["venue"],
            r["kind"],
            r["snapshot"],
            r["source"],
            r["venue_time"],
            r["received_at"],
            r["payload"] if isinstance(r["payload"], dict) else json.loads(r["payload"]),
        )
        for r in records
    ]
    replayed = fold(AccountState(ACCOUNT), events).tables()
    live = await store.read_tables(connection, ACCOUNT)
    differences = []
    for table in sorted(replayed.keys() | live.keys()):
        mine, theirs = replayed.get(table, []), live.get(table, [])
        if mine != theirs:
            differences.append(f"{table}: replay has {len(mine)} rows, the live table {len(theirs)}; "
                               f"first differing: {_first_difference(mine, theirs)}")  # fmt: skip
    return differences


def _first_difference(mine: list[Any], theirs: list[Any]) -> str:
    for a, b in zip(mine, theirs, strict=False):
        if a != b:
            return f"replay {a!r} / live {b!r}"[:600]
    return "(one table is longer)"


_EXISTS: dict[str, bool] = {}


async def command_exists(name: str, env: dict[str, str]) -> bool:
    """Whether ``statekeeper <name>`` is a command (its ``--help`` exits 0)."""
    if name not in _EXISTS:
        code, _ = await _run(name, "--help", env=env)
        _EXISTS[name] = code == 0
    return _EXISTS[name]


async def _run(*args: str, env: dict[str, str], within: float = 120.0) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(within):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode("utf-8", errors="replace")
