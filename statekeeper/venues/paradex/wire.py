"""Paradex's wire vocabulary: URLs, channels, JSON-RPC methods and error codes, statuses, REST paths, requests.

Facts from ``protocols/README.md`` section 2 (the AsyncAPI and OpenAPI specs, the docs' WebSocket pages and the
``paradex-py`` 0.8.2 SDK). Frames are mapped to canonical events in :mod:`statekeeper.venues.paradex.parse`
with the converters of :mod:`statekeeper.venues.wire`, never through wire models: the names here are the
vocabulary those mappers share with the stream and REST clients.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any, Final
from urllib.parse import quote

VENUE: Final = "paradex"

# ------------------------------------------------------------------------------------------------- URLs

WS_URL: Final = "wss://ws.api.prod.paradex.trade/v1"
REST_URL: Final = "https://api.prod.paradex.trade/v1"
WS_URL_TESTNET: Final = "wss://ws.api.testnet.paradex.trade/v1"
REST_URL_TESTNET: Final = "https://api.testnet.paradex.trade/v1"

# --------------------------------------------------------------------------------------------- channels


class Channel(StrEnum):
    """The private channels statekeeper reads. ``orders``, ``fills`` and ``funding_payments`` take a market
    suffix (``.BTC-USD-PERP``) or ``.ALL``; the others take none."""

    ACCOUNT = "account"
    ORDERS = "orders.ALL"
    FILLS = "fills.ALL"
    POSITIONS = "positions"
    BALANCE_EVENTS = "balance_events"
    FUNDING_PAYMENTS = "funding_payments.ALL"
    TRANSFERS = "transfers"
    TRADEBUSTS = "tradebusts"
    TRANSACTION = "transaction"


class ChannelFamily(StrEnum):
    """What a notification's ``params.channel`` is, whatever its market suffix."""

    ACCOUNT = "account"
    ORDERS = "orders"
    FILLS = "fills"
    POSITIONS = "positions"
    BALANCE_EVENTS = "balance_events"
    FUNDING_PAYMENTS = "funding_payments"
    TRANSFERS = "transfers"
    TRADEBUSTS = "tradebusts"
    TRANSACTION = "transaction"


_EXACT_CHANNELS: Final = {
    "account": ChannelFamily.ACCOUNT,
    "positions": ChannelFamily.POSITIONS,
    "balance_events": ChannelFamily.BALANCE_EVENTS,
    "transfers": ChannelFamily.TRANSFERS,
    "tradebusts": ChannelFamily.TRADEBUSTS,
    "transaction": ChannelFamily.TRANSACTION,
}
_MARKET_CHANNELS: Final = {
    "orders": ChannelFamily.ORDERS,
    "fills": ChannelFamily.FILLS,
    "funding_payments": ChannelFamily.FUNDING_PAYMENTS,
}


def channel_family(channel: str) -> ChannelFamily | None:
    """The family of a channel name (``orders.ALL`` and ``orders.ETH-USD-PERP`` are both ORDERS), or None."""
    exact = _EXACT_CHANNELS.get(channel)
    if exact is not None:
        return exact
    prefix, dot, market = channel.partition(".")
    if dot and market:
        return _MARKET_CHANNELS.get(prefix)
    return None


DEFAULT_CHANNELS: Final[tuple[str, ...]] = tuple(
    channel.value
    for channel in (
        Channel.ACCOUNT,
        Channel.ORDERS,
        Channel.FILLS,
        Channel.POSITIONS,
        Channel.BALANCE_EVENTS,
        Channel.FUNDING_PAYMENTS,
        Channel.TRANSFERS,
        Channel.TRADEBUSTS,
    )
)
"""What the stream subscribes to by default: the account-state channels of the protocol notes' recommendation
(section 2.8). ``transaction`` (Starknet settlement state of fills) is mapped too, but is opt-in."""

# ---------------------------------------------------------------------------------------------- JSON-RPC

JSONRPC_VERSION: Final = "2.0"


