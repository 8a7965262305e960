"""The ingest daemon's parts on their own: backoff, sequence checks, ledger marks, the events it makes, the writer
(against a real PostgreSQL, including lost connections) and the account claims between daemons."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from statekeeper import statements
from statekeeper.database import connect
from statekeeper.eventlog import CONNECTION_ERRORS, PostgresEventLog
from statekeeper.events import (
    Balance,
    BalanceBody,
    CloseReason,
    EncodedEvent,
    EventKind,
    FillBust,
    FundingPayment,
    LedgerMark,
    RejectedFrame,
    SequenceProblem,
    Source,
    Transfer,
    Transport,
    encode_event,
)
from statekeeper.ingest import records
from statekeeper.ingest.backoff import Backoff
from statekeeper.ingest.claims import AccountClaims
from statekeeper.ingest.ledgers import Ledger, Ledgers, later
from statekeeper.ingest.metrics import IngestMetrics
from statekeeper.ingest.records import Origin
from statekeeper.ingest.sequence import ContiguousSequence, SequenceFault
from statekeeper.ingest.writer import AccountWriter, SessionClose, SessionOpen, WriterStopped
from statekeeper.venues.base import Item
from tests.factories import T0, fill, fill_event
from tests.ingest_support import wait_until

ACCOUNT = "acc-w"
TERMINATE_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)

# ============================================================================================== backoff


def test_backoff_delays_are_full_jitter_under_a_doubling_ceiling() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rng=random.Random(7))
    twin = random.Random(7)  # the same draws: each delay must be uniform(0, ceiling) of its attempt
    ceilings = []
    for _ in range(9):
        ceiling = backoff.ceiling()
        ceilings.append(ceiling)
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        assert delay == twin.uniform(0.0, ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert backoff.attempt == 9


def test_backoff_delays_spread_over_the_whole_range_and_never_overflow() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, rng=random.Random(3))
    backoff.attempt = 10_000  # far past 2**1023: the ceiling stays the maximum, no OverflowError
    delays = [backoff.next_delay() for _ in range(2000)]
    assert backoff.ceiling() == 10.0
    assert all(0.0 <= d <= 10.0 for d in delays)
    assert min(delays) < 0.5
    assert max(delays) > 9.5  # full jitter: not "ceiling plus a little noise"


def test_backoff_resets_only_after_a_healthy_connection() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, healthy_after=30.0, rng=random.Random(1))
    for _ in range(4):
        backoff.next_delay()
    assert backoff.ceiling() == 16.0

    backoff.connected(100.0)
    assert backoff.disconnected(129.9) is False  # up for less than healthy_after: the count goes on
    assert backoff.attempt == 4
    assert backoff.disconnected(500.0) is False  # no connection in between: nothing to judge
    assert backoff.attempt == 4

    backoff.connected(1000.0)
    assert backoff.disconnected(1030.0) is True  # exactly healthy_after is healthy
    assert backoff.attempt == 0
    assert backoff.ceiling() == 1.0


@pytest.mark.parametrize(("initial", "maximum"), [(2.0, 1.0), (0.0, 1.0), (-1.0, 5.0)])
def test_backoff_refuses_invalid_bounds(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=initial, maximum=maximum)


# ============================================================================================= sequence


def feed(seqs: Sequence[int], first: int = 1) -> tuple[ContiguousSequence, list[SequenceFault]]:
    checker = ContiguousSequence(first=first)
    faults = [fault for seq in seqs if (fault := checker.check(seq)) is not None]
    return checker, faults


def test_in_order_frames_have_no_fault() -> None:
    checker, faults = feed(range(1, 101))
    assert faults == []
    assert checker.fault is None
    assert checker.classify_late() is None
    assert checker.last == 100
    assert checker.expected == 101


def test_a_session_may_start_at_another_seq() -> None:
    checker, faults = feed([5, 6, 7], first=5)
    assert faults == []
    assert checker.last == 7
    _, faults = feed([1], first=5)
    assert faults == [SequenceFault(SequenceProblem.REPEAT, 5, 1)]


def test_a_gap_is_reported_with_expected_and_received() -> None:
    checker, faults = feed([1, 2, 3, 7, 8])
    assert faults == [SequenceFault(SequenceProblem.GAP, expected=4, received=7)]
    assert checker.fault == faults[0]
    assert checker.last == 8
    # 4, 5 and 6 never came: it stays a gap
    assert checker.classify_late() == SequenceFault(SequenceProblem.GAP, 4, 7)


def test_a_repeat_is_reported() -> None:
    checker, faults = feed([1, 2, 3, 2, 4])
    assert faults == [SequenceFault(SequenceProblem.REPEAT, expected=4, received=2)]
    assert checker.classify_late() == faults[0]
    assert checker.last == 4


def test_a_frame_before_its_predecessor_is_a_reorder_once_the_predecessor_arrives() -> None:
    checker, faults = feed([1, 2, 4, 3, 5])
    assert faults == [SequenceFault(SequenceProblem.GAP, 3, 4)]  # at the time, it looks like a gap
    assert checker.classify_late() == SequenceFault(SequenceProblem.REORDER, 3, 4)
    assert checker.last == 5

    # several frames overtaken: a reorder only when every one of them arrived
    partial, _ = feed([1, 5, 3, 2])
    assert partial.classify_late() == SequenceFault(SequenceProblem.GAP, 2, 5)  # 4 is still missing
    partial.check(4)
    assert partial.classify_late() == SequenceFault(SequenceProblem.REORDER, 2, 5)


def test_only_the_first_problem_is_reported() -> None:
    checker, faults = feed([1, 3, 3, 9, 2, 1])
    assert faults == [SequenceFault(SequenceProblem.GAP, 2, 3)]
    assert checker.fault == faults[0]
    assert checker.last == 9


@st.composite
def arrivals(draw: st.DrawFn) -> list[int]:
    """1..n as a stream might deliver it: in order, shuffled, with repeats, with losses, cut short."""
    n = draw(st.integers(0, 25))
    seqs = list(range(1, n + 1))
    if draw(st.booleans()):
        seqs = list(draw(st.permutations(seqs)))
    for _ in range(draw(st.integers(0, 3))):  # repeats
        if seqs:
            at = draw(st.integers(0, len(seqs)))
            seqs.insert(at, draw(st.sampled_from(seqs)))
    for _ in range(draw(st.integers(0, 2))):  # losses
        if seqs:
            del seqs[draw(st.integers(0, len(seqs) - 1))]
    return seqs[: draw(st.integers(0, len(seqs)))]


def model_fault(seqs: list[int]) -> tuple[SequenceFault | None, SequenceFault | None]:
    """What the checker should report (the first fault and its late classification), computed directly."""
    for index, seq in enumerate(seqs):
        expected = index + 1
        if seq == expected:
            continue
        if seq < expected:
            fault = SequenceFault(SequenceProblem.REPEAT, expected, seq)
            return fault, fault
        fault = SequenceFault(SequenceProblem.GAP, expected, seq)
        missing = set(range(expected, seq)) - set(seqs[index + 1 :])
        late = fault if missing else SequenceFault(SequenceProblem.REORDER, expected, seq)
        return fault, late
    return None, None


@given(arrivals() | st.lists(st.integers(1, 15), max_size=20))
@example([]).via("nothing received")
@example([1, 2, 3]).via("a clean prefix")
@example([2, 1]).via("swapped pair: a reorder")
def test_sequence_property(seqs: list[int]) -> None:
    checker, faults = feed(seqs)
    in_line = seqs == list(range(1, len(seqs) + 1))
    assert (faults != []) == (not in_line)
    assert len(faults) <= 1  # the first problem only; the session is resynced after it
    assert checker.last == (max(seqs) if seqs else None)
    expected_fault, expected_late = model_fault(seqs)
    assert checker.fault == expected_fault
    assert checker.classify_late() == expected_late


# ============================================================================================== ledgers


def test_marks_only_move_forward() -> None:
    ledger = Ledger("fill")
    newer = LedgerMark(time=T0 + timedelta(minutes=1), id="5")
    older = LedgerMark(time=T0, id="900")
    ledger.advance(newer)
    ledger.advance(older)
    assert ledger.mark == newer
    ledger.advance(LedgerMark())  # a mark without time is the earliest of all
    assert ledger.mark == newer
    latest = LedgerMark(time=T0 + timedelta(minutes=2), id="1")
    ledger.advance(latest)
    assert ledger.mark == latest


def test_later_compares_numeric_ids_as_numbers_and_others_as_text() -> None:
    nine, ten = LedgerMark(time=T0, id="9"), LedgerMark(time=T0, id="10")
    assert later(nine, ten) == ten  # as text "9" > "10"
    assert later(ten, nine) == ten
    big = LedgerMark(time=T0, id=str(2**70))  # Extended's ids exceed a BIGINT
    assert later(big, LedgerMark(time=T0, id=str(2**70 - 1))) == big
    b, a = LedgerMark(time=T0, id="b"), LedgerMark(time=T0, id="a")
    assert later(a, b) == b
    assert later(b, a) == b
    # the time decides before the id
    early = LedgerMark(time=T0, id="999")
    assert later(early, LedgerMark(time=T0 + timedelta(seconds=1), id="1")).id == "1"
    # no time is the earliest, on either side
    empty = LedgerMark()
    assert later(empty, nine) == nine
    assert later(nine, empty) == nine
    assert later(empty, empty) == empty


def test_note_remembers_ids_and_returns_the_records_mark() -> None:
    ledger = Ledger("fill")
    record = fill("17", at=T0)
    assert not ledger.knows(record)
    assert ledger.note(record) == LedgerMark(time=T0, id="17")
    assert ledger.knows(record)
    assert ledger.knows(fill("17", qty="9"))  # the same venue id: the same item
    assert not ledger.knows(fill("18"))
    assert ledger.mark == LedgerMark()  # noting is not proof that the ledger is complete


def test_every_ledger_keys_its_items_by_their_venue_ids() -> None:
    payment = FundingPayment(payment_id="p-1", market="BTC-USD", amount=Decimal("-0.1"), paid_at=T0)
    transfer = Transfer(transfer_id="t-1", transfer_type="DEPOSIT", status="PENDING", amount=Decimal(5), updated_at=T0)
    bust = FillBust(fill_id="f-3", busted_at=T0)
    for what, record in (("funding", payment), ("transfer", transfer), ("bust", bust)):
        ledger = Ledger(what)
        assert ledger.note(record).time == T0
        assert ledger.knows(record)
    # a transfer that changed status is a new item to store
    transfers = Ledger("transfer")
    transfers.note(transfer)
    assert not transfers.knows(transfer.model_copy(update={"status": "COMPLETED"}))


def test_known_ids_are_bounded_and_keep_the_most_recent() -> None:
    ledger = Ledger("fill", capacity=3)
    for i in range(1, 4):
        ledger.note(fill(str(i)))
    ledger.note(fill("1"))  # seen again: now the most recent
    ledger.note(fill("4"))  # over capacity: the least recent ("2") is forgotten
    assert [ledger.knows(fill(str(i))) for i in range(1, 5)] == [True, False, True, True]
    for i in range(5, 105):
        ledger.note(fill(str(i)))
    assert sum(ledger.knows(fill(str(i))) for i in range(1, 105)) == 3
    assert all(ledger.knows(fill(str(i))) for i in (102, 103, 104))


def test_ledgers_restore_and_advance_only_forward() -> None:
    ledgers = Ledgers()
    assert set(ledgers.marks()) == set(records.LEDGERS)
    assert all(mark == LedgerMark() for mark in ledgers.marks().values())
    recorded = {"fill": LedgerMark(time=T0, id="100"), "funding": LedgerMark(time=T0, id="p-9")}
    ledgers.restore({**recorded, "no-such-ledger": LedgerMark(time=T0, id="1")})  # unknown names are ignored
    assert ledgers.marks()["fill"] == recorded["fill"]
    assert ledgers.marks()["funding"] == recorded["funding"]
    assert ledgers.marks()["transfer"] == LedgerMark()
    assert "no-such-ledger" not in ledgers.marks()

    # an older daemon's marks never move them back; a later proof does move them on
    ledgers.restore({"fill": LedgerMark(time=T0 - timedelta(days=1), id="5000")})
    assert ledgers["fill"].mark == recorded["fill"]
    ledgers.advance({"fill": LedgerMark(time=T0, id="101")})
    assert ledgers["fill"].mark == LedgerMark(time=T0, id="101")


def test_ledgers_learn_the_markets_traded() -> None:
    ledgers = Ledgers()
    ledgers.note_markets([fill("1"), FillBust(fill_id="2", busted_at=T0), object()])
    assert ledgers.markets == {"BTC-USD"}


# ============================================================================================== records

SESSION = UUID("00000000-0000-4000-8000-000000000001")
OTHER_SESSION = UUID("00000000-0000-4000-8000-000000000002")


def origin(session: UUID | None = SESSION) -> Origin:
    return Origin(account="acc-1", venue="paradex", session=session)


def control_events(o: Origin) -> list[Any]:
    fault = SequenceFault(SequenceProblem.GAP, 4, 9)
    marks = {"fill": LedgerMark(time=T0, id="3")}
    return [
        records.session_opened(o, transport=Transport.WEBSOCKET, url="wss://venue", reason="connect"),
        records.session_closed(o, reason=CloseReason.GAP, detail="gap 4..9", last_seq=9, marks=marks),
        records.gap_detected(o, fault),
        records.resync_started(o, reason="gap", previous=OTHER_SESSION),
        records.resync_completed(o, fills=2, funding=1, marks=marks),
    ]


def test_control_events_carry_their_session_and_deterministic_keys() -> None:
    first, again = control_events(origin()), control_events(origin())
    assert [e.key for e in first] == [e.key for e in again]
    assert [e.key for e in first] == [
        f"session:{SESSION}:opened",
        f"session:{SESSION}:closed",
        f"gap:{SESSION}:4:9",
        f"resync:{SESSION}:started",
        f"resync:{SESSION}:completed",
    ]
    assert [e.kind for e in first] == [
        EventKind.SESSION_OPENED,
        EventKind.SESSION_CLOSED,
        EventKind.GAP_DETECTED,
        EventKind.RESYNC_STARTED,
        EventKind.RESYNC_COMPLETED,
    ]
    for event in first:
        assert event.session == SESSION
        assert (event.account, event.venue, event.source) == ("acc-1", "paradex", Source.STREAM)
    other = control_events(origin(OTHER_SESSION))
    assert not {e.key for e in first} & {e.key for e in other}


def test_control_events_refuse_an_origin_without_session() -> None:
    with pytest.raises(ValueError, match="session"):
        records.session_opened(origin(None), transport=Transport.REST_POLL, url=None, reason="fallback")
    with pytest.raises(ValueError, match="session"):
        records.gap_detected(origin(None), SequenceFault(SequenceProblem.REPEAT, 3, 2))


def balance_items(*assets: str, at: datetime | None = None) -> list[Item[Balance]]:
    return [Item(Balance(asset=a, balance=Decimal("10.5"), updated_at=at), f'{{"asset":"{a}"}}') for a in assets]


def test_snapshot_events_are_keyed_per_session_fetch_and_what() -> None:
    fetched = T0 + timedelta(hours=1)
    items = balance_items("USDC", "ETH", at=T0)
    body = BalanceBody(balances=tuple(i.record for i in items))

    def snap(o: Origin, what: str, fetch: int) -> Any:
        return records.snapshot_event(o, body, items, what=what, fetch=fetch, fetched_at=fetched)

    event = snap(origin(), "balances", 1)
    assert event.key == f"rest:{SESSION}:1:balances"
    assert snap(origin(), "balances", 1).key == event.key
    keys = {
        snap(o, what, n).key
        for o in (origin(), origin(OTHER_SESSION))
        for what in ("balances", "positions")
        for n in (1, 2)
    }
    assert len(keys) == 8
    assert event.snapshot is True
    assert event.source is Source.REST
    assert event.session == SESSION
    assert event.venue_time == T0  # the latest updated_at of the items
    assert event.received_at == fetched
    assert event.raw == '[{"asset":"USDC"},{"asset":"ETH"}]'

    empty = records.snapshot_event(origin(), BalanceBody(balances=()), [], what="balances", fetch=3, fetched_at=fetched)
    assert empty.venue_time == fetched  # nothing has a time: the fetch time
    assert empty.raw == "[]"

    with pytest.raises(ValueError, match="session"):
        snap(origin(None), "balances", 1)


def test_ledger_events_are_keyed_by_venue_ids_whatever_the_fetch() -> None:
    a_fill = fill("f:1", at=T0)  # a ':' in a venue id cannot make two keys equal
    first = records.ledger_event(origin(), "fill", Item(a_fill, "{}"), fetched_at=T0 + timedelta(minutes=1))
    again = records.ledger_event(origin(None), "fill", Item(a_fill, "{}"), fetched_at=T0 + timedelta(hours=5))
    assert first.key == again.key == "rest:fill:f%3A1:TRADE"
    assert encode_event(first).content_hash == encode_event(again).content_hash  # a refetch is a duplicate
    assert again.session is None  # a poll between sessions
    assert first.source is Source.REST
    assert first.venue_time == T0
    streamed = fill_event("acc-1", "f:1")
    assert streamed.key != first.key  # the same fill streamed is another event

    payment = FundingPayment(payment_id="p-1", market="BTC-USD", amount=Decimal("-0.1"), paid_at=T0)
    transfer = Transfer(transfer_id="t-1", transfer_type="DEPOSIT", status="PENDING", amount=Decimal(5), updated_at=T0)
    bust = FillBust(fill_id="f:1", busted_at=T0)
    keys = [
        records.ledger_event(origin(), what, Item(record, "{}"), fetched_at=T0).key
        for what, record in (("funding", payment), ("transfer", transfer), ("bust", bust))
    ]
    assert keys == ["rest:funding:p-1", "rest:transfer:t-1:PENDING", "rest:bust:f%3A1"]
    assert all(key.startswith("rest:") for key in keys)
    completed = transfer.model_copy(update={"status": "COMPLETED"})
    assert records.ledger_event(origin(), "transfer", Item(completed, "{}"), fetched_at=T0).key != keys[1]
    with pytest.raises(ValueError, match="unknown ledger"):
        records.ledger_event(origin(), "trades", Item(a_fill, "{}"), fetched_at=T0)


# ======================================================================================== the writer


def encoded(name: str | int, *, account: str = ACCOUNT, qty: str = "0.5") -> EncodedEvent:
    return encode_event(fill_event(account, str(name), qty=qty))


@contextlib.asynccontextmanager
async def running(writer: AccountWriter) -> AsyncIterator[asyncio.Task[None]]:
    """The writer's task; stopped (everything pending stored) or, failing that, cancelled at the end."""
    task = asyncio.create_task(writer.run(), name="writer")
    try:
        yield task
    finally:
        writer.stop()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        failure = None if task.cancelled() else task.exception()  # retrieved even when the test failed
    if failure is not None:
        raise failure  # the writer must not have failed
    if not done:
        raise AssertionError("the writer did not stop within 15 s of stop()")


