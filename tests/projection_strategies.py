"""Hypothesis strategies for the projection tests: realistic random event sequences of one account (or several).

A sequence is built by a small generator that keeps the venue's "true" state (the latest version of each order
and position) and emits what a venue and the ingest daemon would append for it, with the usual trouble:

* orders and positions move forward most of the time, but some updates arrive late (an older ``updated_at`` and
  ``venue_seq``), some are re-sent as they were, and some share their version with the previous one (a tie);
* ``venue_seq`` is always there (Paradex-like), never (Extended-like) or only sometimes;
* snapshots come from the stream (Extended, on every connect: a new stream session) or from REST (whose time is
  when the request was sent, ``received_at``, sometimes well before the answer arrived); a snapshot sometimes
  misses an open order or position (it closed, or the venue lost it);
* balances come one or several assets at a time, as snapshots or deltas, with or without their own time, each
  message of one scope (Extended: the collateral or the spot assets; Paradex: the tokens) or, as logged before
  scopes were recorded, of none; a scoped snapshot sometimes leaves out an asset of its scope (it is gone);
* fills are re-sent (a REST backfill, sometimes with more fields), the same id comes with another fill type,
  busts arrive after their fill or before it (and twice); funding payments are re-sent too;
* control events (session opened, unmodelled venue messages) that no projection reads.

Every event has a unique key (a numbered ``(session, seq)`` frame or a :func:`natural_key` with a counter), so
appending a sequence appends every event of it. The events are valid :class:`~statekeeper.events.Event` models:
Decimal amounts, timezone-aware UTC times.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, TypeVar
from uuid import UUID

import orjson
from hypothesis import strategies as st

from statekeeper.events import (
    AccountBody,
    AccountSummary,
    Balance,
    BalanceBody,
    BalanceScope,
    Body,
    Event,
    Fill,
    FillBody,
    FillBust,
    FillBustBody,
    FundingBody,
    FundingPayment,
    Order,
    OrderBody,
    Position,
    PositionBody,
    PositionSide,
    SessionOpened,
    Side,
    Source,
    StoredEvent,
    Transport,
    VenueMessage,
    encode_event,
    natural_key,
)
from statekeeper.projections.fold import FoldEvent
from statekeeper.projections.rows import TERMINAL_ORDER_STATUSES

T = TypeVar("T")

T0 = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)

ACCOUNT = "acc"
"""The account the strategies write; :func:`with_account` renames it (a fresh account per example)."""

ORDER_IDS = ("o1", "o2", "o3", "o4", "o5")
MARKETS = ("BTC-USD-PERP", "ETH-USD-PERP", "SOL-USD-PERP")
ASSETS = ("USDC", "USDT", "ETH")
FILL_IDS = tuple(f"f{i}" for i in range(1, 10))
FILL_TYPES = ("TRADE", "LIQUIDATION")
SIDES = tuple(Side)
POSITION_SIDES = tuple(PositionSide)

SeqMode = Literal["always", "never", "mixed"]
Venue = Literal["extended", "paradex"]

# Status moves of an order per venue: Extended's words, and Paradex's NEW / OPEN / CLOSED.
NEXT_STATUS: dict[str, dict[str, tuple[str, ...]]] = {
    "extended": {
        "": ("NEW", "NEW", "NEW", "REJECTED", "FILLED"),
        "NEW": ("PARTIALLY_FILLED", "FILLED", "CANCELLED", "EXPIRED", "NEW"),
        "PARTIALLY_FILLED": ("PARTIALLY_FILLED", "FILLED", "CANCELLED"),
    },
    "paradex": {
        "": ("NEW", "OPEN", "OPEN", "CLOSED"),
        "NEW": ("OPEN", "CLOSED"),
        "OPEN": ("OPEN", "CLOSED"),
    },
}
ALL_STATUSES = ("NEW", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED", "EXPIRED", "OPEN", "CLOSED")

AMOUNTS = st.one_of(
    st.decimals(min_value=-1_000_000, max_value=1_000_000, places=4, allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal("0"), Decimal("0E-16"), Decimal("1E+3"), Decimal("-0.5"), Decimal("12345.678901")]),
)
PRICES = st.sampled_from([Decimal("100.5"), Decimal("3100.25"), Decimal("64000"), Decimal("0.0001234")])
SIZES = st.sampled_from([Decimal("0"), Decimal("0.1"), Decimal("0.5"), Decimal("1.25"), Decimal("3")])
QTYS = st.sampled_from([Decimal("0.1"), Decimal("1"), Decimal("2.5")])
SOME_ORDER_IDS = st.lists(st.sampled_from(ORDER_IDS), min_size=1, max_size=2, unique=True)
SOME_MARKETS = st.lists(st.sampled_from(MARKETS), min_size=1, max_size=2, unique=True)
SCOPED_ASSETS: dict[str, dict[BalanceScope, tuple[str, ...]]] = {
    "extended": {BalanceScope.COLLATERAL: ("USDC",), BalanceScope.SPOT: ("USDT", "ETH")},
    "paradex": {BalanceScope.TOKEN: ASSETS},
}
"""The assets of each balance scope, per venue."""
OPT_AMOUNTS = st.none() | AMOUNTS
OPT_PRICES = st.none() | PRICES
OPT_SIZES = st.none() | SIZES


@functools.cache
def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Strategies built once: building one per draw costs more than the draw."""
    return st.integers(low, high)


