"""Replay: state at any point against the simulated venue's own history, paging and spilling change nothing,
``--verify`` catches a projection changed behind the projector's back, digests agree across runs and across a dump
and restore, and the command's options, formats and exit codes."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
from hypothesis import given, settings
from typer.testing import CliRunner

from statekeeper.audit import parallel
from statekeeper.audit.output import SHOWN, CsvForm, JsonForm, TableForm
from statekeeper.audit.parallel import each_account
from statekeeper.audit.reader import SERVER_SETTINGS, Bound
from statekeeper.audit.render import JsonRenderer
from statekeeper.audit.replay import Digesting, account_digest, replayed, run_replay, run_verify
from statekeeper.audit.state import ReplayState, row_line, value_text
from statekeeper.cli import app
from statekeeper.database import connect, create_pool
from statekeeper.embedded import bin_dir
from statekeeper.eventlog import PostgresEventLog
from statekeeper.events import Event
from statekeeper.ingest.records import Origin, ledger_event
from statekeeper.projections import rows, store
from statekeeper.projections.fold import PROJECTED_KINDS, AccountState, fold
from statekeeper.projections.rows import BalanceRow, Row
from statekeeper.simulator import Simulator, SimulatorConfig, Truth
from statekeeper.simulator.engine import ChangeKind, SimFunding, ms_to_datetime
from statekeeper.simulator.faults import FaultPlan
from statekeeper.venues.base import FrameContext, Item
from statekeeper.venues.extended import parse_frame
from tests.projection_strategies import account_events, fold_events
from tests.projection_support import compare_with_truth, report

ACCOUNT = "ext-audit"
STEPS = 400
SAMPLES = (0, 57, 150, 263, STEPS)
"""Steps after which the replay is compared with the venue's truth (0: right after connecting)."""


@dataclass
class History:
    """A simulated Extended account's stream (and its funding over REST) as events, and the venue's truth after
    each sampled step with the venue time it was reached at."""

    events: list[Event]
    truths: dict[int, tuple[datetime, Truth]]


