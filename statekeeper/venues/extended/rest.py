"""Extended's REST API: snapshots for reconciliation, trade and funding backfills, asset operations.

Every call sends ``X-Api-Key`` (and the ``User-Agent`` Extended requires, set by
:class:`~statekeeper.venues.http.VenueHttpClient`). 429 (after ``Retry-After``), 5xx, timeouts and connection
failures are retried by the HTTP client; what is left raises a typed error: :class:`RetryableVenueError`,
:class:`FatalVenueError` (401/403), :class:`NonRetryableVenueError` (other 4xx) or :class:`VenueResponseError`
(an answer that cannot be understood, or an ``ERROR`` envelope). A failure is never an empty answer (invariant 8).

Pagination is by cursor: the cursor of the next page is the last item's id, items come newest first. The
iterators fetch pages until the venue gives no items or no cursor; they do not stop at a short page, since the
venue may serve fewer items than asked for (asset operations come 50 to a page whatever the limit).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from decimal import Decimal
from typing import Self, TypeVar
from urllib.parse import quote

import orjson
from pydantic import SecretStr

from statekeeper.events import Balance, Fill, FundingPayment, Order, Position, Transfer
from statekeeper.venues.base import Item, Page, follow_pages
from statekeeper.venues.errors import VenueResponseError
from statekeeper.venues.extended import wire as x
from statekeeper.venues.extended.parse import (
    AccountInfo,
    parse_account_info,
    parse_asset_operations,
    parse_balance,
    parse_funding_history,
    parse_open_orders,
    parse_order,
    parse_orders_history,
    parse_positions,
    parse_trades,
)
from statekeeper.venues.http import HttpResponse, Params, RetryPolicy, VenueHttpClient
from statekeeper.venues.wire import epoch_ms

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_COLLATERAL = "USD"  # the collateral of Extended's Starknet accounts (live capture: collateralName "USD")


class ExtendedRestClient:
    """A client of one Extended sub-account's private REST API (read-only endpoints).

    ``http`` may be given to share or customise the HTTP client (retry policy, an injected ``sleep``): its
    ``base_url`` must be ``base_url``. The ``X-Api-Key`` header goes with each request, so one HTTP client can
    serve several accounts.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        http: VenueHttpClient | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        collateral: str = DEFAULT_COLLATERAL,
    ) -> None:
        if not isinstance(api_key, SecretStr):
            raise TypeError("api_key must be a pydantic SecretStr, so that it never shows in a repr or a log")
        if not api_key.get_secret_value():
            raise ValueError("the Extended API key is empty")
        self._api_key = api_key  # kept secret: the header is built per request, never held in clear
        if http is None:
            http = VenueHttpClient(venue=x.VENUE, base_url=base_url, timeout=timeout, retry=retry or RetryPolicy())
        elif http.base_url.rstrip("/") != base_url.rstrip("/"):
            raise ValueError(f"the HTTP client's base URL {http.base_url!r} is not {base_url!r}")
        self.base_url = base_url
        self.collateral = collateral
        self._http = http

    def __repr__(self) -> str:
        return f"ExtendedRestClient({self.base_url!r}, api_key=SecretStr('**********'))"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    async def _get(
        self, path: str, params: Params | None = None, *, ok_statuses: Collection[int] = (200,)
    ) -> HttpResponse:
        headers = {x.API_KEY_HEADER: self._api_key.get_secret_value()}
        return await self._http.get(path, params, ok_statuses=ok_statuses, headers=headers)

    # ------------------------------------------------------------------------------------------ snapshots

    async def account_info(self) -> Item[AccountInfo]:
        """``GET /user/account/info``: the sub-account's id, status and keys."""
        return parse_account_info((await self._get(x.PATH_ACCOUNT_INFO)).body)

    async def balance(self) -> Item[Balance]:
        """``GET /user/balance``. Extended answers HTTP 404 when the balance is 0: that is an explicit zero.

        The zero balance is in ``collateral`` (``"USD"`` unless the client was told otherwise); its ``raw`` is the
        404 answer as received. A 404 whose body is not the venue's (not JSON: a proxy's or a wrong URL's page)
        raises :class:`VenueResponseError` rather than reading as zero.
        """
        response = await self._get(x.PATH_BALANCE, ok_statuses=(200, 404))
        if response.status != 404:
            return parse_balance(response.body)
        if response.body.strip():
            try:
                answer = orjson.loads(response.body)
            except orjson.JSONDecodeError:
                answer = None
            if not isinstance(answer, dict):
                raise VenueResponseError(
                    f"extended GET {x.PATH_BALANCE}: HTTP 404 with a body that is not the venue's JSON; "
                    "not taken as a zero balance",
                    venue=x.VENUE,
                    status=404,
                )
        logger.info(
            "extended balance: HTTP 404, the venue's answer for a zero balance",
            extra={"action": "zero_balance", "venue": x.VENUE},
        )
        zero = Decimal(0)
        record = Balance(
            asset=self.collateral,
            balance=zero,
            equity=zero,
            available_for_trade=zero,
            available_for_withdrawal=zero,
        )
        return Item(record, response.text)

    async def positions(self, *, market: str | None = None, side: str | None = None) -> tuple[Item[Position], ...]:
        """``GET /user/positions``: every open position (optionally of one market or side)."""
        params = _params(market=market, side=side)
        return parse_positions((await self._get(x.PATH_POSITIONS, params)).body)

    async def open_orders(
        self, *, market: str | None = None, order_type: str | None = None, side: str | None = None
    ) -> tuple[Item[Order], ...]:
        """``GET /user/orders``: every open order (NEW, PARTIALLY_FILLED, UNTRIGGERED)."""
        params = _params(market=market, type=order_type, side=side)
        return parse_open_orders((await self._get(x.PATH_OPEN_ORDERS, params)).body)

    async def order(self, order_id: str) -> Item[Order]:
        """``GET /user/orders/{id}``. An unknown id is an error (HTTP 404), never "the order is gone"."""
        if not order_id:
            raise ValueError("an order id is required")
        path = x.PATH_ORDER.format(order_id=quote(order_id, safe=""))
        return parse_order((await self._get(path)).body)

    # ----------------------------------------------------------------------------------------- histories

    async def orders_history(
        self,
        *,
        market: str | None = None,
        order_type: str | None = None,
        side: str | None = None,
        cursor: str | None = None,
        limit: int | None = DEFAULT_PAGE_SIZE,
    ) -> Page[Order]:
        """``GET /user/orders/history``: one page of closed orders (FILLED, CANCELLED, REJECTED, EXPIRED)."""
        params = _params(market=market, type=order_type, side=side, cursor=cursor, limit=limit)
        return parse_orders_history((await self._get(x.PATH_ORDERS_HISTORY, params)).body)

    async def trades(
        self,
        *,
        cursor: str | None = None,
        limit: int | None = DEFAULT_PAGE_SIZE,
        market: str | None = None,
        trade_type: str | None = None,
        side: str | None = None,
    ) -> Page[Fill]:
        """``GET /user/trades``: one page of fills, newest first."""
        params = _params(market=market, type=trade_type, side=side, cursor=cursor, limit=limit)
        return parse_trades((await self._get(x.PATH_TRADES, params)).body)

    async def trades_since(
        self, trade_id: str | None, *, limit: int = DEFAULT_PAGE_SIZE, market: str | None = None
    ) -> AsyncIterator[Item[Fill]]:
        """Every fill newer than ``trade_id`` (all of them when None), newest first, page after page.

        Stops at the first fill that is not newer (ids increase with time); if ``trade_id`` is never met, every
        page is read (the venue keeps at most 10,000 trades).
        """

        async def page(cursor: str | None) -> Page[Fill]:
            return await self.trades(cursor=cursor, limit=limit, market=market)

        async for item in follow_pages(page, venue=x.VENUE, what="trades", empty_page_ends=True):
            if trade_id is not None and not _newer(item.record.fill_id, trade_id):
                return
            yield item

    async def funding_history(
        self,
        from_time: datetime,
        *,
        market: str | None = None,
        side: str | None = None,
        cursor: str | None = None,
        limit: int | None = DEFAULT_PAGE_SIZE,
    ) -> Page[FundingPayment]:
        """``GET /user/funding/history?fromTime=``: one page of funding payments paid at or after ``from_time``.

        ``amount`` keeps the venue's sign, which Extended does not document (see :mod:`.parse`).
        """
        params = _params(fromTime=epoch_ms(from_time), market=market, side=side, cursor=cursor, limit=limit)
        return parse_funding_history((await self._get(x.PATH_FUNDING_HISTORY, params)).body)

    async def funding_since(
        self, from_time: datetime, *, market: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[Item[FundingPayment]]:
        """Every funding payment since ``from_time``, page after page."""

        async def page(cursor: str | None) -> Page[FundingPayment]:
            return await self.funding_history(from_time, market=market, cursor=cursor, limit=limit)

        async for item in follow_pages(page, venue=x.VENUE, what="funding history", empty_page_ends=True):
            yield item

    async def asset_operations(
        self,
        *,
        operation_type: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Transfer]:
        """``GET /user/assetOperations``: one page of deposits, withdrawals and transfers, newest first."""
        params = _params(type=operation_type, status=status, cursor=cursor, limit=limit)
        return parse_asset_operations((await self._get(x.PATH_ASSET_OPERATIONS, params)).body)

    async def all_asset_operations(
        self, *, operation_type: str | None = None, status: str | None = None
    ) -> AsyncIterator[Item[Transfer]]:
        """Every asset operation, page after page, newest first."""

        async def page(cursor: str | None) -> Page[Transfer]:
            return await self.asset_operations(operation_type=operation_type, status=status, cursor=cursor)

        async for item in follow_pages(page, venue=x.VENUE, what="asset operations", empty_page_ends=True):
            yield item


def _newer(item_id: str, known_id: str) -> bool:
    """Whether ``item_id`` is newer than ``known_id``: Extended's ids are numbers that increase with time."""
    if item_id.isdigit() and known_id.isdigit():
        return int(item_id) > int(known_id)
    return item_id != known_id


def _params(**values: str | int | None) -> Params:
    return {name: value for name, value in values.items() if value is not None}
