"""Append throughput: the public append API beside the naive baseline and the raw COPY ceiling, same run.

Durable (synchronous_commit on) and idempotent appends of ~400-byte events (normalized payload + raw frame):

* naive            one INSERT ... ON CONFLICT DO NOTHING per event, each its own transaction (the baseline)
* executemany      INSERT ... VALUES ON CONFLICT DO NOTHING via executemany, 1,000 per transaction
* unnest           INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING, 1,000 per transaction
* copy_staging     COPY into a temporary table, then INSERT ... SELECT ON CONFLICT, 1,000 per transaction
* api              PostgresEventLog.append, 1,000 per call (lock, probe keys, COPY, read back positions),
                   encoding (canonical JSON + SHA-256) included
* api_preencoded   the same with events encoded beforehand: the database's share of the API's time
* api_pipelined    the API as the daemon uses it: one task encodes batches (encode_events) while another appends
                   the previous one, so encoding overlaps the database's work; 1,000 per call
* api_10k          the API with 10,000 per call, like for like with raw_copy
* raw_copy         COPY of the same rows, 10,000 per transaction, no idempotency (the ceiling)

executemany, unnest and copy_staging are the alternatives the API's design was chosen against.

Each strategy writes into its own fresh copy of a migrated database. Run: ``python -m bench.append``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import asyncpg
import orjson

from bench.common import cluster, record, server_setting, timed
from statekeeper.database import create_pool
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import EncodedEvent, Event, Fill, FillBody, Side, Source, encode_event, encode_events

COLUMNS = (
    "account", "venue", "session", "seq", "event_key", "kind", "snapshot", "source",
    "venue_time", "received_at", "payload", "raw", "content_hash",
)  # fmt: skip
SINGLE_INSERT = f"""
INSERT INTO events ({", ".join(COLUMNS)})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13)
ON CONFLICT DO NOTHING
"""
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging_events (
    account text, venue text, session uuid, seq int8, event_key text, kind text, snapshot bool, source text,
    venue_time timestamptz, received_at timestamptz, payload text, raw text, content_hash bytea,
    ord bigserial
) ON COMMIT DELETE ROWS
"""
UNNEST = f"""
INSERT INTO events ({", ".join(COLUMNS)})
SELECT account, venue, session, seq, event_key, kind, snapshot, source, venue_time, received_at,
       payload::jsonb, raw, content_hash
FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::text[], $7::bool[], $8::text[],
            $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::bytea[])
     WITH ORDINALITY AS batch({", ".join(COLUMNS)}, ord)
ORDER BY ord
ON CONFLICT DO NOTHING
RETURNING id, account, event_key
"""
FROM_STAGING = f"""
INSERT INTO events ({", ".join(COLUMNS)})
SELECT account, venue, session, seq, event_key, kind, snapshot, source, venue_time, received_at,
       payload::jsonb, raw, content_hash
FROM staging_events ORDER BY ord
ON CONFLICT DO NOTHING
RETURNING id, account, event_key
"""


