"""The ingest daemon, end to end: frame-to-durable latency at a low rate, and throughput flat out.

``python -m bench.ingest [--quick] [--no-record]``

* **latency**: the daemon ingests a simulated Extended account at a low rate (each frame alone); for every stream
  event, the time from its arrival (``received_at``) to the start of the transaction that stored it
  (``appended_at``), read back from the log, p50/p99/max. Baseline in the same run: one
  ``PostgresEventLog.append`` of a single event, timed (the floor a one-event batch cannot beat).
* **throughput**: a simulated venue in another process (``statekeeper simulate --rate inf``) sends as fast as it
  can; the daemon ingests for a fixed time; events stored per second and the mean batch size (batches grow under
  load). Baseline in the same run: the same number of frames parsed and appended by the event log API in batches
  of 1,000 with no daemon, no socket (the daemon's ceiling on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg

from bench.common import cluster, record
from statekeeper.config import AccountSettings, Settings, resolve_secrets
from statekeeper.database import create_pool
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import Event, encode_event
from statekeeper.ingest.daemon import Daemon
from statekeeper.simulator import Simulator, SimulatorConfig
from statekeeper.venues.base import FrameContext
from statekeeper.venues.extended import parse_frame

ACCOUNT = "bench-1"


def _settings(venues: dict[str, tuple[str, str, str]]) -> Settings:
    """Settings for Extended accounts: name -> (ws_url, rest_url, key)."""
    accounts = tuple(
        AccountSettings(name=name, venue="extended", api_key_env=f"BENCH_KEY_{i}", ws_url=ws, rest_url=rest)
        for i, (name, (ws, rest, _)) in enumerate(venues.items())
    )
    settings = Settings(accounts=accounts, ingest={"metrics_port": 0})  # type: ignore[arg-type]
    environ = {f"BENCH_KEY_{i}": key for i, (_, _, key) in enumerate(venues.values())}
    return resolve_secrets(settings, origin="bench", environ=environ)


async def _count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE source = 'stream'"))
    finally:
        await conn.close()


async def _wait_for(url: str, count: int, within: float) -> None:
    deadline = time.monotonic() + within
    while await _count(url) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {count} events stored within {within:g} s")
        await asyncio.sleep(0.1)


async def latency(url: str, *, seconds: float) -> dict[str, Any]:
    async with await Simulator.start(SimulatorConfig(venue="extended", seed=1, accounts=(ACCOUNT,), rate=10,
                                                     warmup_steps=0, record_frames=False)) as sim:  # fmt: skip
        daemon = Daemon(_settings({ACCOUNT: (sim.ws_url, sim.rest_url, sim.credential(ACCOUNT))}), url)
        task = asyncio.create_task(daemon.run())
        await sim.wait_connected(ACCOUNT)
        start = datetime.now(UTC)
        await asyncio.sleep(seconds)
        daemon.stop.set()
        await task
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM appended_at - received_at) AS lag FROM events "
            "WHERE account = $1 AND source = 'stream' AND seq IS NOT NULL AND received_at > $2",
            ACCOUNT, start,
        )  # fmt: skip
    finally:
        await conn.close()
    lags = sorted(float(r["lag"]) * 1000 for r in rows)
    if not lags:
        raise SystemExit("no stream events were stored during the latency run")

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))]

    return {"frames": len(lags), "p50_ms": round(pct(0.5), 2), "p99_ms": round(pct(0.99), 2),
            "max_ms": round(lags[-1], 2), "mean_ms": round(statistics.fmean(lags), 2)}  # fmt: skip


async def single_append_ms(url: str, rounds: int) -> float:
    pool = await create_pool(url, max_size=2)
    log = PostgresEventLog(pool)
    frame = '{"type":"BALANCE","data":{"balance":{"collateralName":"USD","balance":"1"}},"ts":1767225600000,"seq":1}'
    times = []
    try:
        for _ in range(rounds):
            context = FrameContext(ACCOUNT, "extended", uuid4(), datetime.now(UTC))
            event = parse_frame(frame, context)
            assert isinstance(event, Event), event
            start = time.perf_counter()
            await log.append([event])
            times.append(time.perf_counter() - start)
    finally:
        await pool.close()
    return round(statistics.median(times) * 1000, 2)


async def record_frames(count: int, seed: int) -> tuple[Simulator, list[str]]:
    """A paused simulated venue (for the REST calls of the daemon's resync) and ``count`` frames of its stream."""
    sim = await Simulator.start(SimulatorConfig(venue="extended", seed=seed, accounts=(ACCOUNT,), rate=0,
                                                warmup_steps=0))  # fmt: skip
    from pydantic import SecretStr  # noqa: PLC0415

    from statekeeper.venues.extended import ExtendedAccountStream  # noqa: PLC0415

    async with ExtendedAccountStream(sim.ws_url, SecretStr(sim.credential(ACCOUNT))) as stream:

        async def consume() -> None:
            async for _ in stream:
                pass

        reader = asyncio.create_task(consume())
        deadline = time.monotonic() + 120
        while sum(len(c.sent) for c in sim.frames(ACCOUNT)) < count:
            if time.monotonic() > deadline:
                raise SystemExit("the simulator did not produce the frames within 120 s")
            await sim.step(50)
            # Let the reader keep up (one connection, one contiguous seq): the simulator's queue has no event to
            # wait on, so its size is polled.
            while any(c.queue.qsize() > 1_000 for c in sim.server.connections.get(ACCOUNT, [])):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        reader.cancel()
    connections = sim.frames(ACCOUNT)
    if len(connections) != 1:
        raise SystemExit(f"the recording took {len(connections)} connections; it needs one (a contiguous seq)")
    return sim, connections[0].sent[:count]


async def throughput(url: str, sim: Simulator, frames: list[str], work: Path) -> dict[str, Any]:
    """The daemon ingests ``frames`` sent flat out by a replay process; events stored per second."""
    path = work / "frames.jsonl"
    path.write_text("\n".join(frames))
    port = _free_port()
    replay = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.replay", str(path), str(port))
    try:
        await _wait_port(port)
        ws_url = f"ws://127.0.0.1:{port}/stream.extended.exchange/v1/account"
        daemon = Daemon(_settings({ACCOUNT: (ws_url, sim.rest_url, sim.credential(ACCOUNT))}), url)
        task = asyncio.create_task(daemon.run())
        await _wait_for(url, len(frames), 300)
        batch = daemon.metrics.batch_size.labels(ACCOUNT)
        mean_batch = batch._sum.get() / max(1.0, sum(b.get() for b in batch._buckets))
        daemon.stop.set()
        await task
    finally:
        if replay.returncode is None:
            replay.terminate()
        await replay.wait()
    conn = await asyncpg.connect(url)
    try:  # from the first stream event's transaction to the last one's: the daemon's start-up is left out
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(appended_at) - min(appended_at)) AS spent "
            "FROM events WHERE source = 'stream' AND seq IS NOT NULL"
        )
    finally:
        await conn.close()
    rate = round((row["n"] - 1) / max(float(row["spent"]), 1e-6))
    return {"frames": len(frames), "events_per_s": rate, "mean_batch": round(mean_batch, 1)}


