"""The canonical event model: what every venue message and control decision becomes before it enters the log.

Pure: no I/O, no asyncio. The venue packages build these models at their parse boundary, the event log stores
them, and projectors, reconciliation and replay read them back.

Rules the models enforce, so that nothing downstream has to check them again:

* money and quantities are :class:`~decimal.Decimal` (never ``float``; ``NaN`` and infinities are refused) and
  are written to JSON as strings, exactly: the same digits and exponent as received, in Python's notation
  (``"0.0000000000000000"`` is written ``"0E-16"``, which PostgreSQL's ``numeric`` reads as the same value);
* times are timezone-aware and converted to UTC; a naive datetime is an error;
* venue ids are strings (Extended's ids reach 2**63 and beyond a signed BIGINT);
* an event has one *key*, unique per account: ``seq:<session>:<seq>`` where the venue numbers its frames, otherwise
  a deterministic key built from the venue's natural ids with :func:`natural_key`.

An event is one venue message (one frame, one REST item or one REST snapshot) or one control decision. A frame
that carries several orders is one ``order`` event whose body lists them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeAlias
from urllib.parse import quote
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from statekeeper.errors import InvalidEvent

# ----------------------------------------------------------------------------------------------- vocabularies


class EventKind(StrEnum):
    """The stable ``kind`` of an event, stored in ``events.kind``. Never rename a value: the log keeps them."""

    # account state reported by a venue
    BALANCE = "balance"
    ORDER = "order"
    FILL = "fill"
    FILL_BUST = "fill_bust"
    POSITION = "position"
    FUNDING = "funding"
    TRANSFER = "transfer"
    ACCOUNT = "account"
    VENUE_MESSAGE = "venue_message"  # a venue message kept as received, not (yet) modeled or projected
    # protocol: a venue's answers to our requests (JSON-RPC results and errors)
    PROTOCOL = "protocol"
    # stream lifecycle
    SESSION_OPENED = "session_opened"
    SESSION_CLOSED = "session_closed"
    GAP_DETECTED = "gap_detected"
    RESYNC_STARTED = "resync_started"
    RESYNC_COMPLETED = "resync_completed"
    # reconciliation
    RECONCILIATION_PASS = "reconciliation_pass"  # noqa: S105 - not a password
    DISCREPANCY = "discrepancy"


STATE_KINDS: frozenset[EventKind] = frozenset(
    {
        EventKind.BALANCE,
        EventKind.ORDER,
        EventKind.FILL,
        EventKind.FILL_BUST,
        EventKind.POSITION,
        EventKind.FUNDING,
        EventKind.TRANSFER,
        EventKind.ACCOUNT,
    }
)
"""Kinds that carry account state; the others are control events."""

SNAPSHOT_KINDS: frozenset[EventKind] = frozenset(
    {EventKind.BALANCE, EventKind.ORDER, EventKind.POSITION, EventKind.ACCOUNT}
)
"""Kinds that may be a snapshot (a full replacement of that state); ledgers (fills, funding) never are."""


class Source(StrEnum):
    """Where an event came from (``events.source``)."""

    STREAM = "stream"
    REST = "rest"
    RECONCILIATION = "reconciliation"


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class PositionSide(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"


class Transport(StrEnum):
    WEBSOCKET = "websocket"
    REST_POLL = "rest_poll"


class CloseReason(StrEnum):
    """Why a stream session ended (``stream_sessions.close_reason`` and ``session_closed`` events)."""

    SHUTDOWN = "shutdown"
    GAP = "gap"
    ERROR = "error"
    SERVER_CLOSE = "server_close"
    FATAL = "fatal"
    BACKPRESSURE = "backpressure"
    ABANDONED = "abandoned"  # found open after the daemon that owned it died
    STREAM_RESTORED = "stream_restored"  # a REST polling fallback ends: the stream is back


class BalanceScope(StrEnum):
    """Which of a venue's balance statements a balance message belongs to (``BalanceBody.scope``)."""

    COLLATERAL = "collateral"
    """Extended's account balance (``BALANCE``, ``GET /user/balance``): the one collateral asset."""
    SPOT = "spot"
    """Extended's spot balances (``SPOT_BALANCE``): every spot asset of a unified-margin account."""
    TOKEN = "token"  # noqa: S105 - a balance scope, not a credential
    """Paradex's token balances (``GET /balance``, ``balance_events``)."""


