"""The rows of the projection tables, as plain Python values. Pure: no I/O.

Each row class is one table: its fields, in order, are the table's columns (:mod:`statekeeper.schema` derives the
SQLAlchemy tables from them, so the two cannot drift apart). Every row carries ``account``, ``venue``, the venue's
own ids and fields in snake_case, ``updated_at`` (the venue's time of the state the row holds) and ``event_id``
(the log position that last changed the row).

The folds (:mod:`.fold`) build rows from stored event payloads (:func:`decoder`: the payload was validated
against the event model when it was appended, so reading it back needs no second validation, only the decimal
and time conversions); the SQL projector loads and writes them; replay compares them. Rows are treated as
immutable values (a change makes a new row) but are not frozen: a frozen dataclass costs five times as much to
create, and the projector creates one per item. Two rows hold the same state when they are equal apart from
``event_id`` (:func:`same_state`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import orjson

TERMINAL_ORDER_STATUSES: frozenset[str] = frozenset(
    {"FILLED", "CANCELLED", "REJECTED", "EXPIRED", "CLOSED", "closed_unconfirmed"}
)
"""Statuses after which an order never works again: it leaves ``open_orders`` and stays in ``orders``.

``CLOSED`` is Paradex's; ``closed_unconfirmed`` is statekeeper's own, for an order that vanished from a snapshot
before its final state was known (it is replaced by the final state once that is fetched)."""

CLOSED_UNCONFIRMED = "closed_unconfirmed"
POSITION_CLOSED = "CLOSED"


@dataclass(slots=True)
class Row:
    """Columns shared by every projection row come first (``account``, ``venue``) and last (``event_id``)."""

    table: ClassVar[str]
    key: ClassVar[tuple[str, ...]]
    """The primary key columns (``account`` first)."""

    def key_value(self) -> tuple[Any, ...]:
        """The key without ``account``: what identifies the row within its account."""
        return tuple(getattr(self, name) for name in self.key[1:])


def columns(row_type: type[Row]) -> tuple[str, ...]:
    """The table's columns, in order."""
    return tuple(f.name for f in dataclasses.fields(row_type))


def same_state(a: Row | None, b: Row | None) -> bool:
    """True if both rows hold the same state (``event_id`` aside)."""
    if a is None or b is None:
        return a is b
    return type(a) is type(b) and _SAME_STATE[type(a)](a, b)


@dataclass(slots=True)
class BalanceRow(Row):
    table: ClassVar[str] = "balances"
    key: ClassVar[tuple[str, ...]] = ("account", "asset")

    account: str
    venue: str
    asset: str
    scope: str | None
    """The venue's balance statement the asset belongs to (:class:`statekeeper.events.BalanceScope`); None for a
    row from a message logged before scopes were recorded."""
    balance: Decimal
    equity: Decimal | None
    available_for_trade: Decimal | None
    available_for_withdrawal: Decimal | None
    unrealised_pnl: Decimal | None
    initial_margin: Decimal | None
    maintenance_margin: Decimal | None
    margin_ratio: Decimal | None
    exposure: Decimal | None
    leverage: Decimal | None
    status: str | None
    updated_at: datetime
    event_id: int


@dataclass(slots=True)
class AccountRow(Row):
    """Account-level margin figures, where the venue reports them apart from balances (Paradex ``account``)."""

    table: ClassVar[str] = "account_margins"
    key: ClassVar[tuple[str, ...]] = ("account",)

    account: str
    venue: str
    equity: Decimal
    free_collateral: Decimal | None
    initial_margin: Decimal | None
    maintenance_margin: Decimal | None
    total_collateral: Decimal | None
    margin_cushion: Decimal | None
    settlement_asset: str | None
    status: str | None
    venue_seq: int | None
    updated_at: datetime
    event_id: int


@dataclass(slots=True)
class OrderRow(Row):
    """One order: its latest state in ``orders``, and in ``open_orders`` too while it works."""

    table: ClassVar[str] = "orders"
    key: ClassVar[tuple[str, ...]] = ("account", "order_id")

    account: str
    venue: str
    order_id: str
    client_order_id: str | None
    market: str
    side: str
    order_type: str
    status: str
    status_reason: str | None
    price: Decimal | None
    average_price: Decimal | None
    qty: Decimal
    filled_qty: Decimal | None
    remaining_qty: Decimal | None
    fee_paid: Decimal | None
    trigger_price: Decimal | None
    reduce_only: bool | None
    post_only: bool | None
    time_in_force: str | None
    created_at: datetime | None
    expires_at: datetime | None
    venue_seq: int | None
    updated_at: datetime
    event_id: int

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL_ORDER_STATUSES


