"""Secrets stay secret (invariant 10), across a run with failures.

Recognisable credentials are planted: an Extended API key and a Paradex JWT that the simulated venues accept, and
an Extended key they refuse. The daemon runs against the simulators with REST 5xx, disconnects, malformed frames
and that refused credential (an auth failure), logging at DEBUG. Then everything it could have leaked into is
collected and searched: every log line in the text and the JSON format (tracebacks included), every row of the
log and projection tables (raw frames, payloads, rejected frames and their reasons, session details), /healthz
and /metrics, the ``repr`` of the settings and of each account's parts (driver, REST client, stream, token
provider), and the text, ``repr`` and traceback of the exceptions a refused credential raises.
"""

from __future__ import annotations

import base64
import io
import logging
import traceback
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import SecretStr

from statekeeper.database import connect
from statekeeper.ingest.daemon import AccountRuntime
from statekeeper.logs import ContextFilter, JsonFormatter, TextFormatter
from statekeeper.simulator import FaultKind, FaultPlan, Simulator, SimulatorConfig
from statekeeper.venues.errors import VenueError
from statekeeper.venues.extended.rest import ExtendedRestClient
from statekeeper.venues.paradex.auth import StaticTokenProvider
from statekeeper.venues.paradex.rest import ParadexRestClient
from tests.ingest_support import Activity, running_daemon, settings_for, wait_until
from tests.projection_support import count_events