@functools.cache
def _some(options: tuple[str, ...], at_least: int) -> st.SearchStrategy[list[str]]:
    """Some of ``options``, each once."""
    return st.lists(st.sampled_from(options), min_size=at_least, max_size=len(options), unique=True)


def at(ms: int) -> datetime:
    """``T0`` plus ``ms`` milliseconds (negative: before it)."""
    return T0 + timedelta(milliseconds=ms)


def ms_of(when: datetime) -> int:
    return (when - T0) // timedelta(milliseconds=1)


@dataclass
class _Generator:
    """Builds one account's events; ``draw`` makes every choice, so Hypothesis can shrink them."""

    draw: st.DrawFn
    account: str
    venue: Venue
    seq_mode: SeqMode
    clock: int = 0
    counter: int = 0
    session: UUID | None = None
    sessions: int = 0
    frame: int = 0
    events: list[Event] = field(default_factory=list)
    orders: dict[str, Order] = field(default_factory=dict)
    """The true latest version of each order (what a snapshot lists)."""
    order_versions: dict[str, list[Order]] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    position_versions: dict[str, list[Position]] = field(default_factory=dict)
    balances: dict[str, datetime] = field(default_factory=dict)
    summary: AccountSummary | None = None
    fills: list[Fill] = field(default_factory=list)
    next_fill: int = 0
    busts: list[FillBust] = field(default_factory=list)
    payments: list[FundingPayment] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------- helpers

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options`` (shrinks towards the first)."""
        return options[self.between(0, len(options) - 1)]

    def between(self, low: int, high: int) -> int:
        return self.draw(_integers(low, high))

    def flip(self) -> bool:
        return self.between(0, 1) == 1

    @property
    def now(self) -> datetime:
        return at(self.clock)

    def tick(self) -> None:
        self.clock += self.pick([0, 0, 1, 5, 50, 400, 1500])

    def venue_seq(self, seq: int) -> int | None:
        if self.seq_mode == "always":
            return seq
        if self.seq_mode == "never":
            return None
        return seq if self.flip() else None

    def new_session(self) -> None:
        self.sessions += 1
        self.session = UUID(int=self.sessions)
        self.frame = 0
        self.emit(SessionOpened(transport=Transport.WEBSOCKET, reason="connect" if self.sessions == 1 else "reconnect"))

    def emit(
        self,
        body: Body,
        *,
        source: Source = Source.STREAM,
        snapshot: bool = False,
        venue_time: datetime | None = None,
        received_at: datetime | None = None,
    ) -> None:
        """Append one event: a numbered frame for Extended's stream, a natural key with a counter otherwise."""
        self.counter += 1
        venue_time = venue_time or self.now
        received_at = received_at or venue_time + timedelta(milliseconds=self.pick([0, 3, 40]))
        numbered = self.venue == "extended" and source == Source.STREAM
        if numbered and self.session is None:
            self.new_session()
        if numbered:
            self.frame += 1
            ident: dict[str, object] = {"session": self.session, "seq": self.frame}
        else:
            ident = {"key": natural_key(body.kind, source.value, self.counter)}
        self.events.append(
            Event.model_validate(
                {
                    "account": self.account,
                    "venue": self.venue,
                    "source": source,
                    "body": body,
                    "venue_time": venue_time,
                    "received_at": received_at,
                    "snapshot": snapshot,
                    **ident,
                }
            )
        )

    def when(self, previous: datetime, how: str) -> datetime:
        """A new version's time: after ``previous``, equal to it (a tie) or before it (a late update)."""
        if how == "tie":
            return previous
        if how == "stale":
            return previous - timedelta(milliseconds=self.pick([1, 10, 700, 3000]))
        return max(self.now, previous + timedelta(milliseconds=1))

    # ------------------------------------------------------------------------------------------ orders

    def order_version(self, order_id: str) -> Order:
        previous = self.orders.get(order_id)
        if previous is None:
            status = self.pick(NEXT_STATUS[self.venue][""])
            order = Order(
                order_id=order_id,
                client_order_id=self.pick([None, f"cl-{order_id}"]),
                market=self.pick(MARKETS),
                side=self.pick(SIDES),
                order_type=self.pick(["LIMIT", "MARKET"]),
                status=status,
                price=self.draw(PRICES),
                qty=self.draw(QTYS),
                filled_qty=Decimal(0),
                reduce_only=self.pick([None, False, True]),
                created_at=self.now,
                updated_at=self.now,
                venue_seq=self.venue_seq(self.between(1, 5)),
            )
            self.orders[order_id] = order
            self.order_versions[order_id] = [order]
            return order
        how = self.pick(["forward", "forward", "forward", "forward", "tie", "stale", "resend"])
        if how == "resend":
            return self.pick(self.order_versions[order_id])
        moves = NEXT_STATUS[self.venue].get(previous.status, (previous.status,))
        # Mostly the venue's own moves; sometimes any status (a late, a tied or a surprising report).
        status = self.pick(moves if self.between(0, 3) else ALL_STATUSES)
        seq = previous.venue_seq if previous.venue_seq is not None else self.between(1, 20)
        seq = {"forward": seq + self.between(1, 3), "tie": seq, "stale": max(0, seq - 1)}[how]
        filled = (previous.filled_qty or Decimal(0)) + (previous.qty / 4 if how == "forward" else 0)
        order = previous.model_copy(
            update={
                "status": status,
                "updated_at": self.when(previous.updated_at, how),
                "venue_seq": self.venue_seq(seq),
                "filled_qty": min(filled, previous.qty),
                "average_price": previous.price if filled else None,
            }
        )
        self.order_versions[order_id].append(order)
        previous_final = previous.status in TERMINAL_ORDER_STATUSES
        if how == "forward" or (how == "tie" and (status in TERMINAL_ORDER_STATUSES or not previous_final)):
            self.orders[order_id] = order
        return order

    def order_update(self) -> None:
        ids = self.draw(SOME_ORDER_IDS)
        orders = tuple(self.order_version(order_id) for order_id in ids)
        source = self.pick([Source.STREAM, Source.STREAM, Source.STREAM, Source.REST])
        self.emit(OrderBody(orders=orders), source=source, venue_time=max(o.updated_at for o in orders))

    def order_snapshot(self) -> None:
        working = [o for _, o in sorted(self.orders.items()) if o.status not in TERMINAL_ORDER_STATUSES]
        listed: list[Order] = []
        for order in working:
            choice = self.pick(["latest", "latest", "latest", "latest", "missing", "older"])
            if choice == "latest":
                listed.append(order)
            elif choice == "older":
                listed.append(self.pick(self.order_versions[order.order_id]))
        self.snapshot(OrderBody(orders=tuple(listed)))

    # --------------------------------------------------------------------------------------- positions

    def position_version(self, market: str) -> Position:
        previous = self.positions.get(market)
        hows = ["forward"] * 4 + ["tie", "stale", "resend"]
        how = "forward" if previous is None else self.pick(hows)
        if previous is not None and how == "resend":
            return self.pick(self.position_versions[market])
        size = self.draw(SIZES)
        status = self.pick([None, "OPEN", "CLOSED"] if size == 0 else [None, "OPEN", "OPEN", "CLOSED"])
        if previous is None:
            seq = self.between(1, 5)
            updated_at = self.now
        else:
            seq = previous.venue_seq if previous.venue_seq is not None else self.between(1, 20)
            seq = {"forward": seq + self.between(1, 3), "tie": seq, "stale": max(0, seq - 1)}[how]
            updated_at = self.when(previous.updated_at, how)
        position = Position(
            position_id=f"pos-{market}",
            market=market,
            side=self.pick(POSITION_SIDES),
            size=size,
            entry_price=self.draw(PRICES),
            mark_price=self.draw(OPT_PRICES),
            unrealised_pnl=self.draw(OPT_AMOUNTS),
            leverage=self.pick([None, Decimal(5), Decimal("10.0")]),
            status=status,
            created_at=previous.created_at if previous is not None else self.now,
            updated_at=updated_at,
            venue_seq=self.venue_seq(seq),
        )
        self.position_versions.setdefault(market, []).append(position)
        if how in {"forward", "tie"}:
            self.positions[market] = position
        return position

    def position_update(self) -> None:
        markets = self.draw(SOME_MARKETS)
        positions = tuple(self.position_version(market) for market in markets)
        self.emit(PositionBody(positions=positions), venue_time=max(p.updated_at for p in positions))

    def position_snapshot(self) -> None:
        listed: list[Position] = []
        for _, position in sorted(self.positions.items()):
            if position.size == 0 or position.status == "CLOSED":
                continue
            choice = self.pick(["latest", "latest", "latest", "latest", "missing", "older"])
            if choice == "latest":
                listed.append(position)
            elif choice == "older":
                listed.append(self.pick(self.position_versions[position.market]))
        self.snapshot(PositionBody(positions=tuple(listed)))

    # --------------------------------------------------------------------------------------- snapshots

    def snapshot(self, body: OrderBody | PositionBody | BalanceBody) -> None:
        """A snapshot from the stream (Extended: a new connection) or from REST (Paradex, or a fallback)."""
        rest = self.venue == "paradex" or self.flip()
        if rest:
            # The request was sent before the answer came: updates in between may be newer than the snapshot.
            sent = self.now - timedelta(milliseconds=self.pick([0, 0, 200, 1500]))
            self.emit(body, source=Source.REST, snapshot=True, venue_time=self.now, received_at=sent)
        else:
            self.new_session()
            self.emit(body, snapshot=True)

    # ---------------------------------------------------------------------------------- balances, margin

    def balance(self) -> None:
        scopes = SCOPED_ASSETS[self.venue]
        scope: BalanceScope | None = self.pick([None, *scopes, *scopes])
        snapshot = self.flip()
        candidates = scopes[scope] if scope is not None else ASSETS
        # A scope's statement may list none of its assets (all gone); any other message lists one at least.
        assets = self.draw(_some(candidates, 0 if snapshot and scope is not None else 1))
        balances = []
        for asset in assets:
            updated_at: datetime | None = None
            if self.flip():  # Extended sends its own time; a REST balance may have none
                previous = self.balances.get(asset, self.now)
                updated_at = self.when(previous, self.pick(["forward", "forward", "tie", "stale"]))
                self.balances[asset] = max(previous, updated_at)
            balances.append(
                Balance(
                    asset=asset,
                    balance=self.draw(AMOUNTS),
                    equity=self.draw(OPT_AMOUNTS),
                    available_for_trade=self.draw(OPT_AMOUNTS),
                    initial_margin=self.draw(OPT_AMOUNTS),
                    status=self.pick([None, "ACTIVE"]),
                    updated_at=updated_at,
                )
            )
        body = BalanceBody(balances=tuple(balances), scope=scope)
        if snapshot:
            self.snapshot(body)
        else:
            self.emit(body, source=self.pick([Source.STREAM, Source.REST]))

    def account_summary(self) -> None:
        previous = self.summary
        how = self.pick(["forward", "forward", "tie", "stale"])
        seq = previous.venue_seq if previous is not None and previous.venue_seq is not None else 1
        seq = {"forward": seq + 1, "tie": seq, "stale": max(0, seq - 1)}[how]
        updated_at = None
        if self.between(0, 3):
            updated_at = self.when(previous.updated_at or self.now, how) if previous is not None else self.now
        summary = AccountSummary(
            equity=self.draw(AMOUNTS),
            free_collateral=self.draw(OPT_AMOUNTS),
            maintenance_margin=self.draw(OPT_AMOUNTS),
            settlement_asset=self.pick([None, "USDC"]),
            status=self.pick([None, "ACTIVE"]),
            updated_at=updated_at,
            venue_seq=self.venue_seq(seq),
        )
        if how == "forward" or previous is None:
            self.summary = summary
        self.emit(AccountBody(summary=summary), snapshot=self.flip())

    # ---------------------------------------------------------------------------------------- ledgers

    def fill(self) -> None:
        count = self.between(1, 2)
        fills: list[Fill] = []
        for _ in range(count):
            if self.fills and self.between(0, 5) == 0:
                # The same id with another fill type (Paradex ids are unique per type only).
                other = self.pick(self.fills)
                fill_type = self.pick(FILL_TYPES)
                fill_id = other.fill_id
            elif self.next_fill < len(FILL_IDS):
                fill_id = FILL_IDS[self.next_fill]
                self.next_fill += 1
                fill_type = self.pick(["TRADE", "TRADE", "TRADE", "LIQUIDATION"])
            else:
                continue
            if any(f.fill_id == fill_id and f.fill_type == fill_type for f in [*self.fills, *fills]):
                continue
            fills.append(
                Fill(
                    fill_id=fill_id,
                    fill_type=fill_type,
                    order_id=self.pick(ORDER_IDS),
                    market=self.pick(MARKETS),
                    side=self.pick(SIDES),
                    price=self.draw(PRICES),
                    qty=self.draw(QTYS),
                    fee=self.draw(AMOUNTS),
                    is_taker=self.pick([None, True, False]),
                    created_at=self.now,
                )
            )
        if fills:
            self.fills.extend(fills)
            self.emit(FillBody(fills=tuple(fills)), venue_time=max(f.created_at for f in fills))

    def fill_again(self) -> None:
        """A fill received again: from a REST backfill, sometimes with fields the stream left out."""
        if not self.fills:
            self.fill()
            return
        fill = self.pick(self.fills)
        if self.flip():
            fill = fill.model_copy(update={"fee_asset": "USDC", "value": fill.price * fill.qty})
        source = self.pick([Source.REST, Source.REST, Source.STREAM])
        self.emit(FillBody(fills=(fill,)), source=source, venue_time=fill.created_at)

    def bust(self) -> None:
        """A tradebust of a fill seen before, of one not seen yet, or of one busted already."""
        candidates = [f.fill_id for f in self.fills] + list(FILL_IDS[self.next_fill : self.next_fill + 2])
        candidates += [b.fill_id for b in self.busts]
        if not candidates:
            return
        bust = FillBust(fill_id=self.pick(candidates), busted_at=self.now)
        self.busts.append(bust)
        self.emit(FillBustBody(busts=(bust,)))

    def funding(self) -> None:
        if self.payments and self.between(0, 2) == 0:
            payment = self.pick(self.payments)
            if self.flip():
                payment = payment.model_copy(update={"rate": Decimal("0.0001")})  # REST has the rate too
            source = Source.REST
        else:
            payment = FundingPayment(
                payment_id=f"p{len(self.payments) + 1}",
                market=self.pick(MARKETS),
                amount=self.draw(AMOUNTS),
                asset="USDC",
                position_side=self.pick([None, PositionSide.LONG, PositionSide.SHORT]),
                position_size=self.draw(OPT_SIZES),
                paid_at=self.now,
            )
            self.payments.append(payment)
            source = Source.STREAM if self.venue == "paradex" else Source.REST
        self.emit(FundingBody(payments=(payment,)), source=source, venue_time=payment.paid_at)

    def control(self) -> None:
        if self.venue == "extended" and self.flip():
            self.new_session()
        else:
            self.emit(VenueMessage(message_type="NOTICE", data={"n": self.counter}))

    # ------------------------------------------------------------------------------------------- run

    def run(self, steps: int, kinds: Sequence[str]) -> list[Event]:
        actions = {
            "order": self.order_update,
            "order_snapshot": self.order_snapshot,
            "position": self.position_update,
            "position_snapshot": self.position_snapshot,
            "balance": self.balance,
            "account": self.account_summary,
            "fill": self.fill,
            "fill_again": self.fill_again,
            "bust": self.bust,
            "funding": self.funding,
            "control": self.control,
        }
        for _ in range(steps):
            self.tick()
            actions[self.pick(kinds)]()
        return self.events


