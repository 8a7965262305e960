"""A replay renderer that writes nothing, for the replay benchmark.

In a module of its own, importing only what a replay worker process imports anyway: a worker unpickles the form
by its module's name (not a benchmark's ``__main__``), and a heavier module (``bench.common`` imports Alembic and
SQLAlchemy) would add its imports to every worker's start and peak memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from statekeeper.audit.output import Rendered, TableLines


@dataclass(frozen=True, slots=True)
class Nothing:
    """A form that reads no rows (the digest still reads every one)."""

    def __call__(self, tables: TableLines) -> None:
        return None


class Discard:
    """A replay renderer that writes nothing."""

    form = Nothing()

    def begin(self, basis: dict[str, Any]) -> None:
        pass

    def account(self, done: Rendered) -> None:
        pass

    def end(self, digest: str) -> None:
        pass