def _jwt(signature: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    claims = {"sub": "0xplanted", "token_type": "readonly", "iat": 1767225600, "exp": 4102444800}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.{signature}"


EXTENDED_KEY = "sk-PLANTED-extended-key-3f9a1c7e5d2b4a60"
WRONG_KEY = "sk-PLANTED-refused-key-8e1d6b2c9a4f7035"
PARADEX_SIGNATURE = "PLANTEDsignature-4c8e2a6f1b9d3e7c05a1f6b2d8c4e9a3"
PARADEX_JWT = _jwt(PARADEX_SIGNATURE)
WRONG_JWT = _jwt("PLANTEDrefused-sig-7d3b9f1e5a2c8b4d6e0f3a7c1b5d9e2a")
NEEDLES = {
    "extended key": EXTENDED_KEY,
    "refused key": WRONG_KEY,
    "paradex jwt": PARADEX_JWT,
    "paradex signature": PARADEX_SIGNATURE,
    "refused jwt": WRONG_JWT,
    "refused jwt signature": WRONG_JWT.rsplit(".", 1)[1],
}

DUMPS = {
    table: f"SELECT row_to_json(t)::text FROM {table} t"  # the table names are the constants below
    for table in (
        "events",
        "rejected_frames",
        "event_conflicts",
        "stream_sessions",
        "projector_checkpoints",
        "balances",
        "account_margins",
        "orders",
        "open_orders",
        "positions",
        "closed_positions",
        "fills",
        "fill_busts",
        "funding_payments",
    )
}


def plant(sim: Simulator, account: str, credential: str) -> None:
    """Make the simulated venue accept ``credential`` (and only it) for ``account``."""
    server = sim.server
    server.accounts_by_credential.pop(server.credentials[account])
    server.credentials[account] = credential
    server.accounts_by_credential[credential] = account
    sim.credentials[account] = credential


@pytest.fixture
def captured_logs() -> Iterator[dict[str, io.StringIO]]:
    """Every log line, written in both formats at DEBUG (websockets at INFO, as the CLI sets it)."""
    streams = {"text": io.StringIO(), "json": io.StringIO()}
    root = logging.getLogger()
    handlers = []
    for name, formatter in (("text", TextFormatter()), ("json", JsonFormatter())):
        handler = logging.StreamHandler(streams[name])
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        handlers.append(handler)
        root.addHandler(handler)
    level, websockets_level = root.level, logging.getLogger("websockets").level
    root.setLevel(logging.DEBUG)
    logging.getLogger("websockets").setLevel(logging.INFO)
    try:
        yield streams
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("websockets").setLevel(websockets_level)


def reprs(value: object, depth: int = 3, seen: set[int] | None = None) -> Iterator[str]:
    """``repr`` of an object and of the attributes of statekeeper's objects inside it, a few levels deep."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    yield repr(value)
    yield str(value)
    if depth == 0 or isinstance(value, SecretStr) or not type(value).__module__.startswith("statekeeper"):
        return
    attributes = getattr(value, "__dict__", None) or {
        name: getattr(value, name) for name in getattr(type(value), "__slots__", ()) if hasattr(value, name)
    }
    for item in attributes.values():
        yield from reprs(item, depth - 1, seen)


def account_parts(runtimes: Iterable[AccountRuntime]) -> Iterator[object]:
    """Each account's runtime, ingest, writer, driver, REST client, stream client and token provider."""
    for runtime in runtimes:
        yield from (runtime, runtime.writer, runtime.settings)
        if runtime.ingest is not None:
            driver = runtime.ingest.driver
            yield from (runtime.ingest, driver, driver.stream())
            yield from (getattr(driver, name) for name in ("rest", "tokens") if hasattr(driver, name))


async def refused_call_texts(extended_url: str, paradex_url: str) -> list[str]:
    """What a refused credential raises, as text, repr and traceback."""
    texts = []
    extended = ExtendedRestClient(extended_url, SecretStr(WRONG_KEY))
    paradex = ParadexRestClient(paradex_url, StaticTokenProvider(SecretStr(WRONG_JWT)))
    for client, call in ((extended, extended.balance), (paradex, paradex.balances)):
        async with client:
            try:
                await call()
            except VenueError as exc:
                texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
            else:
                raise AssertionError(f"{call} with a refused credential did not fail")
    return texts


async def test_planted_secrets_appear_nowhere(database_url: str, captured_logs: dict[str, io.StringIO]) -> None:
    plan = FaultPlan(retry_after_seconds=0, slow_seconds=0.2)
    extended_config = SimulatorConfig(venue="extended", seed=71, accounts=("x-ok", "x-bad"), rate=0, step_ms=10,
                                      funding_interval_ms=1000, faults=plan)  # fmt: skip
    paradex_config = SimulatorConfig(venue="paradex", seed=72, accounts=("p-ok",), rate=0, step_ms=10,
                                     funding_interval_ms=1000, faults=plan)  # fmt: skip
    async with await Simulator.start(extended_config) as ext, await Simulator.start(paradex_config) as pdx:
        plant(ext, "x-ok", EXTENDED_KEY)
        plant(pdx, "p-ok", PARADEX_JWT)
        ext.inject(FaultKind.REST_5XX, "x-ok", count=2)  # the first resyncs meet server errors
        pdx.inject(FaultKind.REST_5XX, "p-ok", count=2)
        settings = settings_for({"x-ok": ext, "x-bad": ext, "p-ok": pdx}, credentials={"x-bad": WRONG_KEY})
        async with running_daemon(settings, database_url) as daemon, Activity(ext, pdx, rate=100) as activity:

            async def resynced(account: str, count: int) -> bool:
                return await count_events(database_url, account, "resync_completed") >= count

            for account in ("x-ok", "p-ok"):
                await wait_until(lambda a=account: resynced(a, 1), within=20, what=f"{account} resynced")
            for sim, account in ((ext, "x-ok"), (pdx, "p-ok")):
                sim.inject(FaultKind.MALFORMED, account, count=2)
                sim.inject(FaultKind.DUPLICATE, account)
            begun = activity.steps
            await wait_until(lambda: activity.steps >= begun + 50, within=15, what="activity after the bad frames")
            for sim, account in ((ext, "x-ok"), (pdx, "p-ok")):
                sim.inject(FaultKind.DISCONNECT, account)
                await wait_until(lambda a=account: resynced(a, 2), within=20, what=f"{account} resynced again")
            await wait_until(lambda: daemon.health()[1]["accounts"]["x-bad"]["error"] is not None, within=20,
                             what="the refused credential reported")  # fmt: skip
            async with aiohttp.ClientSession() as http:
                served = []
                for path in ("/healthz", "/metrics"):
                    async with http.get(f"http://127.0.0.1:{daemon.port}{path}") as response:
                        served.append(await response.text())
            runtime_reprs = [
                text for part in account_parts(daemon.accounts.values()) for text in (repr(part), str(part))
            ]
            runtime_reprs += [repr(settings), str(settings)] + [repr(a) for a in settings.accounts]
        refused = await refused_call_texts(ext.rest_url, pdx.rest_url)
        health = daemon.health()[1]

    connection = await connect(database_url)
    try:
        tables = {table: [r[0] for r in await connection.fetch(sql)] for table, sql in DUMPS.items()}
    finally:
        await connection.close()

    # the run had its failures, and everything searched holds something
    assert ext.fault_counts[FaultKind.REST_5XX] >= 2 and pdx.fault_counts[FaultKind.REST_5XX] >= 2
    assert ext.fault_counts[FaultKind.MALFORMED] >= 1 and pdx.fault_counts[FaultKind.MALFORMED] >= 1
    assert tables["rejected_frames"], "the malformed frames are stored as rejected"
    assert "401" in str(health["accounts"]["x-bad"]["error"]) or "refused" in str(health["accounts"]["x-bad"]["error"])
    assert len(tables["events"]) > 100 and tables["fills"] and tables["balances"]
    logs = {name: stream.getvalue() for name, stream in captured_logs.items()}
    assert all(text.count("\n") > 20 for text in logs.values()), "the daemon logged its run"
    assert "Traceback" in logs["text"] or "exc_info" in logs["json"] or refused, "an exception was written out"

    places: dict[str, str] = {
        **{f"log ({name})": text for name, text in logs.items()},
        **{f"table {table}": "\n".join(rows) for table, rows in tables.items()},
        "/healthz": served[0],
        "/metrics": served[1],
        "health (in process)": orjson.dumps(health).decode(),
        "repr of the settings and the accounts' parts": "\n".join(runtime_reprs),
        "exceptions of a refused credential": "\n".join(refused),
    }
    leaks = [f"{needle} in {place}" for place, text in places.items() for needle, value in NEEDLES.items()
             if value in text]  # fmt: skip
    assert leaks == [], leaks


async def test_no_attribute_of_a_client_holds_a_credential_in_clear() -> None:
    """Deeper than ``repr``: no attribute of a venue client (a few levels down) shows the credential when printed,
    as a debugger, a traceback with locals or an error reporter would print it."""
    async with await Simulator.start(SimulatorConfig(venue="extended", rate=0)) as sim:
        extended = ExtendedRestClient(sim.rest_url, SecretStr(EXTENDED_KEY))
        paradex = ParadexRestClient(sim.rest_url, StaticTokenProvider(SecretStr(PARADEX_JWT)))
        shown = "\n".join([*reprs(extended), *reprs(paradex)])
        await extended.close()
        await paradex.close()
    assert shown
    assert EXTENDED_KEY not in shown and PARADEX_SIGNATURE not in shown
