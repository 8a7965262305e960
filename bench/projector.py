"""The projector: events/s applied to the projection tables, and frame-to-visible-row latency through the daemon.

``python -m bench.projector [--quick] [--no-record]``

* **throughput**: recorded simulator frames of 4 Extended and 4 Paradex accounts (their realistic mix of orders,
  positions, balances, fills, account figures, transfers, busts), 200,000 events in all (20,000 with
  ``--quick``), parsed by the venues' parsers and appended with ``PostgresEventLog.append`` 1,000 per call before
  any timing; the log is then vacuumed and analyzed (as autovacuum would have done). Timed, each from empty
  projection tables:

  - ``apply_batch``: :func:`statekeeper.projections.store.apply_batch` in a loop, 2,000 events per batch (the
    default ``[projector] batch_size``), the accounts in turn, until every account is caught up (the headline);
  - ``worker``: the real :class:`~statekeeper.projections.worker.ProjectorWorker` (one, default settings), from
    its start until every checkpoint equals its account's last event id; then two workers in this process (as
    ``[projector] workers = 2`` runs them), to show what overlapping one batch's waits with another's CPU gives;
  - the split: the steps of ``apply_batch`` run one by one by the benchmark (read, needs, load, fold, commit),
    each timed.

  Baselines in the same run: (a) the read + parse ceiling: the projector's read statement
  (``store.READ_EVENTS``, 2,000 per call) and ``fold.parse_events`` on every page, no folding or writing; (b) the
  pure fold alone in memory (``fold.fold``) over the same parsed events, one state per account; (c) the
  machine's speed: the append rate of the set-up above (API, 1,000 per call, encoding included) and a raw
  ``COPY`` of the same rows into a scratch copy of ``events`` (indexes included, no idempotency, 10,000 per
  transaction: the append benchmark's ceiling).
* **latency**: the daemon (ingest + one projector worker) against a simulated venue in another process at
  ~1,000 frames/s, in two topologies: ``statekeeper run`` as shipped, its projector worker in its projector
  process (``[projector] separate_process = true``, the default; the same code as ``statekeeper run --only
  ingest`` beside ``statekeeper project``, as ``docker-compose.yml`` deploys them), then every part in one process
  (``separate_process = false``); the simulator's step rate calibrated on its frames per step (the achieved rate
  is printed); 30 s (5 s with ``--quick``) after a warm-up, Extended then Paradex, each in a fresh database.
  For every state event (a kind some projection reads) received in the window: its ``received_at`` (the frame's arrival)
  to the commit of the projector transaction that applied it. The commit time is taken by wrapping
  ``store.apply_batch`` where the worker runs (the projector process runs :func:`projector_child`, which writes
  the commits to a file): the wrapper notes ``time.time()`` as soon as the call returns
  (its transaction has committed) with the batch's last event id. Baseline in the same run: the ingest-only
  latency of the same events, ``received_at`` to ``appended_at`` (the start of the append transaction, as
  ``bench.ingest`` measures), so the projector's share is visible; that share is split into the wait before the
  event's batch began and the batch itself, and the statements each batch sent are counted (a query logger on
  the batch's connection, which costs a few microseconds per statement). Second baseline: a ``SELECT 1`` round
  trip from the same process, 20 per second through the window (what each of those statements costs at least).

Targets (the issue): >= 30,000 events/s; p50 <= 5 ms and p99 <= 25 ms at 1,000 frames/s.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar
from unittest.mock import patch
from uuid import uuid4

import asyncpg

from bench.common import cluster, record
from bench.ingest import _free_port, _wait_port
from statekeeper.config import AccountSettings, ProjectorSettings, Settings, resolve_secrets
from statekeeper.database import connect, create_pool
from statekeeper.eventlog import PostgresEventLog, copy_record
from statekeeper.events import Event, encode_events
from statekeeper.ingest import projector_process
from statekeeper.ingest.daemon import Daemon
from statekeeper.ingest.projector_process import ProjectorProcess
from statekeeper.projections import fold, store
from statekeeper.projections.fold import PROJECTED_KINDS, AccountState, FoldEvent
from statekeeper.projections.worker import ProjectorWorker
from statekeeper.simulator import _credential
from statekeeper.simulator.recording import record_session
from statekeeper.statements import COPY_COLUMNS
from statekeeper.venues.base import FrameContext, ParseOutcome
from statekeeper.venues.extended import parse_frame as parse_extended
from statekeeper.venues.paradex import parse_frame as parse_paradex

Venue = Literal["extended", "paradex"]
T = TypeVar("T")

BATCH = 2_000
"""Events per projector transaction: the default ``[projector] batch_size``."""
APPEND_BATCH = 1_000
COPY_BATCH = 10_000
FRAMES_PER_SECOND = 1_000
WARMUP_SECONDS = 2.0
TOPOLOGIES = {True: "projector process", False: "one process"}
"""By ``[projector] separate_process``: ``statekeeper run`` as shipped (its projector workers in its projector
process), or with every part in the daemon's process."""
CHECKPOINT = store.CHECKPOINT
TARGET_EVENTS_PER_S = 30_000
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
PARSERS: dict[Venue, Callable[[str, FrameContext], ParseOutcome]] = {
    "extended": parse_extended,
    "paradex": parse_paradex,
}
SPECS: tuple[tuple[Venue, str, int], ...] = (
    *(("extended", f"ext-{n}", n) for n in range(1, 5)),
    *(("paradex", f"pdx-{n}", n) for n in range(1, 5)),
)
"""The throughput run's accounts: (venue, account, simulator seed)."""
VENUES: tuple[Venue, ...] = ("extended", "paradex")
"""The latency runs, in order; the first is the headline."""


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def pct(values: Sequence[float], p: float) -> float:
    """``values`` sorted; the same percentile as ``bench.ingest``."""
    return values[min(len(values) - 1, int(p * len(values)))]


