"""The ingest daemon under venue faults: simulated venues that lose, repeat, swap, delay and garble frames, drop
connections and fail REST calls; the daemon in-process; a real PostgreSQL.

Each test lets frames flow, then lets the daemon settle (the activity stops, the current session is resynced and
clean), stops the daemon and compares the log with what the simulated venue sent and with its truth.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Self
from uuid import UUID

import aiohttp
import asyncpg
import orjson
import pytest

from statekeeper.database import connect
from statekeeper.ingest.daemon import Daemon
from statekeeper.simulator import FaultKind, FaultPlan, Simulator, SimulatorConfig
from tests.ingest_support import Activity, running_daemon, sent_frames, settings_for, wait_until

Venue = Literal["extended", "paradex"]

RATE = 150.0
"""Engine steps per second the tests drive."""
STEP_MS = round(1000 / RATE)
"""Venue time per step: venue time keeps pace with the wall clock, as at a real venue."""
GAP_FRAMES = 30
"""Frames lost by an injected gap: more than the simulator (seed 5) ever sends between two fills, so the gap
always swallows at least one fill that only a REST backfill can recover."""


# ---------------------------------------------------------------------------------------------- helpers


def simulator(
    venue: Venue,
    *,
    accounts: tuple[str, ...] = ("a1",),
    faults: FaultPlan | None = None,
    step_ms: int = STEP_MS,
    funding_interval_ms: int = 3_600_000,
) -> SimulatorConfig:
    """A simulator the test drives itself (:class:`Activity`)."""
    return SimulatorConfig(
        venue=venue,
        seed=5,
        accounts=accounts,
        rate=0,
        step_ms=step_ms,
        faults=faults or FaultPlan(),
        funding_interval_ms=funding_interval_ms,
    )


@dataclass
class Log:
    """Everything the database holds for one account."""

    events: list[asyncpg.Record]
    rejected: list[asyncpg.Record]
    sessions: list[asyncpg.Record]
    conflicts: int

    def of(self, kind: str, session: UUID | None = None) -> list[asyncpg.Record]:
        return [e for e in self.events if e["kind"] == kind and session in (None, e["session"])]

    def frames(self) -> set[str]:
        """The stream frames kept: raw of stream events and of rejected frames."""
        kept = {e["raw"] for e in self.events if e["source"] == "stream" and e["raw"] is not None}
        return kept | {bytes(r["raw"]).decode("utf-8", errors="surrogateescape") for r in self.rejected}

    def opened(self, transport: str) -> list[UUID]:
        """The sessions of a transport (``websocket``, ``rest_poll``), in the order they were opened."""
        return [e["session"] for e in self.of("session_opened") if e["payload"]["transport"] == transport]

    def stream_sessions(self) -> list[UUID]:
        return self.opened("websocket")

    def closed(self, session: UUID) -> dict[str, Any] | None:
        """The ``session_closed`` payload of a session, None while it is open."""
        found = self.of("session_closed", session)
        return dict(found[0]["payload"]) if found else None

    def row(self, session: UUID) -> asyncpg.Record:
        return next(s for s in self.sessions if s["session"] == session)

    def fill_ids(self, source: str | None = None) -> Counter[tuple[str, str]]:
        """How many events carry each fill (``(fill_id, fill_type)``), of one source or all."""
        return Counter(
            (f["fill_id"], f["fill_type"])
            for e in self.of("fill")
            if source in (None, e["source"])
            for f in e["payload"]["fills"]
        )

    def funding_ids(self) -> Counter[str]:
        return Counter(p["payment_id"] for e in self.of("funding") for p in e["payload"]["payments"])


async def read_log(url: str, account: str) -> Log:
    connection = await connect(url)
    try:
        events = await connection.fetch(
            "SELECT id, event_key, kind, source, session, seq, snapshot, payload, raw FROM events"
            " WHERE account = $1 ORDER BY id",
            account,
        )
        rejected = await connection.fetch(
            "SELECT session, seq, reason, raw FROM rejected_frames WHERE account = $1 ORDER BY id", account
        )
        sessions = await connection.fetch(
            "SELECT * FROM stream_sessions WHERE account = $1 ORDER BY opened_at", account
        )
        conflicts = await connection.fetchval("SELECT count(*) FROM event_conflicts WHERE account = $1", account)
    finally:
        await connection.close()
    return Log(list(events), list(rejected), list(sessions), int(conflicts))


def _message(frame: str) -> dict[str, Any] | None:
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None  # a garbled frame
    return message if isinstance(message, dict) else None


def seq_of(frame: str) -> int | None:
    """The seq of an Extended frame as sent (None for a garbled one)."""
    seq = (_message(frame) or {}).get("seq")
    return seq if isinstance(seq, int) else None


def fills_in(frame: str) -> set[tuple[str, str]]:
    """The fills (``(fill_id, fill_type)``) a frame carries, in either venue's wire format."""
    message = _message(frame) or {}
    if message.get("type") == "TRADE":  # Extended
        return {(str(t["id"]), t["tradeType"]) for t in message["data"]["trades"]}
    params = message.get("params")
    if isinstance(params, dict) and str(params.get("channel", "")).startswith("fills"):  # Paradex
        return {(str(params["data"]["id"]), params["data"]["fill_type"])}
    return set()