def sample(metrics: IngestMetrics, name: str, account: str = ACCOUNT) -> float:
    return metrics.registry.get_sample_value(name, {"account": account}) or 0.0


async def stored_keys(pool: asyncpg.Pool, account: str = ACCOUNT) -> list[str]:
    rows = await pool.fetch("SELECT event_key FROM events WHERE account = $1 ORDER BY id", account)
    return [r["event_key"] for r in rows]


async def test_writer_stores_in_submission_order_across_batches(log: PostgresEventLog) -> None:
    names = list(range(400))
    random.Random(5).shuffle(names)  # keys in no sorted order: only the submission order is left
    items = [encoded(n) for n in names]
    writer = AccountWriter(log, account=ACCOUNT, batch_size=16)
    writer.submit_all(items[:100])  # waiting before the writer runs
    async with running(writer):
        for start in range(100, 400, 30):  # and more while it writes
            writer.submit_all(items[start : start + 30])
            await asyncio.sleep(0)
        await asyncio.wait_for(writer.flushed(), 15)
        assert writer.backlog == 0
    stored = await log.read(0, limit=1000)
    assert [e.key for e in stored] == [i.key for i in items]
    positions = [e.id for e in stored]
    assert positions == sorted(positions)


async def test_writer_batches_grow_with_the_load(log: PostgresEventLog) -> None:
    metrics = IngestMetrics()
    writer = AccountWriter(log, account=ACCOUNT, metrics=metrics)
    async with running(writer):
        # at a low rate each item is its own batch, durable at once
        for i in range(3):
            writer.submit(encoded(f"slow-{i}"))
            await asyncio.wait_for(writer.flushed(), 10)
        assert sample(metrics, "statekeeper_append_batch_size_count") == 3
        assert sample(metrics, "statekeeper_append_batch_size_sum") == 3

        # 3000 items at once: taken in batches of up to batch_size (2000), not one transaction each
        writer.submit_all([encoded(i) for i in range(3000)])
        await asyncio.wait_for(writer.flushed(), 20)
    assert sample(metrics, "statekeeper_append_batch_size_sum") == 3003
    assert sample(metrics, "statekeeper_append_batch_size_count") == 3 + 2
    assert sample(metrics, "statekeeper_events_appended_total") == 3003
    # observed through the exposition the daemon serves, too
    from prometheus_client import generate_latest  # noqa: PLC0415 - only this test renders

    text = generate_latest(metrics.registry).decode()
    assert f'statekeeper_append_batch_size_count{{account="{ACCOUNT}"}} 5.0' in text
    assert len(await stored_keys(log.pool)) == 3003