# ------------------------------------------------------------------------------------------ the log


def frames_of(venue: Venue, account: str, seed: int, count: int) -> list[str]:
    """``count`` frames a client of ``account`` receives from a simulated venue (rendered offline)."""
    steps = count // 2 + 100  # both venues send more than 2 frames per step
    while True:
        frames = record_session(venue, seed=seed, steps=steps, account=account)
        if len(frames) >= count:
            return frames[:count]
        steps *= 2


def events_of(venue: Venue, account: str, frames: Sequence[str]) -> list[Event]:
    """The frames through the venue's real parser, received 1 ms apart."""
    parse = PARSERS[venue]
    session = uuid4()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for i, frame in enumerate(frames):
        event = parse(frame, FrameContext(account, venue, session, start + timedelta(milliseconds=i)))
        if not isinstance(event, Event):
            raise SystemExit(f"{venue} frame {i} of {account} was rejected: {event}")
        events.append(event)
    return events


async def build_log(url: str, total: int) -> dict[str, Any]:
    """Append ``total`` events of the accounts of :data:`SPECS`; time the appends and a raw COPY of the same rows."""
    per_account = total // len(SPECS)
    pool = await create_pool(url, max_size=2)
    log = PostgresEventLog(pool)
    conn = await connect(url)
    append_s = copy_s = 0.0
    appended = 0
    try:
        await conn.execute("CREATE TABLE scratch_events (LIKE events INCLUDING ALL)")
        for venue, account, seed in SPECS:
            events = events_of(venue, account, frames_of(venue, account, seed, per_account))
            gc.collect()
            for batch in chunks(events, APPEND_BATCH):
                start = time.perf_counter()
                await log.append(batch)
                append_s += time.perf_counter() - start
            appended += len(events)
            rows = [copy_record(row) for row in encode_events(events)]
            for rows_batch in chunks(rows, COPY_BATCH):
                start = time.perf_counter()
                async with conn.transaction():
                    await conn.copy_records_to_table("scratch_events", records=rows_batch, columns=COPY_COLUMNS)
                copy_s += time.perf_counter() - start
        await conn.execute("DROP TABLE scratch_events")
        await conn.execute("VACUUM (ANALYZE) events")
        mix = await conn.fetch("SELECT venue, kind, count(*) AS n FROM events GROUP BY venue, kind ORDER BY n DESC")
        heads = await conn.fetch("SELECT account, max(id) AS head, count(*) AS n FROM events GROUP BY account")
    finally:
        await conn.close()
        await pool.close()
    kinds: Counter[str] = Counter()
    venues: Counter[str] = Counter()
    for r in mix:
        kinds[r["kind"]] += r["n"]
        venues[r["venue"]] += r["n"]
    return {
        "events": sum(r["n"] for r in heads),
        "heads": {r["account"]: r["head"] for r in heads},
        "kinds": dict(kinds.most_common()),
        "venues": dict(venues),
        "append_events_per_s": round(appended / append_s),
        "raw_copy_events_per_s": round(appended / copy_s),
    }


