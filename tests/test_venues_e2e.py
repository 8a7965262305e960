"""The venue adapters against the simulated venues: every frame parses, and what they read is the truth.

These tests connect statekeeper's own stream and REST clients to each simulated venue, parse everything with the
venue's parser, and compare the records with the simulator's truth field by field, signs included. They are the
proof that the adapters and the simulator read the venues' documentation the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest
from pydantic import BaseModel, SecretStr

from statekeeper.events import (
    BalanceBody,
    Event,
    FillBody,
    FundingBody,
    Order,
    OrderBody,
    PositionBody,
    encode_event,
)
from statekeeper.simulator import FaultKind, Simulator, SimulatorConfig
from statekeeper.venues import venue_spec
from statekeeper.venues.base import FrameContext, FrameRejection
from statekeeper.venues.extended.rest import ExtendedRestClient
from statekeeper.venues.extended.stream import ExtendedAccountStream
from statekeeper.venues.http import RetryPolicy, VenueHttpClient
from statekeeper.venues.paradex.auth import StaticTokenProvider
from statekeeper.venues.paradex.rest import ParadexRestClient
from statekeeper.venues.paradex.stream import ParadexAccountStream
from statekeeper.venues.ws import Frame

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SESSION = UUID("00000000-0000-4000-8000-0000000000aa")
RECEIVED = datetime(2026, 6, 1, tzinfo=UTC)
GOLDEN = Path(__file__).parent / "fixtures" / "recorded"


def same(record: BaseModel, truth: BaseModel, *fields: str) -> None:
    """The named fields of a parsed record equal the truth's (a named field missing on either side fails)."""
    for name in fields:
        ours, theirs = getattr(record, name), getattr(truth, name)
        assert ours is not None, f"{type(record).__name__}.{name} was not read"
        assert ours == theirs, f"{type(record).__name__}.{name}: read {ours!r}, truth {theirs!r}"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def config(venue: str, **kwargs: Any) -> SimulatorConfig:
    # funding every 10 steps so that a short run has some; no pacing: the test steps the venue itself
    return SimulatorConfig(venue=venue, seed=5, rate=0, step_ms=100, funding_interval_ms=1000,  # type: ignore[arg-type]
                           **kwargs)  # fmt: skip


# ---------------------------------------------------------------------------------------------- Extended


@pytest.fixture
async def extended() -> AsyncIterator[Simulator]:
    async with await Simulator.start(config("extended")) as sim:
        await sim.step(300)
        yield sim


async def test_extended_rest_reads_the_truth(extended: Simulator) -> None:
    truth = extended.truth("acc-1")
    async with ExtendedRestClient(extended.rest_url, SecretStr(extended.credential("acc-1"))) as rest:
        balance = (await rest.balance()).record
        same(balance, truth.balance, "asset", "balance", "equity", "available_for_trade", "available_for_withdrawal",
             "unrealised_pnl", "initial_margin", "margin_ratio", "exposure", "leverage", "updated_at")  # fmt: skip

        positions = {item.record.market: item.record for item in await rest.positions()}
        assert set(positions) == set(truth.positions)
        for market, position in positions.items():
            same(position, truth.positions[market], "position_id", "side", "size", "entry_price", "mark_price",
                 "value", "unrealised_pnl", "realised_pnl", "leverage", "created_at", "updated_at")  # fmt: skip

        orders = {item.record.order_id: item.record for item in await rest.open_orders()}
        assert set(orders) == set(truth.open_orders)
        for order_id, order in orders.items():
            same(order, truth.open_orders[order_id], "client_order_id", "market", "side", "order_type", "status",
                 "price", "qty", "filled_qty", "fee_paid", "post_only", "reduce_only", "created_at",
                 "updated_at")  # fmt: skip

        one = next(iter(truth.orders))
        same((await rest.order(one)).record, truth.orders[one], "status", "qty", "filled_qty")

        fills = {}
        async for item in rest.trades_since(None):
            fills[(item.record.fill_id, item.record.fill_type)] = item.record
        assert set(fills) == set(truth.fills)
        for key, fill in fills.items():
            same(fill, truth.fills[key], "order_id", "client_order_id", "market", "side", "price", "qty", "value",
                 "fee", "is_taker", "created_at")  # fmt: skip

        payments = {}
        async for payment_item in rest.funding_since(EPOCH):
            payments[payment_item.record.payment_id] = payment_item.record
        assert payments, "funding is paid every 10 steps here"
        assert set(payments) == set(truth.funding)
        for payment_id, payment in payments.items():
            same(payment, truth.funding[payment_id], "market", "amount", "rate", "position_side", "position_size",
                 "mark_price", "paid_at")  # fmt: skip


