"""The simulated venue's truth and the activity that changes it: pure, deterministic for a seed.

The engine holds every account's true state (balance, open and closed orders, fills, positions, funding
payments, transfers) and, one :meth:`Engine.step` at a time, does what a trading account sees happen: orders
placed, partly filled, filled and cancelled, fills with fees, positions and balances moving with the mark price,
funding each period, the odd deposit, and (on venues that have them) busted fills. Each step returns the
:class:`Change` records a venue would publish on its account stream, in the order it would publish them; the
protocol servers (:mod:`.extended`, :mod:`.paradex`) render them in each venue's wire format.

Nothing here reads a clock or does I/O: venue time is the engine's own, advanced by ``step_ms`` per step, so the
same seed and configuration give the same history on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Literal

from statekeeper.events import (
    AccountSummary,
    Balance,
    Fill,
    FundingPayment,
    Order,
    Position,
    PositionSide,
    Side,
    Transfer,
)

ZERO = Decimal(0)
PRICE_STEP = Decimal("0.1")
QTY_STEP = Decimal("0.001")
MONEY_STEP = Decimal("0.000001")
FEE_MAKER = Decimal("0.0002")
FEE_TAKER = Decimal("0.0005")
LEVERAGE = Decimal(10)
MAINTENANCE_SHARE = Decimal("0.5")  # maintenance margin as a share of initial margin

TERMINAL = frozenset({"FILLED", "CANCELLED", "REJECTED", "EXPIRED"})
MARK_EVERY = 10  # steps between mark price moves


def q(value: Decimal, step: Decimal = MONEY_STEP) -> Decimal:
    return value.quantize(step, rounding=ROUND_HALF_EVEN)


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


@dataclass(frozen=True)
class Market:
    name: str
    start_price: Decimal
    min_qty: Decimal
    max_qty: Decimal


EXTENDED_MARKETS = (
    Market("BTC-USD", Decimal("58850"), Decimal("0.001"), Decimal("0.25")),
    Market("ETH-USD", Decimal("3100"), Decimal("0.01"), Decimal("4")),
    Market("SOL-USD", Decimal("150"), Decimal("0.1"), Decimal("60")),
)
PARADEX_MARKETS = (
    Market("BTC-USD-PERP", Decimal("58850"), Decimal("0.001"), Decimal("0.25")),
    Market("ETH-USD-PERP", Decimal("3100"), Decimal("0.01"), Decimal("4")),
    Market("SOL-USD-PERP", Decimal("150"), Decimal("0.1"), Decimal("60")),
)


@dataclass(frozen=True)
class EngineConfig:
    markets: tuple[Market, ...] = EXTENDED_MARKETS
    collateral: str = "USD"
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    step_ms: int = 100
    """Venue time that passes per step."""
    initial_deposit: Decimal = Decimal("100000")
    funding_interval_ms: int = 3_600_000
    max_open_orders: int = 12
    busts: bool = False
    """Whether fills can be busted (reverted) after the fact, as on Paradex."""
    fill_type: str = "TRADE"
    """The venue's word for an ordinary fill (Extended ``tradeType`` TRADE, Paradex ``fill_type`` FILL)."""
    fill_fee_asset: str | None = None
    """The asset the venue names on a fill's fee, where its fills name one (Paradex ``fee_currency``)."""
    id_base: int = 1_791_181_340_771_614_000
    """Venue ids start here: large, like the venues' own (Extended's are ~1.8e18)."""


class ChangeKind(StrEnum):
    ORDER = "order"
    FILL = "fill"
    POSITION = "position"
    BALANCE = "balance"
    FUNDING = "funding"
    TRANSFER = "transfer"
    BUST = "bust"