class SequenceProblem(StrEnum):
    GAP = "gap"
    REPEAT = "repeat"
    REORDER = "reorder"


# ------------------------------------------------------------------------------------------- field types


def _decimal_input(value: object) -> object:
    # Floats and bools are refused: a float has already lost the venue's decimal digits.
    if isinstance(value, bool | float):
        raise ValueError("amounts must be given as decimal strings, int or Decimal, not float or bool")
    return value


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


Amount = Annotated[Decimal, BeforeValidator(_decimal_input), Field(allow_inf_nan=False)]
"""A decimal amount, price or quantity."""

UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware datetime, normalised to UTC."""

VenueId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
"""A venue's own identifier, always a string."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]

AccountName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
"""The account key used everywhere in SQL: letters, digits, ``.``, ``_`` and ``-``, at most 64 characters."""

VenueName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]

EventKey = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


# ----------------------------------------------------------------------------------------- state records


class Balance(_Model):
    """The balance of one asset (collateral) of an account, as the venue reports it: state, not an increment."""

    asset: Name
    balance: Amount
    equity: Amount | None = None
    available_for_trade: Amount | None = None
    available_for_withdrawal: Amount | None = None
    unrealised_pnl: Amount | None = None
    initial_margin: Amount | None = None
    maintenance_margin: Amount | None = None
    margin_ratio: Amount | None = None
    exposure: Amount | None = None
    leverage: Amount | None = None
    status: str | None = None
    updated_at: UtcDatetime | None = None


class AccountSummary(_Model):
    """Account-level margin figures (Paradex's ``account`` channel and ``GET /account``)."""

    equity: Amount
    free_collateral: Amount | None = None
    initial_margin: Amount | None = None
    maintenance_margin: Amount | None = None
    total_collateral: Amount | None = None
    margin_cushion: Amount | None = None
    settlement_asset: str | None = None
    status: str | None = None
    updated_at: UtcDatetime | None = None
    venue_seq: int | None = None


class Order(_Model):
    """The latest state of one order. ``status`` is the venue's own status word, upper case."""

    order_id: VenueId
    client_order_id: str | None = None
    market: Name
    side: Side
    order_type: Name
    status: Name
    status_reason: str | None = None
    price: Amount | None = None
    average_price: Amount | None = None
    qty: Amount
    filled_qty: Amount | None = None
    remaining_qty: Amount | None = None
    fee_paid: Amount | None = None
    trigger_price: Amount | None = None
    reduce_only: bool | None = None
    post_only: bool | None = None
    time_in_force: str | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime
    expires_at: UtcDatetime | None = None
    venue_seq: int | None = None
    """The venue's per-order update number where it has one (Paradex ``seq_no``): increasing, not contiguous."""


class Fill(_Model):
    """One execution. Keyed by ``(fill_id, fill_type)``: Paradex ids are unique only per fill type."""

    fill_id: VenueId
    fill_type: Name = "TRADE"
    order_id: VenueId | None = None
    client_order_id: str | None = None
    market: Name
    side: Side
    price: Amount
    qty: Amount
    value: Amount | None = None
    fee: Amount
    fee_asset: str | None = None
    is_taker: bool | None = None
    realized_pnl: Amount | None = None
    realized_funding: Amount | None = None
    created_at: UtcDatetime


class FillBust(_Model):
    """A fill the venue reverted (Paradex tradebust). The fill stays in the ledger, marked busted."""

    fill_id: VenueId
    busted_at: UtcDatetime


class Position(_Model):
    """An open (or just closed) position. ``size`` is the absolute size; ``side`` gives the direction."""

    position_id: VenueId | None = None
    market: Name
    side: PositionSide
    size: Amount = Field(ge=0)
    entry_price: Amount | None = None
    mark_price: Amount | None = None
    value: Amount | None = None
    liquidation_price: Amount | None = None
    unrealised_pnl: Amount | None = None
    realised_pnl: Amount | None = None
    leverage: Amount | None = None
    margin: Amount | None = None
    status: str | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime
    venue_seq: int | None = None