def simulated_history(seed: int = 11) -> History:
    """One client's session with a simulated Extended venue, rendered offline: the connect snapshot, then every
    frame of ``STEPS`` steps through the real parser; funding (not on Extended's stream) as the daemon fetches it
    over REST. Funding every 5 s of venue time, so that a few hundred steps have several payments."""
    sim = Simulator(SimulatorConfig(venue="extended", seed=seed, accounts=(ACCOUNT,), rate=0, faults=FaultPlan(),
                                    record_frames=False, funding_interval_ms=5_000))  # fmt: skip
    engine, server = sim.engine, sim.server
    assert hasattr(server, "snapshot")
    session = uuid4()
    origin = Origin(ACCOUNT, "extended", session)
    received = datetime(2026, 6, 1, tzinfo=UTC)
    events: list[Event] = []
    seq = 0

    def frame(message: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        text = orjson.dumps({**message, "seq": seq}).decode()
        event = parse_frame(text, FrameContext(ACCOUNT, "extended", session, received + timedelta(milliseconds=seq)))
        assert isinstance(event, Event), event
        events.append(event)

    for message in server.snapshot(engine.accounts[ACCOUNT]):
        frame(message)
    # what happened before the connection: backfilled over REST after connecting, as the daemon does
    for fill in engine.accounts[ACCOUNT].fills:
        done = engine.fill_record(fill)
        events.append(ledger_event(origin, "fill", Item(done, done.model_dump_json()), fetched_at=received))
    for payment in engine.accounts[ACCOUNT].funding:
        paid = engine.funding_record(payment)
        events.append(ledger_event(origin, "funding", Item(paid, paid.model_dump_json()), fetched_at=received))
    truths = {0: (ms_to_datetime(engine.now_ms), engine.truth(ACCOUNT))}
    for step in range(1, STEPS + 1):
        for change in engine.step():
            for message in server.messages(change):
                frame(message)
            if change.kind == ChangeKind.FUNDING:
                assert isinstance(change.payload, SimFunding)
                record = engine.funding_record(change.payload)
                item = Item(record, record.model_dump_json())
                events.append(ledger_event(origin, "funding", item, fetched_at=received + timedelta(seconds=step)))
        if step in SAMPLES:
            truths[step] = (ms_to_datetime(engine.now_ms), engine.truth(ACCOUNT))
    return History(events, truths)


async def append(url: str, events: Sequence[Event]) -> None:
    pool = await create_pool(url, max_size=2)
    try:
        log = PostgresEventLog(pool)
        for start in range(0, len(events), 500):
            await log.append(events[start : start + 500])
    finally:
        await pool.close()


def all_lines(state: ReplayState) -> list[bytes]:
    """Every digest line of ``state``, table after table."""
    return [line for _, lines in state.table_lines() for line in lines]


async def replay_tables(
    url: str, bound: Bound | None = None, *, page_size: int = 10_000, hot_rows: int = 20_000
) -> tuple[dict[str, list[Row]], str]:
    conn = await connect(url, server_settings=SERVER_SETTINGS)
    try:
        bound = bound or Bound(int(await conn.fetchval("SELECT max(id) FROM events")))
        async with replayed(conn, ACCOUNT, bound, page_size=page_size, hot_rows=hot_rows) as state:
            tables = {table: list(table_rows) for table, table_rows in state.tables()}
            # The digest reads spilled rows as stored: the same lines as the rows' own, in the same order.
            assert all_lines(state) == [row_line(t, row) for t, table_rows in tables.items() for row in table_rows]
            return tables, account_digest(state)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def history() -> History:
    return simulated_history()


# ------------------------------------------------------------------------------------------ point in time


async def test_state_at_any_time_is_the_venues_own_state_then(database_url: str, history: History) -> None:
    await append(database_url, history.events)
    assert len(history.truths) == len(SAMPLES)
    for step, (when, truth) in history.truths.items():
        tables, _ = await replay_tables(database_url, Bound(10**12, when, "venue"))
        # fresh=False: the marks move between publications, so the mark-dependent figures are compared only where the
        # venue publishes them with the state (they are not part of a point-in-time audit of what was held).
        found = compare_with_truth(tables, truth, "extended", fresh=False, strict_orders=True)
        assert not found, f"after step {step} ({when.isoformat()}): " + report(found)
    # the funding payments are there (the test would prove little without them)
    final, _ = await replay_tables(database_url)
    assert len(final["funding_payments"]) >= 3
    assert final["fills"] and final["open_orders"] and final["positions"]


async def test_a_position_and_the_time_of_its_event_give_the_same_state(database_url: str, history: History) -> None:
    await append(database_url, history.events[:300])
    conn = await connect(database_url)
    try:
        row = await conn.fetchrow("SELECT id, venue_time, received_at FROM events WHERE account = $1 ORDER BY id "
                                  "OFFSET 150 LIMIT 1", ACCOUNT)  # fmt: skip
        last_same_time = await conn.fetchval(
            "SELECT max(id) FROM events WHERE account = $1 AND received_at <= $2", ACCOUNT, row["received_at"]
        )
    finally:
        await conn.close()
    by_position, digest_position = await replay_tables(database_url, Bound(row["id"]))
    by_time, digest_time = await replay_tables(database_url, Bound(10**12, row["received_at"], "received"))
    assert last_same_time == row["id"]  # receive times are 1 ms apart: the two points are the same
    assert by_position == by_time
    assert digest_position == digest_time


async def test_small_pages_and_spilling_to_disk_change_nothing(database_url: str, history: History) -> None:
    await append(database_url, history.events)
    whole, digest = await replay_tables(database_url)
    paged, paged_digest = await replay_tables(database_url, page_size=37, hot_rows=8)
    assert paged == whole
    assert paged_digest == digest


@settings(max_examples=60)
@given(account_events(max_steps=40))
def test_replay_state_in_pages_equals_one_pass(events: list[Event]) -> None:
    """The replay store (partial loads per page, spilled rows read back) equals folding everything in one pass."""
    stored = fold_events(events)
    expected = fold(AccountState("acc"), stored).tables()
    for page_size, hot_rows in ((1, 1), (3, 2), (1_000, 1_000)):
        state = ReplayState("acc", hot_rows=hot_rows)
        try:
            for start in range(0, len(stored), page_size):
                state.apply(stored[start : start + page_size])
            assert {table: list(table_rows) for table, table_rows in state.tables()} == expected
            assert all_lines(state) == [row_line(t, row) for t, table_rows in expected.items() for row in table_rows]
        finally:
            state.close()


def _other(value: object) -> object:
    """A value of the same type as ``value`` that differs from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, str):
        return value + "x"
    assert isinstance(value, int | Decimal), value
    return value + 1


@settings(max_examples=40)
@given(account_events(max_steps=40))
def test_the_generated_row_functions_equal_their_plain_definitions(events: list[Event]) -> None:
    """The functions generated per row type (:mod:`statekeeper.projections.rows`) against what they stand for: a
    digest line is the canonical JSON of the row's plain values and reads back as the same row; two rows hold the
    same state when every column but ``event_id`` is equal, and any one of them differing makes them differ."""
    for table, table_rows in fold(AccountState("acc"), fold_events(events)).tables().items():
        for row in table_rows:
            columns = rows.columns(type(row))
            line = row_line(table, row)
            assert line == orjson.dumps([table, *(value_text(getattr(row, c)) for c in columns)])
            assert rows.positional_decoder(type(row), 1)(orjson.loads(line)) == row
            assert rows.same_state(row, dataclasses.replace(row, event_id=-1))  # type: ignore[call-arg] # every row has one
            for column in columns:
                value = getattr(row, column)
                if column != "event_id" and value is not None:
                    assert not rows.same_state(row, dataclasses.replace(row, **{column: _other(value)})), column


def test_a_digest_line_is_the_canonical_json_of_the_rows_values() -> None:
    """The digest's line format (the replay module's docstring): decimals as their exact text, times in ISO 8601
    as :meth:`datetime.isoformat` writes them (with and without microseconds), null for none."""
    for updated_at in (datetime(2026, 3, 1, 14, 3, 2, tzinfo=UTC), datetime(2026, 3, 1, 14, 3, 2, 500, tzinfo=UTC)):
        row = BalanceRow("acc", "extended", "USD", "collateral", Decimal("1E+3"), Decimal("-0.000100"), None, None,
                         None, None, None, None, None, None, "ACTIVE", updated_at, 7)  # fmt: skip
        values = [value_text(getattr(row, c)) for c in rows.columns(BalanceRow)]
        assert row_line("balances", row) == orjson.dumps(["balances", *values])
        assert row_line("balances", row).startswith(
            b'["balances","acc","extended","USD","collateral","1E+3","-0.000100",null,'
        )


def _reference(state: ReplayState) -> tuple[dict[str, list[dict[str, object]]], list[list[str]]]:
    """What the JSON and CSV outputs hold of ``state``, from its rows (not from their digest lines): every table,
    each row's values as :func:`value_text` gives them (CSV: as text, empty for none)."""
    as_json: dict[str, list[dict[str, object]]] = {}
    as_csv: list[list[str]] = []
    for table, table_rows in state.tables():
        as_json[table] = []
        for row in table_rows:
            columns = rows.columns(type(row))
            values = [value_text(getattr(row, c)) for c in columns]
            as_json[table].append(dict(zip(columns, values, strict=True)))
            if len(as_json[table]) == 1:
                as_csv.append(["table", *columns])
            as_csv.append([table, *("" if v is None else str(v) for v in values)])
        if as_json[table]:
            as_csv.append([])
    return as_json, as_csv