@dataclass
class SimOrder:
    order_id: int
    client_id: str
    market: str
    side: Side
    price: Decimal
    qty: Decimal
    created_ms: int
    updated_ms: int
    filled: Decimal = ZERO
    status: str = "NEW"
    status_reason: str | None = None
    fee_paid: Decimal = ZERO
    notional_filled: Decimal = ZERO
    post_only: bool = False
    reduce_only: bool = False
    seq_no: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled

    @property
    def average_price(self) -> Decimal | None:
        return q(self.notional_filled / self.filled, PRICE_STEP / 10) if self.filled else None

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL


@dataclass
class SimFill:
    fill_id: int
    order_id: int
    client_id: str
    market: str
    side: Side
    price: Decimal
    qty: Decimal
    fee: Decimal
    is_taker: bool
    created_ms: int
    realized_pnl: Decimal = ZERO
    wallet_after: Decimal = ZERO  # the account's settlement balance right after this fill
    busted: bool = False
    busted_ms: int | None = None

    @property
    def value(self) -> Decimal:
        return q(self.price * self.qty)


@dataclass
class SimPosition:
    position_id: int
    market: str
    size: Decimal  # signed: positive long
    entry_price: Decimal
    created_ms: int
    updated_ms: int
    realised_pnl: Decimal = ZERO
    seq_no: int = 0
    max_size: Decimal = ZERO  # the largest absolute size it reached
    fees: Decimal = ZERO  # trading fees paid on it

    @property
    def side(self) -> PositionSide:
        return PositionSide.LONG if self.size >= 0 else PositionSide.SHORT


@dataclass(frozen=True)
class ClosedPosition:
    """A position that went back to zero: what the venue's position history shows."""

    position_id: int
    market: str
    side: PositionSide
    max_size: Decimal
    open_price: Decimal
    exit_price: Decimal
    realised_pnl: Decimal
    fees: Decimal
    funding: Decimal
    created_ms: int
    closed_ms: int


@dataclass
class SimFunding:
    payment_id: int
    market: str
    amount: Decimal  # signed from the account's side: negative means paid
    rate: Decimal
    position_size: Decimal  # signed
    mark_price: Decimal
    paid_ms: int
    position_id: int
    funding_index: Decimal


@dataclass
class SimTransfer:
    transfer_id: int
    transfer_type: str
    status: str
    amount: Decimal
    created_ms: int
    updated_ms: int
    tx_hash: str


@dataclass
class SimAccount:
    name: str
    number: int
    wallet: Decimal = ZERO  # deposits - withdrawals + realised PnL - fees + funding
    orders: dict[int, SimOrder] = field(default_factory=dict)
    working: dict[int, SimOrder] = field(default_factory=dict)  # the open orders, kept apart for speed
    fills: list[SimFill] = field(default_factory=list)
    positions: dict[str, SimPosition] = field(default_factory=dict)
    funding: list[SimFunding] = field(default_factory=list)
    transfers: list[SimTransfer] = field(default_factory=list)
    closed_positions: list[ClosedPosition] = field(default_factory=list)
    balance_updated_ms: int = 0
    seq_no: int = 0
    summary_seq_no: int = 0
    """The ``seq_no`` of the account summary's last update (``seq_no`` moves with orders and positions too)."""

    def next_seq_no(self, now_ms: int) -> int:
        # Paradex seq_no: increasing, not contiguous, nanosecond-like (README 2.6)
        self.seq_no = max(self.seq_no + 1, now_ms * 1_000_000)
        return self.seq_no

    def open_orders(self) -> list[SimOrder]:
        return list(self.working.values())

    def settle(self, order: SimOrder) -> None:
        """Keep the set of open orders in step with the order's status."""
        if order.is_open:
            self.working[order.order_id] = order
        else:
            self.working.pop(order.order_id, None)


@dataclass(frozen=True)
class Change:
    """One thing a venue would publish on the account stream. ``payload`` is the engine's record.

    ``seq_no`` is the update number the venue gives this publication (Paradex: every update of an order, a
    position or the account summary gets a new, increasing ``seq_no``).
    """

    account: str
    kind: ChangeKind
    payload: SimOrder | SimFill | SimPosition | SimAccount | SimFunding | SimTransfer
    at_ms: int
    seq_no: int = 0