async def test_extended_rest_survives_5xx_and_429(extended: Simulator) -> None:
    sleeps = Sleeps()
    http = VenueHttpClient(venue="extended", base_url=extended.rest_url, sleep=sleeps, retry=RetryPolicy(jitter=0))
    async with ExtendedRestClient(extended.rest_url, SecretStr(extended.credential("acc-1")), http=http) as rest:
        extended.inject(FaultKind.REST_5XX, "acc-1", count=2)
        extended.inject(FaultKind.REST_429, "acc-1")
        balance = (await rest.balance()).record
    assert balance.balance == extended.truth("acc-1").balance.balance
    assert sleeps.delays == [0.25, 0.5, 1.0]  # two backoffs, then the venue's Retry-After


async def read_frames(stream: Any, count: int, within: float = 10.0) -> list[Frame]:
    frames: list[Frame] = []
    async with asyncio.timeout(within):
        async for frame in stream:
            frames.append(frame)
            if len(frames) >= count:
                break
    return frames


def parse_all(venue: str, frames: list[Frame], session: UUID = SESSION) -> list[Event]:
    parse = venue_spec(venue).parse_frame
    events = []
    for frame in frames:
        outcome = parse(frame.data, FrameContext("acc-1", venue, session, frame.received_at))
        assert not isinstance(outcome, FrameRejection), f"{outcome.reason}: {str(frame.data)[:300]}"
        events.append(outcome)
    return events


def latest_orders(events: list[Event]) -> dict[str, Order]:
    latest: dict[str, Order] = {}
    for event in events:
        if isinstance(event.body, OrderBody):
            for order in event.body.orders:
                latest[order.order_id] = order
    return latest


async def test_extended_stream_reads_the_truth(extended: Simulator) -> None:
    at_connect = extended.truth("acc-1")
    async with ExtendedAccountStream(extended.ws_url, SecretStr(extended.credential("acc-1"))) as stream:
        await extended.wait_connected("acc-1")
        changes = await extended.step(200)
        expected = 3 + sum(extended.server.frames_for(c) for c in changes if c.account == "acc-1")
        events = parse_all("extended", await read_frames(stream, expected))
    assert [e.seq for e in events] == list(range(1, expected + 1))
    snapshot_orders, snapshot_balance, snapshot_positions = events[:3]
    assert all(e.snapshot for e in events[:3]) and not any(e.snapshot for e in events[3:])
    assert isinstance(snapshot_orders.body, OrderBody)
    assert {o.order_id for o in snapshot_orders.body.orders} == set(at_connect.open_orders)
    assert isinstance(snapshot_balance.body, BalanceBody)
    same(snapshot_balance.body.balances[0], at_connect.balance, "balance", "equity", "unrealised_pnl")
    assert isinstance(snapshot_positions.body, PositionBody)
    assert {p.market for p in snapshot_positions.body.positions} == set(at_connect.positions)
    truth = extended.truth("acc-1")
    for order_id, order in latest_orders(events).items():
        same(order, truth.orders[order_id], "status", "qty", "filled_qty", "price", "fee_paid", "updated_at")
    streamed_fills = {(f.fill_id, f.fill_type): f for e in events if isinstance(e.body, FillBody) for f in e.body.fills}
    assert streamed_fills
    assert set(streamed_fills) == set(truth.fills) - set(at_connect.fills)
    for key, fill in streamed_fills.items():
        same(fill, truth.fills[key], "price", "qty", "fee", "side", "order_id", "is_taker", "created_at")
    assert not any(isinstance(e.body, FundingBody) for e in events), "Extended has no funding on the stream"


# ----------------------------------------------------------------------------------------------- Paradex


@pytest.fixture
async def paradex() -> AsyncIterator[Simulator]:
    async with await Simulator.start(config("paradex")) as sim:
        await sim.step(400)
        yield sim


async def test_paradex_rest_reads_the_truth(paradex: Simulator) -> None:
    truth = paradex.truth("acc-1")
    markets = sorted(paradex.engine.markets)
    async with ParadexRestClient(paradex.rest_url, StaticTokenProvider(paradex.credential("acc-1"))) as rest:
        (balance,) = [item.record for item in await rest.balances()]
        assert (balance.asset, balance.balance) == ("USDC", truth.balance.balance)
        summary = (await rest.account()).record
        same(summary, truth.summary, "equity", "free_collateral", "initial_margin", "maintenance_margin",
             "total_collateral", "margin_cushion", "updated_at")  # fmt: skip

        positions = {item.record.market: item.record for item in await rest.positions()}
        assert set(positions) == set(truth.positions)
        for market, position in positions.items():
            same(position, truth.positions[market], "position_id", "side", "size", "entry_price", "unrealised_pnl",
                 "realised_pnl", "leverage", "created_at", "updated_at")  # fmt: skip

        orders = {item.record.order_id: item.record for item in await rest.open_orders()}
        assert set(orders) == set(truth.open_orders)
        for order_id, order in orders.items():
            same(order, truth.open_orders[order_id], "client_order_id", "market", "side", "price", "qty",
                 "filled_qty", "remaining_qty", "post_only", "created_at", "updated_at")  # fmt: skip

        fills = {}
        async for item in rest.fills_since(EPOCH):
            fills[(item.record.fill_id, item.record.fill_type)] = item.record
        assert set(fills) == set(truth.fills)
        for key, fill in fills.items():
            same(fill, truth.fills[key], "order_id", "client_order_id", "market", "side", "price", "qty", "fee",
                 "fee_asset", "is_taker", "realized_pnl", "created_at")  # fmt: skip

        payments = {}
        async for payment_item in rest.funding_payments_since(EPOCH, markets):
            payments[payment_item.record.payment_id] = payment_item.record
        assert payments
        assert set(payments) == set(truth.funding)
        for payment_id, payment in payments.items():
            same(payment, truth.funding[payment_id], "market", "amount", "funding_index", "paid_at")

        busted = set()
        async for bust in rest.tradebusts_since(EPOCH):
            busted.add(bust.record.fill_id)
        assert busted == truth.busted_fills

        transfers = {}
        async for transfer_item in rest.transfers_since(EPOCH):
            transfers[transfer_item.record.transfer_id] = transfer_item.record
        assert set(transfers) == set(truth.transfers)
        for transfer_id, transfer in transfers.items():
            same(transfer, truth.transfers[transfer_id], "transfer_type", "status", "amount", "tx_hash")