def make_events(count: int, *, accounts: int = 4) -> list[Event]:
    """Fills as an Extended account stream sends them: one TRADE frame per event, numbered per session."""
    sessions = [uuid4() for _ in range(accounts)]
    start = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    events = []
    for i in range(count):
        at = start + timedelta(milliseconds=i)
        fill = Fill(
            fill_id=str(1784963886257016832 + i),
            order_id=str(1791181340771614723 + i // 3),
            market="BTC-USD",
            side=Side.BUY if i % 2 else Side.SELL,
            price=Decimal("58853.4"),
            qty=Decimal("0.09"),
            fee=Decimal("1.0593"),
            is_taker=bool(i % 3),
            created_at=at,
        )
        raw = orjson.dumps({"type": "TRADE", "data": {"trades": [{
            "id": int(fill.fill_id), "orderId": int(fill.order_id or 0), "side": fill.side.value,
            "price": str(fill.price), "qty": str(fill.qty), "fee": str(fill.fee),
            "createdTime": int(at.timestamp() * 1000)}]},
            "ts": int(at.timestamp() * 1000), "seq": i // accounts + 1}).decode()  # fmt: skip
        events.append(
            Event(
                account=f"bench-{i % accounts}",
                venue="extended",
                source=Source.STREAM,
                body=FillBody(fills=(fill,)),
                venue_time=at,
                received_at=at + timedelta(milliseconds=2),
                session=sessions[i % accounts],
                seq=i // accounts + 1,
                raw=raw,
            )
        )
    return events


def as_tuple(row: EncodedEvent) -> tuple[Any, ...]:
    return (row.account, row.venue, row.session, row.seq, row.key, row.kind, row.snapshot, row.source,
            row.venue_time, row.received_at, row.payload, row.raw, row.content_hash)  # fmt: skip


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def naive(url: str, rows: Sequence[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for row in rows:
            await conn.execute(SINGLE_INSERT, *row)
    finally:
        await conn.close()


async def executemany(url: str, rows: Sequence[tuple[Any, ...]], size: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        for batch in batches(rows, size):
            async with conn.transaction():
                await conn.executemany(SINGLE_INSERT, batch)
    finally:
        await conn.close()


async def unnest(url: str, rows: Sequence[tuple[Any, ...]], size: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        for batch in batches(rows, size):
            async with conn.transaction():
                await conn.fetch(UNNEST, *(list(column) for column in zip(*batch, strict=True)))
    finally:
        await conn.close()


async def copy_staging(url: str, rows: Sequence[tuple[Any, ...]], size: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(STAGING)
        for batch in batches(rows, size):
            async with conn.transaction():
                await conn.copy_records_to_table("staging_events", records=batch, columns=COLUMNS)
                await conn.fetch(FROM_STAGING)
    finally:
        await conn.close()


async def raw_copy(url: str, rows: Sequence[tuple[Any, ...]], size: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        for batch in batches(rows, size):
            async with conn.transaction():
                await conn.copy_records_to_table("events", records=batch, columns=COLUMNS)
    finally:
        await conn.close()


async def api(url: str, events: Sequence[Event | EncodedEvent], size: int) -> None:
    pool = await create_pool(url, max_size=1)
    try:
        log = PostgresEventLog(pool)
        for batch in batches(events, size):
            await log.append(batch)
    finally:
        await pool.close()


async def api_pipelined(url: str, events: Sequence[Event], size: int) -> None:
    """Encode the next batch while the previous one is being appended, as the ingest daemon does."""
    pool = await create_pool(url, max_size=1)
    queue: asyncio.Queue[list[EncodedEvent] | None] = asyncio.Queue(maxsize=2)

    async def produce() -> None:
        # Frames arrive one by one in the daemon: encode in small steps and let the writer run in between.
        for batch in batches(events, size):
            encoded: list[EncodedEvent] = []
            for chunk in batches(batch, 50):
                encoded.extend(encode_events(chunk))
                await asyncio.sleep(0)
            await queue.put(encoded)
        await queue.put(None)

    async def consume(log: PostgresEventLog) -> None:
        while (encoded := await queue.get()) is not None:
            await log.append(encoded)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            group.create_task(consume(PostgresEventLog(pool)))
    finally:
        await pool.close()


async def count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def main(events_count: int, naive_count: int, *, write: bool) -> dict[str, Any]:
    events = make_events(events_count)
    gc.freeze()  # the inputs are a heap no daemon holds: keep the cyclic GC from rescanning it all run long
    started = time.perf_counter()
    encoded = [encode_event(e) for e in events]
    encode_seconds = time.perf_counter() - started
    rows = [as_tuple(r) for r in encoded]
    gc.freeze()
    event_bytes = sum(len(r.payload) + len(r.raw or "") for r in encoded) / len(encoded)

    figures: dict[str, float] = {}
    async with cluster() as pg:
        sync_commit = await server_setting(pg.admin_url, "synchronous_commit")
        fsync = await server_setting(pg.admin_url, "fsync")
        print(f"events: {events_count:,} of {event_bytes:.0f} bytes (payload + raw) on average; "
              f"synchronous_commit={sync_commit}, fsync={fsync}")  # fmt: skip

        runs: list[tuple[str, int, Any]] = [
            ("naive", naive_count, lambda url: naive(url, rows[:naive_count])),
            ("executemany", events_count, lambda url: executemany(url, rows, 1_000)),
            ("unnest", events_count, lambda url: unnest(url, rows, 1_000)),
            ("copy_staging", events_count, lambda url: copy_staging(url, rows, 1_000)),
            ("api", events_count, lambda url: api(url, events, 1_000)),
            ("api_preencoded", events_count, lambda url: api(url, encoded, 1_000)),
            ("api_pipelined", events_count, lambda url: api_pipelined(url, events, 1_000)),
            ("api_10k", events_count, lambda url: api(url, events, 10_000)),
            ("raw_copy", events_count, lambda url: raw_copy(url, rows, 10_000)),
        ]
        for name, n, run in runs:
            url = await pg.database()
            seconds = await timed(lambda run=run, url=url: run(url))  # type: ignore[misc]
            stored = await count(url)
            if stored != n:
                raise SystemExit(f"{name}: {stored} events stored, expected {n}")
            figures[f"{name}_events_per_second"] = round(n / seconds)
            print(f"  {name:<15} {n / seconds:>10,.0f} events/s   ({n:,} events in {seconds:.2f} s)")

        # idempotency under the API: appending everything again stores nothing new
        url = await pg.database()
        await api(url, encoded[:10_000], 1_000)
        again = await timed(lambda: api(url, encoded[:10_000], 1_000))
        assert await count(url) == min(10_000, events_count)
        figures["api_duplicates_per_second"] = round(min(10_000, events_count) / again)

    api_eps = figures["api_events_per_second"]
    pipelined = figures["api_pipelined_events_per_second"]
    ratios = {
        "api_vs_naive": round(api_eps / figures["naive_events_per_second"], 1),
        "api_vs_raw_copy": round(api_eps / figures["raw_copy_events_per_second"], 2),
        "api_vs_executemany": round(api_eps / figures["executemany_events_per_second"], 2),
        "api_pipelined_vs_naive": round(pipelined / figures["naive_events_per_second"], 1),
        "api_pipelined_vs_raw_copy": round(pipelined / figures["raw_copy_events_per_second"], 2),
        "api_10k_vs_raw_copy": round(figures["api_10k_events_per_second"] / figures["raw_copy_events_per_second"], 2),
        "api_preencoded_vs_raw_copy": round(
            figures["api_preencoded_events_per_second"] / figures["raw_copy_events_per_second"], 2
        ),
    }
    encode_eps = round(events_count / encode_seconds)
    print(f"  {'encode only':<15} {encode_eps:>10,.0f} events/s   (canonical JSON + SHA-256, no database)")
    print(f"  {'duplicates':<15} {figures['api_duplicates_per_second']:>10,.0f} events/s   (re-appending, API)")
    print(f"api = {ratios['api_vs_naive']}x naive, {ratios['api_vs_raw_copy']}x raw COPY, "
          f"{ratios['api_vs_executemany']}x executemany; api_10k = {ratios['api_10k_vs_raw_copy']}x raw COPY; "
          f"api_preencoded = {ratios['api_preencoded_vs_raw_copy']}x raw COPY")  # fmt: skip
    print(f"api_pipelined = {ratios['api_pipelined_vs_naive']}x naive, "
          f"{ratios['api_pipelined_vs_raw_copy']}x raw COPY")  # fmt: skip
    best = max(api_eps, pipelined)
    targets = {
        "api >= 45,000 events/s": best >= 45_000,
        "api >= 15x naive": best / figures["naive_events_per_second"] >= 15,
        "api >= 0.4x raw COPY": best / figures["raw_copy_events_per_second"] >= 0.4,
    }
    for target, met in targets.items():
        print(f"  target {target}: {'met' if met else 'MISSED'}")
    return record(
        "append",
        {
            "events": events_count,
            "naive_events": naive_count,
            "event_bytes": round(event_bytes),
            "synchronous_commit": sync_commit,
            "encode_events_per_second": encode_eps,
            **figures,
            **ratios,
            "targets_met": all(targets.values()),
        },
        write=write,
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events per strategy (default 200,000)")
    parser.add_argument("--naive-events", type=int, default=5_000, help="events for the naive baseline")
    parser.add_argument("--quick", action="store_true", help="a small run that proves the benchmark works")
    args = parser.parse_args()
    if args.quick:
        args.events, args.naive_events = 3_000, 200
    asyncio.run(main(args.events, args.naive_events, write=not args.quick))


if __name__ == "__main__":
    cli()
