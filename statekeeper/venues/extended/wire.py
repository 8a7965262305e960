"""Extended's vocabulary: the v1 account stream's message types, statuses, REST paths, and the field names.

Facts come from ``protocols/README.md`` section 1 (Extended's API docs, its Python SDK ``x10-python-trading-starknet``
2.6.0 and a live capture). Where the docs and the SDK (or the stream and REST) spell a field differently, both
spellings are accepted: that field's constant is a tuple of its spellings, the SDK's (or the stream's) first, and
the parser takes the first one present and not null. :data:`ALTERNATE_SPELLINGS` lists them all.

No pydantic models here: the parser maps the decoded JSON with the converters of
:mod:`statekeeper.venues.wire`, which is several times faster than validating a wire model first.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

VENUE: Final = "extended"

MAINNET_STREAM_URL: Final = "wss://api.starknet.extended.exchange/stream.extended.exchange/v1/account"
MAINNET_REST_URL: Final = "https://api.starknet.extended.exchange/api/v1"
TESTNET_STREAM_URL: Final = "wss://api.starknet.sepolia.extended.exchange/stream.extended.exchange/v1/account"
TESTNET_REST_URL: Final = "https://api.starknet.sepolia.extended.exchange/api/v1"

API_KEY_HEADER: Final = "X-Api-Key"


# ------------------------------------------------------------------------------------------- the v1 stream


class MessageType(StrEnum):
    """``type`` of a v1 account-stream frame (the SDK's ``StreamDataType``, without its ``UNKNOWN`` fallback)."""

    ORDER = "ORDER"  # data.orders: [...]
    TRADE = "TRADE"  # data.trades: [...]
    BALANCE = "BALANCE"  # data.balance: {...}, one object
    POSITION = "POSITION"  # data.positions: [...]
    SPOT_BALANCE = "SPOT_BALANCE"  # data.spotBalances: [...] (SDK enum only)
    DEPOSIT = "DEPOSIT"  # shape undocumented on v1
    TRANSFER = "TRANSFER"  # shape undocumented on v1
    WITHDRAWAL = "WITHDRAWAL"  # shape undocumented on v1
    SNAPSHOT = "SNAPSHOT"  # in the SDK enum, never documented or seen: kept as a venue message
    DELTA = "DELTA"  # same


#: Types whose payload statekeeper keeps as an event without modelling it when it cannot map it.
ASSET_MESSAGE_TYPES: Final = frozenset({MessageType.DEPOSIT, MessageType.TRANSFER, MessageType.WITHDRAWAL})
OPAQUE_MESSAGE_TYPES: Final = frozenset({MessageType.SNAPSHOT, MessageType.DELTA})

# envelope: {type, data, error?, ts, seq}
F_TYPE: Final = "type"
F_DATA: Final = "data"
F_ERROR: Final = "error"
F_TS: Final = "ts"
F_SEQ: Final = "seq"
F_IS_SNAPSHOT: Final = "isSnapshot"  # inside data; seen live, absent from the docs' examples

# data keys per message type
D_ORDERS: Final = "orders"
D_TRADES: Final = "trades"
D_BALANCE: Final = "balance"
D_POSITIONS: Final = "positions"
D_SPOT_BALANCES: Final = "spotBalances"

# ------------------------------------------------------------------------------------------------ orders


class OrderStatus(StrEnum):
    NEW = "NEW"
    UNTRIGGERED = "UNTRIGGERED"
    TRIGGERED = "TRIGGERED"  # docs: "technical status, transition from UNTRIGGERED to NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"  # the SDK's fallback


TERMINAL_ORDER_STATUSES: Final = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)
"""An order in one of these has left the book for good (``GET /user/orders/history`` lists exactly these)."""

OPEN_ORDER_STATUSES: Final = frozenset(
    {OrderStatus.NEW, OrderStatus.UNTRIGGERED, OrderStatus.TRIGGERED, OrderStatus.PARTIALLY_FILLED}
)