RESET = f"TRUNCATE {', '.join(store.TABLES)}; DELETE FROM projector_checkpoints"


async def reset(conn: asyncpg.Connection) -> None:
    """Empty projection tables and no checkpoint: every run starts from the beginning of the log."""
    await conn.execute(RESET)
    gc.collect()


# ------------------------------------------------------------------------------------------ throughput


async def read_parse_and_fold(conn: asyncpg.Connection, accounts: Sequence[str]) -> dict[str, float]:
    """Baselines (a) and (b): read + parse every event as the projector does, then fold each account in memory."""
    spent: defaultdict[str, float] = defaultdict(float)
    events_count = 0
    for account in accounts:
        position = 0
        events: list[FoldEvent] = []
        while True:
            start = time.perf_counter()
            page = await conn.fetchval(store.READ_EVENTS, account, position, BATCH)
            read = time.perf_counter()
            batch = [] if page is None else fold.parse_events(page)
            events.extend(batch)
            spent["read"] += read - start
            spent["parse"] += time.perf_counter() - read
            if len(batch) < BATCH:
                break
            position = batch[-1].id
        start = time.perf_counter()
        fold.fold(AccountState(account), events)
        spent["fold"] += time.perf_counter() - start
        events_count += len(events)
        del events
        gc.collect()
    return {"events": events_count, **spent}


async def apply_loop(conn: asyncpg.Connection, accounts: Sequence[str]) -> dict[str, float]:
    """The headline: ``store.apply_batch`` until every account is caught up, the accounts in turn (and, as the
    workers do, :class:`store.Statistics` after batches that wrote rows)."""
    pending = list(accounts)
    events = rows = batches = 0
    statistics = store.Statistics()
    start = time.perf_counter()
    while pending:
        for account in list(pending):
            result = await store.apply_batch(conn, account, limit=BATCH)
            if result.rows:
                await statistics.refresh(conn)
            events += result.events
            rows += result.rows
            batches += result.events > 0
            if not result.full:
                pending.remove(account)
    return {"seconds": time.perf_counter() - start, "events": events, "rows": rows, "batches": batches}


STEPS = ("read", "needs", "load", "fold", "commit")
"""The steps of ``apply_batch``, in order: ``read`` is the checkpoint and events statement with the JSONB decoding of
the payloads and the building of each :class:`FoldEvent`; ``commit`` is the one statement that writes the rows and
moves the checkpoint."""


