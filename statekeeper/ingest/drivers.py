"""What the ingest daemon needs from each venue, behind one interface: :class:`VenueDriver`.

A driver opens the account stream, parses frames (the venue's pure parse boundary), fetches REST snapshots and
walks REST ledgers (fills, funding, transfers, busts) from a mark. The session logic (sequence checks, resyncs,
backfills, polling, reconnects) is venue-neutral and lives in :mod:`statekeeper.ingest.account`.

* Extended: the stream numbers its frames contiguously and sends snapshots on connect; funding exists only over
  REST (polled on a schedule); fills are backfilled by trade id.
* Paradex: no frame sequence; after subscribing, the daemon seeds balances, positions, open orders and the account
  summary from REST; fills, funding, transfers and busts are backfilled by time. Funding payments are listed per
  market: the markets are those the account is known to trade.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self

from pydantic import SecretStr

from statekeeper.events import AccountBody, BalanceBody, BalanceScope, Body, Order, OrderBody, PositionBody
from statekeeper.events import LedgerMark as Mark
from statekeeper.venues import venue_spec
from statekeeper.venues.base import FrameContext, Item, ParseOutcome, SequenceKind
from statekeeper.venues.extended.rest import ExtendedRestClient
from statekeeper.venues.extended.stream import ExtendedAccountStream
from statekeeper.venues.http import RetryPolicy, VenueHttpClient
from statekeeper.venues.paradex.auth import StaticTokenProvider
from statekeeper.venues.paradex.rest import ParadexRestClient
from statekeeper.venues.paradex.stream import ParadexAccountStream
from statekeeper.venues.ws import Frame

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OVERLAP = timedelta(minutes=1)
"""Time-based backfills start this long before the last item known (items already known are skipped)."""
SETTLING = timedelta(days=1)
"""How long an Extended asset operation may stay pending: transfer backfills look this far behind their mark."""


class AccountStream(Protocol):
    """One open stream connection (one session): frames in order; ``close`` ends it cleanly."""

    url: str
    handshake_frames: list[Frame]

    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc_info: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[Frame]: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One REST answer that replaces a kind of state: every balance, position or open order."""

    what: str
    body: Body
    items: tuple[Item[Any], ...]


class VenueDriver(Protocol):
    venue: str
    sequence: SequenceKind
    ws_url: str
    rest_url: str
    seeds_after_subscribe: bool
    """Whether the stream sends no snapshot, so state is seeded from REST after subscribing."""
    reconnect_ledgers: tuple[str, ...]
    """Ledgers backfilled over REST after every (re)connect."""
    scheduled_ledgers: tuple[str, ...]
    """Ledgers that exist only over REST, polled on a schedule while streaming."""
    poll_ledgers: tuple[str, ...]
    """Ledgers polled while the account is served by REST polling."""

    def stream(self) -> AccountStream: ...
    def parse(self, data: str | bytes, context: FrameContext) -> ParseOutcome: ...
    async def snapshots(self) -> list[Snapshot]: ...
    def ledger(self, what: str, since: Mark, markets: Collection[str]) -> AsyncIterator[Item[Any]]: ...
    async def order(self, order_id: str) -> Item[Order]:
        """One order by id, in its current state. An id the venue does not know is a
        :class:`~statekeeper.venues.errors.NonRetryableVenueError` (HTTP 404), never "the order is gone"."""
        ...

    async def close(self) -> None: ...


class _Base:
    venue: str
    ws_url: str
    rest_url: str

    def __init__(self, *, ws_url: str | None, rest_url: str | None, backfill_from: datetime | None) -> None:
        spec = venue_spec(self.venue)
        self.sequence = spec.sequence
        self.ws_url = ws_url or spec.ws_url
        self.rest_url = rest_url or spec.rest_url
        self.backfill_from = backfill_from or EPOCH
        self._parse = spec.parse_frame

    def parse(self, data: str | bytes, context: FrameContext) -> ParseOutcome:
        return self._parse(data, context)

    def start_of(self, since: Mark) -> datetime:
        return max(self.backfill_from, since.time - OVERLAP) if since.time is not None else self.backfill_from


