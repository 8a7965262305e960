"""The reconciliation diff: pure, no I/O. What is compared, how, and when a difference becomes a discrepancy.

**What.** Four kinds of state, each keyed by the venue's own ids, on the union of the keys of both sides:

* ``balance`` (by asset): the ``balances`` rows against the venue's balances;
* ``order`` (by order id): ``open_orders`` against the venue's open orders (an order the venue lists that is not
  open in the projection is compared with its row in ``orders``, whose status says what became of it);
* ``position`` (by market): ``positions`` against the venue's open positions;
* ``account`` (one key, ``summary``): ``account_margins`` against the venue's account summary (Paradex);

and two ledgers, ``fill`` (by ``fill_id:fill_type``) and ``funding`` (by payment id): every item of the venue's
recent history must be in the projection.

**How.** Field by field (:data:`FIELDS`): quantities, prices of orders, statuses, sides and ids exactly; the fields
given a :class:`Tolerance` within it. The mark-dependent figures (equity, margins, unrealised PnL, mark price,
value...) move at the venue with every mark price while the stream republishes them only now and then (the
simulated venues too), so their tolerance is relative to the entity's scale: a position's notional value, a
balance's or an account's equity. A field one side does not carry (``None``: the venue's REST answer or its stream
lacks it) is not compared. A key on one side only is a difference of the field ``present``.

**When** (DESIGN.md invariant 9). A pass takes several REST answers (*rounds*). The first round is a quick look: the
projection is read once the projector has passed the log head seen after the answer arrived, and only the keys that
agree are concluded (clean); the others are looked at again. Every later round is *settled*: the projection is read
once the projector has passed the log head seen after the answer arrived plus a race window, and each key is:

* *settled* when its projected row did not change since the request was sent (its ``event_id`` is at most the log
  head read before the request): its differences are *candidates*; a candidate found again in the next round (same
  entity, key and field) is *confirmed*: a discrepancy;
* *moving* when it differs and its row changed meanwhile: the answer may be older or newer than the row, so nothing
  is concluded and the key is examined again in the next round, with a fresh answer.

A key that agrees is settled as clean in any round.

A key still moving (or only once a candidate) after the last round is *unsettled*: left for the next pass, neither
reported nor resolved. :class:`Examination` keeps that bookkeeping; :func:`settle_book` turns it into changes of
the open discrepancies of earlier passes (first seen, last seen, resolved).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

BALANCE = "balance"
ORDER = "order"
POSITION = "position"
ACCOUNT = "account"
FILL = "fill"
FUNDING = "funding"

STATE_ENTITIES: tuple[str, ...] = (BALANCE, ORDER, POSITION, ACCOUNT)
LEDGER_ENTITIES: tuple[str, ...] = (FILL, FUNDING)

PRESENT = "present"
"""The field of a difference where one side has the key and the other has not."""
YES, NO = "yes", "no"
SUMMARY_KEY = "summary"
"""The key of the one ``account`` entity of an account."""

FIELDS: dict[str, tuple[str, ...]] = {
    BALANCE: (
        "balance", "status", "equity", "available_for_trade", "available_for_withdrawal", "unrealised_pnl",
        "initial_margin", "maintenance_margin", "margin_ratio", "exposure", "leverage",
    ),
    ORDER: (
        "status", "market", "side", "order_type", "qty", "filled_qty", "remaining_qty", "price", "average_price",
        "trigger_price", "fee_paid", "reduce_only", "post_only", "client_order_id",
    ),
    POSITION: (
        "side", "size", "entry_price", "status", "realised_pnl", "mark_price", "value", "unrealised_pnl",
        "liquidation_price", "margin", "leverage",
    ),
    ACCOUNT: (
        "settlement_asset", "status", "equity", "free_collateral", "initial_margin", "maintenance_margin",
        "total_collateral", "margin_cushion",
    ),
}  # fmt: skip
"""The fields compared per entity, in the order they are reported."""

SNAPSHOT_ENTITY: dict[str, str] = {"balances": BALANCE, "positions": POSITION, "open_orders": ORDER,
                                   "account": ACCOUNT}  # fmt: skip
"""The entity of each REST snapshot a venue driver takes (:class:`statekeeper.ingest.drivers.Snapshot`.what)."""

Ident = tuple[str, str, str]
"""(entity, key, field): what a discrepancy is about."""
EntityKey = tuple[str, str]
"""(entity, key)."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One field of one entity that differs: the projection's value and the venue's, as text (None: absent)."""

    entity: str
    key: str
    field: str
    projected: str | None
    venue: str | None

    @property
    def ident(self) -> Ident:
        return (self.entity, self.key, self.field)

    @property
    def entity_key(self) -> EntityKey:
        return (self.entity, self.key)


