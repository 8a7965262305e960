"""The Paradex REST client for seeding and reconciliation: every call authorised, parsed, never empty on failure.

Every request carries ``Authorization: Bearer <jwt>``, asked of the :class:`TokenProvider` for that request (a
minting provider refreshes ahead of expiry). An HTTP 401 invalidates the token and the call is tried once more
with a fresh one; a second 401 is :class:`FatalVenueError`. Retries of 429 (after ``Retry-After``), 5xx and
timeouts are :class:`~statekeeper.venues.http.VenueHttpClient`'s; an answer that cannot be read is
:class:`VenueResponseError` (invariant 8: a failure never reads as "nothing there").

History endpoints are paginated ``{"next", "prev", "results"}``; the ``*_since`` methods walk ``next`` from a
start time and yield one :class:`~statekeeper.venues.base.Item` at a time (as the other venues' clients do).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Final, Self, TypeVar

from statekeeper.events import AccountSummary, Balance, Fill, FillBust, FundingPayment, Order, Position, Transfer
from statekeeper.venues.base import Item, Page, follow_pages
from statekeeper.venues.errors import FatalVenueError
from statekeeper.venues.http import MAX_ERROR_BODY, VenueHttpClient
from statekeeper.venues.paradex import parse
from statekeeper.venues.paradex.auth import TokenProvider
from statekeeper.venues.paradex.wire import DEFAULT_PAGE_SIZE, VENUE, RestPath, order_path
from statekeeper.venues.wire import epoch_ms

logger = logging.getLogger(__name__)

T = TypeVar("T")
Query = dict[str, str | int]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ParadexRestClient:
    """GET the account's state and history from Paradex's REST API (``base_url`` ends in ``/v1``).

    ``http`` sets the transport (timeouts, retry policy, an injectable ``sleep``, a shared session); its base URL
    and headers are replaced by ``base_url`` and the bearer header. Close the client (``async with``) to close
    the session it opened.
    """

    def __init__(
        self,
        base_url: str,
        tokens: TokenProvider,
        *,
        http: VenueHttpClient | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        template = http if http is not None else VenueHttpClient(venue=VENUE, base_url=base_url)
        self._http = dataclasses.replace(template, venue=VENUE, base_url=base_url)
        self._tokens = tokens
        self._page_size = page_size

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    def __repr__(self) -> str:
        return f"ParadexRestClient({self._http.base_url!r})"

    # ---------------------------------------------------------------------------------------- transport

    async def get(self, path: str, params: Query | None = None) -> bytes:
        """The body of ``GET path`` (200), with the bearer token; one refresh on 401, then fatal."""
        refused = ""
        for attempt in (1, 2):
            secret = (await self._tokens.token()).get_secret_value()
            response = await self._http.get(
                path, params, ok_statuses=(200, 401), headers={"Authorization": f"Bearer {secret}"}
            )
            if response.status == 200:
                return response.body
            refused = response.text[:MAX_ERROR_BODY].replace(secret, "***")
            self._tokens.invalidate()
            logger.info(
                "%s GET %s: HTTP 401, the token was refused (attempt %d of 2)",
                VENUE,
                path,
                attempt,
                extra={"action": "token_refused", "venue": VENUE},
            )
        raise FatalVenueError(
            f"{VENUE} GET {path}: HTTP 401 twice, the token was refused even after a refresh: {refused}",
            venue=VENUE,
            status=401,
        )

    def _pages(self, path: str, query: Query, parser: Callable[[bytes], Page[T]]) -> AsyncIterator[Item[T]]:
        """The items of every page of ``path``, following ``next`` (the end is a null ``next``)."""

        async def fetch(cursor: str | None) -> Page[T]:
            params: Query = {**query, "page_size": self._page_size}
            if cursor is not None:
                params["cursor"] = cursor
            return parser(await self.get(path, params))

        return follow_pages(fetch, venue=VENUE, what=f"GET {path}")

    # ------------------------------------------------------------------------------------------ snapshots

    async def account(self) -> Item[AccountSummary]:
        """``GET /account``: margin and collateral summary."""
        return parse.parse_account(await self.get(RestPath.ACCOUNT))

    async def balances(self) -> tuple[Item[Balance], ...]:
        """``GET /balance``: every token balance."""
        return parse.parse_balances(await self.get(RestPath.BALANCE))

    async def positions(self) -> tuple[Item[Position], ...]:
        """``GET /positions``: the open positions."""
        return parse.parse_positions(await self.get(RestPath.POSITIONS))

    async def open_orders(self, market: str | None = None) -> tuple[Item[Order], ...]:
        """``GET /orders``: the open orders (of one market, if given)."""
        return parse.parse_open_orders(await self.get(RestPath.ORDERS, _query(market=market)))

    async def order(self, order_id: str) -> Item[Order]:
        """``GET /orders/{id}``. An unknown id is the venue's 404: :class:`NonRetryableVenueError`."""
        return parse.parse_order(await self.get(order_path(order_id)))

    # -------------------------------------------------------------------------------------------- history

    async def orders_history_page(
        self,
        *,
        start_at: datetime | None = None,
        end_at: datetime | None = None,
        market: str | None = None,
        cursor: str | None = None,
    ) -> Page[Order]:
        """One page of ``GET /orders-history``; pass the page's ``cursor`` for the next."""
        query = _query(start_at=start_at, end_at=end_at, market=market, cursor=cursor)
        query["page_size"] = self._page_size
        return parse.parse_orders_history(await self.get(RestPath.ORDERS_HISTORY, query))

    def orders_history_since(
        self, start_at: datetime, *, end_at: datetime | None = None, market: str | None = None
    ) -> AsyncIterator[Item[Order]]:
        """Every order updated from ``start_at``, item by item, following the pages (``GET /orders-history``)."""
        query = _query(start_at=start_at, end_at=end_at, market=market)
        return self._pages(RestPath.ORDERS_HISTORY, query, parse.parse_orders_history)

    def fills_since(
        self, start_at: datetime, *, end_at: datetime | None = None, market: str | None = None
    ) -> AsyncIterator[Item[Fill]]:
        """Every fill from ``start_at``, item by item, following the pages (``GET /fills``)."""
        query = _query(start_at=start_at, end_at=end_at, market=market)
        return self._pages(RestPath.FILLS, query, parse.parse_fills)

    def funding_payments_since(
        self, start_at: datetime, markets: Iterable[str], *, end_at: datetime | None = None
    ) -> AsyncIterator[Item[FundingPayment]]:
        """Every funding payment from ``start_at`` in each of ``markets``, one market after the other (the
        endpoint requires a market; the protocol notes leave ``ALL`` unverified)."""
        chosen = tuple(dict.fromkeys(markets))
        if not chosen:
            raise ValueError("GET /funding/payments requires a market: give at least one")
        return self._funding_pages(start_at, end_at, chosen)

    async def _funding_pages(
        self, start_at: datetime, end_at: datetime | None, markets: tuple[str, ...]
    ) -> AsyncIterator[Item[FundingPayment]]:
        for market in markets:
            query = _query(start_at=start_at, end_at=end_at, market=market)
            async for item in self._pages(RestPath.FUNDING_PAYMENTS, query, parse.parse_funding_payments):
                yield item

    def transfers_since(self, start_at: datetime, *, end_at: datetime | None = None) -> AsyncIterator[Item[Transfer]]:
        """Every deposit, withdrawal and vault transfer from ``start_at`` (``GET /transfers``)."""
        return self._pages(RestPath.TRANSFERS, _query(start_at=start_at, end_at=end_at), parse.parse_transfers)

    def tradebusts_since(self, start_at: datetime, *, end_at: datetime | None = None) -> AsyncIterator[Item[FillBust]]:
        """Every busted fill from ``start_at`` (``GET /tradebusts``)."""
        return self._pages(RestPath.TRADEBUSTS, _query(start_at=start_at, end_at=end_at), parse.parse_tradebusts)


def _query(**values: str | datetime | None) -> Query:
    query: Query = {}
    for name, value in values.items():
        if value is None:
            continue
        query[name] = epoch_ms(value) if isinstance(value, datetime) else value
    return query