class ExtendedDriver(_Base):
    venue = "extended"
    seeds_after_subscribe = False
    reconnect_ledgers: tuple[str, ...] = ("fill", "funding", "transfer")
    scheduled_ledgers: tuple[str, ...] = ("funding",)
    poll_ledgers: tuple[str, ...] = ("fill", "funding", "transfer")

    def __init__(self, *, api_key: SecretStr, ws_url: str | None = None, rest_url: str | None = None,
                 backfill_from: datetime | None = None, retry: RetryPolicy | None = None) -> None:  # fmt: skip
        super().__init__(ws_url=ws_url, rest_url=rest_url, backfill_from=backfill_from)
        self._api_key = api_key
        self.rest = ExtendedRestClient(self.rest_url, api_key, retry=retry)

    def stream(self) -> AccountStream:
        stream = ExtendedAccountStream(self.ws_url, self._api_key)
        return _WithHandshake(stream)

    async def snapshots(self) -> list[Snapshot]:
        balance = await self.rest.balance()
        positions = await self.rest.positions()
        orders = await self.rest.open_orders()
        return [
            Snapshot("balances", BalanceBody(balances=(balance.record,), scope=BalanceScope.COLLATERAL), (balance,)),
            Snapshot("positions", PositionBody(positions=tuple(i.record for i in positions)), positions),
            Snapshot("open_orders", OrderBody(orders=tuple(i.record for i in orders)), orders),
        ]

    def ledger(self, what: str, since: Mark, markets: Collection[str]) -> AsyncIterator[Item[Any]]:
        if what == "fill":
            return self.rest.trades_since(since.id)
        if what == "funding":
            return self.rest.funding_since(self.start_of(since))
        if what == "transfer":
            return self._transfers_since(self.start_of(since))
        raise ValueError(f"extended has no {what} ledger here")

    async def order(self, order_id: str) -> Item[Order]:
        return await self.rest.order(order_id)

    async def _transfers_since(self, start: datetime) -> AsyncIterator[Item[Any]]:
        """Asset operations (deposits, withdrawals, transfers) from ``start``. Pages come newest first by id, that
        is by creation: the walk goes on for :data:`SETTLING` past ``start``, so an operation created earlier whose
        status changed since (a withdrawal completing) is fetched too."""
        async for item in self.rest.all_asset_operations():
            record = item.record
            if (record.created_at or record.updated_at) < start - SETTLING:
                return
            yield item

    async def close(self) -> None:
        await self.rest.close()


class _WithHandshake:
    """Extended's stream has no handshake frames: give it the attribute the session logic reads."""

    def __init__(self, stream: ExtendedAccountStream) -> None:
        self._stream = stream
        self.url = stream.url
        self.handshake_frames: list[Frame] = []

    async def __aenter__(self) -> Self:
        await self._stream.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stream.close()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._stream.__aiter__()

    async def close(self) -> None:
        await self._stream.close()


class ParadexDriver(_Base):
    venue = "paradex"
    seeds_after_subscribe = True
    reconnect_ledgers: tuple[str, ...] = ("fill", "funding", "transfer", "bust")
    scheduled_ledgers: tuple[str, ...] = ()
    poll_ledgers: tuple[str, ...] = ("fill", "funding", "transfer", "bust")

    def __init__(self, *, token: SecretStr, ws_url: str | None = None, rest_url: str | None = None,
                 backfill_from: datetime | None = None, retry: RetryPolicy | None = None) -> None:  # fmt: skip
        super().__init__(ws_url=ws_url, rest_url=rest_url, backfill_from=backfill_from)
        self.tokens = StaticTokenProvider(token)
        http = VenueHttpClient(venue=self.venue, base_url=self.rest_url, retry=retry or RetryPolicy())
        self.rest = ParadexRestClient(self.rest_url, self.tokens, http=http)

    def stream(self) -> AccountStream:
        return ParadexAccountStream(self.ws_url, self.tokens)

    async def snapshots(self) -> list[Snapshot]:
        balances = await self.rest.balances()
        positions = await self.rest.positions()
        orders = await self.rest.open_orders()
        account = await self.rest.account()
        return [
            Snapshot(
                "balances", BalanceBody(balances=tuple(i.record for i in balances), scope=BalanceScope.TOKEN), balances
            ),
            Snapshot("positions", PositionBody(positions=tuple(i.record for i in positions)), positions),
            Snapshot("open_orders", OrderBody(orders=tuple(i.record for i in orders)), orders),
            Snapshot("account", AccountBody(summary=account.record), (account,)),
        ]

    def ledger(self, what: str, since: Mark, markets: Collection[str]) -> AsyncIterator[Item[Any]]:
        start = self.start_of(since)
        if what == "fill":
            return self.rest.fills_since(start)
        if what == "funding":
            return self.rest.funding_payments_since(start, sorted(markets)) if markets else _nothing()
        if what == "transfer":
            return self.rest.transfers_since(start)
        if what == "bust":
            return self.rest.tradebusts_since(start)
        raise ValueError(f"paradex has no {what} ledger")

    async def order(self, order_id: str) -> Item[Order]:
        return await self.rest.order(order_id)

    async def close(self) -> None:
        await self.rest.close()


async def _nothing() -> AsyncIterator[Item[Any]]:
    return
    yield  # pragma: no cover


def make_driver(venue: str, *, credential: SecretStr, ws_url: str | None, rest_url: str | None,
                backfill_from: datetime | None, retry: RetryPolicy | None = None) -> VenueDriver:  # fmt: skip
    if venue == "extended":
        return ExtendedDriver(api_key=credential, ws_url=ws_url, rest_url=rest_url, backfill_from=backfill_from,
                              retry=retry)  # fmt: skip
    if venue == "paradex":
        return ParadexDriver(token=credential, ws_url=ws_url, rest_url=rest_url, backfill_from=backfill_from,
                             retry=retry)  # fmt: skip
    raise ValueError(f"unknown venue {venue!r}")