def lost_fills(sim: Simulator, account: str) -> set[tuple[str, str]]:
    """Fills in frames the venue lost (a gap, a disconnect fault, a reordered frame never sent)."""
    return {fill for connection in sim.frames(account) for frame in connection.lost for fill in fills_in(frame)}


@dataclass(frozen=True)
class Problem:
    problem: str
    expected: int
    received: int


def first_problem(frames: list[str]) -> Problem | None:
    """The first sequence problem in what an Extended connection sent, as the daemon must classify it.

    Worked out here from the venue's side, independently of the daemon's checker: the first seq out of line is a
    ``repeat`` when below the next expected seq, else a ``gap``, which was a ``reorder`` when every seq it skipped
    was sent later on the same connection.
    """
    seqs = [s for s in map(seq_of, frames) if s is not None]
    expected = 1
    for index, seq in enumerate(seqs):
        if seq == expected:
            expected += 1
            continue
        if seq < expected:
            return Problem("repeat", expected, seq)
        late = set(range(expected, seq)) <= set(seqs[index + 1 :])
        return Problem("reorder" if late else "gap", expected, seq)
    return None


async def settled(url: str, sim: Simulator, account: str) -> bool:
    """The daemon is at rest: one clean connection open with nothing left to send, its session resynced, every
    frame sent stored."""
    history = sim.frames(account)
    open_connections = sim.server.connections.get(account, [])
    if len(open_connections) != 1 or not history:
        return False
    connection = open_connections[0]
    last = history[-1]
    if connection.frames is not last or last.lost or not connection.queue.empty():
        return False
    numbered = [seq for seq in map(seq_of, last.sent) if seq is not None]
    # Extended: every seq the connection numbered was sent (no frame held back by a reorder, or still delayed).
    if sim.config.venue == "extended" and (first_problem(last.sent) or connection.seq != max(numbered, default=0)):
        return False
    log = await read_log(url, account)
    sessions = log.stream_sessions()
    if len(sessions) != len(history):
        return False
    if not log.of("resync_completed", sessions[-1]) or log.closed(sessions[-1]) is not None:
        return False
    return {f for each in history for f in each.sent} <= log.frames()


async def settle(url: str, sim: Simulator, account: str, *, nudge: bool = False) -> None:
    """Wait until the daemon is at rest (:func:`settled`).

    ``nudge``: with faults at rates, the last frame of the activity may be lost, or held back by a reorder, with
    nothing after it to tell (no client can notice that); one more step of activity then brings it to light, as
    the next message would at a venue.
    """
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()

    async def at_rest() -> bool:
        nonlocal quiet_since
        if await settled(url, sim, account):
            return True
        if nudge and loop.time() - quiet_since > 1.0:
            await sim.step()
            quiet_since = loop.time()
        return False

    await wait_until(at_rest, within=15, what=f"{account}: the daemon at rest")


def check_log(log: Log, sim: Simulator, account: str) -> None:
    """What must hold after any run: every frame sent kept, nothing twice, every fill of the truth in the log."""
    sent = sent_frames(sim, account)
    assert sent, "the venue sent nothing"
    kept = log.frames()
    missing = [f for f in sent if f not in kept]
    assert missing == [], f"{len(missing)} of {len(sent)} frames sent are neither events nor rejected frames"
    keys = [e["event_key"] for e in log.events]
    assert len(keys) == len(set(keys))
    assert log.conflicts == 0, "a key was reused for different content"
    # A fill is at most one stream event (a repeated frame is one event) and at most one REST event.
    for source in ("stream", "rest"):
        twice = {fill: n for fill, n in log.fill_ids(source).items() if n > 1}
        assert twice == {}, f"fills stored more than once from the {source}"
    truth = {(str(fill_id), fill_type) for fill_id, fill_type in sim.truth(account).fills}
    assert truth, "the simulated account made no fill"
    absent = truth - set(log.fill_ids())
    assert absent == set(), f"{len(absent)} of {len(truth)} fills of the venue are not in the log"
    # What the stream lost can only have come back by a REST backfill.
    assert lost_fills(sim, account) <= set(log.fill_ids("rest"))
    for row in log.sessions:
        assert row["close_reason"] is not None, "a session was left open"
    assert [s["session"] for s in log.sessions if s["transport"] == "websocket"] == log.stream_sessions()


