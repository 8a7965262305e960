"""Several runs on one PostgreSQL server of the harness's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from chaos.harness import ChaosRun, RunResult, RunSize
from chaos.postgres import ChaosPostgres

SIZES = {
    "default": RunSize(),
    "ci": RunSize(before=0.5, during=0.4, extra_episodes=0, help_after=5.0, converge_within=30.0),
}


async def run_seeds(
    seeds: list[int], size: RunSize, workdir: Path, *, progress: Callable[[RunResult], None] | None = None
) -> list[RunResult]:
    """One run per seed, in turn; the server is stopped at the end whatever happened."""
    pg = ChaosPostgres(workdir / "pg")  # EmbeddedPostgres creates the directory
    results = []
    try:
        await pg.start_server()
        for seed in seeds:
            result = await ChaosRun(seed, size, pg, workdir).run()
            results.append(result)
            if progress is not None:
                progress(result)
    finally:
        await pg.close()
    return results