async def test_flushed_returns_only_once_everything_submitted_is_stored(log: PostgresEventLog) -> None:
    writer = AccountWriter(log, account=ACCOUNT, batch_size=50)
    writer.submit_all([encoded(i) for i in range(500)])
    flushed = asyncio.create_task(writer.flushed())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not flushed.done()  # nothing is written before the writer runs
    async with running(writer):
        await asyncio.wait_for(flushed, 15)
        # at the moment flushed() returns, every item is committed (not merely taken from the buffer)
        assert await log.pool.fetchval("SELECT count(*) FROM events WHERE account = $1", ACCOUNT) == 500
        assert writer.backlog == 0
        # and with nothing pending, flushed() returns at once
        await asyncio.wait_for(writer.flushed(), 1)


async def test_duplicates_are_idempotent_and_counted(log: PostgresEventLog) -> None:
    metrics = IngestMetrics()
    await log.append([encoded("already")])
    writer = AccountWriter(log, account=ACCOUNT, metrics=metrics)
    async with running(writer):
        writer.submit_all([encoded("already"), encoded("new"), encoded("new")])
        await asyncio.wait_for(writer.flushed(), 10)
        writer.submit(encoded("new"))  # again, in a later batch
        await asyncio.wait_for(writer.flushed(), 10)
    assert await stored_keys(log.pool) == [encoded("already").key, encoded("new").key]
    assert sample(metrics, "statekeeper_events_appended_total") == 1
    assert sample(metrics, "statekeeper_events_duplicate_total") == 3
    assert sample(metrics, "statekeeper_event_conflicts_total") == 0