def check_sequences(log: Log, sim: Simulator, account: str) -> list[Problem]:
    """Extended: each connection's first sequence problem, and only it, is recorded, closes the session with
    reason ``gap`` and is resynced by the next session. Returns the problems."""
    history = sim.frames(account)
    sessions = log.stream_sessions()
    assert len(sessions) == len(history), "one stream session per connection"
    problems = []
    for index, (session, connection) in enumerate(zip(sessions, history, strict=True)):
        expected = first_problem(connection.sent)
        recorded = [dict(e["payload"]) for e in log.of("gap_detected", session)]
        closed = log.closed(session)
        assert closed is not None
        if expected is None:
            assert recorded == [], f"session {index}: a sequence problem recorded where the venue sent none"
            assert closed["reason"] != "gap"
            continue
        problems.append(expected)
        assert recorded == [
            {"kind": "gap_detected", "problem": expected.problem, "expected_seq": expected.expected,
             "received_seq": expected.received}
        ], f"session {index}"  # fmt: skip
        assert closed["reason"] == "gap"
        assert log.row(session)["close_reason"] == "gap"
        following = sessions[index + 1]
        assert log.of("session_opened", following)[0]["payload"]["reason"] == "reconnect"
        (started,) = log.of("resync_started", following)
        assert started["payload"]["reason"] == "gap"
        assert started["payload"]["previous_session"] == str(session)
    assert log.of("resync_completed", sessions[-1]), "the last session was resynced"
    return problems


async def _first_resync(url: str, sim: Simulator, account: str) -> None:
    """Wait until the first session is resynced and the venue's snapshots are through (faults then hit deltas)."""

    async def ready() -> bool:
        history = sim.frames(account)
        if not history or len(history[-1].sent) < 5:
            return False
        return bool((await read_log(url, account)).of("resync_completed"))

    await wait_until(ready, within=10, what=f"{account}: the first session resynced")


def sample(daemon: Daemon, name: str, account: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name, {"account": account})


# ------------------------------------------------------------------------------------ stream faults

STREAM_FAULTS = [
    FaultKind.DISCONNECT,
    FaultKind.GAP,
    FaultKind.DUPLICATE,
    FaultKind.REORDER,
    FaultKind.MALFORMED,
    FaultKind.DELAY,
]
SEQUENCE_PROBLEM = {FaultKind.GAP: "gap", FaultKind.DUPLICATE: "repeat", FaultKind.REORDER: "reorder"}