@dataclass(slots=True)
class OpenOrderRow(OrderRow):
    """The same columns as :class:`OrderRow`: the orders still working."""

    table: ClassVar[str] = "open_orders"


@dataclass(slots=True)
class PositionRow(Row):
    """An open position, keyed by market (neither venue hedges: one position per market)."""

    table: ClassVar[str] = "positions"
    key: ClassVar[tuple[str, ...]] = ("account", "market")

    account: str
    venue: str
    market: str
    side: str
    position_id: str | None
    size: Decimal
    entry_price: Decimal | None
    mark_price: Decimal | None
    value: Decimal | None
    liquidation_price: Decimal | None
    unrealised_pnl: Decimal | None
    realised_pnl: Decimal | None
    leverage: Decimal | None
    margin: Decimal | None
    status: str | None
    created_at: datetime | None
    venue_seq: int | None
    updated_at: datetime
    event_id: int

    @property
    def is_open(self) -> bool:
        return self.size != 0 and self.status != POSITION_CLOSED


@dataclass(slots=True)
class ClosedPositionRow(PositionRow):
    """The last position closed in each market, as last reported: size 0 once closed.

    It also keeps a closed position's time, so that an update older than the close never opens it again.
    """

    table: ClassVar[str] = "closed_positions"


@dataclass(slots=True)
class FillRow(Row):
    """One execution. ``busted_at`` is set when the venue reverts it; a busted fill is never deleted.

    Keyed by ``(fill_id, fill_type)``: Paradex's fill ids are unique only per fill type.
    """

    table: ClassVar[str] = "fills"
    key: ClassVar[tuple[str, ...]] = ("account", "fill_id", "fill_type")

    account: str
    venue: str
    fill_id: str
    fill_type: str
    order_id: str | None
    client_order_id: str | None
    market: str
    side: str
    price: Decimal
    qty: Decimal
    value: Decimal | None
    fee: Decimal
    fee_asset: str | None
    is_taker: bool | None
    realized_pnl: Decimal | None
    realized_funding: Decimal | None
    created_at: datetime
    busted_at: datetime | None
    updated_at: datetime
    event_id: int


@dataclass(slots=True)
class FillBustRow(Row):
    """A tradebust as the venue reported it. Kept apart so that a bust seen before its fill still marks it."""

    table: ClassVar[str] = "fill_busts"
    key: ClassVar[tuple[str, ...]] = ("account", "fill_id")

    account: str
    venue: str
    fill_id: str
    busted_at: datetime
    updated_at: datetime
    event_id: int


@dataclass(slots=True)
class FundingRow(Row):
    """One funding payment; ``amount`` is signed from the account's side (negative: the account paid)."""

    table: ClassVar[str] = "funding_payments"
    key: ClassVar[tuple[str, ...]] = ("account", "payment_id")

    account: str
    venue: str
    payment_id: str
    market: str
    amount: Decimal
    asset: str | None
    rate: Decimal | None
    position_side: str | None
    position_size: Decimal | None
    position_value: Decimal | None
    mark_price: Decimal | None
    funding_index: Decimal | None
    fill_id: str | None
    paid_at: datetime
    updated_at: datetime
    event_id: int


ROW_TYPES: tuple[type[Row], ...] = (
    BalanceRow,
    AccountRow,
    OrderRow,
    OpenOrderRow,
    PositionRow,
    ClosedPositionRow,
    FillRow,
    FillBustRow,
    FundingRow,
)
"""Every projection table, in the order the projector writes them."""

SAME_ROWS_AS: dict[type[Row], type[Row]] = {OpenOrderRow: OrderRow, ClosedPositionRow: PositionRow}
"""Tables whose rows are another table's rows (the folds hold them as those)."""


# ----------------------------------------------------------------------------------------------- decoding

R = TypeVar("R", bound=Row)


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(hint, types.UnionType) else []
    base = args[0] if args else hint
    if base is Decimal:
        return Decimal
    if base is datetime:
        return datetime.fromisoformat
    return None


_CONVERSIONS = {"D": Decimal, "T": datetime.fromisoformat}
"""The names the generated decoders convert text with."""