async def test_an_event_the_database_refuses_is_set_aside_and_the_rest_stored(log: PostgresEventLog) -> None:
    metrics = IngestMetrics()
    bogus = dataclasses.replace(encoded("bad"), kind="bogus")  # violates the CHECK on events.kind
    frame = RejectedFrame(ACCOUNT, "paradex", Source.STREAM, T0, "not JSON", b"\xff{", session=uuid4(), seq=3)
    batch: list[Any] = [encoded(1), encoded(2), bogus, frame, encoded(3)]
    writer = AccountWriter(log, account=ACCOUNT, metrics=metrics)
    writer.submit_all(batch)  # one batch
    async with running(writer) as task:
        await asyncio.wait_for(writer.flushed(), 10)
        writer.submit(encoded(4))  # the writer carries on
        await asyncio.wait_for(writer.flushed(), 10)
        assert not task.done()
        assert writer.healthy
    assert await stored_keys(log.pool) == [encoded(n).key for n in (1, 2, 3, 4)]
    rows = await log.pool.fetch("SELECT * FROM rejected_frames WHERE account = $1 ORDER BY id", ACCOUNT)
    assert len(rows) == 2
    refused = next(r for r in rows if r["reason"] != "not JSON")
    assert "CheckViolationError" in refused["reason"]
    assert "ck_events_kind" in refused["reason"]
    assert bytes(refused["raw"]) == (bogus.raw or "").encode()
    assert refused["source"] == "stream"
    assert bytes(next(r for r in rows if r["reason"] == "not JSON")["raw"]) == b"\xff{"
    assert sample(metrics, "statekeeper_rejected_frames_total") == 2  # the refused event and the frame
    assert sample(metrics, "statekeeper_events_appended_total") == 4