@dataclass(frozen=True, slots=True)
class Projected:
    """A projected row (any object with the entity's fields as attributes) and whether it is present as such.

    ``present`` is False for an order that is in ``orders`` but not open: it is compared (its status differs) but
    counts as absent from the open orders.
    """

    row: Any
    event_id: int
    present: bool = True


def text(value: Any) -> str | None:
    """A value as the reports show it: decimals exactly, times in ISO 8601, booleans in lower case."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far apart two values of a field may be: ``absolute``, or ``relative`` times the entity's scale (a
    position's notional value, a balance's or an account's equity; a ratio's own value), whichever is larger."""

    absolute: Decimal = Decimal(0)
    relative: Decimal = Decimal(0)

    def allows(self, difference: Decimal, scale: Decimal | None) -> bool:
        allowed = max(self.absolute, self.relative * abs(scale) if scale is not None else Decimal(0))
        return difference <= allowed


EXACT = Tolerance()

SCALE: dict[str, str] = {POSITION: "value", BALANCE: "equity", ACCOUNT: "equity"}
"""The field whose (venue) value is the scale of a relative tolerance, per entity."""
RATIOS = frozenset({"margin_ratio", "leverage"})
"""Fields that are ratios: their own value is the scale of a relative tolerance."""


def parse_tolerance(text: str) -> Tolerance:
    """``"0.01"`` (an absolute amount) or ``"1%"`` (of the entity's scale). Raises ValueError."""
    value = text.strip()
    relative = value.endswith("%")
    try:
        amount = Decimal(value.removesuffix("%").strip())
    except ArithmeticError:
        raise ValueError(f"{text!r} is not an amount (0.01) or a percentage (1%)") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{text!r}: a tolerance is a finite amount >= 0")
    return Tolerance(relative=amount / 100) if relative else Tolerance(absolute=amount)


def tolerances(texts: Mapping[str, str]) -> dict[str, Tolerance]:
    return {name: parse_tolerance(value) for name, value in texts.items()}


def _scale(entity: str, name: str, venue: Any, theirs: Any) -> Decimal | None:
    if name in RATIOS:
        value = theirs
    elif entity == POSITION and getattr(venue, "value", None) is None:
        size, price = getattr(venue, "size", None), getattr(venue, "entry_price", None)
        value = size * price if size is not None and price is not None else None
    else:
        value = getattr(venue, SCALE.get(entity, ""), None)
    return Decimal(value) if isinstance(value, Decimal | int) and not isinstance(value, bool) else None


def same(projected: Any, venue: Any, tolerance: Tolerance = EXACT, scale: Decimal | None = None) -> bool:
    """Whether two values of a field agree: within ``tolerance`` for numbers, equal otherwise.

    A value one side does not carry (None) agrees with anything: that side cannot say.
    """
    if projected is None or venue is None:
        return True
    a, b = _plain(projected), _plain(venue)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, Decimal | int) and isinstance(b, Decimal | int):
        return tolerance.allows(abs(Decimal(a) - Decimal(b)), scale)
    return bool(a == b)


def compare_entity(
    entity: str, key: str, projected: Projected | None, venue: Any | None, tolerances: Mapping[str, Tolerance]
) -> list[Difference]:
    """The differences of one entity: ``present`` if one side lacks it, else each field that differs."""
    if venue is None and (projected is None or not projected.present):
        return []
    if venue is None:
        return [Difference(entity, key, PRESENT, YES, NO)]
    if projected is None:
        return [Difference(entity, key, PRESENT, NO, YES)]
    found = []
    for name in FIELDS[entity]:
        mine, theirs = getattr(projected.row, name, None), getattr(venue, name, None)
        tolerance = tolerances.get(name, EXACT)
        scale = _scale(entity, name, venue, theirs) if tolerance.relative else None
        if not same(mine, theirs, tolerance, scale):
            found.append(Difference(entity, key, name, text(mine), text(theirs)))
    return found


def compare(
    entity: str,
    projected: Mapping[str, Projected],
    venue: Mapping[str, Any],
    tolerances: Mapping[str, Tolerance],
    *,
    keys: Collection[str] | None = None,
) -> list[Difference]:
    """The differences of one entity kind over the union of both sides' keys (or only ``keys``), sorted by key."""
    chosen = sorted(keys if keys is not None else {*projected, *venue})
    found: list[Difference] = []
    for key in chosen:
        found += compare_entity(entity, key, projected.get(key), venue.get(key), tolerances)
    return found


def missing(entity: str, venue_keys: Iterable[str], projected_keys: Collection[str]) -> list[Difference]:
    """Ledger items the venue lists that the projection lacks (a ledger is compared one way: the venue's recent
    history must be in the log)."""
    return [Difference(entity, key, PRESENT, NO, YES) for key in sorted(set(venue_keys) - set(projected_keys))]


def fill_key(fill_id: str, fill_type: str) -> str:
    return f"{fill_id}:{fill_type}"


