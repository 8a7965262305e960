"""Faults a simulated venue injects, at rates or on demand, deterministically for a seed.

Stream faults apply per frame and per connection: ``disconnect`` closes the connection, ``gap`` loses a delta
(its seq is used but the frame never sent), ``duplicate`` sends a frame twice, ``reorder`` swaps a frame with the
next, ``delay`` holds a frame for a while, ``malformed`` sends a garbage frame (nothing is lost). REST faults apply
per request: ``rest_5xx``, ``rest_429`` (with Retry-After), ``rest_slow``. ``drift`` changes the truth without a
word on the stream, per engine step.

A plan reads like ``gap=0.01,duplicate=0.005,rest_429=0.05`` (``--faults`` of ``statekeeper simulate``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class FaultKind(StrEnum):
    DISCONNECT = "disconnect"
    GAP = "gap"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    DELAY = "delay"
    MALFORMED = "malformed"
    REST_5XX = "rest_5xx"
    REST_429 = "rest_429"
    REST_SLOW = "rest_slow"
    DRIFT = "drift"


STREAM_FAULTS = (
    FaultKind.DISCONNECT,
    FaultKind.GAP,
    FaultKind.DUPLICATE,
    FaultKind.REORDER,
    FaultKind.DELAY,
    FaultKind.MALFORMED,
)
REST_FAULTS = (FaultKind.REST_5XX, FaultKind.REST_429, FaultKind.REST_SLOW)


class FaultPlanError(ValueError):
    """A fault plan that cannot be understood."""


@dataclass(frozen=True)
class FaultPlan:
    """How often each fault happens: a probability per frame, per REST request or (drift) per engine step."""

    rates: Mapping[FaultKind, float] = field(default_factory=lambda: MappingProxyType({}))
    delay_seconds: float = 0.2
    slow_seconds: float = 2.0
    retry_after_seconds: int = 1

    def __post_init__(self) -> None:
        for kind, rate in self.rates.items():
            if not 0.0 <= rate <= 1.0:
                raise FaultPlanError(f"fault {kind}: rate {rate} is not between 0 and 1")

    def rate(self, kind: FaultKind) -> float:
        return self.rates.get(kind, 0.0)

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """``"gap=0.01,duplicate=0.005"``; a bare name means rate 0.01. Errors name the item."""
        rates: dict[FaultKind, float] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            try:
                kind = FaultKind(name.strip())
            except ValueError:
                known = ", ".join(k.value for k in FaultKind)
                raise FaultPlanError(f"unknown fault {name.strip()!r} (known: {known})") from None
            try:
                rates[kind] = float(value) if value else 0.01
            except ValueError:
                raise FaultPlanError(f"fault {kind}: {value!r} is not a rate") from None
        return cls(rates=MappingProxyType(rates))

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in sorted(self.rates.items())) or "none"


class FaultDice:
    """Draws faults for one stream connection or one account's REST requests, from its own seeded RNG.

    Triggered faults (from :meth:`trigger`) come first, then the plan's rates, unless :attr:`calm` is set. Every fault
    injected is counted.
    """

    def __init__(self, plan: FaultPlan, seed: str, counts: Counter[FaultKind], kinds: tuple[FaultKind, ...]) -> None:
        self.plan = plan
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.pending: list[FaultKind] = []
        self.counts = counts
        self.calm = False
        """No faults from the plan's rates while set (triggered ones still come)."""

    def trigger(self, kind: FaultKind, count: int = 1) -> None:
        self.pending.extend([kind] * count)

    def draw(self) -> FaultKind | None:
        if self.pending:
            kind: FaultKind | None = self.pending.pop(0)
        elif self.calm:
            return None
        else:
            roll = self.rng.random()
            kind = None
            for candidate in self.kinds:
                rate = self.plan.rate(candidate)
                if roll < rate:
                    kind = candidate
                    break
                roll -= rate
        if kind is not None:
            self.counts[kind] += 1
        return kind
