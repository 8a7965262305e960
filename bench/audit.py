"""Replay from the database: events folded per second, and peak memory as the log grows.

``python -m bench.audit [--quick] [--no-record]`` (``bench/replay.py`` is the ingest benchmark's load generator)

The log: recorded simulator frames of one Extended and one Paradex account (their realistic mix of orders,
positions, balances, fills, account figures, busts), parsed by the venues' parsers and appended with
``PostgresEventLog.append`` (hash chain included), 1,000,000 events in all (20,000 with ``--quick``), the two
accounts interleaved batch by batch; then vacuumed and analyzed.

Timed, each in a fresh process (so that its peak resident memory, ``VmHWM``, is the replay's own):

* ``replay``: :func:`statekeeper.audit.replay.run_replay` of both accounts up to the position of the 100,000th
  event, then up to the last (the 1,000,000th), rows and digest computed (every row's digest line read), to a
  renderer that writes nothing, with ``--jobs`` one per core (each account in a worker process, as ``statekeeper
  replay`` does by default; forced for the 100,000 too, so that both runs have the same processes): the headline,
  events folded per second, and the peak memory of each: this process's own plus, for each worker, the largest
  worker's peak (``ru_maxrss`` of the children), as if all peaked at once;
* ``json``: the same replay of 1,000,000 written as ``statekeeper replay --format json`` writes it, to
  ``/dev/null``: what an audit's output costs on top, digest checked equal.

Baselines in the same run: (o) the same replay of 1,000,000 in one process (``--jobs 1``), digest checked equal;
(a) the read alone: :func:`statekeeper.audit.reader.pages` over the whole log, events
decoded, nothing folded; (b) the generic reader: ``PostgresEventLog.read`` 10,000 at a time and
``FoldEvent.of`` (what the projector benchmark measured at ~45,000/s); (c) the pure folds in memory
(``fold.fold``) over the first 100,000 events of the log, already decoded.

Targets (issue 7): >= 100,000 events/s; peak memory at 1,000,000 events <= 1.5 x that at 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import cluster, record
from bench.discard import Discard
from bench.projector import Venue, chunks, events_of, frames_of
from statekeeper.audit.parallel import default_jobs
from statekeeper.audit.reader import SERVER_SETTINGS, Bound, pages
from statekeeper.audit.render import JsonRenderer, Renderer
from statekeeper.audit.replay import run_replay
from statekeeper.database import connect, create_pool
from statekeeper.eventlog import PostgresEventLog
from statekeeper.projections.fold import AccountState, FoldEvent, fold

TARGET_EVENTS_PER_S = 100_000
TARGET_MEMORY_RATIO = 1.5
ACCOUNTS: tuple[tuple[Venue, str, int], ...] = (("extended", "ext-1", 1), ("paradex", "pdx-1", 1))
APPEND_BATCH = 1_000


async def build_log(url: str, total: int) -> dict[str, Any]:
    per_account = total // len(ACCOUNTS)
    streams = [events_of(venue, account, frames_of(venue, account, seed, per_account))
               for venue, account, seed in ACCOUNTS]  # fmt: skip
    pool = await create_pool(url, max_size=2)
    log = PostgresEventLog(pool)
    start = time.perf_counter()
    try:
        for batches in zip(*(list(chunks(s, APPEND_BATCH)) for s in streams), strict=False):
            for batch in batches:
                await log.append(batch)
        seconds = time.perf_counter() - start
        conn = await connect(url)
        try:
            await conn.execute("VACUUM (ANALYZE) events")
            mix = await conn.fetch("SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY n DESC")
        finally:
            await conn.close()
    finally:
        await pool.close()
    return {"append_events_per_s": round(total / seconds), "kinds": {r["kind"]: r["n"] for r in mix}}


# --------------------------------------------------------------------------------------- child processes


async def child_replay(url: str, position: int, jobs: int, renderer: Renderer | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    run = await run_replay(url, renderer or Discard(), position=position, jobs=jobs, parallel_from=0)
    seconds = time.perf_counter() - start
    workers = min(jobs, len(run.digests)) if jobs > 1 else 0
    # Each worker's own peak is at most the largest's (ru_maxrss of the waited-for children): counted that many
    # times, as if all peaked at once, on top of this process's own.
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else 0.0
    return {"events": run.events, "seconds": seconds, "jobs": jobs, "workers": workers,
            "peak_mb": round(peak_mb() + workers * worker_mb, 1), "digest": run.digest}  # fmt: skip


async def child_json(url: str, position: int, jobs: int) -> dict[str, Any]:
    with open(os.devnull, "w", encoding="utf-8") as out:  # noqa: ASYNC230 - /dev/null does not block
        return await child_replay(url, position, jobs, JsonRenderer(out))


def peak_mb() -> float:
    """This process's peak resident memory: ``VmHWM``, which (unlike ``ru_maxrss``, inherited through fork) is
    the high-water mark of this program's own address space, since its exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def child_read(url: str, position: int, _jobs: int) -> dict[str, Any]:
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    events = 0
    try:
        start = time.perf_counter()
        for _, account, _ in ACCOUNTS:
            async for page in pages(conn, account, Bound(position)):
                events += len(page)
        seconds = time.perf_counter() - start
    finally:
        await conn.close()
    return {"events": events, "seconds": seconds}


