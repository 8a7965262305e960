"""Reconciliation without a venue: the pure diff (fields, tolerances, the rounds, the discrepancy book), the
configuration, and the statements and schema against a migrated database."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from statekeeper.config import DEFAULT_TOLERANCES, ReconcileSettings
from statekeeper.errors import ConfigError
from statekeeper.migrations import check
from statekeeper.reconcile import diff
from statekeeper.reconcile.diff import Difference, Examination, OpenDiscrepancy, Projected, Tolerance
from statekeeper.reconcile.runner import STATEMENTS

TOLERANCES = diff.tolerances(DEFAULT_TOLERANCES)


def order(**fields: Any) -> SimpleNamespace:
    values = {"status": "NEW", "market": "BTC-USD", "side": "BUY", "order_type": "LIMIT", "qty": Decimal("1.5"),
              "filled_qty": Decimal(0), "price": Decimal(50000), "reduce_only": False}  # fmt: skip
    return SimpleNamespace(**{**values, **fields})


def balance(**fields: Any) -> SimpleNamespace:
    values = {"asset": "USD", "balance": Decimal(1000), "equity": Decimal(100000), "unrealised_pnl": Decimal(50),
              "status": "ACTIVE"}  # fmt: skip
    return SimpleNamespace(**{**values, **fields})


def test_exact_fields_must_be_equal_and_numbers_compare_by_value() -> None:
    mine = Projected(order(), 7)
    assert diff.compare_entity(diff.ORDER, "o1", mine, order(qty=Decimal("1.50")), TOLERANCES) == []
    found = diff.compare_entity(diff.ORDER, "o1", mine, order(filled_qty=Decimal("0.5"), status="PARTIALLY_FILLED"),
                                TOLERANCES)  # fmt: skip
    assert found == [
        Difference("order", "o1", "status", "NEW", "PARTIALLY_FILLED"),
        Difference("order", "o1", "filled_qty", "0", "0.5"),
    ]
    assert diff.compare_entity(diff.ORDER, "o1", mine, order(reduce_only=True), TOLERANCES) == [
        Difference("order", "o1", "reduce_only", "false", "true")
    ]


def test_a_field_one_side_does_not_carry_is_not_compared() -> None:
    mine = Projected(order(price=None), 7)
    assert diff.compare_entity(diff.ORDER, "o1", mine, order(), TOLERANCES) == []


def test_mark_dependent_fields_are_within_a_share_of_the_scale_others_exact() -> None:
    mine = Projected(balance(), 3)
    # 1% of the equity (100000): 999 apart is within, 1001 is not; the wallet balance is exact.
    assert diff.compare_entity(diff.BALANCE, "USD", mine, balance(unrealised_pnl=Decimal(1049)), TOLERANCES) == []
    assert diff.compare_entity(diff.BALANCE, "USD", mine, balance(unrealised_pnl=Decimal(1051)), TOLERANCES) == [
        Difference("balance", "USD", "unrealised_pnl", "50", "1051")
    ]
    assert diff.compare_entity(diff.BALANCE, "USD", mine, balance(balance=Decimal("1000.01")), TOLERANCES) == [
        Difference("balance", "USD", "balance", "1000", "1000.01")
    ]
    strict = diff.tolerances({**DEFAULT_TOLERANCES, "unrealised_pnl": "0.5"})
    assert diff.compare_entity(diff.BALANCE, "USD", mine, balance(unrealised_pnl=Decimal("50.6")), strict)


def test_one_side_only_is_a_presence_difference() -> None:
    assert diff.compare(diff.ORDER, {"a": Projected(order(), 1)}, {"b": order()}, TOLERANCES) == [
        Difference("order", "a", "present", "yes", "no"),
        Difference("order", "b", "present", "no", "yes"),
    ]
    # An order the venue lists that the projection has as filled: compared with its row (the status says it).
    closed = Projected(order(status="FILLED"), 1, present=False)
    assert diff.compare(diff.ORDER, {"a": closed}, {"a": order()}, TOLERANCES) == [
        Difference("order", "a", "status", "FILLED", "NEW")
    ]
    assert diff.compare(diff.ORDER, {"a": closed}, {}, TOLERANCES) == []
    assert diff.missing(diff.FILL, ["f1:TRADE", "f2:TRADE"], {"f1:TRADE"}) == [
        Difference("fill", "f2:TRADE", "present", "no", "yes")
    ]


@given(st.lists(st.tuples(st.sampled_from(["NEW", "FILLED"]), st.decimals(0, 10, places=3)), max_size=5))
def test_the_diff_of_a_state_with_itself_is_empty(items: list[tuple[str, Decimal]]) -> None:
    rows = {str(i): order(status=s, qty=q) for i, (s, q) in enumerate(items)}
    projected = {k: Projected(v, 1) for k, v in rows.items()}
    assert diff.compare(diff.ORDER, projected, rows, TOLERANCES) == []


def test_tolerances_parse_and_the_configuration_refuses_bad_ones() -> None:
    assert diff.parse_tolerance("0.01") == Tolerance(absolute=Decimal("0.01"))
    assert diff.parse_tolerance("2%") == Tolerance(relative=Decimal("0.02"))
    for bad in ("-1", "x", "nan%"):
        with pytest.raises(ValueError, match=r"tolerance|amount"):
            diff.parse_tolerance(bad)
    settings = ReconcileSettings(tolerances={"equity": "5", "size": "0.001"})
    assert settings.tolerances["equity"] == "5" and settings.tolerances["size"] == "0.001"
    assert settings.tolerances["value"] == "1%", "the other defaults stay"
    with pytest.raises(ValueError, match="equity"):
        ReconcileSettings(tolerances={"equity": "-1"})


def test_the_configuration_file_takes_the_reconcile_keys(tmp_path: Any) -> None:
    from statekeeper.config import load_settings  # noqa: PLC0415

    path = tmp_path / "statekeeper.toml"
    path.write_text('[reconcile]\nheal = true\nrace_window_seconds = 0.5\n[reconcile.tolerances]\nequity = "2"\n')
    settings = load_settings(path, environ={})
    assert settings.reconcile.heal and settings.reconcile.race_window_seconds == 0.5
    assert settings.reconcile.tolerances["equity"] == "2"
    path.write_text("[reconcile]\nrounds = 1\n")
    with pytest.raises(ConfigError, match="rounds"):
        load_settings(path, environ={})


# -------------------------------------------------------------------------------------------- the rounds


def d(key: str, field: str = "status", venue: str = "X") -> Difference:
    return Difference("order", key, field, "NEW", venue)


def test_a_clean_key_settles_at_the_quick_look() -> None:
    exam = Examination()
    exam.record({("order", "a")}, [], set(), settled=False)
    assert exam.done and exam.settled == {("order", "a")} and not exam.confirmed


def test_a_difference_is_confirmed_by_two_settled_rounds() -> None:
    exam = Examination()
    keys = {("order", "a"), ("order", "b")}
    exam.record(keys, [d("a")], set(), settled=False)
    assert exam.pending == {("order", "a")} and not exam.confirmed
    exam.record({("order", "a")}, [d("a")], set())
    assert not exam.confirmed and exam.pending == {("order", "a")}
    exam.record({("order", "a")}, [d("a", venue="Y")], set())
    assert list(exam.confirmed.values()) == [d("a", venue="Y")]
    assert exam.done and exam.settled == keys


def test_a_moving_key_is_never_confirmed_and_left_unsettled() -> None:
    exam = Examination()
    key = ("order", "a")
    for settled in (False, True, True, True):
        exam.record({key}, [d("a")], {key}, settled=settled)
    assert not exam.confirmed and exam.unsettled == {key} and key not in exam.settled


def test_a_difference_that_goes_away_is_not_confirmed() -> None:
    exam = Examination()
    key = ("order", "a")
    exam.record({key}, [d("a")], set(), settled=False)
    exam.record({key}, [d("a")], set())
    exam.record({key}, [], set())
    assert not exam.confirmed and exam.done and key in exam.settled
    # A key that left both sides between rounds is settled as clean too.
    exam = Examination()
    exam.record({key}, [d("a")], set(), settled=False)
    exam.record(set(), [], set())
    assert exam.done and key in exam.settled


def test_an_open_discrepancys_key_that_left_both_sides_is_settled_and_resolves() -> None:
    """An order reported open in the projection but gone at the venue, closed in the projection since: neither side
    lists it any more, and its open discrepancy must resolve at the next pass, not stay open for ever."""
    book = frozenset({("order", "gone")})
    exam = Examination(book=book)
    exam.record({("order", "a")}, [], set(), settled=False)
    assert exam.done and ("order", "gone") in exam.settled
    changes = diff.settle_book([OpenDiscrepancy(7, "order", "gone", "present")], {}, exam.settled)
    assert changes.gone == [7]


def test_the_book_updates_creates_and_resolves_only_what_was_settled() -> None:
    open_rows = [
        OpenDiscrepancy(1, "order", "a", "status"),  # confirmed again
        OpenDiscrepancy(2, "order", "b", "status"),  # settled clean: resolved
        OpenDiscrepancy(3, "order", "c", "status"),  # not settled this pass: stays open
    ]
    confirmed = {d("a").ident: d("a"), d("e").ident: d("e")}
    changes = diff.settle_book(open_rows, confirmed, {("order", "a"), ("order", "b"), ("order", "e")})
    assert changes.seen_again == {1: d("a")}
    assert changes.new == [d("e")]
    assert changes.gone == [2]
    assert diff.healed([d("a"), d("e")], [d("e")]) == [d("a")]


# ------------------------------------------------------------------------------------------ the database


async def test_every_statement_prepares_and_the_schema_matches(pool: asyncpg.Pool, database_url: str) -> None:
    async with pool.acquire() as conn:
        for name, sql in STATEMENTS.items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                pytest.fail(f"statement {name} does not prepare: {exc}")
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT TEXT) SELECT id, entity, entity_key, field FROM reconciliation_discrepancies "
            "WHERE account = 'a' AND resolved_at IS NULL"
        )
        assert plan is not None
    assert await check(database_url) == []


async def test_one_open_discrepancy_per_entity_key_and_field(pool: asyncpg.Pool) -> None:
    insert = (
        "INSERT INTO reconciliation_discrepancies (account, entity, entity_key, field, first_seen_at, last_seen_at,"
        " first_run_id, last_run_id, occurrences, resolved_at, resolved_run_id)"
        " VALUES ('a', 'order', 'o1', 'status', now(), now(), gen_random_uuid(), gen_random_uuid(), 1, $1::timestamptz,"
        " CASE WHEN $1::timestamptz IS NULL THEN NULL ELSE gen_random_uuid() END)"
    )
    await pool.execute(insert, None)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(insert, None)
    from datetime import UTC, datetime  # noqa: PLC0415

    await pool.execute(insert, datetime.now(UTC))  # resolved ones may repeat
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO reconciliation_runs (account, run_id, venue, started_at, finished_at, status, heal, rounds,"
            " compared, found, healed, unsettled, remaining, error) VALUES ('a', gen_random_uuid(), 'extended', now(),"
            " now(), 'failed', false, 0, 0, 0, 0, 0, 0, NULL)"
        )