def _compile_decoder(row_type: type[R]) -> Callable[[Mapping[str, Any], str, str, int], R]:
    """A function ``(item, account, venue, event_id) -> row`` for ``row_type``.

    Generated from the row's own field names (never from input), like :mod:`dataclasses` generates ``__init__``:
    the projector decodes one row per item, and a generic loop over the fields costs three times as much.
    """
    hints = typing.get_type_hints(row_type)
    lines = ["def compiled(item, account, venue, event_id):", "    g = item.get"]
    arguments = []
    for name in columns(row_type):
        convert = _converter(hints[name])
        if name in ("account", "venue", "event_id"):
            arguments.append(name)
        elif convert is None:
            arguments.append(f"g({name!r})")
        else:
            lines.append(f"    v = g({name!r})")
            lines.append(f"    {name} = None if v is None else {'D' if convert is Decimal else 'T'}(v)")
            arguments.append(name)
    lines.append(f"    return cls({', '.join(arguments)})")
    source = "\n".join(lines)
    decode: Callable[[Mapping[str, Any], str, str, int], R] = _compile(source, {"cls": row_type, **_CONVERSIONS})
    return decode


def _compile(source: str, namespace: dict[str, Any]) -> Any:
    """The function ``compiled`` that ``source`` defines, its globals ``namespace``."""
    exec(source, namespace)  # noqa: S102 - the sources are built from this module's field names only
    return namespace["compiled"]


def _text_value(name: str, hint: Any) -> str:
    """The expression of a row's value as JSON data: decimals as their exact text (times go as they are)."""
    return f"None if (x := r.{name}) is None else str(x)" if _converter(hint) is Decimal else f"r.{name}"


def json_encoder(row_type: type[Row], first: str) -> Callable[[Row], bytes]:
    """A function ``(row) -> bytes``: the canonical JSON (orjson, no whitespace) of ``[first, value, value, ...]``,
    the row's values in column order, decimals as their exact text, times in ISO 8601, ``null`` for none.

    Generated (like :func:`_compile_decoder`): replay writes every row it spills and digests this way, and orjson's
    fallback for the decimals costs twice the whole line.
    """
    hints = typing.get_type_hints(row_type)
    values = ", ".join([repr(first)] + [_text_value(name, hints[name]) for name in columns(row_type)])
    source = f"def compiled(r):\n    return dumps([{values}])"
    encode: Callable[[Row], bytes] = _compile(source, {"dumps": orjson.dumps})
    return encode


def positional_decoder(row_type: type[R], offset: int) -> Callable[[Sequence[Any]], R]:
    """A function ``(values) -> row``: ``values[offset:]`` are the row's columns in order, decimals and times as
    text (the JSON data of :func:`json_encoder`, ``offset`` 1 to skip its first item). Generated, as
    :func:`_compile_decoder` is."""
    hints = typing.get_type_hints(row_type)
    arguments = []
    for index, name in enumerate(columns(row_type), start=offset):
        convert = _converter(hints[name])
        if convert is None:
            arguments.append(f"v[{index}]")
        else:
            arguments.append(f"None if (x := v[{index}]) is None else {'D' if convert is Decimal else 'T'}(x)")
    source = f"def compiled(v):\n    return cls({', '.join(arguments)})"
    decode: Callable[[Sequence[Any]], R] = _compile(source, {"cls": row_type, **_CONVERSIONS})
    return decode


_DECODERS: dict[type[Row], Callable[[Mapping[str, Any], str, str, int], Any]] = {
    row_type: _compile_decoder(row_type) for row_type in ROW_TYPES
}


def _compile_same_state(row_type: type[Row]) -> Callable[[Any, Any], bool]:
    """``(a, b) -> bool``: the columns but ``event_id`` equal, ``updated_at`` first: the folds ask it of every
    update, and an update almost always has a time of its own, so the answer is usually the first comparison."""
    names = sorted((c for c in columns(row_type) if c != "event_id"), key=lambda c: c != "updated_at")
    compared = " and ".join(f"a.{name} == b.{name}" for name in names)
    same: Callable[[Any, Any], bool] = _compile(f"def compiled(a, b):\n    return {compared}", {})
    return same


_SAME_STATE = {row_type: _compile_same_state(row_type) for row_type in ROW_TYPES}


def decoder(row_type: type[R]) -> Callable[[Mapping[str, Any], str, str, int], R]:
    """The function ``(item, account, venue, event_id) -> row`` that makes a ``row_type`` row from one item of a
    stored payload (JSON: decimals and times as strings, absent fields None). The folds call it for every item.

    Columns the item does not hold (``busted_at``, a derived ``updated_at``) are None: the fold sets them.
    """
    found: Callable[[Mapping[str, Any], str, str, int], R] = _DECODERS[row_type]
    return found