async def split_loop(conn: asyncpg.Connection, accounts: Sequence[str]) -> dict[str, Any]:
    """``apply_batch``'s steps run here one by one (the same functions), each timed: wall time, and this process's
    CPU time (the rest of a step's wall time is waiting on the server)."""
    wall: defaultdict[str, float] = defaultdict(float)
    cpu: defaultdict[str, float] = defaultdict(float)
    pending = list(accounts)
    events_count = 0
    clock = [0.0, 0.0]

    def lap(name: str) -> None:
        now, used = time.perf_counter(), time.process_time()
        wall[name] += now - clock[0]
        cpu[name] += used - clock[1]
        clock[:] = [now, used]

    statistics = store.Statistics()
    begin = time.perf_counter()
    while pending:
        for account in list(pending):
            await statistics.refresh(conn)  # outside the laps, as the workers do after a batch
            clock[:] = [time.perf_counter(), time.process_time()]
            checkpoint, events = await store.read_batch(conn, account, limit=BATCH)
            lap("read")
            if not events:
                pending.remove(account)
                continue
            wanted = fold.needs(events)
            lap("needs")
            state = await store.load(conn, account, wanted)
            lap("load")
            fold.fold(state, events)
            lap("fold")
            if await store.commit_batch(conn, state, checkpoint, events[-1].id) is None:
                raise RuntimeError(f"the checkpoint of {account} moved under the benchmark")
            lap("commit")
            events_count += len(events)
            if len(events) < BATCH:
                pending.remove(account)
    return {"seconds": time.perf_counter() - begin, "events": events_count, "wall": wall, "cpu": cpu}


async def worker_run(url: str, heads: dict[str, int], workers: int = 1) -> dict[str, Any]:
    """The real workers (in this process, sharing a pool, as in the daemon), from their start until every
    checkpoint equals its account's last event id. With several, they rebalance every 0.2 s instead of 5 s, so that
    the accounts the first one took before the others were up are divided at once."""
    rebalance = ProjectorSettings().rebalance_interval_seconds if workers == 1 else 0.2
    settings = ProjectorSettings(batch_size=BATCH, rebalance_interval_seconds=rebalance)
    pool = await create_pool(url, max_size=workers + 1)
    watcher = await connect(url)
    stop = asyncio.Event()
    running = [ProjectorWorker(url, pool, settings=settings, stop=stop, name=f"bench-{n}") for n in range(workers)]
    try:
        start = time.perf_counter()
        task = asyncio.gather(*(worker.run() for worker in running))
        deadline = time.monotonic() + 900
        while True:
            done = await watcher.fetch(
                "SELECT account, position FROM projector_checkpoints WHERE name = $1", CHECKPOINT
            )
            if sum(r["position"] == heads.get(r["account"]) for r in done) == len(heads):
                break
            if task.done():
                task.result()
                raise SystemExit("the projector worker stopped before it caught up")
            if time.monotonic() > deadline:
                raise SystemExit("the projector worker did not catch up within 900 s")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - start
        held = [len(worker.held) for worker in running]
        stop.set()
        await task
    finally:
        await watcher.close()
        await pool.close()
    return {"seconds": seconds, "accounts_per_worker": held}


async def throughput(url: str, total: int) -> dict[str, Any]:
    built = await build_log(url, total)
    accounts = sorted(built["heads"])
    conn = await connect(url)
    try:
        await reset(conn)
        base = await read_parse_and_fold(conn, accounts)
        await reset(conn)
        applied = await apply_loop(conn, accounts)
        await reset(conn)
        split = await split_loop(conn, accounts)
        await reset(conn)
        worker = await worker_run(url, built["heads"])
        await reset(conn)
        two = await worker_run(url, built["heads"], workers=2)
    finally:
        await conn.close()
    n: int = built["events"]
    if applied["events"] != n or split["events"] != n or base["events"] != n:
        raise SystemExit(f"{n} events in the log, but {applied['events']} applied, {split['events']} in the split "
                         f"and {base['events']} read")  # fmt: skip

    def rate(seconds: float) -> int:
        return round(n / seconds)

    wall, cpu = split["wall"], split["cpu"]
    split_total = sum(wall.values())
    return {
        "events": n,
        "accounts": len(accounts),
        "mix": built["kinds"],
        "venues": built["venues"],
        "apply_batch_events_per_s": rate(applied["seconds"]),
        "worker_events_per_s": rate(worker["seconds"]),
        "two_workers_events_per_s": rate(two["seconds"]),
        "two_workers_accounts": two["accounts_per_worker"],
        "rows_written": applied["rows"],
        "batches": applied["batches"],
        "read_parse_events_per_s": rate(base["read"] + base["parse"]),
        "read_events_per_s": rate(base["read"]),
        "fold_events_per_s": rate(base["fold"]),
        "append_events_per_s": built["append_events_per_s"],
        "raw_copy_events_per_s": built["raw_copy_events_per_s"],
        "split_events_per_s": rate(split["seconds"]),
        "split_us_per_event": {s: round(wall[s] / n * 1e6, 2) for s in STEPS},
        "split_cpu_us_per_event": {s: round(cpu[s] / n * 1e6, 2) for s in STEPS},
        "split_share": {s: round(wall[s] / split_total, 3) for s in STEPS},
    }


