"""Recorded sessions: the frames a simulated venue sends one client, rendered offline (no network).

Used for golden tests: a recorded session is a fixture file; the simulator must keep producing exactly those
frames for the same seed, and the venue's parser must keep turning them into the same events.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from statekeeper.simulator import Simulator, SimulatorConfig
from statekeeper.simulator.faults import FaultPlan
from statekeeper.simulator.paradex import PER_MARKET, ParadexServer


def record_session(venue: str, *, seed: int, steps: int, account: str = "acc-1") -> list[str]:
    """The frames one client of ``account`` receives over ``steps`` steps, from connecting on (no faults)."""
    simulator = Simulator(SimulatorConfig(venue=venue, seed=seed, accounts=(account,), rate=0,  # type: ignore[arg-type]
                                          faults=FaultPlan(), record_frames=False))  # fmt: skip
    server = simulator.server
    frames: list[str] = []
    if isinstance(server, ParadexServer):
        for _ in range(steps):
            for change in simulator.engine.step():
                for family, _market, data in server.notifications(change):
                    channel = f"{family}.ALL" if family in PER_MARKET else family
                    message = {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
                    frames.append(orjson.dumps(message).decode())
        return frames
    from statekeeper.simulator.extended import ExtendedServer  # noqa: PLC0415

    assert isinstance(server, ExtendedServer)
    messages: list[dict[str, Any]] = list(server.snapshot(simulator.engine.accounts[account]))
    for _ in range(steps):
        for change in simulator.engine.step():
            messages.extend(server.messages(change))
    return [orjson.dumps(server.number(m, seq)).decode() for seq, m in enumerate(messages, 1)]


def kinds(frames: list[str]) -> Counter[str]:
    """How many frames of each type (Extended) or channel (Paradex) a recording holds."""
    counts: Counter[str] = Counter()
    for frame in frames:
        message = orjson.loads(frame)
        counts[message.get("type") or message["params"]["channel"]] += 1
    return counts
