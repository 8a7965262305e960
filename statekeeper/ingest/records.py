"""Events the ingest daemon makes itself (pure): session control events and events from REST answers.

Keys are deterministic, so a retried write or a repeated fetch is one event:

* control events: ``session:<session>:opened`` / ``closed``, ``gap:<session>:<expected>:<received>``,
  ``resync:<session>:started`` / ``completed``;
* a REST snapshot (every balance, position or open order at once): ``rest:<session>:<n>:<what>``, where ``n``
  counts the fetches of the session (a poll, a seed after subscribing);
* a REST ledger item (a fill, a funding payment, a transfer, a bust): ``rest:<what>:<venue ids>``, the same for
  every fetch of it. The key starts with ``rest`` because the source is part of an event's content: the same fill
  streamed and fetched is two events with different keys, one fill id for the projections;
* an order fetched by id (the final state of an order a snapshot no longer lists):
  ``rest:order:<order id>:<updated_at>:<venue seq>``, so the same answer fetched twice is one event and a
  different answer a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from statekeeper.events import (
    Body,
    CloseReason,
    Event,
    FillBody,
    FillBustBody,
    FundingBody,
    GapDetected,
    LedgerMark,
    Order,
    OrderBody,
    ResyncCompleted,
    ResyncStarted,
    SessionClosed,
    SessionOpened,
    Source,
    TransferBody,
    Transport,
    natural_key,
)
from statekeeper.ingest.sequence import SequenceFault
from statekeeper.venues.base import Item


@dataclass(frozen=True, slots=True)
class Origin:
    """Who an event belongs to: the account, its venue and the stream (or polling) session."""

    account: str
    venue: str
    session: UUID | None
    """None for REST fetches that belong to no session (a scheduled poll between stream sessions)."""


def _control(origin: Origin, body: Body, key: str, at: datetime | None = None) -> Event:
    if origin.session is None:
        raise ValueError("control events belong to a session")
    now = at or datetime.now(UTC)
    return Event(account=origin.account, venue=origin.venue, source=Source.STREAM, body=body, venue_time=now,
                 received_at=now, session=origin.session, key=key)  # fmt: skip


def session_opened(origin: Origin, *, transport: Transport, url: str | None, reason: str) -> Event:
    body = SessionOpened(transport=transport, url=url, reason=reason)  # type: ignore[arg-type]
    return _control(origin, body, natural_key("session", str(origin.session), "opened"))


def session_closed(origin: Origin, *, reason: CloseReason, detail: str | None, last_seq: int | None,
                   marks: dict[str, LedgerMark] | None = None) -> Event:  # fmt: skip
    body = SessionClosed(reason=reason, detail=detail, last_seq=last_seq, marks=marks)
    return _control(origin, body, natural_key("session", str(origin.session), "closed"))


def gap_detected(origin: Origin, fault: SequenceFault) -> Event:
    body = GapDetected(problem=fault.problem, expected_seq=fault.expected, received_seq=fault.received)
    return _control(origin, body, natural_key("gap", str(origin.session), fault.expected, fault.received))


def resync_started(origin: Origin, *, reason: str, previous: UUID | None) -> Event:
    body = ResyncStarted(reason=reason, previous_session=previous)
    return _control(origin, body, natural_key("resync", str(origin.session), "started"))


def resync_completed(origin: Origin, *, fills: int, funding: int, marks: dict[str, LedgerMark]) -> Event:
    body = ResyncCompleted(fills_backfilled=fills, funding_backfilled=funding, marks=marks)
    return _control(origin, body, natural_key("resync", str(origin.session), "completed"))


# ------------------------------------------------------------------------------------------ REST answers


def snapshot_event(origin: Origin, body: Body, items: Sequence[Item[Any]], *, what: str, fetch: int,
                   fetched_at: datetime) -> Event:  # fmt: skip
    """Everything one REST call returned (every balance, position or open order) as one snapshot event.

    ``venue_time`` is the latest ``updated_at`` among the items, or the fetch time when none has one (an empty
    answer is a snapshot too: no open orders). ``raw`` is the items' JSON as a JSON array.
    """
    if origin.session is None:
        raise ValueError("REST snapshots belong to a session")
    times = [t for t in (getattr(i.record, "updated_at", None) for i in items) if t is not None]
    return Event(account=origin.account, venue=origin.venue, source=Source.REST, body=body, snapshot=True,
                 venue_time=max(times, default=fetched_at), received_at=fetched_at, session=origin.session,
                 key=natural_key("rest", str(origin.session), fetch, what),
                 raw="[" + ",".join(i.raw for i in items) + "]")  # fmt: skip


LEDGERS = ("fill", "funding", "transfer", "bust")


def ledger_event(origin: Origin, what: str, item: Item[Any], *, fetched_at: datetime) -> Event:
    """One REST ledger item (``what`` is one of :data:`LEDGERS`) as one event, keyed by its venue ids."""
    record = item.record
    body: Body
    ids: tuple[str, ...]
    if what == "fill":
        body, ids, at = FillBody(fills=(record,)), (record.fill_id, record.fill_type), record.created_at
    elif what == "funding":
        body, ids, at = FundingBody(payments=(record,)), (record.payment_id,), record.paid_at
    elif what == "transfer":
        body, ids, at = TransferBody(transfers=(record,)), (record.transfer_id, record.status), record.updated_at
    elif what == "bust":
        body, ids, at = FillBustBody(busts=(record,)), (record.fill_id,), record.busted_at
    else:
        raise ValueError(f"unknown ledger {what!r}")
    return Event(account=origin.account, venue=origin.venue, source=Source.REST, body=body, venue_time=at,
                 received_at=fetched_at, session=origin.session, key=natural_key("rest", what, *ids),
                 raw=item.raw)  # fmt: skip


def order_event(origin: Origin, item: Item[Order], *, fetched_at: datetime) -> Event:
    """One order fetched by id over REST (not a snapshot: it says nothing of other orders) as one event.

    ``venue_time`` is the order's ``updated_at``; the key holds the order id, that time and the venue's update
    number, so fetching the same state again is the same event.
    """
    order = item.record
    key = natural_key("rest", "order", order.order_id, order.updated_at.isoformat(),
                      order.venue_seq if order.venue_seq is not None else "")  # fmt: skip
    return Event(account=origin.account, venue=origin.venue, source=Source.REST, body=OrderBody(orders=(order,)),
                 venue_time=order.updated_at, received_at=fetched_at, session=origin.session, key=key,
                 raw=item.raw)  # fmt: skip


def ledger_id(what: str, record: Any) -> str:
    """The venue id a ledger item is deduplicated on."""
    if what in ("fill", "bust"):
        return str(record.fill_id)
    if what == "funding":
        return str(record.payment_id)
    return f"{record.transfer_id}:{record.status}"


def ledger_time(what: str, record: Any) -> datetime:
    if what == "fill":
        return record.created_at  # type: ignore[no-any-return]
    if what == "funding":
        return record.paid_at  # type: ignore[no-any-return]
    if what == "bust":
        return record.busted_at  # type: ignore[no-any-return]
    return record.updated_at  # type: ignore[no-any-return]


def ledger_of(kind: str) -> str | None:
    """The ledger an event kind feeds (``fill`` events feed ``fill``), or None."""
    return {"fill": "fill", "funding": "funding", "transfer": "transfer", "fill_bust": "bust"}.get(kind)


def ledger_records(what: str, body: Body) -> Sequence[Any]:
    """The ledger records an event body carries."""
    if what == "fill" and isinstance(body, FillBody):
        return body.fills
    if what == "funding" and isinstance(body, FundingBody):
        return body.payments
    if what == "transfer" and isinstance(body, TransferBody):
        return body.transfers
    if what == "bust" and isinstance(body, FillBustBody):
        return body.busts
    return ()