async def test_paradex_stream_reads_the_truth(paradex: Simulator) -> None:
    before = paradex.truth("acc-1")
    async with ParadexAccountStream(paradex.ws_url, StaticTokenProvider(paradex.credential("acc-1"))) as stream:
        handshake = parse_all("paradex", list(stream.handshake_frames))
        assert {e.kind for e in handshake} == {"protocol"}
        await paradex.wait_connected("acc-1")
        changes = await paradex.step(300)
        expected = sum(paradex.server.frames_for(c) for c in changes if c.account == "acc-1")
        events = parse_all("paradex", await read_frames(stream, expected))
    truth = paradex.truth("acc-1")
    assert len({e.key for e in events}) == len(events), "every notification has its own key"
    for order_id, order in latest_orders(events).items():
        same(order, truth.orders[order_id], "qty", "filled_qty", "remaining_qty", "price", "updated_at", "venue_seq")
    fills = {(f.fill_id, f.fill_type): f for e in events if isinstance(e.body, FillBody) for f in e.body.fills}
    assert set(fills) == set(truth.fills) - set(before.fills)
    kinds = Counter(e.kind for e in events)
    assert {"order", "fill", "position", "account", "balance"} <= set(kinds)


async def test_the_same_notification_on_two_connections_is_one_event(paradex: Simulator) -> None:
    tokens = StaticTokenProvider(paradex.credential("acc-1"))
    async with ParadexAccountStream(paradex.ws_url, tokens) as one, ParadexAccountStream(paradex.ws_url, tokens) as two:
        await paradex.wait_connected("acc-1", 2)
        changes = await paradex.step(50)
        expected = sum(paradex.server.frames_for(c) for c in changes if c.account == "acc-1")
        first = parse_all("paradex", await read_frames(one, expected), UUID(int=1))
        second = parse_all("paradex", await read_frames(two, expected), UUID(int=2))
    assert [e.key for e in first] == [e.key for e in second]
    assert [encode_event(e).content_hash for e in first] == [encode_event(e).content_hash for e in second]


# ---------------------------------------------------------------------------------------- recorded sessions


@pytest.mark.parametrize("name", ["extended-seed41", "paradex-seed42"])
def test_recorded_sessions_parse_to_the_same_events(name: str) -> None:
    """Every frame of a recorded simulator session parses, to events whose digest is pinned."""
    venue = name.split("-", maxsplit=1)[0]
    frames = [Frame(line, RECEIVED) for line in (GOLDEN / f"{name}.jsonl").read_text().splitlines()]
    events = parse_all(venue, frames)
    assert len({e.key for e in events}) == len(events), "no two messages of a session share a key"
    digest = hashlib.sha256()
    for event in events:
        encoded = encode_event(event)
        digest.update(f"{encoded.key}\n{encoded.kind}\n".encode() + encoded.content_hash)
    actual = {"events": len(events), "kinds": dict(sorted(Counter(str(e.kind) for e in events).items())),
              "digest": digest.hexdigest()}  # fmt: skip
    golden = GOLDEN / f"{name}.golden.json"
    if os.environ.get("STATEKEEPER_UPDATE_GOLDEN"):
        golden.write_text(orjson.dumps(actual, option=orjson.OPT_INDENT_2).decode() + "\n")
    expected = orjson.loads(golden.read_text())
    assert actual == expected, (
        f"the {venue} parser now reads the recorded session differently; review, then regenerate with "
        "STATEKEEPER_UPDATE_GOLDEN=1"
    )


def test_amounts_stay_decimal_end_to_end() -> None:
    frames = (GOLDEN / "extended-seed41.jsonl").read_text().splitlines()[:50]
    events = parse_all("extended", [Frame(f, RECEIVED) for f in frames])
    orders = [o for e in events if isinstance(e.body, OrderBody) for o in e.body.orders]
    assert orders
    assert all(isinstance(o.qty, Decimal) and isinstance(o.price, Decimal) for o in orders)