# ------------------------------------------------------------------------------------------ latency


def _settings(venue: Venue, account: str, port: int, credential: str, *, separate: bool) -> Settings:
    if venue == "extended":
        ws, rest = f"ws://127.0.0.1:{port}/stream.extended.exchange/v1/account", f"http://127.0.0.1:{port}/api/v1"
    else:
        ws, rest = f"ws://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port}/v1"
    accounts = (AccountSettings(name=account, venue=venue, api_key_env="BENCH_KEY", ws_url=ws, rest_url=rest),)
    projector = {"workers": 1, "separate_process": separate}
    settings = Settings(accounts=accounts, ingest={"metrics_port": 0}, projector=projector)  # type: ignore[arg-type]
    return resolve_secrets(settings, origin="bench", environ={"BENCH_KEY": credential})


async def _stream_events(url: str, account: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE account = $1 AND source = 'stream'", account))
    finally:
        await conn.close()


async def _round_trips(url: str, seconds: float) -> list[float]:
    """``SELECT 1`` round trips (ms, sorted) from this process, 20 per second for ``seconds``: what one statement
    of a projector transaction costs at the least, on this machine, under this run's load."""
    conn = await asyncpg.connect(url)
    times = []
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            start = time.perf_counter()
            await conn.fetchval("SELECT 1")
            times.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return sorted(times)


def _recording(commits: list[tuple[int, float, float]], statements: list[list[None]]) -> Any:
    """``store.apply_batch``, noting per transaction that applied events its last event id, when the call began and
    when it had committed (``time.time()``, the clock ``received_at`` is taken from), and the statements it sent
    (BEGIN to COMMIT; asyncpg calls the query logger soon after each statement, so they are counted after the run).

    Only a ``None`` per statement is kept: keeping the logged queries (each with the batch's arguments) grew the
    heap by the whole run's batches, and the collector's full passes over it showed up as 40-150 ms stalls every
    few seconds in the latency being measured."""
    original = store.apply_batch

    async def recording(conn: asyncpg.Connection, batch_account: str, **options: Any) -> store.BatchResult:
        sent: list[None] = []

        def note(_query: object) -> None:  # the query's record (and its arguments) is not kept: see the docstring
            sent.append(None)

        conn.add_query_logger(note)
        began = time.time()
        try:
            result = await original(conn, batch_account, **options)
        finally:
            conn.remove_query_logger(note)
        if result.events:  # the transaction has committed: its rows are visible from now on
            commits.append((result.position, began, time.time()))
            statements.append(sent)
        return result

    return recording


COMMITS_FILE = "SK_BENCH_COMMITS"
"""The variable naming the file :func:`projector_child` writes its commits to."""


def projector_child() -> int:
    """The daemon's projector process (:func:`statekeeper.ingest.projector_process.main`) with ``store.apply_batch``
    wrapped: a line per committed batch (its last event id, began, committed) to the file ``$SK_BENCH_COMMITS``
    names, and at the end the statements each batch sent."""
    commits: list[tuple[int, float, float]] = []
    statements: list[list[None]] = []
    recording = _recording(commits, statements)
    with open(os.environ[COMMITS_FILE], "w", encoding="utf-8") as out:

        async def writing(conn: asyncpg.Connection, batch_account: str, **options: Any) -> store.BatchResult:
            result: store.BatchResult = await recording(conn, batch_account, **options)
            if result.events:
                out.write(" ".join(map(str, commits[-1])) + "\n")
            return result

        with patch.object(store, "apply_batch", writing):
            code = projector_process.main()
        out.write(json.dumps([len(sent) for sent in statements]) + "\n")
    return code


def _read_commits(path: str) -> tuple[list[tuple[int, float, float]], list[list[None]]]:
    """What :func:`projector_child` wrote."""
    with open(path, encoding="utf-8") as lines:
        *batches, counts = lines.read().splitlines() or [""]
    if not counts.startswith("["):
        raise SystemExit(f"the projector process ended without writing its statement counts to {path}")
    commits = [(int(p), float(b), float(c)) for p, b, c in (line.split() for line in batches)]
    return commits, [[None] * count for count in json.loads(counts)]


async def _applied(conn: asyncpg.Connection, account: str) -> int:
    """The least log position the account's projections have applied (0: none yet)."""
    applied = await conn.fetchval("SELECT min(position) FROM projector_checkpoints WHERE account = $1", account)
    return int(applied or 0)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    await process.wait()


async def latency(url: str, venue: Venue, *, seconds: float, seed: int = 7, separate: bool = True) -> dict[str, Any]:
    """The daemon against a simulated venue in another process at ~1,000 frames/s; per state event, arrival to
    the commit of the projector transaction that applied it. ``separate``: the projector workers in the daemon's
    projector process (``[projector] separate_process``, the default; the process runs :func:`projector_child`),
    else in the daemon's own."""
    account = f"live-{venue}"
    per_step = len(record_session(venue, seed=seed, steps=2_000, account=account)) / 2_000
    steps_per_s = FRAMES_PER_SECOND / per_step
    port = _free_port()
    simulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "statekeeper", "simulate", "--venue", venue, "--seed", str(seed), "--accounts", account,
        "--port", str(port), "--rate", f"{steps_per_s:.2f}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    commits: list[tuple[int, float, float]] = []
    statements: list[list[None]] = []
    commits_file = tempfile.NamedTemporaryFile(prefix="sk-bench-commits-", delete=False)  # noqa: SIM115
    commits_file.close()
    try:
        await _wait_port(port)
        settings = _settings(venue, account, port, _credential(venue, seed, account), separate=separate)
        daemon = Daemon(settings, url)
        with (
            patch.object(store, "apply_batch", _recording(commits, statements)),
            patch.object(ProjectorProcess, "command", (sys.executable, "-m", "bench.projector", "--projector-child")),
            patch.dict(os.environ, {COMMITS_FILE: commits_file.name}),
        ):
            task = asyncio.create_task(daemon.run())
            deadline = time.monotonic() + 60
            while await _stream_events(url, account) == 0:
                if task.done():
                    task.result()
                if time.monotonic() > deadline:
                    raise SystemExit(f"no {venue} stream event stored within 60 s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(WARMUP_SECONDS)
            start = datetime.now(UTC)
            round_trips = await _round_trips(url, seconds)
            end = datetime.now(UTC)
            conn = await asyncpg.connect(url)
            try:
                last = await conn.fetchval("SELECT max(id) FROM events WHERE account = $1 AND received_at <= $2",
                                           account, end)  # fmt: skip
                deadline = time.monotonic() + 60
                while await _applied(conn, account) < last:
                    if time.monotonic() > deadline:
                        raise SystemExit("the projector did not catch up within 60 s of the window's end")
                    await asyncio.sleep(0.05)
                rows = await conn.fetch(
                    "SELECT id, kind, received_at, appended_at FROM events "
                    "WHERE account = $1 AND source = 'stream' AND received_at BETWEEN $2 AND $3 ORDER BY id",
                    account, start, end,
                )  # fmt: skip
            finally:
                await conn.close()
            daemon.stop.set()
            await task  # the projector process has ended too: its file is complete
        if separate:
            commits, statements = _read_commits(commits_file.name)
    finally:
        os.unlink(commits_file.name)
        await _stop(simulator)
    frames_per_s = len(rows) / (end - start).total_seconds()
    positions = [p for p, _, _ in commits]
    visible, ingest, projector, waiting, applying = [], [], [], [], []
    for r in rows:
        if r["kind"] not in PROJECTED_KINDS:
            continue
        _, began, committed = commits[bisect.bisect_left(positions, r["id"])]
        received, appended = r["received_at"].timestamp(), r["appended_at"].timestamp()
        visible.append((committed - received) * 1000)
        ingest.append((appended - received) * 1000)
        projector.append((committed - appended) * 1000)
        waiting.append((began - appended) * 1000)
        applying.append((committed - began) * 1000)
    if not visible:
        raise SystemExit(f"no {venue} state event was received during the window")
    for values in (visible, ingest, projector, waiting, applying):
        values.sort()
    batches = [i for i, c in enumerate(commits) if rows[0]["id"] <= c[0] <= rows[-1]["id"]]
    batch_ms = sorted((commits[i][2] - commits[i][1]) * 1000 for i in batches)
    sent = sorted(len(statements[i]) for i in batches)

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50_ms": round(pct(values, 0.5), 2), "p99_ms": round(pct(values, 0.99), 2),
                "max_ms": round(values[-1], 2), "mean_ms": round(statistics.fmean(values), 2)}  # fmt: skip

    return {
        "venue": venue,
        "topology": TOPOLOGIES[separate],
        "seconds": seconds,
        "steps_per_s": round(steps_per_s, 1),
        "frames_per_s": round(frames_per_s),
        "state_events": len(visible),
        "projector_batches": len(batches),
        "events_per_batch": round(len(rows) / max(1, len(batches)), 1),
        "batch_ms": summary(batch_ms),
        "round_trip_ms": summary(round_trips),
        "statements_per_batch": {"p50": pct(sent, 0.5), "max": sent[-1]},
        "visible": summary(visible),
        "ingest": summary(ingest),
        "projector_share": summary(projector),
        "waiting": summary(waiting),
        "applying": summary(applying),
    }


# ------------------------------------------------------------------------------------------ report


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def report(t: dict[str, Any], lat: list[dict[str, Any]]) -> dict[str, Any]:
    n = t["events"]
    venues = ", ".join(f"{venue} {count:,}" for venue, count in t["venues"].items())
    print(f"throughput: {n:,} events of {t['accounts']} accounts ({venues}), batches of {BATCH:,}")
    print("  mix: " + ", ".join(f"{kind} {count:,} ({count / n:.0%})" for kind, count in t["mix"].items()))
    print(f"  {t['rows_written']:,} rows written or removed in {t['batches']:,} batches "
          f"({t['rows_written'] / n:.2f} per event)")  # fmt: skip
    raw = t["raw_copy_events_per_s"]
    lines = [
        ("apply_batch loop (headline)", t["apply_batch_events_per_s"]),
        ("ProjectorWorker, 1 worker", t["worker_events_per_s"]),
        (
            f"ProjectorWorker, 2 workers in one process (accounts {'+'.join(map(str, t['two_workers_accounts']))})",
            t["two_workers_events_per_s"],
        ),
        ("steps of apply_batch run by the bench (the split)", t["split_events_per_s"]),
        ("baseline (a): read + parse ceiling (READ_EVENTS + parse_events)", t["read_parse_events_per_s"]),
        ("  of which the read alone", t["read_events_per_s"]),
        ("baseline (b): pure fold alone, in memory", t["fold_events_per_s"]),
        ("baseline (c): append API, 1,000 per call (the set-up)", t["append_events_per_s"]),
        ("baseline (c): raw COPY into a copy of events, 10,000 per tx", raw),
    ]
    for label, value in lines:
        print(f"  {label:<66} {value:>9,} events/s  {value / raw:5.2f}x raw COPY")
    print("  split of apply_batch, per event: wall time, share, of which this process's CPU (the rest is waiting "
          "on the server):")  # fmt: skip
    for step, us in t["split_us_per_event"].items():
        used = t["split_cpu_us_per_event"][step]
        print(f"    {step:<22} {us:>7.2f} us  {t['split_share'][step]:6.1%}   cpu {used:>6.2f} us")
    for one in lat:
        v, i, p = one["visible"], one["ingest"], one["projector_share"]
        print(f"latency, {one['venue']}, {one['topology']}: {one['frames_per_s']:,} frames/s achieved "
              f"({one['steps_per_s']} steps/s), "
              f"{one['state_events']:,} state events in {one['seconds']:g} s, "
              f"{one['events_per_batch']} events per projector batch")  # fmt: skip
        print(f"  frame received -> row visible   p50 {v['p50_ms']:>6} ms   p99 {v['p99_ms']:>6} ms   "
              f"max {v['max_ms']:>7} ms")  # fmt: skip
        print(f"  baseline: ingest only (-> appended_at)   p50 {i['p50_ms']:>6} ms   p99 {i['p99_ms']:>6} ms   "
              f"max {i['max_ms']:>7} ms")  # fmt: skip
        print(f"  projector's share (appended_at -> commit) p50 {p['p50_ms']:>6} ms   p99 {p['p99_ms']:>6} ms")
        w, a, b = one["waiting"], one["applying"], one["batch_ms"]
        print(f"    of which appended_at -> its batch begins  p50 {w['p50_ms']:>6} ms   p99 {w['p99_ms']:>6} ms "
              "(the append's own transaction, NOTIFY, the wake-up, an earlier batch still running)")  # fmt: skip
        print(f"    of which its batch (apply_batch call)      p50 {a['p50_ms']:>6} ms   p99 {a['p99_ms']:>6} ms; "
              f"per batch p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, "
              f"{one['statements_per_batch']['p50']} statements (BEGIN to COMMIT, median)")  # fmt: skip
        r = one["round_trip_ms"]
        print(f"  baseline: one SELECT 1 round trip from this process during the window  p50 {r['p50_ms']} ms   "
              f"p99 {r['p99_ms']} ms")  # fmt: skip
    best = t["apply_batch_events_per_s"]
    head = lat[0]["visible"]
    rows: list[tuple[str, str, bool]] = [
        (f">= {TARGET_EVENTS_PER_S:,} events/s", f"{best:,} (apply_batch), {t['worker_events_per_s']:,} (worker), "
         f"{t['two_workers_events_per_s']:,} (2 workers)", min(best, t["worker_events_per_s"]) >= TARGET_EVENTS_PER_S),
    ]  # fmt: skip
    for one in lat:
        v = one["visible"]
        venue = f"{one['venue']}, {one['topology']}"
        rows.append((f"p50 <= {TARGET_P50_MS:g} ms ({venue})", f"{v['p50_ms']} ms", v["p50_ms"] <= TARGET_P50_MS))
        rows.append((f"p99 <= {TARGET_P99_MS:g} ms ({venue})", f"{v['p99_ms']} ms", v["p99_ms"] <= TARGET_P99_MS))
    print(f"{'target':<42} {'result':<62} verdict")
    for target, result, met in rows:
        print(f"{target:<42} {result:<62} {_verdict(met)}")
    return {
        "throughput": t,
        "latency": lat,
        "targets": {target: met for target, _, met in rows},
        "headline": {"events_per_s": best, "p50_ms": head["p50_ms"], "p99_ms": head["p99_ms"]},
    }


async def run(quick: bool) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    async with cluster() as pg:
        t = await throughput(await pg.database(), 20_000 if quick else 200_000)
        lat = [
            await latency(await pg.database(), venue, seconds=5 if quick else 30, separate=separate)
            for separate in (True, False)
            for venue in VENUES
        ]
    load_after = os.getloadavg()[0]
    # Other processes share the 2 cores: the load average says how much of the machine this run had.
    print(f"load average (1 min) {load_before:.2f} at the start, {load_after:.2f} at the end")
    return {**report(t, lat), "load_average": [round(load_before, 2), round(load_after, 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works")
    parser.add_argument("--no-record", action="store_true", help="print the figures without writing results.json")
    parser.add_argument("--projector-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.projector_child:
        sys.exit(projector_child())
    figures = asyncio.run(run(args.quick))
    record("projector", figures, write=not args.no_record and not args.quick)


if __name__ == "__main__":
    os.environ.setdefault("STATEKEEPER_LOG_LEVEL", "WARNING")
    main()
