"""Fidelity with the venues' official SDKs: each SDK's own stream client and REST client connect to a venue server
on 127.0.0.1, and every frame and every response must parse into the SDK's models.

Each SDK runs in its own virtual environment (``.venv-sdk/<venue>``, built or reused by ``tests/sdk/build_envs.py``
from ``tests/sdk/<venue>-requirements.txt``): the two cannot share one, nor share ours. The check itself is
``tests/sdk/<venue>_check.py``, run in that environment as a subprocess; it prints a JSON report, asserted here.

The servers: ``serve_simulator`` (``statekeeper.simulator``), held to no failure at all, and ``serve_examples``: a
small server of the protocols' example payloads (``tests/fixtures/protocols``, else ``../shared/protocols``) through
the real paths, headers and envelopes. Those examples disagree with the SDKs in places; ``EXAMPLE_DISAGREEMENTS``
lists each, and the test demands exactly those failures. A second test serves the examples with faults added, and
demands that the check reports each.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from statekeeper.simulator import Simulator, SimulatorConfig

ROOT = Path(__file__).resolve().parents[1]
SDK_DIR = ROOT / "tests" / "sdk"
EXAMPLE_DIRS = (ROOT / "tests" / "fixtures" / "protocols", ROOT.parent / "shared" / "protocols")
VenueName = Literal["extended", "paradex"]
VENUES: tuple[VenueName, ...] = ("extended", "paradex")
CREDENTIAL_FLAG = {"extended": "--api-key", "paradex": "--jwt"}
ACCOUNT = "acc-1"
BUILD_TIMEOUT = 1500.0  # a cold build downloads and installs ~120 distributions
STREAM_TIMEOUT = 20.0  # how long a check waits for its stream frames
CHECK_TIMEOUT = STREAM_TIMEOUT + 90.0  # the checks stop themselves after STREAM_TIMEOUT + 60 s


@dataclass(frozen=True)
class VenueUnderTest:
    """A running venue server, and what a check against it must see."""

    venue: str
    ws_url: str
    rest_url: str
    credential: str
    frames: int
    """Stream frames the check must receive, at least."""
    frame_types: frozenset[str] = frozenset()
    """Frame types (Extended) or channels (Paradex) among them, at least."""
    known_failures: frozenset[str] = frozenset()
    """Every failure the check must report (see ``failure_keys``); nothing else may fail."""


VenueServer = Callable[[VenueName], AbstractAsyncContextManager[VenueUnderTest]]


# --------------------------------------------------------------------------------------------- the simulator
@asynccontextmanager
async def serve_simulator(venue: VenueName) -> AsyncIterator[VenueUnderTest]:
    # Funding every 2 s of venue time, so that Paradex's funding_payments channel is seen within the check too.
    config = SimulatorConfig(venue=venue, seed=1, accounts=(ACCOUNT,), funding_interval_ms=2_000)
    sim = await Simulator.start(config)
    try:
        yield VenueUnderTest(
            venue=venue,
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            credential=sim.credential(ACCOUNT),
            frames=200,  # a few seconds of activity at the default rate
            frame_types=SIMULATOR_FRAME_TYPES[venue],
        )
    finally:
        await sim.stop()


SIMULATOR_FRAME_TYPES = {
    "extended": frozenset({"ORDER", "BALANCE", "POSITION", "TRADE"}),
    "paradex": frozenset({"account", "balance_events", "fills.ALL", "funding_payments.ALL", "orders.ALL", "positions"}),
}


# ------------------------------------------------------------------------------------ the example payloads
def load_examples(venue: VenueName) -> dict[str, Any]:
    """The protocol examples of ``venue`` by file stem (``ws_v1_order_update.docs``)."""
    for base in EXAMPLE_DIRS:
        if (base / venue).is_dir():
            return {
                path.name.removesuffix(".json"): json.loads(path.read_text()) for path in (base / venue).glob("*.json")
            }
    raise FileNotFoundError(f"no {venue} protocol examples in any of {[str(base) for base in EXAMPLE_DIRS]}")


async def start_site(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def ws_port(server: Any) -> int:
    return int(server.sockets[0].getsockname()[1])


class ExtendedExamples:
    """Extended's v1 account stream and account REST API, serving the examples.

    Stream (``/stream.extended.exchange/v1/account``, header ``X-Api-Key`` required): the ORDER, BALANCE and POSITION
    snapshots, then the delta examples, numbered ``seq`` 1, 2, 3... on the connection. REST (``/api/v1``, header
    ``X-Api-Key``): each endpoint's example; ``/user/positions/history`` has none and answers an empty page."""

    STREAM_PATH = "/stream.extended.exchange/v1/account"
    SNAPSHOTS = ("ws_v1_order_snapshot.live", "ws_v1_balance_snapshot.live", "ws_v1_position_snapshot.live")
    DELTAS = (
        "ws_v1_order_update.docs",
        "ws_v1_trade_update.docs",
        "ws_v1_trade_update.sdk_fixture",
        "ws_v1_balance_update.docs",
        "ws_v1_position_update.docs",
    )
    REST: ClassVar[dict[str, str]] = {
        "/user/account/info": "rest_account_info.docs",
        "/user/balance": "rest_balance.docs",
        "/user/positions": "rest_positions.docs",
        "/user/orders": "rest_open_orders.docs",
        "/user/orders/history": "rest_orders_history.docs",
        "/user/trades": "rest_trades.docs",
        "/user/assetOperations": "rest_asset_operations.docs",
        "/user/funding/history": "rest_funding_history.docs",
    }

    def __init__(self, examples: dict[str, Any]) -> None:
        self.examples = examples
        self.api_key = f"example-api-key-{ACCOUNT}"
        self.frames = [
            {**examples[name], "seq": seq} for seq, name in enumerate((*self.SNAPSHOTS, *self.DELTAS), start=1)
        ]

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path != self.STREAM_PATH:
            return connection.respond(404, "Not Found\n")
        if request.headers.get("X-Api-Key") != self.api_key:
            return connection.respond(401, "Unauthorized\n")
        return None

    async def stream(self, connection: ServerConnection) -> None:
        for frame in self.frames:
            await connection.send(json.dumps(frame))
        await connection.wait_closed()

    def error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"status": "ERROR", "error": {"code": code, "message": message}}, status=status)

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("X-Api-Key") != self.api_key:
            return self.error(401, "UNAUTHORIZED", "Invalid API key")
        response: web.StreamResponse = await handler(request)
        return response

    async def rest(self, request: web.Request) -> web.Response:
        path = request.path.removeprefix("/api/v1")
        if path == "/user/funding/history" and "fromTime" not in request.query:
            return self.error(400, "VALIDATION_ERROR", "fromTime is required")
        if path == "/user/positions/history":
            return web.json_response({"status": "OK", "data": []})
        if path in self.REST:
            return web.json_response(self.examples[self.REST[path]])
        if path.startswith("/user/orders/"):
            wanted = path.removeprefix("/user/orders/")
            for name in ("rest_open_orders.docs", "rest_orders_history.docs"):
                for order in self.examples[name]["data"]:
                    if str(order["id"]) == wanted:
                        return web.json_response({"status": "OK", "data": order})
        return self.error(404, "NOT_FOUND", f"{path} not found")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[VenueUnderTest]:
        app = web.Application(middlewares=[self.authenticate])
        app.router.add_get("/api/v1/{tail:.*}", self.rest)
        runner, rest_port = await start_site(app)
        try:
            async with serve(self.stream, "127.0.0.1", 0, process_request=self.process_request) as server:
                yield VenueUnderTest(
                    venue="extended",
                    ws_url=f"ws://127.0.0.1:{ws_port(server)}{self.STREAM_PATH}",
                    rest_url=f"http://127.0.0.1:{rest_port}/api/v1",
                    credential=self.api_key,
                    frames=len(self.frames),
                    frame_types=frozenset({"ORDER", "BALANCE", "POSITION", "TRADE"}),
                    known_failures=EXAMPLE_DISAGREEMENTS["extended"],
                )
        finally:
            await runner.cleanup()