@pytest.mark.parametrize("kind", STREAM_FAULTS, ids=str)
async def test_extended_stream_fault_on_demand(database_url: str, kind: FaultKind) -> None:
    async with await Simulator.start(simulator("extended", faults=FaultPlan(delay_seconds=0.3))) as sim:
        async with running_daemon(settings_for({"a1": sim}), database_url), Activity(sim) as activity:
            await _first_resync(database_url, sim, "a1")
            sim.inject(kind, "a1", count=GAP_FRAMES if kind is FaultKind.GAP else 1)
            injected_at = activity.steps

            async def seen() -> bool:
                log = await read_log(database_url, "a1")
                if kind in SEQUENCE_PROBLEM:
                    return bool(log.of("gap_detected"))
                if kind is FaultKind.DISCONNECT:
                    return len(log.stream_sessions()) >= 2
                if kind is FaultKind.MALFORMED:
                    return bool(log.rejected)
                # The fault, then more frames (a frame held back by a reorder goes out after the next one).
                return sim.fault_counts[kind] >= 1 and activity.steps > injected_at + 50

            await wait_until(seen, within=10, what=f"the {kind} fault seen")
            await activity.stop()
            await settle(database_url, sim, "a1")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    problems = check_sequences(log, sim, "a1")
    history = sim.frames("a1")
    sessions = log.stream_sessions()
    reasons = [log.row(s)["close_reason"] for s in sessions]
    if kind in SEQUENCE_PROBLEM:
        assert [p.problem for p in problems] == [SEQUENCE_PROBLEM[kind]]
        assert reasons == ["gap", "shutdown"]
        (completed,) = log.of("resync_completed", sessions[1])
        assert completed["payload"]["fills_backfilled"] >= len(lost_fills(sim, "a1"))
    if kind is FaultKind.GAP:
        assert len(history[0].lost) == GAP_FRAMES
        assert lost_fills(sim, "a1"), "the gap swallowed a fill"
        assert not set(history[0].lost) & log.frames()
    if kind is FaultKind.DUPLICATE:
        (repeated,) = [f for f, n in Counter(history[0].sent).items() if n > 1]
        assert [e["raw"] for e in log.events].count(repeated) == 1, "a repeated frame is one event"
    if kind is FaultKind.REORDER:
        assert history[0].lost == []
    if kind is FaultKind.DISCONNECT:
        assert problems == []
        assert reasons[0] in ("server_close", "error")
        assert reasons[1:] == ["shutdown"]
        assert log.of("session_opened", sessions[1])[0]["payload"]["reason"] == "reconnect"
        (started,) = log.of("resync_started", sessions[1])
        assert started["payload"]["previous_session"] == str(sessions[0])
        assert started["payload"]["reason"] == reasons[0]
    if kind in (FaultKind.MALFORMED, FaultKind.DELAY):
        assert problems == []
        assert reasons == ["shutdown"], "nothing was lost: the session went on"
    if kind is FaultKind.MALFORMED:
        (rejected,) = log.rejected
        assert rejected["session"] == sessions[0]
        garbled = bytes(rejected["raw"]).decode()
        assert garbled in history[0].sent
        assert any(f != garbled and f.startswith(garbled) for f in history[0].sent), "the whole frame came too"
    assert sim.fault_counts[kind] == (GAP_FRAMES if kind is FaultKind.GAP else 1)


@pytest.mark.parametrize("kind", STREAM_FAULTS, ids=str)
async def test_paradex_stream_fault_on_demand(database_url: str, kind: FaultKind) -> None:
    """Paradex numbers no frame: a lost or swapped frame goes unnoticed, a repeated one is one event (natural
    keys), and the next session's resync backfills what was lost."""
    async with await Simulator.start(simulator("paradex", faults=FaultPlan(delay_seconds=0.3))) as sim:
        async with running_daemon(settings_for({"a1": sim}), database_url), Activity(sim) as activity:
            await _first_resync(database_url, sim, "a1")
            sim.inject(kind, "a1", count=GAP_FRAMES if kind is FaultKind.GAP else 1)
            injected_at = activity.steps

            async def seen() -> bool:
                if kind is FaultKind.DISCONNECT:
                    return len((await read_log(database_url, "a1")).stream_sessions()) >= 2
                if kind is FaultKind.MALFORMED:
                    return bool((await read_log(database_url, "a1")).rejected)
                if kind is FaultKind.GAP:
                    return len(sim.frames("a1")[0].lost) == GAP_FRAMES and activity.steps > injected_at + 50
                # The fault, then more frames (a frame held back by a reorder goes out after the next one).
                return sim.fault_counts[kind] >= 1 and activity.steps > injected_at + 50

            await wait_until(seen, within=10, what=f"the {kind} fault seen")
            if kind is FaultKind.GAP:
                # Nothing tells the daemon: the session goes on until the connection drops; then it resyncs.
                assert len((await read_log(database_url, "a1")).stream_sessions()) == 1
                await sim.server.disconnect("a1")
                await wait_until(lambda: len(sim.frames("a1")) == 2, within=10, what="a new connection")
            await activity.stop()
            await settle(database_url, sim, "a1")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    history = sim.frames("a1")
    sessions = log.stream_sessions()
    reasons = [log.row(s)["close_reason"] for s in sessions]
    assert log.of("gap_detected") == [], "no sequence to check"
    assert len(sessions) == len(history)
    if kind in (FaultKind.DISCONNECT, FaultKind.GAP):
        assert reasons[0] in ("server_close", "error")
        assert reasons[1:] == ["shutdown"]
        (started,) = log.of("resync_started", sessions[1])
        assert started["payload"]["previous_session"] == str(sessions[0])
        assert log.of("resync_completed", sessions[1])
    else:
        assert reasons == ["shutdown"]
    if kind is FaultKind.GAP:
        assert len(history[0].lost) == GAP_FRAMES
        lost = lost_fills(sim, "a1")
        assert lost, "the gap swallowed a fill"
        assert lost <= set(log.fill_ids("rest")), "the next session's backfill recovered it"
        assert not set(history[0].lost) & log.frames()
    if kind is FaultKind.DUPLICATE:
        (repeated,) = [f for f, n in Counter(history[0].sent).items() if n > 1]
        assert [e["raw"] for e in log.events].count(repeated) == 1, "a repeated frame is one event"
    if kind is FaultKind.REORDER:
        assert history[0].lost == []
    if kind is FaultKind.MALFORMED:
        (rejected,) = log.rejected
        assert rejected["session"] == sessions[0]
        assert bytes(rejected["raw"]).decode() in history[0].sent


