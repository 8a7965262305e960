"""The simulated venues: a deterministic truth, the venues' real protocols, faults on demand."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from statekeeper.events import Side
from statekeeper.simulator import FaultKind, FaultPlan, Simulator, SimulatorConfig
from statekeeper.simulator.engine import Engine, EngineConfig
from statekeeper.simulator.faults import FaultPlanError
from statekeeper.simulator.recording import kinds, record_session

PARADEX_CHANNELS = ("account", "orders.ALL", "fills.ALL", "positions", "balance_events", "funding_payments.ALL",
                    "transfers", "tradebusts")  # fmt: skip


# -------------------------------------------------------------------------------------------------- engine


def run_engine(seed: int, steps: int = 3000, *, busts: bool = True) -> Engine:
    engine = Engine(EngineConfig(busts=busts, funding_interval_ms=60_000), seed=seed)
    for name in ("a", "b"):
        engine.add_account(name)
    for _ in range(steps):
        engine.step()
    return engine


def test_same_seed_same_history() -> None:
    assert run_engine(7).truth("a") == run_engine(7).truth("a")
    assert run_engine(7).truth("a") != run_engine(8).truth("a")


def test_engine_books_balance() -> None:
    engine = run_engine(3, 6000)
    for account in engine.accounts.values():
        fills = [f for f in account.fills if not f.busted]
        assert account.funding, "funding is paid each period"
        assert any(f.busted for f in account.fills), "fills get busted on a venue that busts"
        # every position is the sum of its unbusted fills
        for market, position in account.positions.items():
            signed = sum((f.qty if f.side is Side.BUY else -f.qty) for f in fills if f.market == market)
            assert position.size == signed, market
        # every order's filled quantity is the sum of its fills, and never more than its quantity
        by_order: dict[int, Decimal] = defaultdict(Decimal)
        for fill in account.fills:
            by_order[fill.order_id] += fill.qty
        for order in account.orders.values():
            assert order.filled == by_order.get(order.order_id, Decimal(0))
            assert Decimal(0) <= order.filled <= order.qty
            assert order.is_open == (order.order_id in account.working)
        truth = engine.truth(account.name)
        assert truth.balance.equity == truth.balance.balance + (truth.balance.unrealised_pnl or 0)
        assert {o.status for o in truth.open_orders.values()} <= {"NEW", "PARTIALLY_FILLED"}


def test_drift_changes_the_truth_and_says_how() -> None:
    engine = run_engine(5, 500)
    before = engine.truth("a")
    description = engine.drift("a")
    assert engine.truth("a") != before
    assert "without an update on the stream" in description


def test_fault_plans() -> None:
    plan = FaultPlan.parse("gap=0.01, duplicate=0.5,rest_429")
    assert plan.rate(FaultKind.GAP) == 0.01
    assert plan.rate(FaultKind.REST_429) == 0.01
    assert str(FaultPlan.parse("")) == "none"
    with pytest.raises(FaultPlanError, match="unknown fault 'gapp'"):
        FaultPlan.parse("gapp=0.1")
    with pytest.raises(FaultPlanError, match="not a rate"):
        FaultPlan.parse("gap=often")
    with pytest.raises(FaultPlanError, match="between 0 and 1"):
        FaultPlan.parse("gap=2")


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
async def extended() -> AsyncIterator[Simulator]:
    async with await Simulator.start(SimulatorConfig(venue="extended", seed=11, rate=0, accounts=("a", "b"))) as sim:
        yield sim


@pytest.fixture
async def paradex() -> AsyncIterator[Simulator]:
    async with await Simulator.start(SimulatorConfig(venue="paradex", seed=12, rate=0, accounts=("a", "b"))) as sim:
        yield sim


async def recv(ws: ClientConnection, within: float = 10.0) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), within))


async def drain(ws: ClientConnection, count: int, within: float = 10.0) -> list[Any]:
    return [await recv(ws, within) for _ in range(count)]


async def extended_stream(sim: Simulator, account: str = "a") -> ClientConnection:
    # A client that stops reading cannot see the server's close frame behind unread ones: do not wait long for it.
    ws = await connect(sim.ws_url, additional_headers={"X-Api-Key": sim.credential(account)}, close_timeout=1)
    await sim.wait_connected(account)
    return ws


async def paradex_stream(sim: Simulator, account: str = "a", channels: tuple[str, ...] = PARADEX_CHANNELS
                         ) -> ClientConnection:  # fmt: skip
    ws = await connect(sim.ws_url, close_timeout=1)
    await ws.send(orjson.dumps({"jsonrpc": "2.0", "method": "auth", "params": {"bearer": sim.credential(account)},
                                "id": 0}).decode())  # fmt: skip
    assert (await recv(ws))["result"] == {"node_id": "sim-node-1"}
    for number, channel in enumerate(channels, 1):
        await ws.send(orjson.dumps({"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": channel},
                                    "id": number}).decode())  # fmt: skip
        assert (await recv(ws))["result"] == {"channel": channel}
    return ws


def expected_frames(sim: Simulator, account: str, changes: list[Any]) -> int:
    return sum(sim.server.frames_for(c) for c in changes if c.account == account)


# ------------------------------------------------------------------------------------------------ Extended


async def test_extended_snapshots_then_contiguous_deltas(extended: Simulator) -> None:
    ws = await extended_stream(extended)
    snapshots = await drain(ws, 3)
    assert [(m["type"], m["seq"], m["data"]["isSnapshot"]) for m in snapshots] == [
        ("ORDER", 1, True), ("BALANCE", 2, True), ("POSITION", 3, True),
    ]  # fmt: skip
    truth = extended.truth("a")
    assert {str(o["id"]) for o in snapshots[0]["data"]["orders"]} == set(truth.open_orders)
    assert Decimal(snapshots[1]["data"]["balance"]["balance"]) == truth.balance.balance
    changes = await extended.step(40)
    count = expected_frames(extended, "a", changes)
    deltas = await drain(ws, count)
    assert [m["seq"] for m in deltas] == list(range(4, 4 + count))
    assert all(m["data"]["isSnapshot"] is False for m in deltas)
    assert {m["type"] for m in deltas} <= {"ORDER", "TRADE", "BALANCE", "POSITION", "DEPOSIT"}
    # every connection has its own seq, starting at 1 again
    second = await extended_stream(extended)
    assert (await recv(second))["seq"] == 1
    await ws.close()
    await second.close()


async def test_extended_refuses_a_bad_key(extended: Simulator) -> None:
    with pytest.raises(Exception, match="HTTP 401"):
        await connect(extended.ws_url, additional_headers={"X-Api-Key": "wrong"})


async def test_extended_rest(extended: Simulator) -> None:
    await extended.step(300)
    truth = extended.truth("a")
    headers = {"X-Api-Key": extended.credential("a")}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def get(path: str, **params: Any) -> tuple[int, Any]:
            async with http.get(extended.rest_url + path, params=params) as response:
                return response.status, await response.json()

        status, body = await get("/user/balance")
        assert status == 200
        assert Decimal(body["data"]["balance"]) == truth.balance.balance
        _, body = await get("/user/orders")
        assert {str(o["id"]) for o in body["data"]} == set(truth.open_orders)
        _, body = await get("/user/positions")
        assert {p["market"] for p in body["data"]} == set(truth.positions)
        status, body = await get(f"/user/orders/{next(iter(truth.orders))}")
        assert status == 200
        assert str(body["data"]["id"]) == next(iter(truth.orders))
        assert (await get("/user/orders/42"))[0] == 404
        # trades: newest first, cursor = last id, every fill exactly once
        seen: list[int] = []
        cursor: int | None = None
        while True:
            _, body = await get("/user/trades", limit=25, **({"cursor": cursor} if cursor else {}))
            if not body["data"]:
                break
            ids = [t["id"] for t in body["data"]]
            assert ids == sorted(ids, reverse=True)
            assert "externalId" in body["data"][0]
            seen.extend(ids)
            cursor = body["pagination"]["cursor"]
        assert sorted(str(i) for i in seen) == sorted(fill_id for fill_id, _ in truth.fills)
        assert (await get("/user/funding/history"))[0] == 400  # fromTime is required
        assert (await get("/user/funding/history", fromTime=0))[0] == 200
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(extended.rest_url + "/user/balance") as response:
            assert response.status == 401
        async with anonymous.get(extended.rest_url + "/user/balance", headers={**headers, "User-Agent": ""}) as rsp:
            assert rsp.status == 400


async def test_extended_zero_balance_is_404(extended: Simulator) -> None:
    account = extended.engine.accounts["b"]
    account.wallet = Decimal(0)
    account.positions.clear()
    headers = {"X-Api-Key": extended.credential("b")}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(extended.rest_url + "/user/balance") as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "NOT_FOUND"


# ------------------------------------------------------------------------------------------------- Paradex


async def test_paradex_handshake_and_errors(paradex: Simulator) -> None:
    ws = await connect(paradex.ws_url)

    async def call(method: str, params: dict[str, Any], request_id: int) -> Any:
        await ws.send(orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}).decode())
        return await recv(ws)

    assert (await call("subscribe", {"channel": "orders.ALL"}, 1))["error"]["code"] == 40100  # not yet authenticated
    assert (await call("auth", {"bearer": "not-a-jwt"}, 2))["error"] == {
        "code": 40110,
        "message": "Malformed Bearer Token",
    }
    assert (await call("auth", {"bearer": "a.b.c"}, 3))["error"]["code"] == 40111
    answer = await call("auth", {"bearer": paradex.credential("a")}, 4)
    assert answer["result"] == {"node_id": "sim-node-1"}
    assert answer["id"] == 4
    assert (await call("subscribe", {"channel": "orders.ALL"}, 5))["result"] == {"channel": "orders.ALL"}
    assert (await call("subscribe", {"channel": "orders.ALL"}, 6))["error"]["code"] == -32600
    assert (await call("subscribe", {"channel": "nonsense"}, 7))["error"]["code"] == -32602
    assert (await call("frobnicate", {}, 8))["error"] == {"code": -32601, "message": "method does not exist"}
    await ws.close()


async def test_paradex_notifications_follow_subscriptions(paradex: Simulator) -> None:
    everything = await paradex_stream(paradex)
    only_btc = await paradex_stream(paradex, channels=("orders.BTC-USD-PERP",))
    await paradex.wait_connected("a", 2)
    changes = await paradex.step(200)
    orders = [c for c in changes if c.account == "a" and c.kind == "order"]
    btc = [c for c in orders if c.payload.market == "BTC-USD-PERP"]  # type: ignore[union-attr]
    received = await drain(only_btc, len(btc))
    assert {m["params"]["channel"] for m in received} == {"orders.BTC-USD-PERP"}
    assert all(m["method"] == "subscription" and m["params"]["data"]["market"] == "BTC-USD-PERP" for m in received)
    channels = {(await recv(everything))["params"]["channel"] for _ in range(len(orders))}
    assert "orders.ALL" in channels
    await everything.close()
    await only_btc.close()


async def test_paradex_rest(paradex: Simulator) -> None:
    await paradex.step(400)
    truth = paradex.truth("a")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {paradex.credential('a')}"}) as http:

        async def get(path: str, **params: Any) -> tuple[int, Any]:
            async with http.get(paradex.rest_url + path, params=params) as response:
                return response.status, await response.json()

        _, body = await get("/balance")
        assert Decimal(body["results"][0]["size"]) == truth.balance.balance
        _, body = await get("/orders")
        assert {o["id"] for o in body["results"]} == set(truth.open_orders)
        _, body = await get("/account")
        assert Decimal(body["account_value"]) == truth.summary.equity
        fills: list[str] = []
        cursor = None
        while True:
            _, body = await get("/fills", page_size=30, **({"cursor": cursor} if cursor else {}))
            fills.extend(f["id"] for f in body["results"])
            cursor = body["next"]
            if cursor is None:
                break
        assert sorted(fills) == sorted(fill_id for fill_id, _ in truth.fills)
        assert (await get("/funding/payments"))[0] == 400  # market is required
        _, busts = await get("/tradebusts")
        assert {b["busted_fill_id"] for b in busts["results"]} == truth.busted_fills
    async with aiohttp.ClientSession() as anonymous, anonymous.get(paradex.rest_url + "/balance") as response:
        assert response.status == 401


# -------------------------------------------------------------------------------------------------- faults


async def test_stream_faults_on_demand(extended: Simulator) -> None:
    ws = await extended_stream(extended)
    await drain(ws, 3)
    frames = extended.frames("a")[-1]
    last = 3

    async def generate(at_least: int) -> int:
        """Step until the account's stream got ``at_least`` new frames; return how many."""
        total = 0
        while total < at_least:
            total += expected_frames(extended, "a", await extended.step())
        return total

    async def receive(count: int) -> list[str]:
        return [str(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]

    # gap: a delta is lost, its seq used: the client sees last + 2 next
    extended.inject(FaultKind.GAP, "a")
    generated = await generate(2)
    got = [orjson.loads(t)["seq"] for t in await receive(generated - 1)]
    assert got == list(range(last + 2, last + 1 + generated))
    assert [orjson.loads(t)["seq"] for t in frames.lost] == [last + 1]
    last += generated

    # duplicate: the same frame twice
    extended.inject(FaultKind.DUPLICATE, "a")
    generated = await generate(1)
    got_text = await receive(generated + 1)
    assert got_text[0] == got_text[1]
    assert orjson.loads(got_text[0])["seq"] == last + 1
    last += generated

    # malformed: a frame cut short, then the stream goes on with nothing lost
    extended.inject(FaultKind.MALFORMED, "a")
    generated = await generate(1)
    got_text = await receive(generated + 1)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(got_text[0])
    assert [orjson.loads(t)["seq"] for t in got_text[1:]] == list(range(last + 1, last + 1 + generated))
    last += generated

    # reorder: a frame is held back and sent after the next one
    extended.inject(FaultKind.REORDER, "a")
    generated = await generate(2)
    got = [orjson.loads(t)["seq"] for t in await receive(generated)]
    assert got[:2] == [last + 2, last + 1]
    assert sorted(got) == list(range(last + 1, last + 1 + generated))
    last += generated

    # delay: late, but in order and complete
    extended.inject(FaultKind.DELAY, "a")
    generated = await generate(1)
    assert [orjson.loads(t)["seq"] for t in await receive(generated)] == list(range(last + 1, last + 1 + generated))

    extended.inject(FaultKind.DISCONNECT, "a")
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert extended.fault_counts[FaultKind.DISCONNECT] == 1
    # every frame numbered for this connection was either sent or recorded as lost
    sent = {orjson.loads(f)["seq"] for f in frames.sent if f.endswith("}")}
    lost = {orjson.loads(f)["seq"] for f in frames.lost}
    assert sorted(sent | lost) == list(range(1, max(sent | lost) + 1))
    assert not sent & lost


async def test_rest_faults_on_demand(paradex: Simulator) -> None:
    headers = {"Authorization": f"Bearer {paradex.credential('a')}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        paradex.inject(FaultKind.REST_5XX, "a")
        async with http.get(paradex.rest_url + "/balance") as response:
            assert response.status == 503
        paradex.inject(FaultKind.REST_429, "a")
        async with http.get(paradex.rest_url + "/balance") as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "1"
        async with http.get(paradex.rest_url + "/balance") as response:
            assert response.status == 200
    assert paradex.fault_counts[FaultKind.REST_5XX] == paradex.fault_counts[FaultKind.REST_429] == 1


async def test_drift_is_not_published(paradex: Simulator) -> None:
    ws = await paradex_stream(paradex)
    before = paradex.truth("a")
    sent_before = len(paradex.frames("a")[-1].sent)
    (description,) = paradex.inject(FaultKind.DRIFT, "a")
    assert paradex.truth("a") != before
    assert "without an update" in description
    assert len(paradex.frames("a")[-1].sent) == sent_before
    await ws.close()


async def test_faults_at_rates_are_deterministic() -> None:
    async def sent(seed: int) -> list[str]:
        config = SimulatorConfig(venue="extended", seed=seed, rate=0, faults=FaultPlan.parse("gap=0.2,duplicate=0.2"))
        async with await Simulator.start(config) as sim:
            ws = await extended_stream(sim, "acc-1")
            changes = await sim.step(100)
            frames = sim.frames("acc-1")[-1]
            expected = 3 + expected_frames(sim, "acc-1", changes)
            async with asyncio.timeout(10):
                while len(frames.sent) + len(frames.lost) - sim.fault_counts[FaultKind.DUPLICATE] < expected:
                    await ws.recv()
            await ws.close()
            assert sim.fault_counts[FaultKind.GAP] > 0
            return frames.sent

    assert await sent(3) == await sent(3)


async def test_a_calm_account_has_no_random_faults_until_released() -> None:
    """What the demo does to its drifted account: no faults from the plan's rates while calm; injected ones still."""
    plan = FaultPlan.parse("gap=0.5,rest_5xx=0.5")
    config = SimulatorConfig(venue="extended", seed=5, rate=0, faults=plan, accounts=("acc-1",))
    async with await Simulator.start(config) as sim, aiohttp.ClientSession() as http:
        sim.calm("acc-1")
        ws = await extended_stream(sim, "acc-1")  # a connection made while calm is calm
        changes = await sim.step(40)
        frames = sim.frames("acc-1")[-1]
        expected = 3 + expected_frames(sim, "acc-1", changes)
        async with asyncio.timeout(10):
            while len(frames.sent) < expected:
                await ws.recv()
        headers = {"X-Api-Key": sim.credential("acc-1")}
        for _ in range(20):
            async with http.get(sim.rest_url + "/user/balance", headers=headers) as response:
                assert response.status == 200
        assert not frames.lost and sim.fault_counts[FaultKind.GAP] == sim.fault_counts[FaultKind.REST_5XX] == 0
        sim.inject(FaultKind.REST_5XX, "acc-1")
        async with http.get(sim.rest_url + "/user/balance", headers=headers) as response:
            assert response.status == 503
        sim.calm("acc-1", False)  # the open connection and REST have the plan's faults again
        await sim.step(40)
        async with asyncio.timeout(10):
            while not frames.lost:
                await ws.recv()
        statuses = []
        for _ in range(20):
            async with http.get(sim.rest_url + "/user/balance", headers=headers) as response:
                statuses.append(response.status)
        assert 503 in statuses and 200 in statuses
        await ws.close()


async def test_server_pings_and_drops_a_silent_client() -> None:
    config = SimulatorConfig(venue="extended", rate=0, ping_interval=0.2)
    async with await Simulator.start(config) as sim, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(sim.ws_url, headers={"X-Api-Key": sim.credential("acc-1")}, autoping=False)
        kinds = set()
        async with asyncio.timeout(10):
            while aiohttp.WSMsgType.PING not in kinds:
                kinds.add((await ws.receive()).type)
            # this client never answers: the venue gives up on it
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
        await ws.close()


async def test_admin_endpoints(extended: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{extended.base}/_sim/truth/a") as response:
            body = await response.json()
        assert Decimal(body["balance"]["balance"]) == extended.truth("a").balance.balance
        async with http.post(f"http://{extended.base}/_sim/inject/drift?account=a") as response:
            assert response.status == 200
        async with http.post(f"http://{extended.base}/_sim/inject/nonsense") as response:
            assert response.status == 400
    assert extended.drifts[-1][0] == "a"


def test_simulate_command() -> None:
    ok = subprocess.run([sys.executable, "-m", "statekeeper", "simulate", "--venue", "extended", "--duration", "0.5",
                         "--accounts", "x,y"], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "credential of x" in ok.stdout and "stopped after" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "statekeeper", "simulate", "--venue", "extended", "--faults",
                          "gapp=1"], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert bad.returncode == 2
    assert "unknown fault 'gapp'" in bad.stderr


# ----------------------------------------------------------------------------------------- recordings

RECORDINGS = {"extended": 41, "paradex": 42}


@pytest.mark.parametrize("venue", sorted(RECORDINGS))
def test_the_simulator_still_plays_its_recorded_sessions(venue: str) -> None:
    """Same seed, same frames: a change to the simulator's output is deliberate (re-record the fixture then)."""
    seed = RECORDINGS[venue]
    path = Path(__file__).parent / "fixtures" / "recorded" / f"{venue}-seed{seed}.jsonl"
    recorded = path.read_text().splitlines()
    assert record_session(venue, seed=seed, steps=400) == recorded, (
        f"the simulator's {venue} frames changed; if on purpose, re-record with "
        f"statekeeper.simulator.recording.record_session({venue!r}, seed={seed}, steps=400)"
    )
    assert len(kinds(recorded)) >= 5