def unsigned_jwt(subject: str) -> str:
    """A well-formed JWT signed by nobody (paradex-py decodes its ``exp`` claim, never its signature)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': subject, 'exp': int(time.time()) + 3600})}."


class ParadexExamples:
    """Paradex's JSON-RPC WebSocket API and account REST API, serving the examples.

    WebSocket (``/v1``): ``auth`` with the JWT, then ``subscribe``; each answer as in the examples, then the
    channel's example notification. REST (``/v1``, header ``Authorization: Bearer <JWT>``): each endpoint's example.
    ``/orders-history``, ``/transfers``, ``/tradebusts`` and ``/transactions`` have no REST example; they answer a page
    of the WebSocket example's payload (the spec gives both the same schema)."""

    REST: ClassVar[dict[str, str]] = {
        "/account": "rest_account.schema_example",
        "/balance": "rest_balance.schema_example",
        "/positions": "rest_positions.schema_example",
        "/orders": "rest_open_orders.schema_example",
        "/fills": "rest_fills.schema_example",
    }
    FROM_NOTIFICATIONS: ClassVar[dict[str, str]] = {
        "/transfers": "ws_transfers_notification.schema_example",
        "/tradebusts": "ws_tradebusts_notification.schema_example",
        "/transactions": "ws_transaction_notification.schema_example",
    }

    def __init__(self, examples: dict[str, Any]) -> None:
        self.examples = examples
        self.jwt = unsigned_jwt(ACCOUNT)
        self.notifications: dict[str, list[dict[str, Any]]] = {}
        for name, example in sorted(examples.items()):
            if name.endswith("_notification.schema_example"):
                self.notifications.setdefault(example["params"]["channel"], []).append(example)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        return None if request.path == "/v1" else connection.respond(404, "Not Found\n")

    def answer(self, name: str, request_id: Any, **changes: Any) -> str:
        return json.dumps({**self.examples[name], **changes, "id": request_id})

    async def stream(self, connection: ServerConnection) -> None:
        authenticated = False
        async for raw in connection:
            request = json.loads(raw)
            method, request_id = request.get("method"), request.get("id")
            params = request.get("params") or {}
            if method == "auth":
                authenticated = params.get("bearer") == self.jwt
                name = "ws_auth_response.docs" if authenticated else "ws_auth_error.docs"
                await connection.send(self.answer(name, request_id))
            elif method == "subscribe" and not authenticated:
                await connection.send(self.answer("ws_auth_error.docs", request_id))
            elif method in ("subscribe", "unsubscribe"):
                channel = str(params.get("channel"))
                await connection.send(
                    self.answer("ws_subscribe_response.docs", request_id, result={"channel": channel})
                )
                for notification in self.notifications.get(channel, []) if method == "subscribe" else []:
                    await connection.send(json.dumps(notification))
            else:
                error = {"code": -32601, "message": "method does not exist"}
                await connection.send(json.dumps({"jsonrpc": "2.0", "error": error, "id": request_id}))

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.jwt}":
            body = {"error": "INVALID_TOKEN", "message": "Invalid Bearer Token", "data": None}
            return web.json_response(body, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def page(self, items: list[Any]) -> dict[str, Any]:
        return {"next": None, "prev": None, "results": items}

    def body(self, path: str, query: dict[str, str]) -> Any:
        """The answer to ``GET /v1<path>``, or None for a 404."""
        orders = self.examples["rest_open_orders.schema_example"]["results"]
        if path in self.REST:
            return self.examples[self.REST[path]]
        if path in self.FROM_NOTIFICATIONS:
            return self.page([self.examples[self.FROM_NOTIFICATIONS[path]]["params"]["data"]])
        if path == "/orders-history":
            return self.page(orders)
        if path == "/funding/payments":
            payments = self.examples["rest_funding_payments.schema_example"]["results"]
            return self.page([payment for payment in payments if payment["market"] == query["market"]])
        found = [order for order in orders if path == f"/orders/{order['id']}"]
        return found[0] if found else None

    async def rest(self, request: web.Request) -> web.Response:
        path = request.path.removeprefix("/v1")
        if path == "/funding/payments" and "market" not in request.query:
            return web.json_response({"error": "VALIDATION_ERROR", "message": "market is required"}, status=400)
        body = self.body(path, dict(request.query))
        if body is None:
            return web.json_response({"error": "NOT_FOUND", "message": f"{path} not found", "data": None}, status=404)
        return web.json_response(body)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[VenueUnderTest]:
        app = web.Application(middlewares=[self.authenticate])
        app.router.add_get("/v1/{tail:.*}", self.rest)
        runner, rest_port = await start_site(app)
        try:
            async with serve(self.stream, "127.0.0.1", 0, process_request=self.process_request) as server:
                yield VenueUnderTest(
                    venue="paradex",
                    ws_url=f"ws://127.0.0.1:{ws_port(server)}/v1",
                    rest_url=f"http://127.0.0.1:{rest_port}/v1",
                    credential=self.jwt,
                    frames=sum(len(items) for items in self.notifications.values()),
                    frame_types=frozenset(self.notifications),
                    known_failures=EXAMPLE_DISAGREEMENTS["paradex"],
                )
        finally:
            await runner.cleanup()


@asynccontextmanager
async def serve_examples(venue: VenueName) -> AsyncIterator[VenueUnderTest]:
    examples = load_examples(venue)
    server = ExtendedExamples(examples) if venue == "extended" else ParadexExamples(examples)
    async with server.running() as target:
        yield target


@asynccontextmanager
async def serve_broken_examples(venue: VenueName) -> AsyncIterator[VenueUnderTest]:
    """The example server with faults the SDKs do not take, each of which the check must report."""
    examples = load_examples(venue)
    server: ExtendedExamples | ParadexExamples
    if venue == "extended":
        server = ExtendedExamples(examples)
        # A frame type the SDK does not know (third parties claim a FUNDING type), and a seq gap before it.
        funding = {"type": "FUNDING", "data": {"funding": [{"market": "BTC-USD", "fundingFee": "0.1"}]}, "ts": 1}
        server.frames = [*server.frames, {**funding, "seq": len(server.frames) + 2}]
        caught = {
            "stream:FUNDING | unmodelled | the SDK does not know this frame type (it reads it as UNKNOWN)",
            "stream:seq | protocol | seq does not count 1, 2, 3... on this connection",
        }
    else:
        server = ParadexExamples(examples)
        # A number where the model has a decimal string; a notification under a channel name other than the one
        # subscribed (the SDK routes by exact name); an enum value the model does not have.
        server.notifications["orders.ALL"][0]["params"]["data"]["size"] = 0.05
        server.notifications["fills.ALL"][0]["params"]["channel"] = "fills.BTC-USD-PERP"
        examples["rest_positions.schema_example"]["results"][0]["side"] = "FLAT"
        caught = {
            "stream:orders.ALL | params.data.size | string_type",
            "stream:fills.BTC-USD-PERP | dispatch | 1 of 1 notification(s) never reached the SDK callback "
            "(it routes by the exact channel name it subscribed)",
            "rest:GET /positions | results.0.side | enum",
        }
    async with server.running() as target:
        yield dataclasses.replace(target, frame_types=frozenset(), known_failures=target.known_failures | caught)


# Where the venues' documented examples and the SDKs' models disagree: the failures the check must report for them,
# as "where | loc | type" (see failure_keys). x10-python-trading-starknet 2.6.0 against Extended's docs:
EXAMPLE_DISAGREEMENTS: dict[str, frozenset[str]] = {
    "extended": frozenset(
        {
            # The docs' account-update ORDER example has no timeInForce; OpenOrderModel requires it.
            "stream:ORDER | data.orders.0.time_in_force | missing",
            # The docs' POSITION example (stream and REST) has no status; PositionModel requires OPENED/CLOSED.
            "stream:POSITION | data.positions.0.status | missing",
            "rest:GET /user/positions | data.0.status | missing",
            # The docs' REST position has createdTime/updatedTime; PositionModel reads createdAt/updatedAt (as the
            # docs' stream example has them).
            "rest:GET /user/positions | data.0.created_at | missing",
            "rest:GET /user/positions | data.0.updated_at | missing",
            # The docs' REST position has "adl": "2.5"; PositionModel.adl is an int (the stream example has 1).
            "rest:GET /user/positions | data.0.adl | int_parsing",
            # The docs' account info has no accountIndex; AccountModel requires it.
            "rest:GET /user/account/info | data.account_index | missing",
            # The docs' asset operations include type WITHDRAWAL; the SDK knows only FAST_ and SLOW_WITHDRAWAL.
            "rest:GET /user/assetOperations | data.2.type | enum",
        }
    ),
    # paradex-py 0.8.2's models accept every Paradex example (they are all-optional, extra="allow").
    "paradex": frozenset(),
}

# The servers under test: the simulator (held to no failure at all), and the protocols' example payloads (held to
# exactly the disagreements listed above: they document where the venues' docs and SDKs differ).
VENUE_SERVERS: dict[str, VenueServer] = {"simulator": serve_simulator, "examples": serve_examples}


def failure_keys(report: dict[str, Any]) -> set[str]:
    """Each failure of a report as ``where | loc | type`` (one per validation error) or ``where | kind | message``."""
    keys: set[str] = set()
    for failure in report["failures"]:
        if failure["errors"]:
            keys.update(f"{failure['where']} | {error['loc']} | {error['type']}" for error in failure["errors"])
        else:
            keys.add(f"{failure['where']} | {failure['kind']} | {failure['message']}")
    return keys


@pytest.fixture
def sdk_python(venue: VenueName) -> Path:
    """The interpreter of the venue's SDK environment, built (or reused) now; a failed build fails the test."""
    command = [sys.executable, str(SDK_DIR / "build_envs.py"), venue]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        pytest.fail(f"the {venue} SDK environment could not be built:\n{result.stderr}\n{result.stdout}", pytrace=False)
    return Path(json.loads(result.stdout.strip().splitlines()[-1])["python"])


async def run_check(python: Path, target: VenueUnderTest) -> tuple[int, dict[str, Any], str]:
    """Run the venue's check script against ``target``: its exit status, its report, its stderr."""
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(SDK_DIR / f"{target.venue}_check.py"),
        "--ws-url",
        target.ws_url,
        "--rest-url",
        target.rest_url,
        CREDENTIAL_FLAG[target.venue],
        target.credential,
        "--frames",
        str(target.frames),
        "--timeout",
        str(STREAM_TIMEOUT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHECK_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{target.venue}_check.py did not finish in {CHECK_TIMEOUT} s", pytrace=False)
    try:
        report: dict[str, Any] = json.loads(stdout)
    except ValueError:
        pytest.fail(
            f"{target.venue}_check.py exited with {process.returncode} and no report:\n"
            f"--- stdout ---\n{stdout.decode()}\n--- stderr ---\n{stderr.decode()}",
            pytrace=False,
        )
    assert process.returncode is not None
    return process.returncode, report, stderr.decode()


def summary(keys: list[str]) -> str:
    """Failure keys with list indices folded (``data.N.status``), counted: one line per kind of failure."""

    def fold(key: str) -> str:
        where, loc, rest = key.split(" | ", 2)
        folded = re.sub(r"[.]\d+(?=[.]|$)", ".N", loc)
        return f"{where} | {folded} | {rest}"

    counted = Counter(fold(key) for key in keys)
    return "\n".join(f"  {count:>4} x {key}" for key, count in sorted(counted.items()))


def assert_report(target: VenueUnderTest, status: int, report: dict[str, Any], stderr: str, saved: Path) -> None:
    """The report has exactly the failures ``target`` expects, and checked all it asks for."""
    saved.write_text(json.dumps(report, indent=2))
    keys = failure_keys(report)
    where = f"(the whole report: {saved})"
    unexpected = sorted(keys - target.known_failures)
    first = json.dumps(report["failures"][:3], indent=2)
    assert not unexpected, (
        f"failures {where}:\n{summary(unexpected)}\n\nthe first ones:\n{first}\n\nstderr (end):\n{stderr[-3000:]}"
    )
    missing = sorted(target.known_failures - keys)
    assert not missing, f"expected failures not reported {where}:\n{summary(missing)}"
    assert status == (0 if not keys else 1), f"exit status {status} for a report with {len(keys)} failure(s) {where}"
    assert report["ok"] is (not keys)
    # Complete: the check saw the frames and frame types asked for, and every REST endpoint answered.
    assert report["stream"]["frames"] >= target.frames, where
    assert set(report["stream"]["by_type"]) >= target.frame_types, where
    assert all(tally["received"] >= 1 for tally in report["rest"].values()), where


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + CHECK_TIMEOUT + 60)
@pytest.mark.parametrize("server", sorted(VENUE_SERVERS))
@pytest.mark.parametrize("venue", VENUES)
async def test_the_official_sdk_parses_every_frame_and_response(
    venue: VenueName, server: str, sdk_python: Path, tmp_path: Path
) -> None:
    async with VENUE_SERVERS[server](venue) as target:
        status, report, stderr = await run_check(sdk_python, target)
    assert_report(target, status, report, stderr, tmp_path / f"{venue}-report.json")


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + CHECK_TIMEOUT + 60)
@pytest.mark.parametrize("venue", VENUES)
async def test_the_check_reports_what_the_sdk_does_not_take(venue: VenueName, sdk_python: Path, tmp_path: Path) -> None:
    async with serve_broken_examples(venue) as target:
        status, report, stderr = await run_check(sdk_python, target)
    assert_report(target, status, report, stderr, tmp_path / f"{venue}-report.json")
    assert status == 1