@settings(max_examples=40)
@given(account_events(max_steps=40))
def test_every_output_format_made_from_digest_lines_holds_the_rows_themselves(events: list[Event]) -> None:
    """The outputs are made from the rows' digest lines (spilled rows as stored, where the account was replayed):
    the JSON and CSV hold every row's values as the rows give them, the table format's figures are the rows' own,
    and reading the lines for an output digests them too, also when the output reads only part of them."""
    state = ReplayState("acc", hot_rows=2)
    try:
        stored = fold_events(events)
        for start in range(0, len(stored), 3):
            state.apply(stored[start : start + 3])
        digest = account_digest(state)
        as_json, as_csv = _reference(state)
        for form in (JsonForm(), CsvForm()):
            tables = Digesting(state)
            spooled = form(tables)
            try:
                text = spooled.path.read_text(encoding="utf-8")
            finally:
                spooled.close()
            assert not spooled.path.exists()
            assert tables.digest() == digest
            if isinstance(form, JsonForm):
                assert orjson.loads(text) == as_json
            else:
                assert list(csv.reader(io.StringIO(text, newline=""))) == as_csv

        tables = Digesting(state)
        summary = TableForm()(tables)
        assert tables.digest() == digest
        every = {table: list(table_rows) for table, table_rows in state.tables()}
        for table, cells in summary.shown.items():
            assert cells == [tuple("" if row[c] is None else str(row[c]) for c in SHOWN[table])
                             for row in as_json[table]]  # fmt: skip
        fills = [r for r in every["fills"] if isinstance(r, rows.FillRow)]
        assert (summary.fills, summary.busted) == (len(fills), sum(r.busted_at is not None for r in fills))
        assert sum(summary.fees.values()) == sum(r.fee for r in fills)
        payments = [r for r in every["funding_payments"] if isinstance(r, rows.FundingRow)]
        assert summary.payments == len(payments)
        assert sum(summary.paid.values()) == sum(r.amount for r in payments)

        partial = Digesting(state)  # a form that stops early: the first row of a table, and not every table
        for number, (_, lines) in enumerate(partial):
            next(lines, None)
            if number == 4:
                break
        assert partial.digest() == digest
    finally:
        state.close()


