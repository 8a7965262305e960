"""The chaos harness (``make chaos``) at the reduced size CI runs: two runs, one per venue, each with every fault
kind once (kill -9, PostgreSQL restarted, the network cut, and every fault of the simulated venue), and every
check of :mod:`chaos` after each. A failure names the seed that repeats it."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.harness import FAULT_KINDS, reproduce_command
from chaos.session import SIZES, run_seeds

SEEDS = [1, 2]  # odd seeds run against Extended, even ones against Paradex


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_chaos_runs_lose_nothing_and_converge(tmp_path: Path) -> None:
    results = await run_seeds(SEEDS, SIZES["ci"], tmp_path)
    failures = {r.seed: r.problems() for r in results if not r.ok}
    assert failures == {}, "\n".join(
        f"seed {seed} ({reproduce_command(seed, 'ci')}):\n  " + "\n  ".join(problems)
        for seed, problems in failures.items()
    )
    assert {r.venue for r in results} == {"extended", "paradex"}
    for result in results:
        assert sorted(e.kind for e in result.episodes) == sorted(FAULT_KINDS), result.seed
        assert all(e.converge_seconds is not None for e in result.episodes)
        assert result.frames_sent > 0 and result.events > 0
        assert (result.lost, result.duplicates, result.mismatches, result.replay_mismatches) == ([], [], [], [])
        for kind in FAULT_KINDS[3:]:  # the venue's own faults: the simulator counted each one
            assert result.faults[kind] >= 1, (result.seed, kind, result.faults)
