"""``statekeeper simulate``: a simulated venue served until Ctrl-C, SIGTERM or ``--duration``."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from rich.console import Console
from rich.table import Table

from statekeeper.simulator import Simulator, SimulatorConfig


async def run_simulator(config: SimulatorConfig, console: Console, *, duration: float | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with await Simulator.start(config) as sim:
        console.print(_banner(sim))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration)
        counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(sim.fault_counts.items())) or "none"
        console.print(f"stopped after {sim.engine.step_count} steps; faults injected: {counts}", highlight=False)


def _banner(sim: Simulator) -> Table:
    config = sim.config
    table = Table(title=f"simulated {config.venue} (seed {config.seed}, faults: {config.faults})", title_justify="left")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("stream", sim.ws_url)
    table.add_row("REST", sim.rest_url)
    for account in config.accounts:
        table.add_row(f"credential of {account}", sim.credential(account))
    table.add_row("truth", f"GET http://{sim.base}/_sim/truth/<account>")
    table.add_row("inject a fault", f"POST http://{sim.base}/_sim/inject/<kind>?account=<account>&count=<n>")
    return table