# ----------------------------------------------------------------------------------------------- verify


async def test_verify_catches_a_projection_row_changed_behind_the_projectors_back(
    database_url: str, history: History
) -> None:
    await append(database_url, history.events)
    conn = await connect(database_url)
    try:
        await store.catch_up(conn, [ACCOUNT], limit=500)
        (clean,) = await run_verify(database_url)
        assert clean.differences == []
        assert clean.checkpoint == clean.account_head
        await conn.execute("UPDATE balances SET balance = balance + 1 WHERE account = $1", ACCOUNT)
        order_id = await conn.fetchval("SELECT min(order_id) FROM open_orders WHERE account = $1", ACCOUNT)
        await conn.execute("DELETE FROM open_orders WHERE account = $1 AND order_id = $2", ACCOUNT, order_id)
        (changed,) = await run_verify(database_url)
    finally:
        await conn.close()
    shown = [str(d) for d in changed.differences]
    assert [(d.table, d.column) for d in changed.differences] == [("balances", "balance"), ("open_orders", None)]
    assert "balance: replayed" in shown[0]
    assert f"open_orders [{order_id}]: replayed, not in the projection" in shown[1]
    assert changed.digest == clean.digest  # the replay itself did not change


async def test_verify_compares_at_the_projectors_checkpoint(database_url: str, history: History) -> None:
    await append(database_url, history.events[:200])
    conn = await connect(database_url)
    try:
        await store.catch_up(conn, [ACCOUNT], limit=500)
    finally:
        await conn.close()
    await append(database_url, history.events[200:260])  # not projected yet: the projector lags
    (check,) = await run_verify(database_url)
    assert check.differences == []
    assert check.lag
    assert check.account_head > check.checkpoint


# ----------------------------------------------------------------------------------------------- digest


