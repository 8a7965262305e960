"""End to end with the simulated venues, clean and with every fault: after the scenario and its resync,
``balances``, ``open_orders``, ``positions``, ``fills`` and ``funding_payments`` (and the order history, the busts
and Paradex's account summary) equal the simulated venue's truth.

Each test runs the ingest daemon in-process (its projector workers included) against a simulated venue driven at a
moderate rate for a couple of seconds, with one kind of fault; then it stops the activity (the truth holds still,
marks included), has the venue drop the connection so that the next session takes fresh snapshots and backfills,
waits until the daemon is at rest and the projector has applied every event, and compares the projection tables
with the truth, field by field (:func:`tests.projection_support.compare_with_truth`).

Drift (a change of the truth that never reaches the stream: a balance adjusted, an order cancelled) is healed by
that resync, so it is here, injected during the activity and again once it has stopped: the balance comes back
with the next balance snapshot (Extended's stream, Paradex's REST seed), and an order cancelled without a word
leaves ``open_orders`` when the next snapshot no longer lists it, its final state then fetched by the order
resolver. Drift that no resync could see would be for reconciliation; the simulator has none of that kind.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import pytest

from statekeeper.config import IngestSettings, Settings
from statekeeper.projections.rows import OrderRow
from statekeeper.simulator import FaultKind, FaultPlan, Simulator, SimulatorConfig
from statekeeper.simulator.engine import ChangeKind, SimOrder
from tests.ingest_support import Activity, running_daemon, settings_for, wait_until
from tests.projection_support import (
    compare_with_truth,
    count_events,
    first_ids,
    projected,
    report,
    rest_open_orders,
    resync_at_rest,
    stream_stored,
)

Venue = Literal["extended", "paradex"]
VENUES: tuple[Venue, ...] = ("extended", "paradex")

RATE = 100.0
"""Engine steps per second."""
STEP_MS = 10
"""Venue time per step: venue time keeps pace with the wall clock."""
FUNDING_MS = 1_000
"""A funding period of one second of venue time: payments in the warm-up history and during the activity."""
STEPS = 200
"""Steps of activity after the fault: two seconds, a few dozen fills, two funding periods."""
MAX_SEED_STEPS = 100
"""A bound on the steps taken until the venue places an order (it places one in two or three)."""
GAP_FRAMES = 30
"""Frames an injected gap loses: enough to swallow fills, orders and balance updates."""

STREAM_FAULTS = (
    FaultKind.DISCONNECT,
    FaultKind.GAP,
    FaultKind.DUPLICATE,
    FaultKind.REORDER,
    FaultKind.MALFORMED,
    FaultKind.DELAY,
)
REST_FAULTS = {FaultKind.REST_5XX: 2, FaultKind.REST_429: 5, FaultKind.REST_SLOW: 2}
"""On-demand REST faults, and how many requests in a row each one hits: 429 five times fails every attempt of a
call (the resync itself fails and is retried), 503 twice is retried by the client, slow twice just waits."""
SCENARIOS = ("clean", *STREAM_FAULTS, *REST_FAULTS, FaultKind.DRIFT, "every")
EVERY = FaultPlan.parse(
    "gap=0.01,duplicate=0.01,reorder=0.01,malformed=0.01,delay=0.01,disconnect=0.003,rest_5xx=0.05,rest_429=0.05"
)


def plan_for(scenario: str) -> FaultPlan:
    rates = EVERY.rates if scenario == "every" else {}
    return FaultPlan(rates=rates, delay_seconds=0.3 if scenario != "every" else 0.05, slow_seconds=0.3,
                     retry_after_seconds=0)  # fmt: skip


def settings(sim: Simulator) -> Settings:
    """The daemon's settings for the simulator's account ``a1``: quick reconnects, polls and order resolving."""
    quick: dict[str, Any] = {}
    if "resolve_interval_seconds" in IngestSettings.model_fields:
        quick["resolve_interval_seconds"] = 0.2
    return settings_for({"a1": sim}, **quick)


async def first_resync(url: str, sim: Simulator, account: str) -> None:
    """The first session is resynced and the venue's first frames are through."""

    async def ready() -> bool:
        history = sim.frames(account)
        if not history or len(history[-1].sent) < 3:
            return False
        return await count_events(url, account, "resync_completed") >= 1

    await wait_until(ready, within=15, what=f"{account}: the first session resynced")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