@pytest.mark.parametrize("venue", ["extended", "paradex"])
async def test_every_stream_fault_at_once(database_url: str, venue: Venue) -> None:
    """Faults at rates, all kinds together: whatever the venue does, nothing it sent is missing or twice, every
    sequence problem is recorded and resynced, and every fill reaches the log."""
    rates = FaultPlan.parse("gap=0.01,duplicate=0.01,reorder=0.01,malformed=0.01,delay=0.01,disconnect=0.003").rates
    plan = FaultPlan(rates=rates, delay_seconds=0.05)
    async with await Simulator.start(simulator(venue, faults=plan)) as sim:
        async with running_daemon(settings_for({"a1": sim}), database_url), Activity(sim) as activity:
            await sim.wait_connected("a1")

            async def faulty() -> bool:
                counts = sim.fault_counts
                return activity.steps >= 300 and sum(counts[k] for k in STREAM_FAULTS) >= 8

            await wait_until(faulty, within=15, what="faults injected")
            await activity.stop()
            if venue == "paradex":
                # Lost frames go unnoticed there: a new session resyncs, once the activity is over.
                before = len(sim.frames("a1"))
                await sim.server.disconnect("a1")
                await wait_until(lambda: len(sim.frames("a1")) > before, within=10, what="a new connection")
            await settle(database_url, sim, "a1", nudge=venue == "extended")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    if venue == "extended":
        problems = check_sequences(log, sim, "a1")
        assert problems, "the faults caused sequence problems"
        assert len(log.of("gap_detected")) == len(problems)
    assert len(log.stream_sessions()) >= 2
    garbled = sorted(f for each in sim.frames("a1") for f in each.sent if _message(f) is None)
    assert garbled, "garbled frames were sent"
    assert sorted(bytes(r["raw"]).decode() for r in log.rejected) == garbled, "exactly the garbled frames rejected"


# -------------------------------------------------------------------------------------- REST faults


@pytest.mark.parametrize(
    ("kind", "first"),
    # The first requests fail outright: 429 five times (every attempt of a call: the resync itself fails and is
    # retried), 503 twice (retried by the client), slow three times.
    [(FaultKind.REST_429, 5), (FaultKind.REST_5XX, 2), (FaultKind.REST_SLOW, 3)],
    ids=str,
)
async def test_resyncs_complete_through_rest_faults(database_url: str, kind: FaultKind, first: int) -> None:
    plan = FaultPlan(rates={kind: 0.2}, slow_seconds=0.3, retry_after_seconds=0)
    async with await Simulator.start(simulator("extended", faults=plan)) as sim:
        sim.inject(kind, "a1", count=first)
        earlier = {(str(i), t) for i, t in sim.truth("a1").fills}
        async with running_daemon(settings_for({"a1": sim}), database_url) as daemon, Activity(sim) as activity:
            await _first_resync(database_url, sim, "a1")
            log = await read_log(database_url, "a1")
            (completed,) = log.of("resync_completed")
            # A failed call is never read as "no fills": the first resync brought the whole history.
            assert completed["payload"]["fills_backfilled"] >= len(earlier)
            assert earlier <= set(log.fill_ids("rest"))
            for _ in range(2):  # more resyncs while REST keeps failing now and then
                sim.inject(FaultKind.GAP, "a1", count=GAP_FRAMES)
                before = len(log.stream_sessions())
                resynced = partial(_resynced_after, database_url, "a1", before)
                await wait_until(resynced, within=15, what="a resync through REST faults")
                log = await read_log(database_url, "a1")
            await activity.stop()
            await settle(database_url, sim, "a1")
            rest_errors = sample(daemon, "statekeeper_rest_errors_total", "a1")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    assert [p.problem for p in check_sequences(log, sim, "a1")] == ["gap", "gap"]
    for session in log.stream_sessions():
        assert len(log.of("resync_completed", session)) == 1, "every session's resync completed"
    assert sim.fault_counts[kind] >= first
    if kind is FaultKind.REST_429:
        assert rest_errors is not None
        assert rest_errors >= 1, "the first resync failed as a whole and was retried"