async def test_digest_is_the_same_across_runs_and_after_a_dump_and_restore(
    database_url: str, empty_database_url: str, history: History, tmp_path: Path
) -> None:
    await append(database_url, history.events[:400])
    first = await run_replay(database_url, JsonRenderer(io.StringIO()))
    second = await run_replay(database_url, JsonRenderer(io.StringIO()))
    assert first.digest == second.digest
    assert len(first.digest) == 64
    dump = tmp_path / "log.dump"
    tools = bin_dir()
    await asyncio.to_thread(
        subprocess.run,
        [str(tools / "pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "-f", str(dump),
         "--dbname", database_url],
        check=True, capture_output=True,
    )  # fmt: skip
    await asyncio.to_thread(
        subprocess.run,
        [str(tools / "pg_restore"), "--no-owner", "--no-privileges", "--dbname", empty_database_url, str(dump)],
        check=True, capture_output=True,
    )  # fmt: skip
    restored = await run_replay(empty_database_url, JsonRenderer(io.StringIO()))
    assert restored.digest == first.digest
    assert restored.digests == first.digests


async def test_pages_read_the_same_events_whatever_the_sessions_time_zone_and_date_style(
    database_url: str, history: History
) -> None:
    """The projector's and replay's pages carry times as JSON writes them, turned into UTC however the session
    would show them."""
    await append(database_url, history.events[:60])
    seen = []
    for session in ({"TimeZone": "UTC"}, {"TimeZone": "Asia/Kolkata", "DateStyle": "SQL, DMY"}):
        conn = await connect(database_url, server_settings=session)
        try:
            _, events = await store.read_batch(conn, ACCOUNT, limit=1_000, name="test-page")
        finally:
            await conn.close()
        assert {e.venue_time.tzinfo for e in events} == {e.received_at.tzinfo for e in events} == {UTC}
        seen.append(events)
    assert seen[0] == seen[1]
    assert len(seen[0]) == 60


# --------------------------------------------------------------------------------------- worker processes


class Failing:
    """An account's work that fails in the worker process (pickled by reference: this module)."""

    async def __call__(self, conn: Any, account: str, progress: Any) -> None:
        raise ValueError(f"no replay for {account} today")


def recorder(seen: list[int]) -> Callable[[int], Callable[[int], None]]:
    """A progress callback that records the total, then each page's events."""

    def start(total: int) -> Callable[[int], None]:
        seen.append(total)
        return seen.append

    return start


async def test_accounts_replayed_in_worker_processes_give_the_same_output_and_digests(
    database_url: str, history: History, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' spill and output files
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this process's
    events = history.events[:300]
    await append(database_url, events)
    for other in ("ext-audit-2", "ext-audit-3"):
        await append(database_url, [e.model_copy(update={"account": other}) for e in events])
    outputs, runs, pages = [], [], []
    for jobs in (1, 2):
        out = io.StringIO()
        seen: list[int] = []
        runs.append(await run_replay(database_url, JsonRenderer(out), jobs=jobs, parallel_from=0, hot_rows=8,
                                     progress=recorder(seen)))  # fmt: skip
        outputs.append(out.getvalue())
        pages.append(seen)
    serial, parallel = runs
    assert parallel.digests == serial.digests
    assert list(parallel.digests) == ["ext-audit", "ext-audit-2", "ext-audit-3"]
    assert parallel.digest == serial.digest
    assert outputs[1] == outputs[0]
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []  # spill and output files are gone
    assert parallel.events == serial.events == 3 * sum(1 for e in events if e.kind in PROJECTED_KINDS)
    # progress: the total to read first, then every page's events, from the workers too
    for seen in pages:
        assert sum(seen[1:]) == parallel.events
    # verify in workers too: a row changed behind the projector's back is found in its account only
    conn = await connect(database_url)
    try:
        await store.catch_up(conn, ["ext-audit", "ext-audit-2", "ext-audit-3"], limit=500)
        await conn.execute("UPDATE balances SET balance = balance + 1 WHERE account = 'ext-audit-2'")
    finally:
        await conn.close()
    checks = await run_verify(database_url, jobs=2, parallel_from=0)
    assert [c.account for c in checks] == ["ext-audit", "ext-audit-2", "ext-audit-3"]
    assert [bool(c.differences) for c in checks] == [False, True, False]


async def test_worker_processes_serve_one_account_after_another(
    database_url: str, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five accounts with ``--jobs 2``: two worker processes, each given accounts until none are left, and both
    gone once the replay ends; the output is the one process's."""
    events = history.events[:120]
    accounts = [f"ext-many-{number}" for number in range(5)]
    for account in accounts:
        await append(database_url, [e.model_copy(update={"account": account}) for e in events])
    started: list[parallel._Worker] = []
    start = parallel._Worker.start

    async def counted() -> parallel._Worker:
        worker = await start()
        started.append(worker)
        return worker

    monkeypatch.setattr(parallel._Worker, "start", counted)
    outputs, runs = [], []
    for jobs in (1, 2):
        out = io.StringIO()
        runs.append(await run_replay(database_url, JsonRenderer(out), accounts=accounts, jobs=jobs, parallel_from=0,
                                     hot_rows=8))  # fmt: skip
        outputs.append(out.getvalue())
    assert runs[1].digests == runs[0].digests
    assert outputs[1] == outputs[0]
    assert len(started) == 2
    assert [worker.process.returncode for worker in started] == [0, 0]


async def test_a_failure_in_a_worker_process_is_the_replays_error(database_url: str, history: History) -> None:
    await append(database_url, history.events[:50])
    conn = await connect(database_url, server_settings=SERVER_SETTINGS)
    try:
        with pytest.raises(ValueError, match="no replay for ext-audit today"):
            async for _ in each_account(database_url, conn, [ACCOUNT, ACCOUNT], Failing(), jobs=2, events=1,
                                        progress=None, parallel_from=0):  # fmt: skip
                pass
    finally:
        await conn.close()


# -------------------------------------------------------------------------------------------------- CLI


def invoke(url: str, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"STATEKEEPER_DATABASE_URL": url}, catch_exceptions=False)


def test_replay_command_formats_options_and_exit_codes(database_url: str, history: History) -> None:
    asyncio.run(append(database_url, history.events[:250]))
    when = history.truths[57][0].isoformat()

    as_json = invoke(database_url, "replay", "--at", when, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    document = orjson.loads(as_json.output)
    assert document["replay"]["at"] == when
    assert document["replay"]["clock"] == "venue"
    (account,) = document["accounts"]
    assert account["account"] == ACCOUNT
    assert set(account["tables"]) >= {"balances", "open_orders", "positions", "fills", "funding_payments"}
    assert account["tables"]["balances"][0]["balance"]  # decimals as exact strings

    # the frames were received from 2026-06-01T00:00:00.001Z on, 1 ms apart
    as_csv = invoke(
        database_url, "replay", "--at", "2026-06-01T00:00:00.120Z", "--clock", "received", "--format", "csv"
    )
    assert as_csv.exit_code == 0, as_csv.output
    lines = list(csv.reader(io.StringIO(as_csv.output)))
    assert ["table", "account", "basis", "events", "position", "digest"] in lines
    assert any(line[:1] == ["balances"] for line in lines)
    assert "by received time" in as_csv.output

    as_table = invoke(database_url, "replay", "--account", ACCOUNT, "--position", "100")
    assert as_table.exit_code == 0, as_table.output
    assert "log position 100" in as_table.output
    assert "balances" in as_table.output
    assert "digest" in as_table.output

    assert invoke(database_url, "replay", "--at", when, "--position", "5").exit_code == 2
    assert invoke(database_url, "replay", "--at", "2026-01-01T00:00:00").exit_code == 2  # no time zone
    assert invoke(database_url, "replay", "--verify", "--position", "5").exit_code == 2
    assert invoke(database_url, "replay", "--account", "nobody").exit_code == 2

    asyncio.run(project(database_url))
    verified = invoke(database_url, "replay", "--verify")
    assert verified.exit_code == 0, verified.output
    assert "the projection equals the replay" in verified.output
    asyncio.run(project(database_url, change="UPDATE positions SET size = size * 2"))
    mismatch = invoke(database_url, "replay", "--verify")
    assert mismatch.exit_code == 1
    assert "size: replayed" in mismatch.output


async def project(url: str, *, change: str | None = None) -> None:
    """Bring the projections up to the log, then (optionally) change them behind the projector's back."""
    conn = await connect(url)
    try:
        await store.catch_up(conn, [ACCOUNT], limit=500)
        if change is not None:
            await conn.execute(change)
    finally:
        await conn.close()