async def child_generic(url: str, limit: int, _jobs: int) -> dict[str, Any]:
    pool = await create_pool(url, max_size=1)
    log = PostgresEventLog(pool)
    events = 0
    after = 0
    try:
        start = time.perf_counter()
        while events < limit:
            batch = await log.read(after, limit=10_000)
            if not batch:
                break
            _ = [FoldEvent.of(e) for e in batch]
            events += len(batch)
            after = batch[-1].id
        seconds = time.perf_counter() - start
    finally:
        await pool.close()
    return {"events": events, "seconds": seconds}


async def child_fold(url: str, position: int, _jobs: int) -> dict[str, Any]:
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    loaded: dict[str, list[FoldEvent]] = {}
    try:
        for _, account, _ in ACCOUNTS:
            loaded[account] = [e async for page in pages(conn, account, Bound(position)) for e in page]
    finally:
        await conn.close()
    gc.collect()
    start = time.perf_counter()
    for account, events in loaded.items():
        fold(AccountState(account), events)
    seconds = time.perf_counter() - start
    return {"events": sum(len(e) for e in loaded.values()), "seconds": seconds}


CHILDREN = {
    "replay": child_replay,
    "json": child_json,
    "read": child_read,
    "generic": child_generic,
    "fold": child_fold,
}


def in_child(what: str, url: str, argument: int, jobs: int = 1) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.audit", "--child", what, url, str(argument), str(jobs)],
        capture_output=True, text=True, check=False, timeout=3_600,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout}\n{result.stderr}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    figures["events_per_s"] = round(figures["events"] / figures["seconds"])
    return figures


# ----------------------------------------------------------------------------------------------------- main


async def position_of(url: str, nth: int) -> int:
    conn = await connect(url)
    try:
        return int(await conn.fetchval("SELECT id FROM events ORDER BY id OFFSET $1 LIMIT 1", nth - 1))
    finally:
        await conn.close()


async def main(quick: bool, write: bool) -> None:
    total = 20_000 if quick else 1_000_000
    small = total // 10
    async with cluster() as pg:
        url = await pg.database()
        print(f"building a log of {total:,} events ({', '.join(a for _, a, _ in ACCOUNTS)}) ...", flush=True)
        log = await build_log(url, total)
        print(f"  appended at {log['append_events_per_s']:,} events/s; mix {log['kinds']}", flush=True)
        at_small, at_total = await position_of(url, small), await position_of(url, total)
        jobs = default_jobs()
        small_run = in_child("replay", url, at_small, jobs)
        full_run = in_child("replay", url, at_total, jobs)
        serial = in_child("replay", url, at_total, 1)
        as_json = in_child("json", url, at_total, jobs)
        read = in_child("read", url, at_total)
        generic = in_child("generic", url, min(total, 200_000))
        pure = in_child("fold", url, at_small)
    ratio = full_run["peak_mb"] / small_run["peak_mb"]
    print(f"replay, {small_run['events']:>9,} events, --jobs {jobs}: {small_run['events_per_s']:>9,} events/s, "
          f"peak memory {small_run['peak_mb']} MB")  # fmt: skip
    print(f"replay, {full_run['events']:>9,} events, --jobs {jobs}: {full_run['events_per_s']:>9,} events/s, "
          f"peak memory {full_run['peak_mb']} MB ({ratio:.2f}x)")  # fmt: skip
    print(f"baseline replay in one process (--jobs 1), {serial['events']:,} events: {serial['events_per_s']:>9,} "
          f"events/s, peak memory {serial['peak_mb']} MB")  # fmt: skip
    print(f"replay --format json to /dev/null, {as_json['events']:,} events, --jobs {jobs}: "
          f"{as_json['events_per_s']:>9,} events/s")  # fmt: skip
    if not serial["digest"] == as_json["digest"] == full_run["digest"]:
        raise SystemExit("the replays in one process, in workers and to JSON gave different digests")
    print(f"baseline read + decode (replay's reader): {read['events_per_s']:>9,} events/s")
    print(f"baseline generic reader (PostgresEventLog.read + FoldEvent.of): {generic['events_per_s']:>9,} events/s")
    print(f"baseline pure folds in memory: {pure['events_per_s']:>9,} events/s")
    targets = {
        f">= {TARGET_EVENTS_PER_S:,} events/s": full_run["events_per_s"] >= TARGET_EVENTS_PER_S,
        f"peak memory at {total:,} <= {TARGET_MEMORY_RATIO}x that at {small:,}": ratio <= TARGET_MEMORY_RATIO,
    }
    for name, met in targets.items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    record(
        "replay",
        {
            "events": total,
            "replay_small": small_run,
            "replay_full": full_run,
            "replay_full_one_process": serial,
            "replay_full_json": as_json,
            "memory_ratio": round(ratio, 2),
            "read_events_per_s": read["events_per_s"],
            "generic_reader_events_per_s": generic["events_per_s"],
            "pure_fold_events_per_s": pure["events_per_s"],
            "append_events_per_s": log["append_events_per_s"],
            "mix": log["kinds"],
            "targets": targets,
        },
        write=write and not quick,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events: proves the benchmark runs")
    parser.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    parser.add_argument("--child", nargs=4, metavar=("WHAT", "URL", "N", "JOBS"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        what, child_url, number, workers = options.child
        print(json.dumps(asyncio.run(CHILDREN[what](child_url, int(number), int(workers)))))
    else:
        asyncio.run(main(options.quick, not options.no_record))
