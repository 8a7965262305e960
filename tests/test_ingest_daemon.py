"""The ingest daemon end to end: simulated venues, a real PostgreSQL, the daemon in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from statekeeper.simulator import Simulator, SimulatorConfig
from tests.ingest_support import running_daemon, sent_frames, settings_for, stored, wait_until


@pytest.fixture
async def venues() -> AsyncIterator[tuple[Simulator, Simulator]]:
    async with (
        await Simulator.start(SimulatorConfig(venue="extended", seed=11, accounts=("x1", "x2"), rate=100)) as ext,
        await Simulator.start(SimulatorConfig(venue="paradex", seed=11, accounts=("p1",), rate=100)) as pdx,
    ):
        yield ext, pdx


async def test_every_frame_of_several_accounts_on_both_venues_is_stored(
    database_url: str, venues: tuple[Simulator, Simulator]
) -> None:
    ext, pdx = venues
    settings = settings_for({"x1": ext, "x2": ext, "p1": pdx})
    async with running_daemon(settings, database_url):
        for account, sim in (("x1", ext), ("x2", ext), ("p1", pdx)):
            await sim.wait_connected(account)

        async def enough() -> bool:
            counts = [len((await stored(database_url, a)).event_raws) for a in ("x1", "x2", "p1")]
            return min(counts) > 200

        await wait_until(enough, what="200 events stored for every account")
    for account, sim in (("x1", ext), ("x2", ext), ("p1", pdx)):
        held = await stored(database_url, account)
        missing = [f for f in sent_frames(sim, account) if f not in held.frames()]
        assert missing == [], f"{account}: {len(missing)} frames sent but not stored"
        assert len(held.keys) == len(set(held.keys))
        assert [s["close_reason"] for s in held.sessions] == ["shutdown"]