def session_rows(session: UUID, opened: datetime, closed: datetime, *, reason: str = "shutdown") -> Any:
    return (
        SessionOpen(ACCOUNT, session, "extended", "websocket", "wss://x", "host:1", opened),
        SessionClose(ACCOUNT, session, closed, reason, "bye", 42),
    )


async def test_session_rows_are_written_in_order_and_idempotent(log: PostgresEventLog) -> None:
    first, second = uuid4(), uuid4()
    open1, close1 = session_rows(first, T0, T0 + timedelta(minutes=1))
    open2, close2 = session_rows(second, T0 + timedelta(minutes=2), T0 + timedelta(minutes=3), reason="gap")
    writer = AccountWriter(log, account=ACCOUNT)
    # open and close of a session in one batch: the close only finds the row if the open came first
    writer.submit_all([open1, encoded(1), close1, open2, encoded(2)])
    async with running(writer):
        await asyncio.wait_for(writer.flushed(), 10)
        rows = await log.pool.fetch("SELECT * FROM stream_sessions ORDER BY opened_at")
        assert [(r["session"], r["closed_at"], r["close_reason"]) for r in rows] == [
            (first, T0 + timedelta(minutes=1), "shutdown"),
            (second, None, None),
        ]
        assert rows[0]["last_seq"] == 42
        assert rows[0]["owner"] == "host:1"

        # everything again (a retried batch), plus the second close; a later close does not reopen or move
        late_close = dataclasses.replace(close1, closed_at=T0 + timedelta(hours=1), reason="error")
        writer.submit_all([open1, encoded(1), close1, open2, encoded(2), late_close, close2])
        await asyncio.wait_for(writer.flushed(), 10)
    rows = await log.pool.fetch("SELECT * FROM stream_sessions ORDER BY opened_at")
    assert [(r["session"], r["closed_at"], r["close_reason"]) for r in rows] == [
        (first, T0 + timedelta(minutes=1), "shutdown"),
        (second, T0 + timedelta(minutes=3), "gap"),
    ]
    assert await stored_keys(log.pool) == [encoded(1).key, encoded(2).key]