@dataclass(frozen=True)
class Truth:
    """An account's true state, in the canonical records statekeeper's projections hold."""

    balance: Balance
    summary: AccountSummary
    open_orders: dict[str, Order]
    orders: dict[str, Order]
    positions: dict[str, Position]
    fills: dict[tuple[str, str], Fill]
    busted_fills: frozenset[str]
    funding: dict[str, FundingPayment]
    transfers: dict[str, Transfer]


class Engine:
    """The venue's truth for a set of accounts, and the activity that changes it."""

    def __init__(self, config: EngineConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        self.now_ms = config.start_ms
        self.step_count = 0
        self.accounts: dict[str, SimAccount] = {}
        self.marks: dict[str, Decimal] = {m.name: m.start_price for m in config.markets}
        self.funding_index: dict[str, Decimal] = {m.name: ZERO for m in config.markets}
        self.markets = {m.name: m for m in config.markets}
        self._next_id = config.id_base
        self._next_funding_ms = config.start_ms + config.funding_interval_ms

    # ---------------------------------------------------------------------------------------- accounts

    def add_account(self, name: str) -> list[Change]:
        """Open an account with its first deposit."""
        if name in self.accounts:
            raise ValueError(f"account {name!r} exists")
        account = SimAccount(name=name, number=len(self.accounts) + 1, balance_updated_ms=self.now_ms)
        self.accounts[name] = account
        return self._deposit(account, self.config.initial_deposit)

    def _id(self) -> int:
        self._next_id += self.rng.randint(1, 97)
        return self._next_id

    # -------------------------------------------------------------------------------------------- time

    def step(self) -> list[Change]:
        """Advance venue time by one step and do one thing, on one account. Returns what the venue publishes."""
        self.step_count += 1
        self.now_ms += self.config.step_ms
        changes: list[Change] = []
        if self.step_count % MARK_EVERY == 0:
            self._move_marks()
        if self.now_ms >= self._next_funding_ms:
            self._next_funding_ms += self.config.funding_interval_ms
            for account in self.accounts.values():
                changes.extend(self._pay_funding(account))
        if not self.accounts:
            return changes
        account = self.accounts[self.rng.choice(sorted(self.accounts))]
        changes.extend(self._act(account))
        return changes

    def steps(self, count: int) -> Iterable[Change]:
        for _ in range(count):
            yield from self.step()

    def _move_marks(self) -> None:
        for name in sorted(self.marks):
            drift = Decimal(self.rng.randint(-20, 20)) / Decimal(100_000)
            self.marks[name] = q(self.marks[name] * (1 + drift), PRICE_STEP)

    # ---------------------------------------------------------------------------------------- activity

    def _act(self, account: SimAccount) -> list[Change]:
        roll = self.rng.random()
        open_orders = account.open_orders()
        if (not open_orders or roll < 0.40) and len(open_orders) < self.config.max_open_orders:
            return self._place(account)
        if roll < 0.75 and open_orders:
            return self._fill(account, self.rng.choice(open_orders))
        if roll < 0.93 and open_orders:
            return self._cancel(account, self.rng.choice(open_orders))
        if roll < 0.935:
            return self._deposit(account, q(Decimal(self.rng.randint(100, 5000))))
        if self.config.busts and roll < 0.95:
            return self._bust(account)
        return self._publish_positions(account)

    def _place(self, account: SimAccount) -> list[Change]:
        market = self.markets[self.rng.choice(sorted(self.markets))]
        side = self.rng.choice([Side.BUY, Side.SELL])
        mark = self.marks[market.name]
        offset = Decimal(self.rng.randint(1, 40)) / Decimal(10_000)
        price = q(mark * (1 - offset if side is Side.BUY else 1 + offset), PRICE_STEP)
        steps = int((market.max_qty - market.min_qty) / market.min_qty)
        qty = market.min_qty * (1 + self.rng.randint(0, steps))
        order = SimOrder(
            order_id=self._id(),
            client_id=f"sim-{self.seed}-{self.step_count}",
            market=market.name,
            side=side,
            price=price,
            qty=q(qty, QTY_STEP) if market.min_qty >= QTY_STEP else qty,
            created_ms=self.now_ms,
            updated_ms=self.now_ms,
            post_only=self.rng.random() < 0.3,
        )
        order.seq_no = account.next_seq_no(self.now_ms)
        account.orders[order.order_id] = order
        account.settle(order)
        return [self._change(account, ChangeKind.ORDER, order)]

    def _fill(self, account: SimAccount, order: SimOrder) -> list[Change]:
        market = self.markets[order.market]
        if self.rng.random() < 0.5 or order.remaining <= market.min_qty:
            qty = order.remaining
        else:
            qty = market.min_qty * self.rng.randint(1, int(order.remaining / market.min_qty) - 1 or 1)
            qty = min(qty, order.remaining)
        is_taker = not order.post_only and self.rng.random() < 0.3
        fee = q(order.price * qty * (FEE_TAKER if is_taker else FEE_MAKER))
        fill = SimFill(
            fill_id=self._id(),
            order_id=order.order_id,
            client_id=order.client_id,
            market=order.market,
            side=order.side,
            price=order.price,
            qty=qty,
            fee=fee,
            is_taker=is_taker,
            created_ms=self.now_ms,
        )
        order.filled += qty
        order.notional_filled += order.price * qty
        order.fee_paid += fee
        order.status = "FILLED" if order.remaining == 0 else "PARTIALLY_FILLED"
        order.updated_ms = self.now_ms
        order.seq_no = account.next_seq_no(self.now_ms)
        account.settle(order)
        fill.realized_pnl = self._apply_fill(account, fill)
        account.wallet += fill.realized_pnl - fee
        fill.wallet_after = account.wallet
        account.fills.append(fill)
        account.balance_updated_ms = self.now_ms
        position = account.positions[fill.market]
        return [
            self._change(account, ChangeKind.FILL, fill),
            self._change(account, ChangeKind.ORDER, order),
            self._change(account, ChangeKind.POSITION, position),
            self._change(account, ChangeKind.BALANCE, account),
        ]

    def _apply_fill(self, account: SimAccount, fill: SimFill) -> Decimal:
        """Move the position by the fill; return the realised PnL of the part that closed it."""
        signed = fill.qty if fill.side is Side.BUY else -fill.qty
        position = account.positions.get(fill.market)
        if position is None or position.size == 0:
            # a new position (a closed one keeps its id in the history; the venue numbers the next afresh)
            position = SimPosition(self._id(), fill.market, signed, fill.price, self.now_ms, self.now_ms)
            position.max_size, position.fees = abs(signed), fill.fee
            position.seq_no = account.next_seq_no(self.now_ms)
            account.positions[fill.market] = position
            return ZERO
        realised = ZERO
        position.fees += fill.fee
        if (position.size > 0) == (signed > 0):  # adding to the position
            total = position.size + signed
            position.entry_price = q((position.entry_price * position.size + fill.price * signed) / total, PRICE_STEP)
            position.size = total
        else:  # reducing, closing or flipping
            closing = min(abs(signed), abs(position.size))
            direction = 1 if position.size > 0 else -1
            realised = q((fill.price - position.entry_price) * closing * direction)
            opened_at = position.entry_price
            position.size += signed
            if position.size == 0 or (position.size > 0) != (direction > 0):
                account.closed_positions.append(ClosedPosition(
                    position.position_id, position.market, PositionSide.LONG if direction > 0 else PositionSide.SHORT,
                    position.max_size, opened_at, fill.price, q(position.realised_pnl + realised), q(position.fees),
                    q(sum((p.amount for p in account.funding if p.position_id == position.position_id), ZERO)),
                    position.created_ms, self.now_ms,
                ))  # fmt: skip
            if position.size == 0:
                position.entry_price = ZERO
            elif (position.size > 0) != (direction > 0):  # flipped: the rest opens at the fill price
                position.entry_price = fill.price
        position.max_size = max(position.max_size, abs(position.size))
        position.realised_pnl += realised
        position.updated_ms = self.now_ms
        position.seq_no = account.next_seq_no(self.now_ms)
        return realised

    def _cancel(self, account: SimAccount, order: SimOrder) -> list[Change]:
        order.status = "CANCELLED"
        order.status_reason = "USER_CANCELED"
        order.updated_ms = self.now_ms
        order.seq_no = account.next_seq_no(self.now_ms)
        account.settle(order)
        return [self._change(account, ChangeKind.ORDER, order)]

    def _deposit(self, account: SimAccount, value: Decimal) -> list[Change]:
        transfer = SimTransfer(
            transfer_id=self._id(),
            transfer_type="DEPOSIT",
            status="COMPLETED",
            amount=value,
            created_ms=self.now_ms,
            updated_ms=self.now_ms,
            tx_hash=f"0x{self.rng.getrandbits(248):062x}",
        )
        account.transfers.append(transfer)
        account.wallet += value
        account.balance_updated_ms = self.now_ms
        return [
            self._change(account, ChangeKind.TRANSFER, transfer),
            self._change(account, ChangeKind.BALANCE, account),
        ]

    def _pay_funding(self, account: SimAccount) -> list[Change]:
        changes: list[Change] = []
        for market in sorted(account.positions):
            position = account.positions[market]
            if position.size == 0:
                continue
            rate = Decimal(self.rng.randint(-30, 60)) / Decimal(1_000_000)
            mark = self.marks[market]
            self.funding_index[market] += q(mark * rate, Decimal("0.00000001"))
            # a positive rate: longs pay shorts
            paid = q(-position.size * mark * rate)
            payment = SimFunding(self._id(), market, paid, rate, position.size, mark, self.now_ms,
                                 position.position_id, self.funding_index[market])  # fmt: skip
            account.funding.append(payment)
            account.wallet += paid
            changes.append(self._change(account, ChangeKind.FUNDING, payment))
        if changes:
            account.balance_updated_ms = self.now_ms
            changes.append(self._change(account, ChangeKind.BALANCE, account))
        return changes

    def _bust(self, account: SimAccount) -> list[Change]:
        """Revert a recent fill: the order keeps its state, the position and the balance lose the fill."""
        candidates = [f for f in account.fills[-20:] if not f.busted]
        if not candidates:
            return []
        fill = self.rng.choice(candidates)
        fill.busted, fill.busted_ms = True, self.now_ms
        reverse = replace(fill, side=Side.SELL if fill.side is Side.BUY else Side.BUY, fee=ZERO)
        realised = self._apply_fill(account, reverse)
        account.wallet += realised - fill.realized_pnl + fill.fee
        account.balance_updated_ms = self.now_ms
        return [
            self._change(account, ChangeKind.BUST, fill),
            self._change(account, ChangeKind.POSITION, account.positions[fill.market]),
            self._change(account, ChangeKind.BALANCE, account),
        ]

    def _publish_positions(self, account: SimAccount) -> list[Change]:
        """Mark prices moved: the venue republishes positions (each a new update) and the balance."""
        changes = []
        for market in sorted(account.positions):
            position = account.positions[market]
            if position.size != 0:
                position.updated_ms = self.now_ms
                position.seq_no = account.next_seq_no(self.now_ms)
                changes.append(self._change(account, ChangeKind.POSITION, position))
        if changes:
            account.balance_updated_ms = self.now_ms
            changes.append(self._change(account, ChangeKind.BALANCE, account))
        return changes

    def _change(self, account: SimAccount, kind: ChangeKind, payload: object) -> Change:
        if kind is ChangeKind.BALANCE:  # a new account update: a new seq_no
            account.summary_seq_no = account.next_seq_no(self.now_ms)
            return Change(account.name, kind, account, self.now_ms, account.summary_seq_no)
        if isinstance(payload, SimOrder | SimPosition):
            return Change(account.name, kind, payload, self.now_ms, payload.seq_no)
        return Change(account.name, kind, payload, self.now_ms)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------ drift

    def drift(self, name: str, what: Literal["order", "balance"] | None = None) -> str:
        """Change the truth without publishing anything: reconciliation must find it. Returns what changed.

        ``what``: cancel an open order (if there is one) or adjust the balance; by default either, at random.
        """
        account = self.accounts[name]
        open_orders = account.open_orders()
        if open_orders and (what == "order" or (what is None and self.rng.random() < 0.5)):
            order = self.rng.choice(open_orders)
            order.status, order.status_reason = "CANCELLED", "DRIFT"
            order.updated_ms = self.now_ms
            account.settle(order)
            return f"order {order.order_id} cancelled without an update on the stream"
        adjustment = q(Decimal(self.rng.randint(1, 500)))
        account.wallet += adjustment
        account.balance_updated_ms = self.now_ms
        return f"balance adjusted by {adjustment} without an update on the stream"

    # ------------------------------------------------------------------------------------ derived state

    def unrealised(self, account: SimAccount) -> Decimal:
        return q(sum((p.size * (self.marks[p.market] - p.entry_price) for p in account.positions.values()), ZERO))

    def exposure(self, account: SimAccount) -> Decimal:
        return q(sum((abs(p.size) * self.marks[p.market] for p in account.positions.values()), ZERO))

    def initial_margin(self, account: SimAccount) -> Decimal:
        return q(self.exposure(account) / LEVERAGE)

    def equity(self, account: SimAccount) -> Decimal:
        return q(account.wallet + self.unrealised(account))

    def balance_of(self, account: SimAccount) -> Balance:
        equity = self.equity(account)
        initial = self.initial_margin(account)
        upnl = self.unrealised(account)
        available = q(equity - initial)
        maintenance = q(initial * MAINTENANCE_SHARE)
        return Balance(
            asset=self.config.collateral,
            balance=q(account.wallet),
            equity=equity,
            available_for_trade=available,
            available_for_withdrawal=max(ZERO, q(account.wallet + min(ZERO, upnl) - initial)),
            unrealised_pnl=upnl,
            initial_margin=initial,
            maintenance_margin=maintenance,
            margin_ratio=q(maintenance / equity, Decimal("0.0001")) if equity > 0 else ZERO,
            exposure=self.exposure(account),
            leverage=q(self.exposure(account) / equity, Decimal("0.0001")) if equity > 0 else ZERO,
            status="ACTIVE",
            updated_at=ms_to_datetime(account.balance_updated_ms),
        )

    def summary_of(self, account: SimAccount) -> AccountSummary:
        balance = self.balance_of(account)
        assert balance.equity is not None
        assert balance.initial_margin is not None
        return AccountSummary(
            equity=balance.equity,
            free_collateral=balance.available_for_trade,
            initial_margin=balance.initial_margin,
            maintenance_margin=balance.maintenance_margin,
            total_collateral=balance.balance,
            margin_cushion=q(balance.equity - (balance.maintenance_margin or ZERO)),
            settlement_asset=self.config.collateral,
            status="ACTIVE",
            updated_at=ms_to_datetime(account.balance_updated_ms),
            venue_seq=account.summary_seq_no,
        )

    # ------------------------------------------------------------------------------------------ truth

    def order_record(self, order: SimOrder) -> Order:
        return Order(
            order_id=str(order.order_id),
            client_order_id=order.client_id,
            market=order.market,
            side=order.side,
            order_type="LIMIT",
            status=order.status,
            status_reason=order.status_reason,
            price=order.price,
            average_price=order.average_price,
            qty=order.qty,
            filled_qty=order.filled,
            remaining_qty=order.remaining,
            fee_paid=q(order.fee_paid),
            reduce_only=order.reduce_only,
            post_only=order.post_only,
            time_in_force="GTT",
            created_at=ms_to_datetime(order.created_ms),
            updated_at=ms_to_datetime(order.updated_ms),
            venue_seq=order.seq_no,
        )

    def position_record(self, position: SimPosition) -> Position:
        mark = self.marks[position.market]
        return Position(
            position_id=str(position.position_id),
            market=position.market,
            side=position.side,
            size=abs(position.size),
            entry_price=position.entry_price,
            mark_price=mark,
            value=q(abs(position.size) * mark),
            unrealised_pnl=q(position.size * (mark - position.entry_price)),
            realised_pnl=q(position.realised_pnl),
            leverage=LEVERAGE,
            status="OPENED" if position.size else "CLOSED",
            created_at=ms_to_datetime(position.created_ms),
            updated_at=ms_to_datetime(position.updated_ms),
            venue_seq=position.seq_no,
        )

    def fill_record(self, fill: SimFill) -> Fill:
        return Fill(
            fill_id=str(fill.fill_id),
            order_id=str(fill.order_id),
            client_order_id=fill.client_id,
            market=fill.market,
            side=fill.side,
            price=fill.price,
            qty=fill.qty,
            value=fill.value,
            fill_type=self.config.fill_type,
            fee=fill.fee,
            fee_asset=self.config.fill_fee_asset,
            is_taker=fill.is_taker,
            realized_pnl=fill.realized_pnl,
            created_at=ms_to_datetime(fill.created_ms),
        )

    def funding_record(self, payment: SimFunding) -> FundingPayment:
        return FundingPayment(
            payment_id=str(payment.payment_id),
            market=payment.market,
            amount=payment.amount,
            asset=self.config.collateral,
            rate=payment.rate,
            position_side=PositionSide.LONG if payment.position_size > 0 else PositionSide.SHORT,
            position_size=abs(payment.position_size),
            position_value=q(abs(payment.position_size) * payment.mark_price),
            mark_price=payment.mark_price,
            funding_index=payment.funding_index,
            paid_at=ms_to_datetime(payment.paid_ms),
        )

    def transfer_record(self, transfer: SimTransfer) -> Transfer:
        return Transfer(
            transfer_id=str(transfer.transfer_id),
            transfer_type=transfer.transfer_type,
            status=transfer.status,
            asset=self.config.collateral,
            amount=transfer.amount,
            tx_hash=transfer.tx_hash,
            created_at=ms_to_datetime(transfer.created_ms),
            updated_at=ms_to_datetime(transfer.updated_ms),
        )

    def truth(self, name: str) -> Truth:
        """The account's true state right now, as canonical records."""
        account = self.accounts[name]
        orders = {str(o.order_id): self.order_record(o) for o in account.orders.values()}
        return Truth(
            balance=self.balance_of(account),
            summary=self.summary_of(account),
            open_orders={k: v for k, v in orders.items() if v.status not in TERMINAL},
            orders=orders,
            positions={p.market: self.position_record(p) for p in account.positions.values() if p.size != 0},
            fills={(str(f.fill_id), self.config.fill_type): self.fill_record(f) for f in account.fills},
            busted_fills=frozenset(str(f.fill_id) for f in account.fills if f.busted),
            funding={str(p.payment_id): self.funding_record(p) for p in account.funding},
            transfers={str(t.transfer_id): self.transfer_record(t) for t in account.transfers},
        )
