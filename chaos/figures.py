"""The figures of a set of runs, as the Markdown kept in ``docs/reliability.md``."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

from chaos.harness import FAULT_KINDS, HARNESS_FAULTS, RunResult


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of fewer than 100 values is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def render(results: list[RunResult], *, command: str, size: str, started: datetime) -> str:
    seeds = [r.seed for r in results]
    venues = Counter(r.venue for r in results)
    injected: Counter[str] = Counter()
    for result in results:
        injected.update(e.kind for e in result.episodes if e.kind in HARNESS_FAULTS)
        injected.update(result.faults)
    lines = [
        f"Command: `{command}` (size `{size}`), started {started:%Y-%m-%d %H:%M} UTC; seeds {seeds}; "
        f"venues: {', '.join(f'{v} {n}' for v, n in sorted(venues.items()))}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| runs | {len(results)} ({sum(r.ok for r in results)} passed every check) |",
        f"| episodes (one fault each) | {sum(len(r.episodes) for r in results)} |",
        f"| frames sent by the venue | {sum(r.frames_sent for r in results)} |",
        f"| events in the log | {sum(r.events for r in results)} |",
        f"| rejected frames (malformed, kept with the reason) | {sum(r.rejected for r in results)} |",
        f"| frames lost | {sum(len(r.lost) for r in results)} |",
        f"| duplicate events or ledger items | {sum(len(r.duplicates) for r in results)} |",
        f"| projection fields differing from the venue's truth | {sum(len(r.mismatches) for r in results)} |",
        f"| projection tables differing from a replay of the log | {sum(len(r.replay_mismatches) for r in results)} |",
        f"| runs that broke (an error, a deadline missed) | {sum(bool(r.errors) for r in results)} |",
        "",
        "Faults injected, by type (the harness's episodes, and every fault the simulated venue counted: the "
        "episodes' own and those drawn at the background rate):",
        "",
        "| fault | injected |",
        "|---|---|",
    ]
    lines += [f"| {kind} | {injected[kind]} |" for kind in FAULT_KINDS]
    lines += [
        "",
        "Time to converge: from the end of the fault (the daemon started again, the server started again, the "
        "network restored, the venue's fault done) to the projections equal to the truth, the activity stopped. "
        "*Forced* counts the episodes where nothing but a resync could heal the state (drift, a Paradex "
        "notification lost) and the harness had the venue drop the connection after a while.",
        "",
        "| fault | episodes | p50 (s) | p99 (s) | max (s) | forced resync |",
        "|---|---|---|---|---|---|",
    ]
    for kind in FAULT_KINDS:
        episodes = [e for r in results for e in r.episodes if e.kind == kind]
        times = [e.converge_seconds for e in episodes if e.converge_seconds is not None]
        if not times:
            lines.append(f"| {kind} | {len(episodes)} | - | - | - | - |")
            continue
        forced = sum(e.forced_resync for e in episodes)
        lines.append(f"| {kind} | {len(episodes)} | {percentile(times, 0.5):.2f} | {percentile(times, 0.99):.2f} | "
                     f"{max(times):.2f} | {forced} |")  # fmt: skip
    checks: Counter[str] = Counter()
    for result in results:
        checks.update(f"`statekeeper {name}`: {outcome.split(':')[0]}" for name, outcome in result.cli_checks.items())
    if checks:
        lines += [
            "",
            "Checks by the CLI: " + "; ".join(f"{text} ({n} runs)" for text, n in sorted(checks.items())) + ".",
        ]
    return "\n".join(lines)