async def test_a_session_row_the_database_refuses_does_not_stop_the_writer(log: PostgresEventLog) -> None:
    session = uuid4()
    opened, _ = session_rows(session, T0, T0)
    bad_close = SessionClose(ACCOUNT, session, T0, "not-a-reason", None, None)  # violates ck close_reason
    writer = AccountWriter(log, account=ACCOUNT)
    writer.submit_all([opened, encoded(1), bad_close, encoded(2)])
    async with running(writer) as task:
        await asyncio.wait_for(writer.flushed(), 10)
        assert not task.done()
    assert await stored_keys(log.pool) == [encoded(1).key, encoded(2).key]
    row = await log.pool.fetchrow("SELECT * FROM stream_sessions WHERE session = $1", session)
    assert row is not None
    assert row["closed_at"] is None


async def test_stop_stores_everything_pending_then_run_returns(log: PostgresEventLog) -> None:
    writer = AccountWriter(log, account=ACCOUNT, batch_size=100)
    items = [encoded(i) for i in range(1000)]
    writer.submit_all(items)
    task = asyncio.create_task(writer.run())
    try:
        writer.stop()
        with pytest.raises(WriterStopped):
            writer.submit(encoded("too-late"))
        await asyncio.wait_for(task, 15)  # returns by itself: no cancellation
        assert task.result() is None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert writer.backlog == 0
    assert await stored_keys(log.pool) == [i.key for i in items]
    with pytest.raises(WriterStopped):
        writer.submit_all([encoded("still-too-late")])

    # an idle writer stops at once
    idle = AccountWriter(log, account="acc-idle")
    idle_task = asyncio.create_task(idle.run())
    try:
        await asyncio.sleep(0)
        idle.stop()
        await asyncio.wait_for(idle_task, 5)
    finally:
        if not idle_task.done():
            idle_task.cancel()