async def _resynced_after(url: str, account: str, sessions: int) -> bool:
    """Whether a stream session beyond the first ``sessions`` is open and resynced."""
    log = await read_log(url, account)
    opened = log.stream_sessions()
    return len(opened) > sessions and bool(log.of("resync_completed", opened[-1]))


# ------------------------------------------------------------------------------------- a bad key


async def test_a_refused_key_stops_only_its_account(database_url: str) -> None:
    async with (
        await Simulator.start(simulator("extended", accounts=("x1", "x2"))) as ext,
        await Simulator.start(simulator("paradex", accounts=("p1",))) as pdx,
    ):
        settings = settings_for({"x1": ext, "x2": ext, "p1": pdx}, credentials={"x2": "wrong"})
        async with running_daemon(settings, database_url) as daemon, Activity(ext, pdx) as activity:

            def fatal() -> bool:
                ingest = daemon.accounts["x2"].ingest
                return ingest is not None and ingest.state.value == "fatal"

            await wait_until(fatal, within=10, what="x2 stopped")
            await _first_resync(database_url, ext, "x1")
            await _first_resync(database_url, pdx, "p1")
            before = {a: len((await read_log(database_url, a)).events) for a in ("x1", "p1")}

            async def going_on() -> bool:
                counts = {a: len((await read_log(database_url, a)).events) for a in ("x1", "p1")}
                return all(counts[a] >= before[a] + 50 for a in counts)

            await wait_until(going_on, within=10, what="the other accounts streaming on")
            code, health = daemon.health()
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{daemon.port}"
                async with http.get(f"{base}/healthz") as response:
                    served = (response.status, await response.json())
                async with http.get(f"{base}/metrics") as response:
                    metrics = await response.text()
            await activity.stop()
            await settle(database_url, ext, "x1")
            await settle(database_url, pdx, "p1")
            assert fatal(), "the account stays stopped"
        logs = {a: await read_log(database_url, a) for a in ("x1", "x2", "p1")}
    assert code == 200
    accounts = health["accounts"]
    assert served[0] == 200, "/healthz serves the same"
    assert served[1]["status"] == health["status"]
    assert {a: v["state"] for a, v in served[1]["accounts"].items()} == {a: v["state"] for a, v in accounts.items()}
    assert health["status"] == "degraded"
    assert accounts["x2"]["state"] == "fatal"
    assert "401" in accounts["x2"]["error"]
    assert "wrong" not in accounts["x2"]["error"], "the credential never shows"
    assert accounts["x1"]["state"] == "streaming"
    assert accounts["p1"]["state"] == "streaming"
    assert 'statekeeper_account_state{account="x2",state="fatal"} 1.0' in metrics
    assert 'statekeeper_account_state{account="x1",state="streaming"} 1.0' in metrics
    # The refused account never got a stream, and wrote nothing.
    assert ext.frames("x2") == []
    assert logs["x2"].events == []
    assert logs["x2"].sessions == []
    for account, sim in (("x1", ext), ("p1", pdx)):
        check_log(logs[account], sim, account)
        assert [s["close_reason"] for s in logs[account].sessions] == ["shutdown"]


# ----------------------------------------------------------------------------------- REST polling