ALL_KINDS: tuple[str, ...] = (
    *("order",) * 6,
    *("order_snapshot",) * 2,
    *("position",) * 3,
    "position_snapshot",
    *("balance",) * 2,
    "account",
    *("fill",) * 2,
    "fill_again",
    "bust",
    "funding",
    "control",
)
"""The kinds of step, weighted by repetition: order traffic dominates, as on a real account."""

DELTA_KINDS: tuple[str, ...] = tuple(k for k in ALL_KINDS if not k.endswith("snapshot"))


@st.composite
def account_events(
    draw: st.DrawFn,
    account: str = ACCOUNT,
    *,
    max_steps: int = 30,
    venue: Venue | None = None,
    seq_mode: SeqMode | None = None,
    kinds: Sequence[str] = ALL_KINDS,
    snapshots: bool = True,
) -> list[Event]:
    """The events of one account, in log order.

    ``snapshots=False`` leaves out every snapshot (balances and account summaries are then deltas only).
    """
    venues: list[Venue] = ["extended", "paradex"]
    chosen_venue: Venue = venue if venue is not None else draw(st.sampled_from(venues))
    modes: list[SeqMode] = ["never"] if chosen_venue == "extended" else ["always", "always", "mixed"]
    chosen_mode: SeqMode = seq_mode if seq_mode is not None else draw(st.sampled_from(modes))
    generator = _Generator(draw, account, chosen_venue, chosen_mode)
    if not snapshots:
        kinds = tuple(k for k in kinds if not k.endswith("snapshot"))
    events = generator.run(draw(st.integers(0, max_steps)), kinds)
    if not snapshots:
        events = [e.model_copy(update={"snapshot": False}) for e in events]
    return events


