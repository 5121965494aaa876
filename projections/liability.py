"""Fulfillment liability and the capacity forecast (履约负债, SPEC §7).

A pure fold over the events that happened up to the end of business day D (the rules' time zone):

* every order item with sessions gets a **position**: sold − delivered − refunded − expired =
  outstanding. Sessions still open when ``valid_until`` has passed (D later than that day) are
  **breakage** (expired, counted once, never owed again);
* **deferred revenue** (contract liability, 预收/合同负债) = outstanding × session value
  (item amount ÷ item sessions), rounded half-up to 0.01 per item; totals are sums of the rounded
  items, like the statement's lines (§5);
* an item belongs to the order's store and to the **owner channel at payment time** — the channel
  that sold the time (the same owner §5 pays the source reward to); a customer without an owner
  then (a walk-in, 自然到店) is reported under the channel ``walk-in``;
* the **forecast** spreads each item's outstanding sessions at ``cadence_per_week`` of its class
  from D on (`policies.fulfillment.spread_sessions`) into hours per store and month, for the month
  holding D+1 and the N−1 after it, against the clinician and room hours declared for the store
  (``resource.declared``: the latest declaration of each resource made by D). The first month is
  **prorated**: only the days after D count (D+1 … month end), both for the hours forecast there
  and for the capacity, so its utilisation compares like with like. Months whose clinician
  utilisation is above ``pressure_threshold`` are flagged (rooms are reported, and flagged,
  separately).

`item_positions` is the shared fold: the three ledgers (§7) and the due list use it too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from ledger.events import LedgerEvent, OrderPaid, OrderRefunded, SessionDelivered
from ledger.identity import canonical_key
from policies import PRODUCT_CLASSES, NoRulesInForce, RuleBook, RuleSet
from policies.fulfillment import (
    capacity_hours,
    hours,
    is_expired,
    is_under_pressure,
    money,
    month_end,
    next_month,
    spread_sessions,
    utilisation,
)
from projections.attribution import Attribution, attribute, rule_book
from projections.directory import Directory

WALK_IN = "walk-in"
"""Channel id and kind under which customers without an owner (自然到店) are reported."""

ZERO = Decimal("0.00")


def rules_on(book: RuleBook, day: date) -> RuleSet:
    """The rule set in force on business day ``day``; a day before every adopted rule set is read
    under the earliest one (as attribution does). Raises ``NoRulesInForce`` when none is adopted."""
    try:
        return book.in_force(day)
    except NoRulesInForce:
        return book.earliest


def day_start(day: date, rules: RuleSet) -> datetime:
    """00:00 of business day ``day`` in the rules' time zone."""
    return datetime.combine(day, time(0), tzinfo=rules.tz)


def end_of_day(day: date, rules: RuleSet) -> datetime:
    """The first moment after business day ``day`` (exclusive bound of "up to the end of D")."""
    return day_start(day + timedelta(days=1), rules)


# --- one order item's position -----------------------------------------------------------------


@dataclass(frozen=True)
class ItemPosition:
    """One order item with sessions, as of a moment."""

    order_id: str
    sku: str
    product_class: str
    customer_id: str | None
    store_id: str
    channel_id: str
    channel_kind: str
    owner_staff_id: str | None
    paid_at: datetime
    valid_until: date | None
    sessions_sold: int
    session_minutes: int
    amount: Decimal
    delivered: int
    refunded_sessions: int
    expired: int
    last_delivery_at: datetime | None

    @property
    def outstanding(self) -> int:
        return self.sessions_sold - self.delivered - self.refunded_sessions - self.expired

    @property
    def session_value(self) -> Decimal:
        """Item amount ÷ item sessions, unrounded."""
        return self.amount / self.sessions_sold

    @property
    def deferred_revenue(self) -> Decimal:
        return money(self.outstanding * self.session_value)

    @property
    def breakage_amount(self) -> Decimal:
        return money(self.expired * self.session_value)

    @property
    def outstanding_minutes(self) -> int:
        return self.outstanding * self.session_minutes

    def as_json(self) -> dict:
        return {
            "order_id": self.order_id,
            "sku": self.sku,
            "product_class": self.product_class,
            "customer_id": self.customer_id,
            "store_id": self.store_id,
            "channel_id": self.channel_id,
            "channel_kind": self.channel_kind,
            "owner_staff_id": self.owner_staff_id,
            "paid_at": self.paid_at.isoformat(),
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
            "sessions_sold": self.sessions_sold,
            "delivered": self.delivered,
            "refunded_sessions": self.refunded_sessions,
            "expired": self.expired,
            "outstanding": self.outstanding,
            "session_minutes": self.session_minutes,
            "session_value": f"{money(self.session_value):.2f}",
            "deferred_revenue": f"{self.deferred_revenue:.2f}",
            "breakage_amount": f"{self.breakage_amount:.2f}",
        }