@pytest.mark.parametrize("venue", ["extended", "paradex"])
async def test_rest_mode_polls_snapshots_and_backfills(database_url: str, venue: Venue) -> None:
    """``mode = "rest"``: one polling session for the daemon's life, through REST failures now and then."""
    plan = FaultPlan(rates={FaultKind.REST_429: 0.2, FaultKind.REST_5XX: 0.05}, retry_after_seconds=0)
    async with await Simulator.start(simulator(venue, faults=plan)) as sim:
        sim.inject(FaultKind.REST_429, "a1", count=5)  # every attempt of the first call: the first poll fails
        settings = settings_for({"a1": sim}, modes={"a1": "rest"})
        async with running_daemon(settings, database_url) as daemon, Activity(sim) as activity:

            async def polled() -> bool:
                log = await read_log(database_url, "a1")
                return activity.steps >= 150 and len([e for e in log.of("balance") if e["snapshot"]]) >= 2

            await wait_until(polled, within=10, what="two polls")
            code, health = daemon.health()
            rest_errors = sample(daemon, "statekeeper_rest_errors_total", "a1")
            await activity.stop()
            truth = sim.truth("a1")
            fills = {(str(i), t) for i, t in truth.fills}

            async def caught_up() -> bool:
                return fills <= set((await read_log(database_url, "a1")).fill_ids())

            await wait_until(caught_up, within=10, what="every fill polled")
        log = await read_log(database_url, "a1")
    assert code == 200
    assert health["accounts"]["a1"]["state"] == "polling"
    assert health["accounts"]["a1"]["rest_fallback"] is False, "polling is the mode, not a fallback"
    assert sim.frames("a1") == [], "no stream was opened"
    (row,) = log.sessions
    assert (row["transport"], row["close_reason"]) == ("rest_poll", "shutdown")
    (opened,) = log.of("session_opened")
    assert opened["payload"]["transport"] == "rest_poll"
    assert opened["payload"]["reason"] == "connect"
    control = {"session_opened", "session_closed"}
    assert {e["kind"] for e in log.events} >= {"balance", "position", "order", "fill"}
    for event in log.events:
        assert event["session"] == row["session"]
        if event["kind"] not in control:
            assert event["source"] == "rest", event["kind"]
        if event["kind"] in ("balance", "position", "order", "account"):
            assert event["snapshot"] is True
    assert log.rejected == []
    assert log.of("gap_detected") == []
    assert {(str(i), t) for i, t in truth.fills} <= set(log.fill_ids("rest"))
    assert max(log.fill_ids().values()) == 1, "each fill once"
    assert rest_errors is not None
    assert rest_errors >= 1, "a poll failed, and was not read as an empty account"
    assert sim.fault_counts[FaultKind.REST_429] >= 5
    if venue == "paradex":
        busted = {b["fill_id"] for e in log.of("fill_bust") for b in e["payload"]["busts"]}
        assert set(truth.busted_fills) <= busted
        assert log.of("account"), "the account summary is polled too"