ORDER_TYPES: Final = frozenset({"LIMIT", "CONDITIONAL", "MARKET", "TPSL", "TWAP"})
TIME_IN_FORCE: Final = frozenset({"GTT", "IOC", "FOK", "TOB"})
TRADE_TYPES: Final = frozenset({"TRADE", "LIQUIDATION", "DELEVERAGE"})
POSITION_STATUSES: Final = frozenset({"OPENED", "CLOSED"})

# Status words, order types and the like are kept as the venue sends them, known or not: a new word from the venue
# must not turn every frame into a rejected one. The sets above document the vocabulary and serve the callers.

# Order fields (SDK OpenOrderModel; docs "Get open orders" / account stream)
O_ID: Final = "id"
O_CLIENT_ID: Final = "externalId"
O_MARKET: Final = "market"
O_TYPE: Final = "type"
O_SIDE: Final = "side"
O_STATUS: Final = "status"
O_STATUS_REASON: Final = "statusReason"
O_PRICE: Final = "price"
O_AVERAGE_PRICE: Final = "averagePrice"
O_QTY: Final = "qty"
O_FILLED_QTY: Final = "filledQty"
O_FEE: Final = "payedFee"  # sic
O_REDUCE_ONLY: Final = "reduceOnly"
O_POST_ONLY: Final = "postOnly"
O_TIME_IN_FORCE: Final = "timeInForce"
O_CREATED: Final = ("createdTime", "createdAt")
O_UPDATED: Final = ("updatedTime", "updatedAt")
O_EXPIRES: Final = ("expiryTime", "expireTime")  # SDK / docs
O_TRIGGER: Final = "trigger"
O_TPSL_TYPE: Final = ("tpSlType", "tpslType")  # SDK and WS docs / REST history docs; not in the canonical model
TRIGGER_PRICE: Final = "triggerPrice"
TRIGGER_DIRECTION: Final = ("direction", "triggerPriceDirection")  # WS docs / REST docs; not in the canonical model

# Trade (fill) fields (SDK AccountTradeModel)
T_ID: Final = "id"
T_ORDER_ID: Final = "orderId"
T_CLIENT_ORDER_ID: Final = ("externalOrderId", "externalId")  # WS docs ("only on websocket") / REST example
T_MARKET: Final = "market"
T_SIDE: Final = "side"
T_PRICE: Final = ("price", "averagePrice")  # examples and SDK / the REST field table
T_QTY: Final = ("qty", "filledQty")  # same
T_VALUE: Final = "value"
T_FEE: Final = "fee"
T_IS_TAKER: Final = "isTaker"
T_TRADE_TYPE: Final = "tradeType"
T_CREATED: Final = ("createdTime", "createdAt")

# Balance fields (SDK BalanceModel, plus exposure, leverage and status from the docs and the live capture)
B_ASSET: Final = "collateralName"
B_BALANCE: Final = "balance"
B_EQUITY: Final = "equity"
B_AVAILABLE_FOR_TRADE: Final = "availableForTrade"
B_AVAILABLE_FOR_WITHDRAWAL: Final = "availableForWithdrawal"
B_UNREALISED_PNL: Final = "unrealisedPnl"
B_INITIAL_MARGIN: Final = "initialMargin"
B_MARGIN_RATIO: Final = "marginRatio"
B_EXPOSURE: Final = "exposure"
B_LEVERAGE: Final = "leverage"
B_STATUS: Final = "status"
B_UPDATED: Final = ("updatedTime", "updatedAt")

# Spot balance fields (SDK SpotBalanceModel)
S_ASSET: Final = "asset"
S_BALANCE: Final = "balance"
S_AVAILABLE_FOR_WITHDRAWAL: Final = "availableToWithdraw"
S_UPDATED: Final = ("updatedAt", "updatedTime")