def owner_channel(attr: Attribution, customer: str | None, moment: datetime) -> tuple[str, str, str | None]:
    """(channel id, channel kind, owner staff) of a customer at ``moment``; walk-ins: ``walk-in``."""
    owner = attr.owner_at(customer, moment) if customer is not None else None
    if owner is None:
        return WALK_IN, WALK_IN, None
    return owner.channel_id or "unknown", owner.channel_kind or "unknown", owner.staff_id


def item_positions(
    events: Iterable[LedgerEvent],
    before: datetime,
    attr: Attribution,
    rules: RuleSet,
) -> list[ItemPosition]:
    """Every order item with sessions paid before ``before``, with deliveries and refunded sessions
    before ``before``, and expiry judged on the business day just before ``before`` (the as-of day).
    Sorted by (paid_at, order_id, sku)."""
    as_of_day = rules.local_date(before - timedelta(microseconds=1))
    orders: dict[str, OrderPaid] = {}
    delivered: dict[tuple[str, str], int] = defaultdict(int)
    refunded: dict[tuple[str, str], int] = defaultdict(int)
    last_delivery: dict[tuple[str, str], datetime] = {}
    for event in sorted((e for e in events if e.occurred_at < before), key=canonical_key):
        if isinstance(event, OrderPaid):
            orders.setdefault(event.order_id, event)
        elif isinstance(event, SessionDelivered):
            order = orders.get(event.order_id)
            item = order.item(event.sku) if order else None
            if item is not None:
                delivered[(event.order_id, item.sku)] += 1
                last_delivery[(event.order_id, item.sku)] = event.occurred_at
        elif isinstance(event, OrderRefunded) and event.sessions:
            order = orders.get(event.order_id)
            item = order.item(event.sku) if order else None
            if item is not None:
                refunded[(event.order_id, item.sku)] += event.sessions
    positions: list[ItemPosition] = []
    for order in sorted(orders.values(), key=canonical_key):
        customer = attr.identity.customer_of(order)
        channel_id, kind, staff = owner_channel(attr, customer, order.occurred_at)
        for item in order.items:
            if item.sessions <= 0:
                continue
            key = (order.order_id, item.sku)
            done = min(delivered[key], item.sessions)
            back = min(refunded[key], item.sessions - done)
            left = item.sessions - done - back
            expired = left if is_expired(order.valid_until, as_of_day) else 0
            positions.append(ItemPosition(
                order.order_id, item.sku, item.product_class, customer, order.store_id,
                channel_id, kind, staff, order.occurred_at, order.valid_until,
                item.sessions, item.session_minutes, item.amount, done, back, expired,
                last_delivery.get(key),
            ))
    return positions


# --- totals --------------------------------------------------------------------------------------


@dataclass
class Totals:
    """Sums over item positions (one row of a breakdown)."""

    items: int = 0
    outstanding_sessions: int = 0
    outstanding_minutes: int = 0
    deferred_revenue: Decimal = ZERO
    breakage_sessions: int = 0
    breakage_amount: Decimal = ZERO

    def add(self, p: ItemPosition) -> None:
        if p.outstanding > 0:
            self.items += 1
        self.outstanding_sessions += p.outstanding
        self.outstanding_minutes += p.outstanding_minutes
        self.deferred_revenue += p.deferred_revenue
        self.breakage_sessions += p.expired
        self.breakage_amount += p.breakage_amount

    @property
    def outstanding_hours(self) -> Decimal:
        return hours(self.outstanding_minutes)

    def as_json(self) -> dict:
        return {
            "open_items": self.items,
            "outstanding_sessions": self.outstanding_sessions,
            "outstanding_hours": f"{self.outstanding_hours:.2f}",
            "deferred_revenue": f"{self.deferred_revenue:.2f}",
            "breakage_sessions": self.breakage_sessions,
            "breakage_amount": f"{self.breakage_amount:.2f}",
        }


@dataclass(frozen=True)
class Breakdown:
    """One row of a breakdown: a key (store, channel, kind or class), a label and its totals."""

    key: str
    label: str
    kind: str | None
    totals: Totals