@pytest.mark.parametrize("venue", VENUES)
async def test_projection_equals_the_venue_truth(database_url: str, venue: Venue, scenario: str) -> None:
    """Activity with the fault (on demand; ``every``: all of them at rates), then a resync at rest: the projection
    tables equal the venue's truth, field by field."""
    config = SimulatorConfig(venue=venue, seed=5, accounts=("a1",), rate=0, step_ms=STEP_MS, faults=plan_for(scenario),
                             funding_interval_ms=FUNDING_MS)  # fmt: skip
    async with await Simulator.start(config) as sim:
        kind = FaultKind(scenario) if scenario in FaultKind.__members__.values() else None
        if kind in REST_FAULTS:
            sim.inject(kind, "a1", count=REST_FAULTS[kind])  # the first resync meets it
        async with running_daemon(settings(sim), database_url), Activity(sim, rate=RATE) as activity:
            await first_resync(database_url, sim, "a1")
            if kind in STREAM_FAULTS:
                sim.inject(kind, "a1", count=GAP_FRAMES if kind is FaultKind.GAP else 1)
            elif kind is FaultKind.DRIFT:
                sim.inject(kind, "a1", count=4)
            begun = activity.steps
            await wait_until(lambda: activity.steps >= begun + STEPS, within=15, what="the activity")
            await activity.stop()
            if kind is FaultKind.DRIFT:
                sim.inject(kind, "a1", count=4)  # with nothing published after it: only the resync can heal it
            if kind in REST_FAULTS:
                sim.inject(kind, "a1", count=REST_FAULTS[kind])  # and so does the last one
            await resync_at_rest(database_url, sim, "a1")
            tables = await projected(database_url, "a1")
            truth = sim.truth("a1")
    differences = compare_with_truth(tables, truth, venue)
    assert differences == [], report(differences)
    # The scenario was worth comparing: the fault happened, and every table had something to hold.
    if kind is not None:
        assert sim.fault_counts[kind] >= 1, f"no {kind} fault was injected"
    if scenario == "every":
        assert sum(sim.fault_counts.values()) >= 5, sim.fault_counts
    assert truth.fills
    assert truth.funding
    assert truth.positions
    assert tables["orders"]
    assert tables["balances"]
    if venue == "paradex":
        assert truth.busted_fills, "no fill was busted"


async def test_paradex_orders_placed_while_a_slow_seed_is_in_flight(database_url: str) -> None:
    """A Paradex session seeds open orders from REST while the stream goes on: an order placed after ``/orders``
    answered, whose stream update is in the log before the seed's snapshot event, is not in that snapshot. The
    snapshot may take it for gone (``closed_unconfirmed``), but the venue's next word on it (the next snapshot,
    the resolver's fetch) must bring it back: after the final resync it is in ``open_orders``."""
    plan = FaultPlan(slow_seconds=1.0, retry_after_seconds=0)
    config = SimulatorConfig(venue="paradex", seed=5, accounts=("a1",), rate=0, step_ms=STEP_MS, faults=plan,
                             funding_interval_ms=FUNDING_MS)  # fmt: skip
    async with await Simulator.start(config) as sim:
        # The first session's seed asks for balances, positions, open orders and the account summary, in turn:
        # every call answers a second late, the last one too, after the open orders were answered.
        seed_calls = sim.server.rest_faults.for_account("a1")
        sim.inject(FaultKind.REST_SLOW, "a1", count=4)
        async with running_daemon(settings(sim), database_url):
            await wait_until(lambda: not seed_calls.pending, within=15, what="the seed's last call under way")
            placed = await place_an_order(database_url, sim, "a1")

            async def seeded() -> bool:
                return await rest_open_orders(database_url, "a1") is not None

            await wait_until(seeded, within=15, what="the seed stored")
            order_event, snapshot_event = await first_ids(database_url, "a1", placed)
            await resync_at_rest(database_url, sim, "a1")
            tables = await projected(database_url, "a1")
            truth = sim.truth("a1")
    # The scenario happened: the order was placed after the open orders were answered, and logged before them.
    assert placed in truth.open_orders
    assert order_event < snapshot_event
    differences = compare_with_truth(tables, truth, "paradex")
    assert differences == [], report(differences)
    assert placed in {r.order_id for r in tables["open_orders"] if isinstance(r, OrderRow)}


async def place_an_order(url: str, sim: Simulator, account: str) -> str:
    """Step the venue until it places an order on ``account``, and wait until the stream update is stored."""
    for _ in range(MAX_SEED_STEPS):
        placed = [c.payload for c in await sim.step() if c.kind is ChangeKind.ORDER and c.account == account
                  and isinstance(c.payload, SimOrder) and c.payload.status == "NEW"]  # fmt: skip
        if placed:
            await wait_until(partial(stream_stored, url, sim, account), within=10, what="the order stored")
            return str(placed[-1].order_id)
    raise AssertionError(f"no order placed within {MAX_SEED_STEPS} steps")
