"""Paradex (Starknet appchain perp DEX): JSON-RPC 2.0 account stream, REST API, JWT authentication.

* :mod:`~statekeeper.venues.paradex.wire`: channels, JSON-RPC methods and error codes, statuses, REST paths;
* :mod:`~statekeeper.venues.paradex.parse`: frames and REST answers to canonical events and records (pure);
* :mod:`~statekeeper.venues.paradex.auth`: where JWTs come from (a static read-only token, or minted with
  paradex-py from a Starknet key);
* :mod:`~statekeeper.venues.paradex.rest`: the REST client; :mod:`~statekeeper.venues.paradex.stream`: the
  account stream client.

Private channels carry no frame sequence, only per-entity ``seq_no`` that increase sparsely: the stream is
:attr:`SequenceKind.SPARSE`, deduplicated on natural keys, seeded from REST after subscribing and reconciled
periodically.
"""

from __future__ import annotations

from statekeeper.venues import VenueSpec
from statekeeper.venues.base import SequenceKind
from statekeeper.venues.paradex.auth import SdkTokenProvider, StaticTokenProvider, TokenProvider, jwt_expiry
from statekeeper.venues.paradex.parse import (
    parse_account,
    parse_balances,
    parse_fills,
    parse_frame,
    parse_funding_payments,
    parse_open_orders,
    parse_order,
    parse_orders_history,
    parse_positions,
    parse_tradebusts,
    parse_transfers,
)
from statekeeper.venues.paradex.rest import ParadexRestClient
from statekeeper.venues.paradex.stream import ParadexAccountStream
from statekeeper.venues.paradex.wire import DEFAULT_CHANNELS, REST_URL, VENUE, WS_URL, Channel

SPEC = VenueSpec(
    name=VENUE,
    sequence=SequenceKind.SPARSE,
    ws_url=WS_URL,
    rest_url=REST_URL,
    parse_frame=parse_frame,
)

__all__ = [
    "DEFAULT_CHANNELS",
    "SPEC",
    "Channel",
    "ParadexAccountStream",
    "ParadexRestClient",
    "SdkTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
    "jwt_expiry",
    "parse_account",
    "parse_balances",
    "parse_fills",
    "parse_frame",
    "parse_funding_payments",
    "parse_open_orders",
    "parse_order",
    "parse_orders_history",
    "parse_positions",
    "parse_tradebusts",
    "parse_transfers",
]