@dataclass(frozen=True)
class ForecastRow:
    """Forecast hours against capacity for one store and month (§7, §9 ``forecast``)."""

    store_id: str
    month: str
    days: int
    sessions: int
    minutes: int
    clinician_weekly_hours: Decimal
    room_weekly_hours: Decimal
    capacity_hours: Decimal
    room_capacity_hours: Decimal
    utilisation: Decimal | None
    room_utilisation: Decimal | None
    flagged: bool
    room_flagged: bool

    @property
    def hours(self) -> Decimal:
        return hours(self.minutes)

    def as_json(self) -> dict:
        return {
            "store_id": self.store_id,
            "month": self.month,
            "days": self.days,
            "sessions": self.sessions,
            "hours": f"{self.hours:.2f}",
            "capacity_hours": f"{self.capacity_hours:.2f}",
            "utilisation": None if self.utilisation is None else f"{self.utilisation:.4f}",
            "flagged": self.flagged,
            "room_capacity_hours": f"{self.room_capacity_hours:.2f}",
            "room_utilisation": None if self.room_utilisation is None else f"{self.room_utilisation:.4f}",
            "room_flagged": self.room_flagged,
        }


@dataclass(frozen=True)
class ForecastSessions:
    """Where the outstanding sessions go in the forecast; the four add up to the outstanding."""

    scheduled: int
    beyond_horizon: int
    expiring_unused: int
    unscheduled: int

    def as_json(self) -> dict:
        return {
            "scheduled": self.scheduled,
            "beyond_horizon": self.beyond_horizon,
            "expiring_unused": self.expiring_unused,
            "unscheduled": self.unscheduled,
        }


@dataclass(frozen=True)
class LiabilityReport:
    as_of: date
    months: int
    rules: RuleSet
    totals: Totals
    by_store: tuple[Breakdown, ...]
    by_channel: tuple[Breakdown, ...]
    by_kind: tuple[Breakdown, ...]
    by_product_class: tuple[Breakdown, ...]
    forecast: tuple[ForecastRow, ...]
    forecast_sessions: ForecastSessions
    items: tuple[ItemPosition, ...] = field(repr=False)

    @property
    def forecast_months(self) -> tuple[str, ...]:
        return tuple(sorted({row.month for row in self.forecast}))

    def as_json(self) -> dict:
        def rows(breakdown: Sequence[Breakdown], key: str) -> list[dict]:
            out = []
            for b in breakdown:
                row = {key: b.key, "name": b.label, **b.totals.as_json()}
                if key == "channel_id":
                    row["channel_kind"] = b.kind
                out.append(row)
            return out

        t = self.totals
        return {
            "as_of": self.as_of.isoformat(),
            "months": self.months,
            "rule_version": self.rules.version,
            "timezone": self.rules.timezone,
            "pressure_threshold": f"{self.rules.pressure_threshold}",
            "outstanding_sessions": t.outstanding_sessions,
            "outstanding_hours": f"{t.outstanding_hours:.2f}",
            "deferred_revenue": f"{t.deferred_revenue:.2f}",
            "open_items": t.items,
            "breakage": {"sessions": t.breakage_sessions, "amount": f"{t.breakage_amount:.2f}"},
            "by_store": rows(self.by_store, "store_id"),
            "by_channel": rows(self.by_channel, "channel_id"),
            "by_kind": rows(self.by_kind, "channel_kind"),
            "by_product_class": rows(self.by_product_class, "product_class"),
            "forecast": [row.as_json() for row in self.forecast],
            "forecast_sessions": self.forecast_sessions.as_json(),
            "items": [p.as_json() for p in self.items if p.outstanding > 0 or p.expired > 0],
        }


KIND_ORDER = ("medical_trust", "sports_scene", "online_platform", WALK_IN, "unknown")


def kind_rank(kind: str | None) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _group(positions: Sequence[ItemPosition], key_of, keys: Iterable[str] = ()) -> dict[str, Totals]:
    """Totals per key; every key in ``keys`` is present (zeros) even when nothing is owed there."""
    found: dict[str, Totals] = {k: Totals() for k in keys}
    for p in positions:
        found.setdefault(key_of(p), Totals()).add(p)
    return found


def capacity_by_store(directory: Directory, moment: datetime) -> dict[str, tuple[Decimal, Decimal]]:
    """Declared weekly hours per store at ``moment``: (clinicians, rooms). Each resource counts
    with its latest declaration made by then (a declaration of 0 hours takes it out)."""
    found: dict[str, list[Decimal]] = {}
    for resource_id in sorted(directory.capacity):
        declared = directory.capacity_on(resource_id, moment)
        if declared is None:
            continue
        slot = found.setdefault(declared.store_id, [Decimal(0), Decimal(0)])
        slot[0 if declared.kind == "clinician" else 1] += declared.weekly_hours
    return {store: (c, r) for store, (c, r) in found.items()}


