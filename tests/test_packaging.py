"""What ships beside the code: the benchmark (run small), docker compose, the Makefile and CI entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick(module: str) -> str:
    """Run a benchmark in its quick form (its figures are measured by `make bench`; CI proves it works)."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "STATEKEEPER_BENCH_DATABASE_URL"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_append_benchmark_runs_in_its_quick_form() -> None:
    stdout = _quick("bench.append")
    for strategy in ("naive", "executemany", "unnest", "copy_staging", "api ", "api_pipelined", "raw_copy"):
        assert strategy in stdout
    assert "synchronous_commit=on" in stdout


def test_ingest_benchmark_runs_in_its_quick_form() -> None:
    stdout = _quick("bench.ingest")
    for figure in ("p50", "p99", "baseline", "events/s", "mean batch", "of the baseline"):
        assert figure in stdout


def test_projector_benchmark_runs_in_its_quick_form() -> None:
    stdout = _quick("bench.projector")
    for figure in ("apply_batch loop", "ProjectorWorker", "read + parse", "pure fold", "raw COPY", "split of",
                   "mix:", "frames/s achieved", "p50", "p99", "ingest only", "target"):  # fmt: skip
        assert figure in stdout
    for venue in ("extended", "paradex"):
        for topology in ("projector process", "one process"):
            assert f"latency, {venue}, {topology}" in stdout


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    head = readme[: readme.index("\n## ")]
    assert "make demo" in head and "make test" in head
