"""The report of ``statekeeper reconcile``: a readable table (rich) or one JSON document. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from statekeeper.reconcile.runner import PassResult


@dataclass(frozen=True, slots=True)
class DiscrepancyRow:
    """A row of ``reconciliation_discrepancies`` (open, or resolved by one of the passes reported)."""

    account: str
    id: int
    entity: str
    entity_key: str
    field: str
    projected: str | None
    venue: str | None
    first_seen_at: datetime
    last_seen_at: datetime
    occurrences: int
    resolved_at: datetime | None
    resolved_run_id: UUID | None
    healed_by_event_id: int | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> DiscrepancyRow:
        return cls(record["account"], record["id"], record["entity"], record["entity_key"], record["field"],
                   record["projected"], record["venue_value"], record["first_seen_at"], record["last_seen_at"],
                   record["occurrences"], record["resolved_at"], record["resolved_run_id"],
                   record["healed_by_event_id"])  # fmt: skip


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def to_json(results: Sequence[PassResult], discrepancies: Sequence[DiscrepancyRow]) -> str:
    """``{"runs": [...], "discrepancies": [...]}``: every pass, and the open discrepancies (plus those the passes
    resolved, with ``resolved_at`` and ``healed_by_event_id``)."""
    runs = [
        {
            "account": r.account, "venue": r.venue, "run_id": str(r.run_id), "status": r.status, "heal": r.heal,
            "started_at": r.started_at.isoformat(), "seconds": round(r.seconds, 3), "log_position": r.log_position,
            "rounds": r.rounds, "compared": r.compared, "found": len(r.found), "healed": len(r.healed),
            "unsettled": r.unsettled, "remaining": r.remaining, "error": r.error,
        }
        for r in results
    ]  # fmt: skip
    rows = [{name: _plain(getattr(d, name)) for name in DiscrepancyRow.__dataclass_fields__} for d in discrepancies]
    return json.dumps({"runs": runs, "discrepancies": rows}, indent=2)


_STATUS_STYLE = {"clean": "green", "discrepancies": "red", "failed": "red"}


def to_table(results: Sequence[PassResult], discrepancies: Sequence[DiscrepancyRow]) -> Group:
    """The passes, then the discrepancies (open ones first, then those the passes resolved)."""
    runs = Table(title="reconciliation passes", show_lines=False)
    for column in ("account", "venue", "status", "compared", "found", "healed", "open", "at log position", "took"):
        runs.add_column(column)
    for r in results:
        status = f"[{_STATUS_STYLE.get(r.status, 'yellow')}]{r.status}[/]"
        if r.error:
            status += f"\n{escape(r.error)}"
        elif r.unsettled:
            status += f"\n[dim]{r.unsettled} still changing: next pass[/]"
        position = "-" if r.log_position is None else f"#{r.log_position}"
        runs.add_row(escape(r.account), escape(r.venue), status, str(r.compared), str(len(r.found)),
                     str(len(r.healed)), str(r.remaining), position, f"{r.seconds:.1f} s")  # fmt: skip
    parts: list[Any] = [runs]
    if discrepancies:
        table = Table(title="discrepancies", show_lines=False)
        for column in ("account", "entity", "key", "field", "projected", "venue", "first seen", "last seen", "state"):
            table.add_column(column)
        for d in discrepancies:
            if d.resolved_at is None:
                state = f"[red]open[/] ({d.occurrences} passes)"
            elif d.healed_by_event_id is not None:
                state = f"[green]healed[/] by event #{d.healed_by_event_id}"
            else:
                state = "[green]resolved[/]"
            table.add_row(escape(d.account), d.entity, escape(d.entity_key), escape(d.field),
                          escape(d.projected or "-"), escape(d.venue or "-"), _time(d.first_seen_at),
                          _time(d.last_seen_at), state)  # fmt: skip
        parts.append(table)
    return Group(*parts)