# ------------------------------------------------------------------------------------------ the rounds


@dataclass
class Examination:
    """What the rounds of one pass have established so far (see the module docstring)."""

    pending: set[EntityKey] | None = None
    """The keys the next round examines; None: every key (the first round)."""
    candidates: dict[Ident, Difference] = field(default_factory=dict)
    """Differences of settled keys seen in the last round, not confirmed yet."""
    confirmed: dict[Ident, Difference] = field(default_factory=dict)
    settled: set[EntityKey] = field(default_factory=set)
    """Keys whose comparison concluded (clean, or confirmed differences)."""
    moving: set[EntityKey] = field(default_factory=set)
    """Keys whose row changed while they were compared in the last round that examined them."""
    rounds: int = 0
    book: frozenset[EntityKey] = frozenset()
    """Keys of the account's open discrepancies: examined from the first round even if neither side has them any
    more (an order the projection and the venue both closed since), so that their discrepancies can resolve."""

    @property
    def done(self) -> bool:
        return self.pending is not None and not self.pending

    @property
    def unsettled(self) -> set[EntityKey]:
        """Keys left for the next pass: still moving, or a candidate seen only once."""
        return (self.pending or set()) - self.settled

    def wants(self, key: EntityKey) -> bool:
        return self.pending is None or key in self.pending

    def record(
        self,
        compared: Iterable[EntityKey],
        differences: Iterable[Difference],
        changed: Collection[EntityKey],
        *,
        settled: bool = True,
    ) -> None:
        """Take one round: ``compared`` are the keys both sides had between them, ``changed`` those whose projected
        row changed after the request was sent. ``settled``: the round waited the race window before comparing; a
        round that did not (the first, quick look) concludes only that a key is clean: its differences are looked at
        again, and a candidate needs two settled rounds in a row."""
        self.rounds += 1
        by_key: dict[EntityKey, list[Difference]] = {}
        for difference in differences:
            by_key.setdefault(difference.entity_key, []).append(difference)
        examined = {k for k in compared if self.wants(k)}
        if self.pending is None:
            examined |= self.book  # an open discrepancy's key that has left both sides is settled as clean
        else:
            examined |= self.pending  # a key that left both sides since the last round is settled as clean
        pending: set[EntityKey] = set()
        candidates: dict[Ident, Difference] = {}
        for key in examined:
            if key in changed and key in by_key:  # it agrees, or it is moving: nothing can be concluded of it
                pending.add(key)
                self.moving.add(key)
                self.settled.discard(key)
                continue
            self.moving.discard(key)
            fresh = False
            for difference in by_key.get(key, []):
                if not settled:
                    fresh = True
                elif difference.ident in self.candidates:
                    self.confirmed[difference.ident] = difference
                else:
                    candidates[difference.ident] = difference
                    fresh = True
            if fresh:
                pending.add(key)
                self.settled.discard(key)
            else:
                self.settled.add(key)
        self.candidates = candidates
        self.pending = pending


# -------------------------------------------------------------------------------------------- the book


@dataclass(frozen=True, slots=True)
class OpenDiscrepancy:
    """An open row of ``reconciliation_discrepancies``."""

    id: int
    entity: str
    key: str
    field: str

    @property
    def ident(self) -> Ident:
        return (self.entity, self.key, self.field)


@dataclass(frozen=True, slots=True)
class BookChanges:
    """What a pass changes in the discrepancy book of its account."""

    seen_again: dict[int, Difference]
    """Open discrepancies confirmed again, by id: last seen now, with the latest values."""
    new: list[Difference]
    """Confirmed discrepancies that were not open: new rows."""
    gone: list[int]
    """Open discrepancies whose key this pass examined to the end without finding them: resolved."""


def settle_book(open_rows: Iterable[OpenDiscrepancy], confirmed: Mapping[Ident, Difference],
                settled: Collection[EntityKey]) -> BookChanges:  # fmt: skip
    """Match a pass's confirmed discrepancies with the open ones. An open discrepancy is resolved only if its key
    was settled in this pass (an unsettled key, or one the pass did not examine, keeps its open rows)."""
    by_ident = {row.ident: row for row in open_rows}
    seen_again = {by_ident[i].id: d for i, d in confirmed.items() if i in by_ident}
    new = [d for i, d in sorted(confirmed.items()) if i not in by_ident]
    gone = sorted(
        row.id
        for ident, row in by_ident.items()
        if ident not in confirmed and (row.entity, row.key) in settled
    )  # fmt: skip
    return BookChanges(seen_again, new, gone)


def healed(confirmed: Iterable[Difference], after: Iterable[Difference]) -> list[Difference]:
    """The confirmed discrepancies that no longer differ once the heal events are folded."""
    still = {d.ident for d in after}
    return [d for d in confirmed if d.ident not in still]