# Position fields (SDK PositionModel; docs WS and REST examples)
P_ID: Final = "id"
P_MARKET: Final = "market"
P_SIDE: Final = "side"
P_STATUS: Final = "status"
P_SIZE: Final = "size"
P_VALUE: Final = "value"
P_OPEN_PRICE: Final = "openPrice"
P_MARK_PRICE: Final = "markPrice"
P_LIQUIDATION_PRICE: Final = "liquidationPrice"
P_UNREALISED_PNL: Final = "unrealisedPnl"
P_REALISED_PNL: Final = "realisedPnl"
P_LEVERAGE: Final = "leverage"
P_MARGIN: Final = "margin"
P_CREATED: Final = ("createdAt", "createdTime")  # SDK and WS docs / REST docs
P_UPDATED: Final = ("updatedAt", "updatedTime")

# ------------------------------------------------------------------------------------------------- REST

PATH_ACCOUNT_INFO: Final = "/user/account/info"
PATH_BALANCE: Final = "/user/balance"
PATH_POSITIONS: Final = "/user/positions"
PATH_OPEN_ORDERS: Final = "/user/orders"
PATH_ORDER: Final = "/user/orders/{order_id}"
PATH_ORDERS_HISTORY: Final = "/user/orders/history"
PATH_TRADES: Final = "/user/trades"
PATH_FUNDING_HISTORY: Final = "/user/funding/history"
PATH_ASSET_OPERATIONS: Final = "/user/assetOperations"

# envelope: {status: OK|ERROR, data, error: {code, message, debug_info?}, pagination: {cursor, count}}
R_STATUS_OK: Final = "OK"
R_STATUS_ERROR: Final = "ERROR"

# Funding payment fields (docs "Get funding payments"; not in the SDK)
FUNDING_ID: Final = "id"
FUNDING_MARKET: Final = "market"
FUNDING_FEE: Final = "fundingFee"
FUNDING_RATE: Final = "fundingRate"
FUNDING_SIDE: Final = "side"
FUNDING_SIZE: Final = "size"
FUNDING_VALUE: Final = "value"
FUNDING_MARK_PRICE: Final = "markPrice"
FUNDING_PAID: Final = "paidTime"

# Asset operation fields (docs "Get deposits, withdrawals, transfers history")
ASSET_OP_TYPES: Final = frozenset({"DEPOSIT", "CLAIM", "TRANSFER", "WITHDRAWAL", "FAST_WITHDRAWAL", "SLOW_WITHDRAWAL"})
ASSET_OP_STATUSES: Final = frozenset({"CREATED", "IN_PROGRESS", "READY_FOR_CLAIM", "COMPLETED", "REJECTED"})
A_ID: Final = "id"
A_TYPE: Final = "type"
A_STATUS: Final = "status"
A_AMOUNT: Final = "amount"
A_ASSET: Final = "asset"
A_TIME: Final = "time"
A_TX_HASH: Final = "transactionHash"

# Account info fields (docs "Get account details")
I_ACCOUNT_ID: Final = "accountId"
I_STATUS: Final = "status"
I_L2_KEY: Final = "l2Key"
I_L2_VAULT: Final = "l2Vault"
I_DESCRIPTION: Final = "description"
I_BRIDGE_ADDRESS: Final = "bridgeStarknetAddress"


ALTERNATE_SPELLINGS: Final[dict[str, tuple[str, ...]]] = {
    "order.createdTime": O_CREATED,
    "order.updatedTime": O_UPDATED,
    "order.expiryTime": O_EXPIRES,
    "order.tpSlType": O_TPSL_TYPE,
    "order.trigger.direction": TRIGGER_DIRECTION,
    "trade.externalOrderId": T_CLIENT_ORDER_ID,
    "trade.price": T_PRICE,
    "trade.qty": T_QTY,
    "trade.createdTime": T_CREATED,
    "balance.updatedTime": B_UPDATED,
    "spotBalance.updatedAt": S_UPDATED,
    "position.createdAt": P_CREATED,
    "position.updatedAt": P_UPDATED,
}
"""Every field Extended spells two ways (docs against SDK, stream against REST), keyed by its first spelling."""
