"""``python -m chaos``: chaos runs, one seed each, then the figures (see :mod:`chaos`).

    python -m chaos                       # the default size: 8 runs, seeds 1..8
    python -m chaos --runs 20 --first-seed 100
    python -m chaos --seed 7              # repeat one run exactly (its schedule, activity and venue faults)
    python -m chaos --size ci             # the reduced size CI runs (tests/test_chaos.py)

Exit code 0 when every run passed every check, 1 otherwise (each failing seed printed with its command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from chaos.figures import render
from chaos.harness import RunResult, reproduce_command
from chaos.session import SIZES, run_seeds


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=8, help="how many runs (seeds first-seed, first-seed + 1, ...)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, action="append", help="run exactly these seeds (repeatable)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument("--workdir", type=Path, help="where the server, configurations and daemon logs go")
    args = parser.parse_args()
    seeds = args.seed or list(range(args.first_seed, args.first_seed + args.runs))
    started = datetime.now(UTC)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="statekeeper-chaos-"))

    def progress(result: RunResult) -> None:
        state = "ok" if result.ok else "FAILED"
        line = (f"run seed={result.seed} venue={result.venue} episodes={len(result.episodes)} "
                f"frames={result.frames_sent} events={result.events} {result.seconds:.0f}s: {state}")  # fmt: skip
        sys.stdout.write(line + "\n")
        if not result.ok:
            for problem in result.problems():
                sys.stdout.write(f"    {problem}\n")
            sys.stdout.write(f"    repeat it: {reproduce_command(result.seed, args.size)}  (logs in {workdir})\n")
        sys.stdout.flush()

    results = asyncio.run(run_seeds(seeds, SIZES[args.size], workdir, progress=progress))
    command = " ".join(["python -m chaos", *sys.argv[1:]])
    sys.stdout.write("\n" + render(results, command=command, size=args.size, started=started) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2) + "\n", encoding="utf-8")
    failed = [r.seed for r in results if not r.ok]
    if failed:
        sys.stdout.write(f"\nFAILED seeds: {failed}; repeat one with {reproduce_command(failed[0], args.size)}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