class FundingPayment(_Model):
    """One funding payment. ``amount`` is signed from the account's side: negative means the account paid."""

    payment_id: VenueId
    market: Name
    amount: Amount
    asset: str | None = None
    rate: Amount | None = None
    position_side: PositionSide | None = None
    position_size: Amount | None = None
    position_value: Amount | None = None
    mark_price: Amount | None = None
    funding_index: Amount | None = None
    fill_id: str | None = None
    paid_at: UtcDatetime


class Transfer(_Model):
    """A deposit, withdrawal or transfer. ``amount`` is signed: negative leaves the account."""

    transfer_id: VenueId
    transfer_type: Name
    status: Name
    asset: str | None = None
    amount: Amount
    tx_hash: str | None = None
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime


# ------------------------------------------------------------------------------------------------ bodies


class _Body(_Model):
    """The JSON payload of an event (``events.payload``), discriminated by ``kind``."""


class BalanceBody(_Body):
    kind: Literal[EventKind.BALANCE] = EventKind.BALANCE
    balances: tuple[Balance, ...]
    scope: BalanceScope | None = None
    """The statement the balances belong to. A *snapshot* with a scope states every balance of that scope: an asset
    of the scope it does not list is gone. Without one (events logged before scopes were recorded) a snapshot only
    replaces the assets it lists."""


class AccountBody(_Body):
    kind: Literal[EventKind.ACCOUNT] = EventKind.ACCOUNT
    summary: AccountSummary


class OrderBody(_Body):
    kind: Literal[EventKind.ORDER] = EventKind.ORDER
    orders: tuple[Order, ...]


class FillBody(_Body):
    kind: Literal[EventKind.FILL] = EventKind.FILL
    fills: tuple[Fill, ...]


class FillBustBody(_Body):
    kind: Literal[EventKind.FILL_BUST] = EventKind.FILL_BUST
    busts: tuple[FillBust, ...]


class PositionBody(_Body):
    kind: Literal[EventKind.POSITION] = EventKind.POSITION
    positions: tuple[Position, ...]


class FundingBody(_Body):
    kind: Literal[EventKind.FUNDING] = EventKind.FUNDING
    payments: tuple[FundingPayment, ...]


class TransferBody(_Body):
    kind: Literal[EventKind.TRANSFER] = EventKind.TRANSFER
    transfers: tuple[Transfer, ...]


class VenueMessage(_Body):
    """A message the venue sent that statekeeper keeps but does not model: its type and data as received."""

    kind: Literal[EventKind.VENUE_MESSAGE] = EventKind.VENUE_MESSAGE
    message_type: Name
    data: JsonValue = None
    updated_at: UtcDatetime | None = None


class ProtocolMessage(_Body):
    """A protocol frame: the venue's answer to a request (authentication, subscription) or a protocol error."""

    kind: Literal[EventKind.PROTOCOL] = EventKind.PROTOCOL
    method: str | None = None
    request_id: int | str | None = None
    result: JsonValue = None
    error_code: int | str | None = None
    error_message: str | None = None
    error_data: JsonValue = None


class LedgerMark(_Model):
    """Where a ledger is complete up to: the latest item (its time and venue id) before which none is missing."""

    time: UtcDatetime | None = None
    id: str | None = None


class SessionOpened(_Body):
    kind: Literal[EventKind.SESSION_OPENED] = EventKind.SESSION_OPENED
    transport: Transport
    url: str | None = None
    reason: Literal["connect", "reconnect", "resync", "fallback"] = "connect"


class SessionClosed(_Body):
    kind: Literal[EventKind.SESSION_CLOSED] = EventKind.SESSION_CLOSED
    reason: CloseReason
    detail: str | None = None
    last_seq: int | None = None
    marks: dict[str, LedgerMark] | None = None
    """Per ledger (fill, funding, transfer, bust), how far the log was complete when the session closed."""


class GapDetected(_Body):
    kind: Literal[EventKind.GAP_DETECTED] = EventKind.GAP_DETECTED
    problem: SequenceProblem
    expected_seq: int
    received_seq: int


class ResyncStarted(_Body):
    kind: Literal[EventKind.RESYNC_STARTED] = EventKind.RESYNC_STARTED
    reason: str
    previous_session: UUID | None = None