@st.composite
def several_accounts_events(
    draw: st.DrawFn, accounts: Sequence[str] = ("acc0", "acc1", "acc2"), *, max_steps: int = 20
) -> list[Event]:
    """The events of several accounts, interleaved at random (each account's own order kept)."""
    queues = [list(draw(account_events(name, max_steps=max_steps))) for name in accounts]
    merged: list[Event] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        merged.append(queue.pop(0))
    return merged


# ------------------------------------------------------------------------------------------------ helpers


def with_account(events: Sequence[Event], account: str, *, rename: dict[str, str] | None = None) -> list[Event]:
    """The same events for another account (``rename`` maps several account names at once)."""
    mapping = rename if rename is not None else {ACCOUNT: account}
    return [e.model_copy(update={"account": mapping.get(e.account, e.account)}) for e in events]


def fold_events(events: Sequence[Event], *, first_id: int = 1) -> list[FoldEvent]:
    """The events as the log would hand them to a fold: stored at positions from ``first_id`` (the payload read back
    from its stored JSON, so that anything the encoding changes is seen by the pure tests too)."""
    stored = []
    for position, event in enumerate(events, start=first_id):
        encoded = encode_event(event)
        stored.append(
            StoredEvent(
                id=position,
                account=encoded.account,
                venue=encoded.venue,
                session=encoded.session,
                seq=encoded.seq,
                key=encoded.key,
                kind=encoded.kind,
                snapshot=encoded.snapshot,
                source=encoded.source,
                venue_time=encoded.venue_time,
                received_at=encoded.received_at,
                payload=orjson.loads(encoded.payload),
                raw=encoded.raw,
                content_hash=encoded.content_hash,
                appended_at=encoded.received_at,
            )
        )
    return [FoldEvent.of(e) for e in stored]
