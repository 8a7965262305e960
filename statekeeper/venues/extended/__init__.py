"""Extended (Starknet perpetuals): the v1 private account stream and the REST API, as statekeeper uses them.

* :mod:`.wire`: the venue's vocabulary (message types, statuses, field spellings, REST paths);
* :mod:`.parse`: pure parsing of stream frames and REST bodies into canonical events and records;
* :mod:`.rest`: :class:`ExtendedRestClient`, the REST client used for snapshots, backfills and reconciliation;
* :mod:`.stream`: :class:`ExtendedAccountStream`, the WebSocket client of the account stream (frames, not events).

The v2 RPC stream (``/stream.extended.exchange/v2/rpc``) is not used: statekeeper consumes the documented v1
account stream, whose ``seq`` counts every frame of a connection from 1 (a contiguous sequence).
"""

from __future__ import annotations

from statekeeper.venues import VenueSpec
from statekeeper.venues.base import SequenceKind
from statekeeper.venues.extended.parse import (
    AccountInfo,
    parse_account_info,
    parse_asset_operations,
    parse_balance,
    parse_frame,
    parse_funding_history,
    parse_open_orders,
    parse_order,
    parse_orders_history,
    parse_positions,
    parse_trades,
)
from statekeeper.venues.extended.rest import ExtendedRestClient
from statekeeper.venues.extended.stream import ExtendedAccountStream
from statekeeper.venues.extended.wire import MAINNET_REST_URL, MAINNET_STREAM_URL, MessageType, OrderStatus

SPEC = VenueSpec(
    name="extended",
    sequence=SequenceKind.CONTIGUOUS,
    ws_url="wss://api.starknet.extended.exchange/stream.extended.exchange/v1/account",
    rest_url="https://api.starknet.extended.exchange/api/v1",
    parse_frame=parse_frame,
)

__all__ = [
    "MAINNET_REST_URL",
    "MAINNET_STREAM_URL",
    "SPEC",
    "AccountInfo",
    "ExtendedAccountStream",
    "ExtendedRestClient",
    "MessageType",
    "OrderStatus",
    "parse_account_info",
    "parse_asset_operations",
    "parse_balance",
    "parse_frame",
    "parse_funding_history",
    "parse_open_orders",
    "parse_order",
    "parse_orders_history",
    "parse_positions",
    "parse_trades",
]
