"""What every venue adapter provides, and the contract of its parse boundary.

A venue package (``statekeeper.venues.<name>``) has the same modules as the others:

* ``wire``: the venue's JSON shapes, as documented (names, spellings, envelopes);
* ``parse``: pure functions from raw frames and REST bodies to canonical events and records;
* ``rest``: the REST client (aiohttp through :class:`~statekeeper.venues.http.VenueHttpClient`);
* ``stream``: the WebSocket client of the private account stream.

The parse boundary is pure and total: :func:`parse_frame` of any venue takes any bytes or text and returns either
an :class:`~statekeeper.events.Event` or a :class:`FrameRejection` with a reason. It never raises, so one bad
frame can never end a stream (invariant 1); the caller stores the rejection in ``rejected_frames``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar
from uuid import UUID

from statekeeper.events import Event, RejectedFrame, Source
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.wire import WireError, parse_json_with


class SequenceKind(StrEnum):
    """How a venue numbers the frames of its account stream (DESIGN.md section 2)."""

    CONTIGUOUS = "contiguous"
    """Every frame carries seq = previous + 1 per connection: gaps, repeats and reorders can be detected."""
    SPARSE = "sparse"
    """Per-entity numbers that increase but skip: order updates by them, detect nothing."""
    NONE = "none"
    """No numbers: deduplicate on natural keys and rely on reconciliation."""


@dataclass(frozen=True, slots=True)
class FrameContext:
    """Where a frame came from: the account, the stream session, and when it was received."""

    account: str
    venue: str
    session: UUID
    received_at: datetime
    source: Source = Source.STREAM


@dataclass(frozen=True, slots=True)
class FrameRejection:
    """A frame that cannot become an event, and why. ``seq`` is the frame's seq when it could still be read."""

    reason: str
    seq: int | None = None

    def to_rejected_frame(self, context: FrameContext, raw: str | bytes) -> RejectedFrame:
        """The row to store in ``rejected_frames``: the frame byte for byte, with the reason."""
        data = raw.encode("utf-8", errors="surrogatepass") if isinstance(raw, str) else raw
        return RejectedFrame(
            account=context.account,
            venue=context.venue,
            source=context.source,
            received_at=context.received_at,
            reason=self.reason,
            raw=data,
            session=context.session,
            seq=self.seq,
        )


ParseOutcome = Event | FrameRejection

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    """One record from a REST answer, with the item's JSON (``Event.raw`` of the event made from it)."""

    record: T
    raw: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a paginated REST answer; ``cursor`` fetches the next page, None on the last."""

    items: tuple[Item[T], ...]
    cursor: str | None


async def follow_pages(
    fetch: Callable[[str | None], Awaitable[Page[T]]], *, venue: str, what: str, empty_page_ends: bool = False
) -> AsyncIterator[Item[T]]:
    """The items of every page, following cursors from the first page (``fetch(None)``).

    The walk ends on a page without a cursor, and also on a page without items when ``empty_page_ends`` (venues
    that hand out a cursor on every page). A cursor that comes back is an error, not an endless loop.
    """
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        page = await fetch(cursor)
        for item in page.items:
            yield item
        if page.cursor is None or (empty_page_ends and not page.items):
            return
        if page.cursor in seen:
            raise VenueResponseError(
                f"{venue} {what}: the pagination cursor {page.cursor!r} came back; stopping instead of looping",
                venue=venue,
            )
        seen.add(page.cursor)
        cursor = page.cursor


MAX_REASON = 500


def parse_frame_with(
    raw: str | bytes,
    mapper: Callable[[Any, str], Event],
    *,
    seq_of: Callable[[Any], int | None] | None = None,
) -> ParseOutcome:
    """Run a venue's ``mapper(data, text)`` on a raw frame, turning every failure into a :class:`FrameRejection`.

    ``mapper`` receives the decoded JSON and the frame's text (for ``Event.raw``), and raises
    :class:`~statekeeper.venues.wire.WireError` for anything the venue's documentation does not allow.
    """
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FrameRejection(f"not UTF-8 text: {exc.reason} at byte {exc.start}")
    try:
        return parse_json_with(text, lambda data: mapper(data, text), seq_of=seq_of)
    except WireError as exc:
        return FrameRejection(str(exc)[:MAX_REASON], seq=exc.seq)
    except Exception as exc:  # noqa: BLE001 - the boundary is total: a parser bug must not end a stream
        return FrameRejection(f"parser error: {type(exc).__name__}: {exc}"[:MAX_REASON])
