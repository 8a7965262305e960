"""Reconnect delays: capped exponential backoff with full jitter, reset after a healthy period (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """The delay before each reconnect attempt.

    Attempt ``n`` (0-based, counted since the last reset) waits a uniformly random time in
    ``[0, min(maximum, initial * 2**n)]`` ("full jitter"), so that many accounts reconnecting at once spread out.
    A connection that stayed up for ``healthy_after`` seconds resets the count: :meth:`connected` and
    :meth:`disconnected` take the times (monotonic seconds) so the rule is testable without a clock.
    """

    initial: float = 0.5
    maximum: float = 60.0
    healthy_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0
    _connected_at: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff: need 0 < initial ({self.initial}) <= maximum ({self.maximum})")

    def ceiling(self) -> float:
        """The longest delay the next attempt may wait."""
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 62))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one attempt."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def connected(self, now: float) -> None:
        self._connected_at = now

    def disconnected(self, now: float) -> bool:
        """Note the end of a connection; returns True (and resets) when it had been healthy long enough."""
        healthy = self._connected_at is not None and now - self._connected_at >= self.healthy_after
        self._connected_at = None
        if healthy:
            self.reset()
        return healthy

    def reset(self) -> None:
        self.attempt = 0