class ResyncCompleted(_Body):
    kind: Literal[EventKind.RESYNC_COMPLETED] = EventKind.RESYNC_COMPLETED
    fills_backfilled: int = Field(ge=0, default=0)
    funding_backfilled: int = Field(ge=0, default=0)
    orders_resolved: int = Field(ge=0, default=0)
    marks: dict[str, LedgerMark] | None = None
    """Per ledger, how far the log is complete once the backfill is done: the next backfill starts there."""


class ReconciliationPass(_Body):
    kind: Literal[EventKind.RECONCILIATION_PASS] = EventKind.RECONCILIATION_PASS
    run_id: VenueId
    status: Literal["clean", "discrepancies", "failed"]
    log_position: int = Field(ge=0)
    discrepancies: int = Field(ge=0, default=0)
    healed: int = Field(ge=0, default=0)
    error: str | None = None


class Discrepancy(_Body):
    kind: Literal[EventKind.DISCREPANCY] = EventKind.DISCREPANCY
    run_id: VenueId
    entity: Literal["balance", "order", "position", "fill", "funding", "account"]
    entity_key: str
    field: str
    projected: str | None
    venue: str | None


Body: TypeAlias = Annotated[
    BalanceBody
    | AccountBody
    | OrderBody
    | FillBody
    | FillBustBody
    | PositionBody
    | FundingBody
    | TransferBody
    | VenueMessage
    | ProtocolMessage
    | SessionOpened
    | SessionClosed
    | GapDetected
    | ResyncStarted
    | ResyncCompleted
    | ReconciliationPass
    | Discrepancy,
    Field(discriminator="kind"),
]

_BODY_ADAPTER: TypeAdapter[Body] = TypeAdapter(Body)


def parse_body(payload: dict[str, Any] | bytes | str) -> Body:
    """Validate a stored payload back into its body model (raises :class:`pydantic.ValidationError`)."""
    if isinstance(payload, dict):
        return _BODY_ADAPTER.validate_python(payload)
    return _BODY_ADAPTER.validate_json(payload)


# ------------------------------------------------------------------------------------------------- event


def session_seq_key(session: UUID, seq: int) -> str:
    """The key of a frame the venue numbered: unique per stream session."""
    return f"seq:{session}:{seq}"


def natural_key(*parts: str | int) -> str:
    """A deterministic event key from the venue's natural ids, e.g. ``natural_key("fill", fill_id, fill_type)``.

    Parts are percent-encoded so that ``:`` inside an id can never make two different keys equal.
    """
    if not parts:
        raise ValueError("a natural key needs at least one part")
    return ":".join(quote(str(part), safe="") for part in parts)


class Event(_Model):
    """One event to append to the log."""

    account: AccountName
    venue: VenueName
    source: Source
    body: Body
    venue_time: UtcDatetime
    """The venue's time for this message (for control events: the local time of the decision)."""
    received_at: UtcDatetime
    """The local time the message was received (or the decision was taken)."""
    snapshot: bool = False
    session: UUID | None = None
    seq: int | None = Field(default=None, ge=0)
    key: EventKey = ""
    """Unique per account. Derived from ``session`` and ``seq`` for numbered frames; required otherwise."""
    raw: str | None = None
    """The frame or REST item exactly as received."""

    @model_validator(mode="before")
    @classmethod
    def _derive_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("seq") is not None:
            session, seq = data.get("session"), data["seq"]
            if session is None:
                raise ValueError("an event with a venue seq needs the stream session it came from")
            derived = session_seq_key(UUID(str(session)), int(seq))
            given = data.get("key")
            if given and given != derived:
                raise ValueError(f"the key of a numbered frame must be {derived!r}, not {given!r}")
            data = {**data, "key": derived}
        return data

    @model_validator(mode="after")
    def _check(self) -> Event:
        if not self.key:
            raise ValueError("an event without a venue seq needs a key: see natural_key()")
        if self.seq is None and self.key.startswith("seq:"):
            raise ValueError("keys starting with 'seq:' belong to numbered frames (give session and seq instead)")
        if self.snapshot and self.body.kind not in SNAPSHOT_KINDS:
            raise ValueError(f"a {self.body.kind} event cannot be a snapshot")
        if self.raw is not None:
            if "\x00" in self.raw:
                raise ValueError("the raw frame contains a NUL character; store it as a rejected frame instead")
            try:
                self.raw.encode()
            except UnicodeEncodeError:
                raise ValueError(
                    "the raw frame is not valid Unicode (a lone surrogate); store it as a rejected frame"
                ) from None
        return self

    @property
    def kind(self) -> EventKind:
        return EventKind(self.body.kind)