def forecast_rows(
    positions: Sequence[ItemPosition],
    as_of: date,
    months: int,
    rules: RuleSet,
    capacity: dict[str, tuple[Decimal, Decimal]],
    stores: Iterable[str],
) -> tuple[tuple[ForecastRow, ...], ForecastSessions]:
    """Spread outstanding sessions into (store, month) hours and set them against capacity."""
    first_day = as_of + timedelta(days=1)
    month_firsts = [first_day.replace(day=1)]
    for _ in range(months - 1):
        month_firsts.append(next_month(month_firsts[-1]))
    horizon_end = month_end(month_firsts[-1])
    minutes: dict[tuple[str, str], int] = defaultdict(int)
    sessions: dict[tuple[str, str], int] = defaultdict(int)
    scheduled = beyond = expiring = unscheduled = 0
    for p in positions:
        if p.outstanding <= 0:
            continue
        spread = spread_sessions(p.outstanding, rules.cadence_for(p.product_class), as_of, horizon_end, p.valid_until)
        for day in spread.days:
            key = (p.store_id, day.strftime("%Y-%m"))
            minutes[key] += p.session_minutes
            sessions[key] += 1
        scheduled += len(spread.days)
        beyond += spread.beyond
        expiring += spread.expiring
        unscheduled += spread.unscheduled
    all_stores = sorted(set(stores) | set(capacity) | {p.store_id for p in positions})
    rows: list[ForecastRow] = []
    for store in all_stores:
        clinician_weekly, room_weekly = capacity.get(store, (Decimal(0), Decimal(0)))
        for first in month_firsts:
            start = max(first, first_day)
            days = (month_end(first) - start).days + 1
            month = first.strftime("%Y-%m")
            used = minutes[(store, month)]
            demand = hours(used)
            clinicians = capacity_hours(clinician_weekly, days)
            rooms = capacity_hours(room_weekly, days)
            rows.append(ForecastRow(
                store, month, days, sessions[(store, month)], used, clinician_weekly, room_weekly,
                clinicians, rooms, utilisation(demand, clinicians), utilisation(demand, rooms),
                is_under_pressure(demand, clinicians, rules.pressure_threshold),
                is_under_pressure(demand, rooms, rules.pressure_threshold),
            ))
    return tuple(rows), ForecastSessions(scheduled, beyond, expiring, unscheduled)


def liability(
    events: Sequence[LedgerEvent],
    as_of: date,
    months: int = 3,
    book: RuleBook | None = None,
) -> LiabilityReport:
    """Liability as of the end of business day ``as_of`` and the forecast for ``months`` months.

    Only what happened by then counts (``occurred_at`` before the end of ``as_of`` in the rules'
    time zone): the identity, the owners, the capacity and the positions are those known then."""
    if months < 1:
        raise ValueError("the forecast needs at least one month")
    book = book or rule_book(events)
    rules = rules_on(book, as_of)
    cut = end_of_day(as_of, rules)
    known = [e for e in events if e.occurred_at < cut]
    attr = attribute(known, book=book)
    positions = item_positions(known, cut, attr, rules)
    directory = attr.directory

    totals = Totals()
    for p in positions:
        totals.add(p)
    by_store = _group(positions, lambda p: p.store_id, keys=directory.stores)
    by_channel = _group(positions, lambda p: p.channel_id, keys=directory.channels)
    by_kind = _group(positions, lambda p: p.channel_kind, keys=KIND_ORDER[:3])
    by_class = _group(positions, lambda p: p.product_class, keys=PRODUCT_CLASSES)

    def channel_label(cid: str) -> str:
        channel = directory.channels.get(cid)
        return channel.name if channel else ("自然到店" if cid == WALK_IN else "")

    def channel_kind(cid: str) -> str:
        if cid == WALK_IN:
            return WALK_IN
        return directory.channel_kind(cid) or "unknown"

    capacity = capacity_by_store(directory, cut)
    forecast, spread = forecast_rows(positions, as_of, months, rules, capacity, directory.stores)
    return LiabilityReport(
        as_of=as_of,
        months=months,
        rules=rules,
        totals=totals,
        by_store=tuple(Breakdown(s, directory.stores.get(s, ""), None, t) for s, t in sorted(by_store.items())),
        by_channel=tuple(
            Breakdown(c, channel_label(c), channel_kind(c), t)
            for c, t in sorted(by_channel.items(), key=lambda kv: (kind_rank(channel_kind(kv[0])), kv[0]))
        ),
        by_kind=tuple(
            Breakdown(k, k, k, t) for k, t in sorted(by_kind.items(), key=lambda kv: (kind_rank(kv[0]), kv[0]))
        ),
        by_product_class=tuple(
            Breakdown(c, c, None, t) for c, t in sorted(by_class.items(), key=lambda kv: PRODUCT_CLASSES.index(kv[0]))
        ),
        forecast=forecast,
        forecast_sessions=spread,
        items=tuple(positions),
    )