class Method(StrEnum):
    AUTH = "auth"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SUBSCRIPTION = "subscription"
    """The method of every notification the server pushes."""


AUTH_REQUEST_ID: Final = 0
"""The docs' ``auth`` request uses id 0; subscriptions follow with 1, 2, …"""


class RpcErrorCode(IntEnum):
    """JSON-RPC error codes Paradex documents (``websockets/error-handling.mdx``)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    METHOD_ERROR = 100
    MALFORMED_BEARER = 40110
    INVALID_BEARER = 40111
    GEO_IP_BLOCKED = 40112


AUTH_ERROR_CODES: Final = frozenset(
    {RpcErrorCode.MALFORMED_BEARER, RpcErrorCode.INVALID_BEARER, RpcErrorCode.GEO_IP_BLOCKED}
)


def request(method: Method, params: dict[str, Any], request_id: int) -> dict[str, Any]:
    """A JSON-RPC request, keys in the docs' order."""
    return {"jsonrpc": JSONRPC_VERSION, "method": method.value, "params": params, "id": request_id}


def auth_request(bearer: str, request_id: int = AUTH_REQUEST_ID) -> dict[str, Any]:
    """``{"jsonrpc":"2.0","method":"auth","params":{"bearer":<JWT>},"id":0}``. It carries the token: never log it."""
    return request(Method.AUTH, {"bearer": bearer}, request_id)


def subscribe_request(channel: str, request_id: int) -> dict[str, Any]:
    return request(Method.SUBSCRIBE, {"channel": channel}, request_id)


def unsubscribe_request(channel: str, request_id: int) -> dict[str, Any]:
    return request(Method.UNSUBSCRIBE, {"channel": channel}, request_id)


# --------------------------------------------------------------------------------------------- statuses


class OrderStatus(StrEnum):
    """Order statuses: only these four. Fills are not a status (derive them from ``remaining_size``)."""

    NEW = "NEW"
    UNTRIGGERED = "UNTRIGGERED"
    OPEN = "OPEN"
    CLOSED = "CLOSED"


MARKET_ORDER_TYPES: Final = frozenset({"MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET", "STOP_LOSS_MARKET"})
"""Order types that execute at market: their ``price`` is ``"0"``, which means "no price"."""

FLAG_REDUCE_ONLY: Final = "REDUCE_ONLY"
INSTRUCTION_POST_ONLY: Final = "POST_ONLY"


class Liquidity(StrEnum):
    MAKER = "MAKER"
    TAKER = "TAKER"


class PositionStatus(StrEnum):
    OPEN = "OPEN"
    CLOSED = "CLOSED"


class TransferDirection(StrEnum):
    IN = "IN"
    OUT = "OUT"


TRANSFER_KIND_DIRECTIONS: Final = {
    "DEPOSIT": TransferDirection.IN,
    "AIRDROP": TransferDirection.IN,
    "WITHDRAWAL": TransferDirection.OUT,
    "AUTO_WITHDRAWAL": TransferDirection.OUT,
}
"""The direction a transfer kind implies, for answers without ``direction`` (older REST answers omit it). Vault
and unwinding kinds are left out: whether money enters or leaves depends on which side of the vault the account
is, so those need ``direction``."""

# ------------------------------------------------------------------------------------------------ REST


class RestPath(StrEnum):
    """Paths relative to the REST base URL (``…/v1``)."""

    ACCOUNT = "account"
    BALANCE = "balance"
    POSITIONS = "positions"
    ORDERS = "orders"
    ORDERS_HISTORY = "orders-history"
    FILLS = "fills"
    FUNDING_PAYMENTS = "funding/payments"
    TRANSFERS = "transfers"
    TRADEBUSTS = "tradebusts"


def order_path(order_id: str) -> str:
    """``orders/{id}``, the id percent-encoded so that it can only name one order."""
    return f"{RestPath.ORDERS}/{quote(order_id, safe='')}"


DEFAULT_PAGE_SIZE: Final = 100