# ------------------------------------------------------------------------------------------------ encoding


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace: the same bytes for the same value on every machine."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event as the log stores it: the payload is canonical JSON and ``content_hash`` identifies its content."""

    account: str
    venue: str
    session: UUID | None
    seq: int | None
    key: str
    kind: str
    snapshot: bool
    source: str
    venue_time: datetime
    received_at: datetime
    payload: str
    raw: str | None
    content_hash: bytes


_HASH_DOMAIN = b"statekeeper/event-content/v1\x00"
ZERO = timedelta(0)


def content_hash(*, kind: str, venue: str, source: str, snapshot: bool, venue_time: datetime, payload: bytes) -> bytes:
    """SHA-256 over what makes two messages with the same key "the same message".

    The receive time, the session and the raw text are left out on purpose: the same venue message received twice
    (a repeated frame, a REST item fetched again) must hash equal; anything the parse boundary keeps must not.
    """
    if venue_time.utcoffset() != ZERO:
        venue_time = venue_time.astimezone(UTC)
    header = "\x00".join((kind, venue, source, "1" if snapshot else "0", venue_time.isoformat()))
    return hashlib.sha256(_HASH_DOMAIN + header.encode() + b"\x00" + payload).digest()


def encode_event(event: Event) -> EncodedEvent:
    """Turn an event into the row the log stores. Raises :class:`InvalidEvent` if PostgreSQL could not hold it.

    The payload leaves out fields that are ``None``: they read back as ``None`` all the same, and an optional
    field added in a later version does not change the content hash of messages stored before it.
    """
    try:
        payload = canonical_json(event.body.model_dump(mode="json", exclude_none=True))
    except orjson.JSONEncodeError as exc:  # a lone surrogate in a string
        raise InvalidEvent(f"event {event.key!r} ({event.kind}) cannot be encoded: {exc}") from None
    if b"\\u0000" in payload:
        # jsonb cannot hold U+0000: refuse here rather than fail a whole batch in the database.
        raise InvalidEvent(f"event {event.key!r} ({event.kind}) contains a NUL character in its payload")
    return EncodedEvent(
        account=event.account,
        venue=event.venue,
        session=event.session,
        seq=event.seq,
        key=event.key,
        kind=event.body.kind.value,
        snapshot=event.snapshot,
        source=event.source.value,
        venue_time=event.venue_time,
        received_at=event.received_at,
        payload=payload.decode(),
        raw=event.raw,
        content_hash=content_hash(
            kind=event.body.kind.value,
            venue=event.venue,
            source=event.source.value,
            snapshot=event.snapshot,
            venue_time=event.venue_time,
            payload=payload,
        ),
    )


def encode_events(events: Sequence[Event | EncodedEvent]) -> list[EncodedEvent]:
    return [e if isinstance(e, EncodedEvent) else encode_event(e) for e in events]


def validation_message(error: ValidationError) -> str:
    """A one-line summary of a pydantic error: ``loc: message; loc: message``."""
    parts = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{loc}: {item['msg']}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event read back from the log, at its global position ``id``."""

    id: int
    account: str
    venue: str
    session: UUID | None
    seq: int | None
    key: str
    kind: str
    snapshot: bool
    source: str
    venue_time: datetime
    received_at: datetime
    payload: dict[str, Any]
    raw: str | None
    content_hash: bytes
    appended_at: datetime

    def body(self) -> Body:
        return parse_body(self.payload)


# ------------------------------------------------------------------------------------------- bad input


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    """A frame that could not become an event, kept byte for byte with the reason (invariant 1)."""

    account: str
    venue: str
    source: Source
    received_at: datetime
    reason: str
    raw: bytes
    session: UUID | None = None
    seq: int | None = None

    def __post_init__(self) -> None:
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")
        if not self.reason:
            raise ValueError("a rejected frame needs a reason")
