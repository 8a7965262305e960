"""A simulated venue that serves the real protocol of Extended or Paradex on 127.0.0.1, for tests, demos and benches.

It holds the true account state (:mod:`.engine`), generates realistic activity at a chosen rate, serves it
through the venue's own WebSocket and REST protocol (:mod:`.extended`, :mod:`.paradex`), injects faults at rates
or on demand (:mod:`.faults`), and exposes the truth to tests::

    async with await Simulator.start(SimulatorConfig(venue="extended", seed=7, accounts=("acc-1",))) as sim:
        sim.ws_url, sim.rest_url, sim.credential("acc-1")
        await sim.step(100)            # with rate=0 the test drives the activity itself
        sim.inject(FaultKind.GAP)      # the next frame of every connection is lost
        sim.truth("acc-1")             # balances, orders, positions, fills, funding, as canonical records

The same seed and configuration give the same activity on any machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import orjson
from aiohttp import web

from statekeeper.simulator.engine import (
    EXTENDED_MARKETS,
    PARADEX_MARKETS,
    Change,
    Engine,
    EngineConfig,
    Truth,
)
from statekeeper.simulator.faults import FaultDice, FaultKind, FaultPlan
from statekeeper.simulator.server import SentFrames
from statekeeper.simulator.venue import VenueServer

__all__ = ["FaultKind", "FaultPlan", "Simulator", "SimulatorConfig", "Truth"]

logger = logging.getLogger(__name__)

VenueName = Literal["extended", "paradex"]
FAST_BATCH = 50


@dataclass(frozen=True)
class SimulatorConfig:
    venue: VenueName
    seed: int = 1
    accounts: tuple[str, ...] = ("acc-1",)
    host: str = "127.0.0.1"
    port: int = 0
    rate: float = 20.0
    """Engine steps per second of wall time; 0 pauses (drive it with :meth:`Simulator.step`); ``inf`` is flat out."""
    faults: FaultPlan = field(default_factory=FaultPlan)
    ping_interval: float | None = None
    """Seconds between the server's pings (the venue's own interval by default; 0 disables them)."""
    start_ms: int | None = None
    """Venue time at the start (epoch ms); 2026-01-01T00:00:00Z by default, for determinism."""
    step_ms: int | None = None
    """Venue time per step; by default 1000 / rate, so venue time keeps pace with the wall clock."""
    warmup_steps: int = 200
    """Activity that happens before the server opens: some history exists for backfills."""
    funding_interval_ms: int = 3_600_000
    record_frames: bool = True


def _credential(venue: VenueName, seed: int, account: str) -> str:
    digest = hashlib.sha256(f"{venue}/{seed}/{account}".encode()).hexdigest()
    if venue == "extended":
        return f"sim-{digest[:32]}"

    # Paradex credentials are JWTs (a read-only token, long-lived): a well-formed one, signed by nobody.
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    claims = {"sub": f"0x{digest}", "account": account, "token_type": "readonly", "iat": 1767225600,
              "exp": 4102444800}  # fmt: skip
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.{digest[:43]}"


class Simulator:
    """A running simulated venue. Create it with :meth:`start`; stop it with :meth:`stop` (or ``async with``)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        extended = config.venue == "extended"
        step_ms = config.step_ms or (max(1, round(1000 / config.rate)) if 0 < config.rate < math.inf else 100)
        self.engine = Engine(
            EngineConfig(
                markets=EXTENDED_MARKETS if extended else PARADEX_MARKETS,
                collateral="USD" if extended else "USDC",
                start_ms=config.start_ms or EngineConfig.start_ms,
                step_ms=step_ms,
                funding_interval_ms=config.funding_interval_ms,
                busts=not extended,
                fill_type="TRADE" if extended else "FILL",
                fill_fee_asset=None if extended else "USDC",
            ),
            seed=config.seed,
        )
        self.fault_counts: Counter[FaultKind] = Counter()
        self.credentials = {a: _credential(config.venue, config.seed, a) for a in config.accounts}
        for account in config.accounts:
            self.engine.add_account(account)
        for _ in range(config.warmup_steps):
            self.engine.step()
        self.server: VenueServer = self._build_server()
        self._drift = {a: FaultDice(config.faults, f"{config.seed}/drift/{a}", self.fault_counts, (FaultKind.DRIFT,))
                       for a in config.accounts}  # fmt: skip
        self.drifts: list[tuple[str, str]] = []
        self._runner: asyncio.Task[None] | None = None
        self._site: web.TCPSite | None = None
        self._app_runner: web.AppRunner | None = None
        self.port = 0

    def _build_server(self) -> VenueServer:
        kwargs: dict[str, Any] = {
            "credentials": self.credentials,
            "plan": self.config.faults,
            "seed": self.config.seed,
            "counts": self.fault_counts,
            "ping_interval": self.config.ping_interval,
            "record": self.config.record_frames,
        }
        if self.config.venue == "extended":
            from statekeeper.simulator.extended import ExtendedServer  # noqa: PLC0415

            return ExtendedServer(self.engine, **kwargs)
        from statekeeper.simulator.paradex import ParadexServer  # noqa: PLC0415

        return ParadexServer(self.engine, **kwargs)

    # ------------------------------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, config: SimulatorConfig) -> Simulator:
        simulator = cls(config)
        await simulator._serve()
        return simulator

    async def _serve(self) -> None:
        app = web.Application()
        app.add_routes(self.server.routes())
        app.add_routes(
            [
                web.get("/_sim/truth/{account}", self._truth_endpoint),
                web.post("/_sim/inject/{kind}", self._inject_endpoint),
            ]
        )
        self._app_runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._app_runner.setup()
        self._site = web.TCPSite(self._app_runner, self.config.host, self.config.port)
        await self._site.start()
        self.port = int(self._app_runner.addresses[0][1])
        if self.config.rate > 0:
            self._runner = asyncio.create_task(self._run(), name=f"simulator-{self.config.venue}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if math.isinf(self.config.rate):
            while True:
                self._advance(FAST_BATCH)
                await asyncio.sleep(0)
        interval = 1.0 / self.config.rate
        next_at = loop.time()
        while True:
            self._advance(1)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        await self.server.close()
        if self._app_runner is not None:
            await self._app_runner.cleanup()
            self._app_runner = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------ activity

    def _advance(self, count: int) -> list[Change]:
        changes: list[Change] = []
        for _ in range(count):
            step = self.engine.step()
            self.server.publish(step)
            changes.extend(step)
            for account, dice in self._drift.items():
                if self.config.faults.rate(FaultKind.DRIFT) and dice.draw() is FaultKind.DRIFT:
                    self.drifts.append((account, self.engine.drift(account)))
        return changes

    async def step(self, count: int = 1) -> list[Change]:
        """Advance the activity by ``count`` steps now (with ``rate=0`` this is the only activity)."""
        changes = self._advance(count)
        await asyncio.sleep(0)  # let the connections' senders pick the messages up
        return changes

    def truth(self, account: str) -> Truth:
        return self.engine.truth(account)

    def inject(
        self,
        kind: FaultKind,
        account: str | None = None,
        count: int = 1,
        *,
        drift: Literal["order", "balance"] | None = None,
    ) -> list[str]:
        """Cause a fault now: on the next frames or requests, or, for drift and disconnect, at once.

        ``drift`` chooses what a drift changes (see :meth:`statekeeper.simulator.engine.Engine.drift`): either, at
        random, by default.
        """
        names = [account] if account is not None else list(self.config.accounts)
        if kind is FaultKind.DRIFT:
            done = []
            for name in names:
                for _ in range(count):
                    self.fault_counts[FaultKind.DRIFT] += 1
                    description = self.engine.drift(name, drift)
                    self.drifts.append((name, description))
                    done.append(description)
            return done
        if kind is FaultKind.DISCONNECT:
            self.fault_counts[FaultKind.DISCONNECT] += 1
            self.server.spawn(self.server.disconnect(account), name="sim-disconnect")
            return [f"disconnecting {account or 'every account'}"]
        self.server.trigger(kind, account, count)
        return [f"{kind} on the next {count} for {account or 'every account'}"]

    def calm(self, account: str, calm: bool = True) -> None:
        """Keep the fault plan's random faults off the account (its streams and its REST requests) until called
        again with ``calm=False``. Faults caused by :meth:`inject` still happen."""
        self.server.set_calm(account, calm)
        self._drift[account].calm = calm

    # --------------------------------------------------------------------------------------------- access

    @property
    def base(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        if self.config.venue == "extended":
            return f"ws://{self.base}/stream.extended.exchange/v1/account"
        return f"ws://{self.base}/v1"

    @property
    def rest_url(self) -> str:
        return f"http://{self.base}/api/v1" if self.config.venue == "extended" else f"http://{self.base}/v1"

    def credential(self, account: str) -> str:
        return self.credentials[account]

    def connections(self, account: str) -> int:
        return len(self.server.connections.get(account, []))

    def frames(self, account: str) -> list[SentFrames]:
        """Per connection of the account, in order: the frames sent, and those a fault swallowed."""
        return list(self.server.history.get(account, []))

    async def wait_connected(self, account: str, count: int = 1, within: float = 10.0) -> None:
        """Wait until the account has ``count`` stream connections open (deadline: ``within`` seconds)."""
        async with asyncio.timeout(within), self.server.registered:
            await self.server.registered.wait_for(lambda: self.connections(account) >= count)

    # ------------------------------------------------------------------------------------------ admin

    async def _truth_endpoint(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        if account not in self.engine.accounts:
            return web.json_response({"error": f"no account {account!r}"}, status=404)
        truth = self.truth(account)
        body = {
            "balance": truth.balance.model_dump(mode="json"),
            "open_orders": [o.model_dump(mode="json") for o in truth.open_orders.values()],
            "positions": [p.model_dump(mode="json") for p in truth.positions.values()],
            "fills": len(truth.fills),
            "funding": len(truth.funding),
            "faults": {str(k): v for k, v in self.fault_counts.items()},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _inject_endpoint(self, request: web.Request) -> web.Response:
        try:
            kind = FaultKind(request.match_info["kind"])
            count = int(request.query.get("count", "1"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        account = request.query.get("account")
        if account is not None and account not in self.engine.accounts:
            return web.json_response({"error": f"no account {account!r}"}, status=404)
        return web.json_response({"done": self.inject(kind, account, count)})
