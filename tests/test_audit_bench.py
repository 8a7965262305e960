"""The replay benchmark runs (in its quick form). Its figures are measured by ``python -m bench.audit``, never here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"


def test_replay_benchmark_runs_in_its_quick_form() -> None:
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    result = subprocess.run(
        [sys.executable, "-m", "bench.audit", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the replay at a tenth of the log and at all of it in worker processes, and all of it in one process
    assert result.stdout.count("events/s, peak memory") == 3
    assert "replay --format json to /dev/null" in result.stdout  # the replay with its output made in the workers
    for baseline in ("replay in one process", "read + decode", "generic reader", "pure folds in memory"):
        assert f"baseline {baseline}" in result.stdout
    assert "peak memory" in result.stdout
    assert "target >= 100,000 events/s:" in result.stdout  # reported, met or not: no timing assertion
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before  # a quick run records nothing