async def baseline_throughput(url: str, frames: list[str]) -> int:
    """Parse and append the same frames in batches of 1,000 with the API: no socket, no daemon."""
    pool = await create_pool(url, max_size=2)
    log = PostgresEventLog(pool)
    session = uuid4()
    try:
        start = time.perf_counter()
        for i in range(0, len(frames), 1000):
            context = FrameContext("base-1", "extended", session, datetime.now(UTC))
            events = [e for e in (parse_frame(f, context) for f in frames[i : i + 1000]) if isinstance(e, Event)]
            await log.append([encode_event(e) for e in events])
        return round(len(frames) / (time.perf_counter() - start))
    finally:
        await pool.close()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the simulator did not listen on port {port} within {within:g} s") from None
            await asyncio.sleep(0.1)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def run(quick: bool) -> dict[str, Any]:
    async with cluster() as pg:
        floor = await single_append_ms(await pg.database(), 20 if quick else 200)
        low = await latency(await pg.database(), seconds=2 if quick else 20)
        sim, frames = await record_frames(3_000 if quick else 50_000, seed=2)
        try:
            with tempfile.TemporaryDirectory() as work:
                high = await throughput(await pg.database(), sim, frames, Path(work))
        finally:
            await sim.stop()
        base = await baseline_throughput(await pg.database(), frames)
    print("latency at a low rate (each frame its own batch), arrival to the transaction that stores it:")
    print(f"  p50 {low['p50_ms']} ms   p99 {low['p99_ms']} ms   max {low['max_ms']} ms   over {low['frames']} frames")
    print(f"  baseline: one append of one event takes {floor} ms (median) in this run")
    print(f"throughput flat out: {high['frames']:,} recorded frames replayed by another process as fast as it can:")
    print(f"  daemon     {high['events_per_s']:>8,} events/s   mean batch {high['mean_batch']}")
    print(f"  baseline   {base:>8,} events/s   parse + append API, 1,000 per call, no daemon")
    print(f"  ratio      {high['events_per_s'] / base:.2f}x of the baseline")
    return {"latency": low, "single_append_ms": floor, "throughput": high, "baseline_events_per_s": base,
            "ratio": round(high["events_per_s"] / base, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run that proves the benchmark works")
    parser.add_argument("--no-record", action="store_true", help="print the figures without writing results.json")
    args = parser.parse_args()
    figures = asyncio.run(run(args.quick))
    record("ingest", figures, write=not args.no_record and not args.quick)


if __name__ == "__main__":
    os.environ.setdefault("STATEKEEPER_LOG_LEVEL", "WARNING")
    main()