async def _someone_waits_on_a_lock(blocker: Any) -> bool:
    count = await blocker.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND pid <> pg_backend_pid()"
    )
    return bool(count)


async def test_writer_survives_a_lost_connection_mid_write(database_url: str, log: PostgresEventLog) -> None:
    metrics = IngestMetrics()
    writer = AccountWriter(log, account=ACCOUNT, batch_size=50, metrics=metrics, retry_initial=0.01, retry_max=0.1)
    items = [encoded(i) for i in range(600)]
    blocker = await connect(database_url)
    try:
        async with running(writer):
            writer.submit_all(items[:100])
            await asyncio.wait_for(writer.flushed(), 10)

            # hold the append lock: the writer's next batch stops inside its transaction, waiting for it
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.fetchrow(statements.TAKE_APPEND_LOCK)
            writer.submit_all(items[100:400])
            await wait_until(lambda: _someone_waits_on_a_lock(blocker), within=10, what="writer blocked")
            assert await blocker.fetchval(TERMINATE_OTHERS) >= 1  # the writer's connection, mid-transaction
            await wait_until(lambda: not writer.healthy, within=10, what="the writer noticed the lost connection")
            writer.submit_all(items[400:])  # more arrives during the outage
            await transaction.commit()  # the lock is free: the writer's retries go through

            await asyncio.wait_for(writer.flushed(), 20)
            assert writer.healthy
            assert writer.last_error is None
    finally:
        await blocker.close()
    assert sample(metrics, "statekeeper_append_errors_total") >= 1
    keys = await stored_keys(log.pool)
    assert keys == [i.key for i in items]  # every item exactly once, in submission order
    assert await log.pool.fetchval("SELECT count(*) FROM rejected_frames") == 0


async def test_writer_survives_repeated_connection_losses(database_url: str, log: PostgresEventLog) -> None:
    """Backends killed again and again while a flood is written (a commit may be lost after it was done)."""
    metrics = IngestMetrics()
    writer = AccountWriter(log, account=ACCOUNT, batch_size=40, metrics=metrics, retry_initial=0.01, retry_max=0.1)
    items = [encoded(i) for i in range(2000)]
    killer = await connect(database_url)
    kills = 0
    try:
        async with running(writer):
            for start in range(0, len(items), 100):
                writer.submit_all(items[start : start + 100])
                if start % 300 == 0:
                    await wait_until(lambda: writer.backlog < 100 or not writer.healthy, within=10)
                    kills += await killer.fetchval(TERMINATE_OTHERS)
                await asyncio.sleep(0)
            await asyncio.wait_for(writer.flushed(), 30)
    finally:
        await killer.close()
    assert kills >= 1
    keys = await stored_keys(log.pool)
    assert len(keys) == len(set(keys)) == len(items)
    assert keys == [i.key for i in items]
    assert await log.pool.fetchval("SELECT count(*) FROM rejected_frames") == 0
    assert await log.pool.fetchval("SELECT count(*) FROM event_conflicts") == 0


async def set_database(url: str, log: PostgresEventLog, setting: str, value: str) -> None:
    """Set a database default and make the pool's connections take it (they are killed and come back)."""
    admin = await connect(url)
    try:
        await admin.execute("SET default_transaction_read_only = off")  # a read-only default must not stop this
        alter = "SELECT format('ALTER DATABASE %I SET %s = %L', current_database(), $1::text, $2::text)"
        await admin.execute(await admin.fetchval(alter, setting, value))
        await admin.fetchval(TERMINATE_OTHERS)
    finally:
        await admin.close()

    async def applied() -> bool:
        try:
            return bool(await log.pool.fetchval(f"SHOW {setting}") == value)
        except CONNECTION_ERRORS:
            return False

    await wait_until(applied, within=10, what=f"the pool runs with {setting} = {value}")


async def test_a_lock_timeout_is_retried_not_taken_for_a_bad_event(database_url: str, log: PostgresEventLog) -> None:
    await set_database(database_url, log, "lock_timeout", "200ms")
    writer = AccountWriter(log, account=ACCOUNT, retry_initial=0.01, retry_max=0.1)
    items = [encoded(i) for i in range(5)]
    other = await connect(database_url)
    try:
        async with running(writer):
            transaction = other.transaction()
            await transaction.start()
            await other.fetchrow(statements.TAKE_APPEND_LOCK)  # another appender's long batch holds the lock

            async def refused_or_retrying() -> bool:
                return not writer.healthy or bool(await other.fetchval("SELECT count(*) FROM rejected_frames"))

            writer.submit_all(items)
            await wait_until(refused_or_retrying, within=10, what="the writer gave up waiting for the lock")
            await transaction.commit()
            await asyncio.wait_for(writer.flushed(), 10)
    finally:
        await other.close()
    assert await log.pool.fetchval("SELECT count(*) FROM rejected_frames") == 0
    assert await stored_keys(log.pool) == [i.key for i in items]


