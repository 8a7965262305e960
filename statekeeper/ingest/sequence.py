"""Sequence checking for venues whose stream numbers every frame contiguously (Extended): pure, no I/O.

A stream session starts at seq 1 and each frame is the previous + 1. :class:`ContiguousSequence` is told each
seq as it arrives and answers with the first problem it sees:

* ``gap``: a seq beyond the next one (frames were lost, or arrive out of order: see :meth:`classify_late`);
* ``repeat``: a seq that was already received;
* ``reorder``: a seq below the next one that was never received (it arrived after a later one).

After a problem the session is resynced (closed, reconnected, fresh snapshot, REST backfill), so the checker
only needs the next expected seq and the seqs skipped by the first gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from statekeeper.events import SequenceProblem


@dataclass(frozen=True, slots=True)
class SequenceFault:
    problem: SequenceProblem
    expected: int
    received: int


@dataclass
class ContiguousSequence:
    """Tracks one session's sequence; ``first`` is the seq the venue starts at."""

    first: int = 1
    expected: int = field(init=False)
    last: int | None = field(default=None, init=False)
    """The highest seq received so far."""
    fault: SequenceFault | None = field(default=None, init=False)
    """The first problem seen (later ones are not tracked: the session is being resynced)."""
    _missing: set[int] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.expected = self.first

    def check(self, seq: int) -> SequenceFault | None:
        """Take the next seq; returns the problem if this seq is the first one out of line, else None."""
        if self.fault is not None:
            self._late(seq)
            return None
        if seq == self.expected:
            self.expected += 1
            self.last = seq
            return None
        if seq > self.expected:
            problem = SequenceProblem.GAP
            self._missing = set(range(self.expected, seq))
            self.last = seq
        else:
            problem = SequenceProblem.REPEAT
        self.fault = SequenceFault(problem, self.expected, seq)
        return self.fault

    def _late(self, seq: int) -> None:
        self._missing.discard(seq)
        self.last = max(self.last or seq, seq)

    def classify_late(self) -> SequenceFault | None:
        """The first problem, reclassified once the session's remaining frames were read.

        A gap whose missing frames all arrived later was a ``reorder``; frames that never came make it a ``gap``.
        """
        fault = self.fault
        if fault is None or fault.problem is not SequenceProblem.GAP or self._missing:
            return fault
        return SequenceFault(SequenceProblem.REORDER, fault.expected, fault.received)