class Gate:
    """A TCP relay in front of a simulator's port: while open it carries connections; while shut it closes new
    ones at once and has cut the ones it carried (a venue whose stream is unreachable, its REST still up)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.is_open = True
        self.port = 0
        self.carried = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.shut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def shut(self) -> None:
        self.is_open = False
        for writer in self._links:
            writer.transport.abort()
        self._links.clear()

    def reopen(self) -> None:
        self.is_open = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.carried += 1
        self._links |= {writer, upstream}
        await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._links.discard(writer)
            writer.transport.abort()


async def test_rest_fallback_while_the_stream_is_down(database_url: str) -> None:
    async with await Simulator.start(simulator("extended")) as sim, Gate(sim.port) as gate:
        settings = settings_for({"a1": sim}, fallback_after_failures=2)
        ws_url = sim.ws_url.replace(f":{sim.port}/", f":{gate.port}/")
        account = settings.accounts[0].model_copy(update={"ws_url": ws_url})
        settings = settings.model_copy(update={"accounts": (account,)})
        async with running_daemon(settings, database_url) as daemon:
            async with Activity(sim) as activity:
                await _first_resync(database_url, sim, "a1")
                await wait_until(lambda: activity.steps >= 50, within=5, what="some activity")
            # Nothing in flight when the link is cut: every frame the venue sent has been read.
            await wait_until(lambda: settled(database_url, sim, "a1"), within=10, what="the stream read")
            gate.shut()
            async with Activity(sim) as activity:

                async def polling() -> bool:
                    log = await read_log(database_url, "a1")
                    polls = log.opened("rest_poll")
                    return bool(polls) and bool([e for e in log.of("fill", polls[0]) if e["source"] == "rest"])

                await wait_until(polling, within=10, what="REST polling with fills from the outage")
                fallback_metric = sample(daemon, "statekeeper_rest_fallback", "a1")
                during = daemon.health()
                gate.reopen()

                async def restored() -> bool:
                    log = await read_log(database_url, "a1")
                    polls = log.opened("rest_poll")
                    return len(log.stream_sessions()) == 2 and log.closed(polls[0]) is not None

                await wait_until(restored, within=10, what="the stream back, polling ended")
                restored_metric = sample(daemon, "statekeeper_rest_fallback", "a1")
                after = daemon.health()
                await wait_until(lambda: activity.steps >= 300, within=5, what="activity on the restored stream")
            await settle(database_url, sim, "a1")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    assert fallback_metric == 1.0
    assert restored_metric == 0.0
    assert during[0] == 200
    assert during[1]["accounts"]["a1"]["rest_fallback"] is True
    assert during[1]["status"] == "ok"
    # Polling, or between two polls trying the stream again.
    assert during[1]["accounts"]["a1"]["state"] in ("polling", "connecting")
    assert after[1]["accounts"]["a1"]["rest_fallback"] is False
    first, second = log.stream_sessions()
    (poll,) = log.opened("rest_poll")
    assert log.row(first)["close_reason"] in ("error", "server_close")
    assert log.of("session_opened", poll)[0]["payload"]["reason"] == "fallback"
    assert log.row(poll)["transport"] == "rest_poll"
    assert log.row(poll)["close_reason"] == "stream_restored"
    closed = log.closed(poll)
    assert closed is not None
    assert closed["reason"] == "stream_restored"
    # Polling served the account: REST snapshots of every kind, and the outage's fills.
    snapshots = [e for e in log.events if e["session"] == poll and e["snapshot"]]
    assert {e["kind"] for e in snapshots} >= {"balance", "position", "order"}
    assert {e["source"] for e in snapshots} == {"rest"}
    assert log.of("session_opened", second)[0]["payload"]["reason"] == "reconnect"
    assert log.row(second)["opened_at"] > log.row(poll)["opened_at"]
    assert log.of("resync_completed", second)
    assert gate.carried == 2, "the venue saw two connections: before the cut and after it"


# ------------------------------------------------------------------------------------ funding poll


async def test_extended_funding_is_polled_on_schedule(database_url: str) -> None:
    async with await Simulator.start(simulator("extended", step_ms=100, funding_interval_ms=1000)) as sim:
        settings = settings_for({"a1": sim}, funding_poll_interval_seconds=0.3)
        async with running_daemon(settings, database_url), Activity(sim) as activity:
            await _first_resync(database_url, sim, "a1")
            log = await read_log(database_url, "a1")
            at_resync = set(log.funding_ids())

            async def polled() -> bool:
                return len(set((await read_log(database_url, "a1")).funding_ids()) - at_resync) >= 10

            await wait_until(polled, within=10, what="funding payments polled")
            await activity.stop()
            truth = set(sim.truth("a1").funding)

            async def caught_up() -> bool:
                return truth <= set((await read_log(database_url, "a1")).funding_ids())

            await wait_until(caught_up, within=5, what="every funding payment polled")
            await settle(database_url, sim, "a1")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    # One stream session and one resync: the payments made since were fetched by the schedule.
    assert len(log.stream_sessions()) == 1
    assert len(log.of("resync_completed")) == 1
    funding = log.of("funding")
    assert {e["source"] for e in funding} == {"rest"}, "Extended streams no funding"
    assert truth <= set(log.funding_ids())
    assert len(truth - at_resync) >= 10
    assert max(log.funding_ids().values()) == 1, "each payment once"
    (completed,) = log.of("resync_completed")
    assert any(e["id"] > completed["id"] for e in funding), "payments appended after the resync"


async def test_sequence_gaps_alone_never_start_rest_polling(database_url: str) -> None:
    """Sessions the daemon ends itself to resync a gap are not failures: no REST fallback comes of them."""
    async with await Simulator.start(simulator("extended", faults=FaultPlan(rates={FaultKind.GAP: 0.01}))) as sim:
        async with running_daemon(settings_for({"a1": sim}), database_url) as daemon, Activity(sim) as activity:
            await wait_until(lambda: activity.steps >= 450, within=15, what="activity")
            await activity.stop()
            await settle(database_url, sim, "a1", nudge=True)
            connect_failures = sample(daemon, "statekeeper_connect_failures_total", "a1")
        log = await read_log(database_url, "a1")
    check_log(log, sim, "a1")
    assert len(check_sequences(log, sim, "a1")) >= 5
    assert connect_failures is None  # every connect succeeded
    assert log.opened("rest_poll") == []


class Silent:
    """A server that accepts TCP connections and never answers (a venue behind a network partition)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.transport.abort()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        await reader.read()  # until the client goes away


async def test_stop_is_prompt_while_a_stream_connect_hangs(database_url: str) -> None:
    async with await Simulator.start(simulator("extended")) as sim, Silent() as silent:
        settings = settings_for({"a1": sim}, shutdown_grace_seconds=3)
        account = settings.accounts[0].model_copy(update={"ws_url": f"ws://127.0.0.1:{silent.port}/stream"})
        settings = settings.model_copy(update={"accounts": (account,)})
        async with running_daemon(settings, database_url, stop_within=5) as daemon:
            await wait_until(lambda: silent.accepted >= 1, within=5, what="a connect in flight")
        states = {name: rt.ingest.state.value for name, rt in daemon.accounts.items() if rt.ingest is not None}
    assert states == {"a1": "stopped"}