async def test_a_read_only_database_is_waited_out(database_url: str, log: PostgresEventLog) -> None:
    await set_database(database_url, log, "default_transaction_read_only", "on")
    writer = AccountWriter(log, account=ACCOUNT, retry_initial=0.01, retry_max=0.1)
    items = [encoded(i) for i in range(3)]
    async with running(writer) as task:
        writer.submit_all(items)
        await wait_until(lambda: task.done() or not writer.healthy, within=10, what="the writer saw the refusal")
        assert not task.done()
        await set_database(database_url, log, "default_transaction_read_only", "off")
        await asyncio.wait_for(writer.flushed(), 10)
    assert await stored_keys(log.pool) == [i.key for i in items]
    assert await log.pool.fetchval("SELECT count(*) FROM rejected_frames") == 0


async def test_a_refused_event_is_set_aside_once_across_retries(database_url: str, log: PostgresEventLog) -> None:
    session = uuid4()
    opened = SessionOpen(ACCOUNT, session, "extended", "websocket", None, "host:1", T0)
    bogus = dataclasses.replace(encoded("bad"), kind="bogus")
    blocker = await connect(database_url)
    writer = AccountWriter(log, account=ACCOUNT, retry_initial=0.01, retry_max=0.1)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        # the same session row, not committed: the writer's INSERT ... ON CONFLICT waits for this transaction
        await blocker.execute(statements.OPEN_SESSION, ACCOUNT, session, "extended", "websocket", None, "x", T0)
        writer.submit_all([bogus, opened])  # one batch: refused as a whole, then written one by one
        async with running(writer):
            await wait_until(lambda: _someone_waits_on_a_lock(blocker), within=10, what="the writer waits")
            await blocker.fetchval(TERMINATE_OTHERS)  # the connection is lost after the event was set aside
            await wait_until(lambda: not writer.healthy, within=10, what="the writer noticed")
            await transaction.rollback()
            await asyncio.wait_for(writer.flushed(), 10)
    finally:
        await blocker.close()
    assert await log.pool.fetchval("SELECT count(*) FROM stream_sessions") == 1
    assert await log.pool.fetchval("SELECT count(*) FROM rejected_frames") == 1


# ============================================================================================== claims


async def claim_holders(url: str) -> list[int]:
    connection = await connect(url)
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 21324 AND granted"
        )
    finally:
        await connection.close()
    return [r["pid"] for r in rows]


async def test_two_daemons_never_hold_the_same_account(database_url: str) -> None:
    first, second = AccountClaims(database_url), AccountClaims(database_url)
    try:
        assert await first.try_claim("acc-1")
        assert not await second.try_claim("acc-1")
        assert await second.try_claim("acc-2")  # claims are per account
        assert first.held == {"acc-1"}
        assert second.held == {"acc-2"}
        await first.close()  # the daemon stops: its claims go with its connection
        assert await second.try_claim("acc-1")
        assert second.held == {"acc-1", "acc-2"}
        third = AccountClaims(database_url)
        try:
            assert not await third.try_claim("acc-1")
            await second.release("acc-1")  # handed over without stopping
            assert "acc-1" not in second.held
            assert await third.try_claim("acc-1")
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


async def test_a_claim_dies_with_its_connection_and_the_old_holder_hands_it_back(database_url: str) -> None:
    first, second = AccountClaims(database_url), AccountClaims(database_url)
    try:
        assert await first.try_claim("acc-1")
        (holder,) = await claim_holders(database_url)
        killer = await connect(database_url)
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", holder)
        finally:
            await killer.close()
        # the server releases the lock once the backend is gone (asynchronously): wait for it
        await wait_until(lambda: second.try_claim("acc-1"), within=10, what="the second daemon claims acc-1")
        assert second.held == {"acc-1"}

        # the first daemon notices on its next use of the claims connection, takes its claims again, and hands
        # back the one taken meanwhile
        lost = first.lost["acc-1"]
        assert not lost.is_set()
        await wait_until(lambda: first.try_claim("acc-9"), within=10, what="the first daemon reconnects")
        assert lost.is_set()
        assert first.held == {"acc-9"}
        assert not await first.try_claim("acc-1")

        stop = asyncio.Event()
        stop.set()
        assert await first.claim("acc-1", stop) is False  # claim() gives up when the daemon stops
    finally:
        await first.close()
        await second.close()


async def test_claim_waits_until_the_holder_goes(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    first, second = AccountClaims(database_url), AccountClaims(database_url, retry_seconds=0.05)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="statekeeper.ingest.claims")
    try:
        assert await first.try_claim("acc-1")
        waiting = asyncio.create_task(second.claim("acc-1", stop))
        await wait_until(lambda: "claimed by another daemon" in caplog.text, within=5, what="claim() waits")
        assert not waiting.done()
        assert second.held == set()
        await first.close()
        assert await asyncio.wait_for(waiting, 10) is True
        assert second.held == {"acc-1"}
    finally:
        stop.set()
        await first.close()
        await second.close()
