"""The three ledgers per channel and month (三张账, SPEC §7): lead quality, deal structure,
fulfillment pressure — per channel, rolled up per channel kind and for the group.

A pure fold over the events (canonical order), under the rules in force on the month's last day
(only their time zone matters here). Month M runs from 00:00 of its first day to 00:00 of the next
month's first day in that time zone; an event counts in M by its ``occurred_at``.

Which channel an event counts under (the decision, in one place):

* **leads** (``lead.captured``: leads, valid, invalid, collisions) count under the lead's *own*
  channel — its entry point's channel for a scan, its ``channel_id`` otherwise — because lead
  quality is about what a channel sends, including the leads that collide with another owner;
* every later step of the journey (triage, booking, attendance, no-show, cancellation, orders,
  refunds) counts under the customer's **owner channel at that event's time** (§4; the same owner
  §5 pays); a customer without an owner then is a walk-in (自然到店), channel ``walk-in``;
* **deal structure** is a cohort of the month's assessments: each customer with an attended
  assessment in M counts once, under the owner channel at their first attended assessment in M
  (time A). They *paid after assessment* when they paid an order holding a fill item or a course
  package at or after A (at any time the ledger knows of), *within 24 h* when the first such order
  was paid before A + 24 h. The month's orders (count, amounts, average order value, gross margin)
  count by their payment time under the owner channel then;
* **fulfillment pressure** counts an order item's sessions under the owner channel at its payment
  (the channel that sold the time, as in the liability): sold in M (paid in M), delivered and
  refunded in M, expired in M (``valid_until`` in M, still open at its end), and the balance at
  the end of M (outstanding, hours, deferred revenue).

Rates are shown with their numerator and denominator (`Ratio`):

* no-show rate = no-shows ÷ (attended + no-shows) in M — the appointments that had an outcome
  where the customer was expected (cancellations are not no-shows);
* arrival rate = arrived ÷ valid leads, a cohort of the month's valid leads under the lead's
  channel: a valid lead has *arrived* when its customer attended an assessment at or after the
  lead (at any time the ledger knows of). Never above 100 %, and it answers "of what this channel
  sent in M, how much walked in";
* conversion = paying after assessment ÷ assessed customers; within 24 h likewise;
* gross margin = (amount − cost) ÷ amount over the month's items whose cost is known;
* refund rate = refunded amount in M ÷ amount paid in M (a period ratio: it can exceed 100 % in a
  month of refunds for earlier sales).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from ledger.events import (
    NO_SHOW_REASONS,
    AssessmentAttended,
    AssessmentBooked,
    AssessmentCancelled,
    AssessmentNoShow,
    LeadCaptured,
    LeadTriaged,
    LedgerEvent,
    OrderPaid,
    OrderRefunded,
    SessionDelivered,
)
from ledger.identity import canonical_key
from policies import RuleBook, RuleSet
from policies.fulfillment import POST_ASSESSMENT_WINDOW, hours, money, month_end, month_start, next_month
from projections.attribution import Attribution, attribute, describe_lead, rule_book
from projections.liability import KIND_ORDER, WALK_IN, ZERO, day_start, item_positions, kind_rank, owner_channel, rules_on

TREATMENT_CLASSES = ("fill_item", "course_package")
"""Product classes that make an order a treatment purchase (a conversion), unlike the assessment fee."""


@dataclass(frozen=True)
class Ratio:
    """A rate shown with what it is made of: ``3/10 = 30.0%``. Counts are ints, money Decimal."""

    numerator: int | Decimal
    denominator: int | Decimal

    @property
    def rate(self) -> Decimal | None:
        """numerator ÷ denominator, half-up to 4 places; None when the denominator is 0."""
        if not self.denominator:
            return None
        return (Decimal(self.numerator) / Decimal(self.denominator)).quantize(Decimal("0.0001"), ROUND_HALF_UP)

    def _part(self, value: int | Decimal) -> str:
        return f"{value:.2f}" if isinstance(value, Decimal) else str(value)

    def text(self) -> str:
        rate = self.rate
        shown = "–" if rate is None else f"{(rate * 100).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"
        return f"{self._part(self.numerator)}/{self._part(self.denominator)} = {shown}"

    def percent(self) -> str:
        rate = self.rate
        return "–" if rate is None else f"{(rate * 100).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"

    def as_json(self) -> dict:
        num, den = self.numerator, self.denominator
        return {
            "numerator": f"{num:.2f}" if isinstance(num, Decimal) else num,
            "denominator": f"{den:.2f}" if isinstance(den, Decimal) else den,
            "rate": None if self.rate is None else f"{self.rate:.4f}",
        }


@dataclass
class Tally:
    """The raw counts of one channel (or a roll-up) in one month. Everything is additive, so a
    kind's or the group's tally is the sum of its channels'."""

    leads: int = 0
    valid_leads: int = 0
    arrived: int = 0
    collisions: int = 0
    triaged: int = 0
    routed_offline: int = 0
    routed_online: int = 0
    booked: int = 0
    attended: int = 0
    no_shows: int = 0
    cancelled: int = 0
    no_show_reasons: Counter = field(default_factory=Counter)
    assessed_customers: int = 0
    paying_after_assessment: int = 0
    paying_within_24h: int = 0
    orders: int = 0
    order_amount: Decimal = ZERO
    items_by_class: Counter = field(default_factory=Counter)
    amount_by_class: dict = field(default_factory=dict)
    costed_items: int = 0
    items: int = 0
    costed_amount: Decimal = ZERO
    costed_cost: Decimal = ZERO
    sessions_sold: int = 0
    sessions_delivered: int = 0
    sessions_refunded: int = 0
    sessions_expired: int = 0
    outstanding_sessions: int = 0
    outstanding_minutes: int = 0
    deferred_revenue: Decimal = ZERO
    refunds: int = 0
    refunded_amount: Decimal = ZERO

    def add(self, other: Tally) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(value, Counter):
                mine.update(value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    mine[k] = mine.get(k, ZERO) + v
            else:
                setattr(self, name, mine + value)

    # -- the three ledgers as JSON-ready dicts -------------------------------------------------

    def lead_quality(self) -> dict:
        return {
            "leads": self.leads,
            "valid_leads": self.valid_leads,
            "invalid_leads": self.leads - self.valid_leads,
            "collisions": self.collisions,
            "triaged": self.triaged,
            "routed_offline": self.routed_offline,
            "routed_online": self.routed_online,
            "booked": self.booked,
            "attended": self.attended,
            "no_shows": self.no_shows,
            "cancelled": self.cancelled,
            "no_show_rate": Ratio(self.no_shows, self.attended + self.no_shows),
            "no_show_reasons": {r: self.no_show_reasons[r] for r in NO_SHOW_REASONS},
            "arrived": self.arrived,
            "arrival_rate": Ratio(self.arrived, self.valid_leads),
        }

    def deal_structure(self) -> dict:
        aov = money(self.order_amount / self.orders) if self.orders else None
        return {
            "assessed_customers": self.assessed_customers,
            "paying_after_assessment": self.paying_after_assessment,
            "conversion_rate": Ratio(self.paying_after_assessment, self.assessed_customers),
            "converted_within_24h": self.paying_within_24h,
            "converted_after_24h": self.paying_after_assessment - self.paying_within_24h,
            "conversion_within_24h": Ratio(self.paying_within_24h, self.assessed_customers),
            "orders": self.orders,
            "order_amount": self.order_amount,
            "average_order_value": aov,
            "assessments": self.items_by_class["assessment"],
            "assessment_amount": self.amount_by_class.get("assessment", ZERO),
            "fill_items": self.items_by_class["fill_item"],
            "fill_item_amount": self.amount_by_class.get("fill_item", ZERO),
            "course_packages": self.items_by_class["course_package"],
            "course_package_amount": self.amount_by_class.get("course_package", ZERO),
            "gross_margin": Ratio(self.costed_amount - self.costed_cost, self.costed_amount),
            "costed_margin": self.costed_amount - self.costed_cost,
            "costed_amount": self.costed_amount,
            "cost_known": Ratio(self.costed_items, self.items),
        }

    def fulfillment_pressure(self) -> dict:
        return {
            "sessions_sold": self.sessions_sold,
            "sessions_delivered": self.sessions_delivered,
            "sessions_refunded": self.sessions_refunded,
            "sessions_expired": self.sessions_expired,
            "outstanding_sessions": self.outstanding_sessions,
            "outstanding_hours": hours(self.outstanding_minutes),
            "deferred_revenue": self.deferred_revenue,
            "refunds": self.refunds,
            "refunded_amount": self.refunded_amount,
            "paid_amount": self.order_amount,
            "refund_rate": Ratio(self.refunded_amount, self.order_amount),
        }


@dataclass(frozen=True)
class ChannelLedgers:
    """The three ledgers of one channel, one kind or the group (``channel_id`` ``*``)."""

    channel_id: str
    name: str
    kind: str
    tally: Tally

    def as_json(self) -> dict:
        return {
            "channel_id": self.channel_id,
            "name": self.name,
            "channel_kind": self.kind,
            "lead_quality": _jsonable(self.tally.lead_quality()),
            "deal_structure": _jsonable(self.tally.deal_structure()),
            "fulfillment_pressure": _jsonable(self.tally.fulfillment_pressure()),
        }


def _jsonable(ledger: dict) -> dict:
    out = {}
    for key, value in ledger.items():
        if isinstance(value, Ratio):
            out[key] = value.as_json()
        elif isinstance(value, Decimal):
            out[key] = f"{value:.2f}"
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class LedgersReport:
    month: str
    rules: RuleSet
    channels: tuple[ChannelLedgers, ...]
    kinds: tuple[ChannelLedgers, ...]
    total: ChannelLedgers

    def kind(self, kind: str) -> ChannelLedgers:
        return next(k for k in self.kinds if k.kind == kind)

    def channel(self, channel_id: str) -> ChannelLedgers | None:
        return next((c for c in self.channels if c.channel_id == channel_id), None)

    def as_json(self) -> dict:
        return {
            "month": self.month,
            "rule_version": self.rules.version,
            "timezone": self.rules.timezone,
            "channels": [c.as_json() for c in self.channels],
            "kinds": [k.as_json() for k in self.kinds],
            "total": self.total.as_json(),
        }


def month_bounds(month: str, rules: RuleSet) -> tuple[datetime, datetime]:
    """[start, end) of business month ``YYYY-MM`` in the rules' time zone."""
    first = month_start(month)
    return day_start(first, rules), day_start(next_month(first), rules)


def ledgers(events: Sequence[LedgerEvent], month: str, book: RuleBook | None = None, attr: Attribution | None = None) -> LedgersReport:
    """The three ledgers of ``month`` (``YYYY-MM``) for every channel, kind and the group."""
    first = month_start(month)
    book = book or rule_book(events)
    rules = rules_on(book, month_end(first))
    start, end = month_bounds(month, rules)
    ordered = sorted(events, key=canonical_key)
    attr = attr or attribute(ordered, book=book)
    directory = attr.directory
    tallies: dict[str, Tally] = {cid: Tally() for cid in directory.channels}
    tallies[WALK_IN] = Tally()

    def in_month(moment: datetime) -> bool:
        return start <= moment < end

    def at_owner(event: LedgerEvent) -> Tally:
        """The tally of the customer's owner channel at the event's time (walk-in: none)."""
        channel_id, _, _ = owner_channel(attr, attr.identity.customer_of(event), event.occurred_at)
        return tallies.setdefault(channel_id, Tally())

    collision_ids = {c.event_id for _, c in attr.collisions()}
    attended_at: dict[str, list[datetime]] = {}
    for event in ordered:
        if isinstance(event, AssessmentAttended):
            customer = attr.identity.customer_of(event)
            if customer is not None:
                attended_at.setdefault(customer, []).append(event.occurred_at)
    first_assessment: dict[str, tuple[datetime, str]] = {}  # customer → (A, channel)
    treatment_payments: dict[str, list[datetime]] = {}
    order_channel: dict[str, str] = {}

    for event in ordered:
        moment = event.occurred_at
        if isinstance(event, OrderPaid):
            channel_id, _, _ = owner_channel(attr, attr.identity.customer_of(event), moment)
            order_channel[event.order_id] = channel_id
            if any(i.product_class in TREATMENT_CLASSES for i in event.items):
                customer = attr.identity.customer_of(event)
                if customer is not None:
                    treatment_payments.setdefault(customer, []).append(moment)
        if not in_month(moment):
            continue
        if isinstance(event, LeadCaptured):
            lead = describe_lead(event, directory)
            tally = tallies.setdefault(lead.channel_id or "unknown", Tally())
            tally.leads += 1
            tally.valid_leads += lead.valid
            customer = attr.identity.customer_of(event)
            if lead.valid and customer is not None:
                tally.arrived += any(t >= moment for t in attended_at.get(customer, ()))
            tally.collisions += event.event_id in collision_ids
        elif isinstance(event, LeadTriaged):
            tally = at_owner(event)
            tally.triaged += 1
            if event.route == "offline_assessment":
                tally.routed_offline += 1
            else:
                tally.routed_online += 1
        elif isinstance(event, AssessmentBooked):
            at_owner(event).booked += 1
        elif isinstance(event, AssessmentAttended):
            at_owner(event).attended += 1
            customer = attr.identity.customer_of(event)
            if customer is not None and customer not in first_assessment:
                channel_id, _, _ = owner_channel(attr, customer, moment)
                first_assessment[customer] = (moment, channel_id)
        elif isinstance(event, AssessmentNoShow):
            tally = at_owner(event)
            tally.no_shows += 1
            tally.no_show_reasons[event.reason] += 1
        elif isinstance(event, AssessmentCancelled):
            at_owner(event).cancelled += 1
        elif isinstance(event, OrderPaid):
            tally = tallies.setdefault(order_channel[event.order_id], Tally())
            tally.orders += 1
            tally.order_amount += event.amount
            for item in event.items:
                tally.items += 1
                tally.items_by_class[item.product_class] += 1
                tally.amount_by_class[item.product_class] = tally.amount_by_class.get(item.product_class, ZERO) + item.amount
                if item.cost is not None:
                    tally.costed_items += 1
                    tally.costed_amount += item.amount
                    tally.costed_cost += item.cost
        elif isinstance(event, OrderRefunded):
            channel_id = order_channel.get(event.order_id)
            if channel_id is not None:
                tally = tallies.setdefault(channel_id, Tally())
                tally.refunds += 1
                tally.refunded_amount += event.amount

    # deal structure: the month's assessed customers and whether (and how fast) they paid
    for customer, (assessed_at, channel_id) in sorted(first_assessment.items()):
        tally = tallies.setdefault(channel_id, Tally())
        tally.assessed_customers += 1
        after = [t for t in treatment_payments.get(customer, ()) if t >= assessed_at]
        if after:
            tally.paying_after_assessment += 1
            if min(after) < assessed_at + POST_ASSESSMENT_WINDOW:
                tally.paying_within_24h += 1

    # fulfillment pressure: sold / delivered / refunded / expired in M, balances at the end of M
    month_last_day = month_end(first)
    positions = item_positions(ordered, end, attr, rules)
    by_order = {(p.order_id, p.sku): p for p in positions}
    for p in positions:
        tally = tallies.setdefault(p.channel_id, Tally())
        if in_month(p.paid_at):
            tally.sessions_sold += p.sessions_sold
        tally.outstanding_sessions += p.outstanding
        tally.outstanding_minutes += p.outstanding_minutes
        tally.deferred_revenue += p.deferred_revenue
        if p.valid_until is not None and first <= p.valid_until <= month_last_day:
            tally.sessions_expired += p.expired
    orders = {}
    for event in ordered:
        if isinstance(event, OrderPaid):
            orders.setdefault(event.order_id, event)
        if not in_month(event.occurred_at):
            continue
        if isinstance(event, SessionDelivered):
            order = orders.get(event.order_id)
            item = order.item(event.sku) if order else None
            position = by_order.get((event.order_id, item.sku)) if item else None
            if position is not None:
                tallies.setdefault(position.channel_id, Tally()).sessions_delivered += 1
        elif isinstance(event, OrderRefunded) and event.sessions:
            order = orders.get(event.order_id)
            item = order.item(event.sku) if order else None
            position = by_order.get((event.order_id, item.sku)) if item else None
            if position is not None:
                tallies.setdefault(position.channel_id, Tally()).sessions_refunded += event.sessions

    def name_of(cid: str) -> str:
        channel = directory.channels.get(cid)
        return channel.name if channel else ("自然到店" if cid == WALK_IN else "")

    def kind_of(cid: str) -> str:
        return WALK_IN if cid == WALK_IN else (directory.channel_kind(cid) or "unknown")

    channels = tuple(
        ChannelLedgers(cid, name_of(cid), kind_of(cid), tally)
        for cid, tally in sorted(tallies.items(), key=lambda kv: (kind_rank(kind_of(kv[0])), kv[0]))
    )
    by_kind: dict[str, Tally] = {k: Tally() for k in KIND_ORDER[:4]}
    total = Tally()
    for ledger in channels:
        by_kind.setdefault(ledger.kind, Tally()).add(ledger.tally)
        total.add(ledger.tally)
    kinds = tuple(
        ChannelLedgers(k, k, k, t) for k, t in sorted(by_kind.items(), key=lambda kv: (kind_rank(kv[0]), kv[0]))
    )
    return LedgersReport(month, rules, channels, kinds, ChannelLedgers("*", "group", "*", total))
