"""The three-part commission split of SPEC §5 (来源奖励 · 成交奖励 · 履约奖励), as pure rules.

Each function here computes the lines of one fact under one rule set; it knows nothing of the
store, of other events or of months. `projections.settlement` decides which facts and which rule
set (and who owned the customer at payment time), and calls these.

* **source** (`source_line`): ``item amount × source_rate[channel kind][product class]`` to the
  owner at payment time, while the payment falls inside ``source_window_days`` × 24 h of the
  source lead (the window's end is excluded, as protection's is).
* **deal** (`deal_line`): ``item amount × deal_rate[product class]`` to the order's ``closed_by``.
* **fulfillment** (`fulfillment_line`): ``session value × fulfillment_rate`` to the delivering
  clinician, session value = item amount ÷ item sessions (unrounded; the line rounds).
* **repurchase** (`repurchase_line`, part ``fulfillment``): on a repeat order, each
  ``course_package`` item pays ``amount × repurchase_rate`` to the previous order's main clinician
  (`main_clinician`: most sessions delivered; ties: the later delivery).
* **clawback** (`clawback_line`, basis ``refund``): a refund takes back
  ``round(line amount × refund amount ÷ order amount)`` of each source, deal and repurchase line
  of the order (with a ``sku``: that item's lines, over the item's amount). When the refunds reach
  the whole order (or the whole item), the clawback takes the line's remaining balance instead, so
  a fully refunded order's lines net to exactly 0.00 whatever rounding did before; a clawback never
  takes a line below zero.

Money: every line is rounded half-up to 0.01 CNY (`round_money`); totals are sums of rounded
lines. A line whose amount rounds to 0.00 is not emitted (a statement lists money that moves).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from ledger.events import OrderItem, OrderPaid, OrderRefunded, SessionDelivered
from policies.ruleset import RuleSet

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
RATE_PLACES = Decimal("0.000001")

Part = Literal["source", "deal", "fulfillment"]
Basis = Literal["order", "session", "repurchase", "refund"]
PARTS: tuple[str, ...] = ("source", "deal", "fulfillment")
BASES: tuple[str, ...] = ("order", "session", "repurchase", "refund")
ADJUSTMENTS: tuple[str | None, ...] = (None, "reversed", "added")  # a reversal reads before its re-issue


def round_money(amount: Decimal) -> Decimal:
    """Half-up to 0.01 CNY (the rounding of every line, SPEC §5)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def rate_text(rate: Decimal) -> str:
    """A rate as written in statements: at least two places, no float noise."""
    return format(rate, "f")


@dataclass(frozen=True, slots=True)
class Recognition:
    """When a line is recognised, under which rule set, and its business day and month in the
    rules' time zone (SPEC §5 recognition). Build it with `Recognition.at_moment`."""

    at: datetime
    rules: RuleSet
    day: date
    month: str

    @classmethod
    def at_moment(cls, at: datetime, rules: RuleSet) -> Recognition:
        day = rules.local_date(at)
        return cls(at, rules, day, day.strftime("%Y-%m"))


@dataclass(frozen=True, slots=True)
class Line:
    """One statement line (SPEC §5, §9): who is paid what, for which fact, under which rule.

    ``rule`` names the rate's place in the rule set (``source_rate.sports_scene.fill_item``,
    ``deal_rate.course_package``, ``fulfillment_rate``, ``repurchase_rate``); a clawback keeps the
    rule of the line it claws back, with ``base`` = that line's amount and ``rate`` = the refunded
    fraction (shown to 6 places; the amount is computed from the exact fraction).

    ``adjustment_of`` is set on lines that settle a closed month's late changes in a later month
    (SPEC §6): ``adjustment`` is then ``"added"`` (the closed month now has this line) or
    ``"reversed"`` (it no longer has it: the amount is negated).
    """

    payee: str
    part: str
    basis: str
    base: Decimal
    rate: Decimal
    amount: Decimal
    customer_id: str | None
    order_id: str
    sku: str
    product_class: str
    event_id: str
    recognised_at: datetime
    month: str
    day: date
    rule: str
    rule_version: str
    channel_id: str | None = None
    adjustment_of: str | None = None
    adjustment: str | None = None

    @property
    def key(self) -> tuple[str, ...]:
        """What a line is about, without its money: unique within one month's lines."""
        return (self.adjustment_of or "", self.adjustment or "", self.event_id, self.sku, self.part, self.basis, self.payee)

    @property
    def slot(self) -> tuple[str, ...]:
        """The line's place regardless of payee (a source line moving to another owner keeps it)."""
        return (self.adjustment_of or "", self.adjustment or "", self.event_id, self.sku, self.part, self.basis)

    def sort_key(self) -> tuple[Any, ...]:
        return line_sort_key(self.adjustment_of, self.recognised_at, self.event_id, self.sku, self.part, self.basis, self.adjustment, self.payee)

    def adjusting(self, month: str, kind: Literal["added", "reversed"]) -> Line:
        """This line as an adjustment of closed ``month`` (negated when ``reversed``)."""
        amount = -self.amount if kind == "reversed" else self.amount
        return replace(self, amount=amount, adjustment_of=month, adjustment=kind)

    def as_json(self) -> dict[str, Any]:
        """The line's canonical JSON form (SPEC §9 keys, money as two-decimal strings)."""
        values = {name: getattr(self, name) for name in LINE_FIELDS}
        values["recognised_at"], values["day"] = self.recognised_at.isoformat(), self.day.isoformat()
        return line_json(values)


LINE_FIELDS: tuple[str, ...] = tuple(Line.__dataclass_fields__)


def line_sort_key(
    adjustment_of: str | None, moment: Any, event_id: str, sku: str, part: str, basis: str, adjustment: str | None, payee: str
) -> tuple[Any, ...]:
    """A line's place in a statement (`Line.sort_key`; ``moment`` is when it was recognised, as
    anything that orders instants — a datetime, or microseconds since the epoch)."""
    return (adjustment_of or "", moment, event_id, sku, PARTS.index(part), BASES.index(basis), ADJUSTMENTS.index(adjustment), payee)


def line_json(values: dict[str, Any]) -> dict[str, Any]:
    """The canonical JSON form of a line from its field values (`LINE_FIELDS`; money and rate as
    Decimals, ``recognised_at`` and ``day`` already in ISO form) — what statement digests cover."""
    return {
        "payee": values["payee"],
        "part": values["part"],
        "basis": values["basis"],
        "base": f"{values['base']:.2f}",
        "rate": rate_text(values["rate"]),
        "amount": f"{values['amount']:.2f}",
        "customer_id": values["customer_id"],
        "order_id": values["order_id"],
        "sku": values["sku"],
        "product_class": values["product_class"],
        "event_id": values["event_id"],
        "recognised_at": values["recognised_at"],
        "date": values["day"],
        "rule": values["rule"],
        "rule_version": values["rule_version"],
        "channel_id": values["channel_id"],
        "adjustment_of": values["adjustment_of"],
        "adjustment": values["adjustment"],
    }


def _line(
    *,
    payee: str,
    part: str,
    basis: str,
    base: Decimal,
    rate: Decimal,
    amount: Decimal,
    customer_id: str | None,
    order_id: str,
    item: OrderItem,
    event_id: str,
    when: Recognition,
    rule: str,
    channel_id: str | None = None,
) -> Line | None:
    if amount == ZERO:
        return None
    return Line(
        payee=payee,
        part=part,
        basis=basis,
        base=base,
        rate=rate,
        amount=amount,
        customer_id=customer_id,
        order_id=order_id,
        sku=item.sku,
        product_class=item.product_class,
        event_id=event_id,
        recognised_at=when.at,
        month=when.month,
        day=when.day,
        rule=rule,
        rule_version=when.rules.version,
        channel_id=channel_id,
    )


# --- the four kinds of line ---------------------------------------------------------------


def source_line(
    order: OrderPaid,
    item: OrderItem,
    *,
    customer_id: str | None,
    owner_staff_id: str,
    channel_id: str | None,
    channel_kind: str,
    when: Recognition,
) -> Line | None:
    """来源奖励 for one paid item: ``amount × source_rate[kind][class]`` to the owner (§5).

    The caller has checked that the customer had an owner at payment time and that the payment
    is inside the source window (`policies.attribution.source_window_ends_at`)."""
    rate = when.rules.source_rate_for(channel_kind, item.product_class)
    return _line(
        payee=owner_staff_id, part="source", basis="order", base=item.amount, rate=rate,
        amount=round_money(item.amount * rate), customer_id=customer_id, order_id=order.order_id,
        item=item, event_id=order.event_id, when=when,
        rule=f"source_rate.{channel_kind}.{item.product_class}", channel_id=channel_id,
    )


def deal_line(order: OrderPaid, item: OrderItem, *, customer_id: str | None, when: Recognition) -> Line | None:
    """成交奖励 for one paid item: ``amount × deal_rate[class]`` to the order's ``closed_by`` (§5)."""
    rate = when.rules.deal_rate_for(item.product_class)
    return _line(
        payee=order.closed_by, part="deal", basis="order", base=item.amount, rate=rate,
        amount=round_money(item.amount * rate), customer_id=customer_id, order_id=order.order_id,
        item=item, event_id=order.event_id, when=when, rule=f"deal_rate.{item.product_class}",
    )


def fulfillment_line(
    session: SessionDelivered, item: OrderItem, *, customer_id: str | None, when: Recognition
) -> Line | None:
    """履约奖励 for one delivered session: ``session value × fulfillment_rate`` to the clinician.

    Session value = item amount ÷ item sessions, unrounded; the line's amount is rounded once.
    ``base`` shows the session value rounded to 0.01."""
    rate = when.rules.fulfillment_rate
    value = item.session_value
    return _line(
        payee=session.clinician_id, part="fulfillment", basis="session", base=round_money(value), rate=rate,
        amount=round_money(value * rate), customer_id=customer_id, order_id=session.order_id,
        item=item, event_id=session.event_id, when=when, rule="fulfillment_rate",
    )


def repurchase_line(
    order: OrderPaid, item: OrderItem, *, clinician_id: str, customer_id: str | None, when: Recognition
) -> Line | None:
    """复购奖励 for one course_package item of a repeat order: ``amount × repurchase_rate`` to the
    main clinician of the customer's previous order (part ``fulfillment``, basis ``repurchase``).
    Other product classes earn no repurchase line."""
    if item.product_class != "course_package":
        return None
    rate = when.rules.repurchase_rate
    return _line(
        payee=clinician_id, part="fulfillment", basis="repurchase", base=item.amount, rate=rate,
        amount=round_money(item.amount * rate), customer_id=customer_id, order_id=order.order_id,
        item=item, event_id=order.event_id, when=when, rule="repurchase_rate",
    )


def main_clinician(deliveries: Iterable[tuple[Any, str]]) -> str | None:
    """Who delivered the most sessions, from ``(canonical key, clinician_id)`` pairs.

    Ties go to the clinician whose latest delivery is later (by canonical key). None when
    nothing was delivered."""
    counts: dict[str, int] = {}
    latest: dict[str, Any] = {}
    for key, clinician in deliveries:
        counts[clinician] = counts.get(clinician, 0) + 1
        if clinician not in latest or key > latest[clinician]:
            latest[clinician] = key
    if not counts:
        return None
    return max(counts, key=lambda c: (counts[c], latest[c]))


# --- clawbacks ----------------------------------------------------------------------------


def clawback_amount(line_amount: Decimal, fraction: Decimal, taken: Decimal, completes: bool) -> Decimal:
    """The (positive) amount a refund takes back from a line of ``line_amount``.

    ``round(line amount × fraction)``; when the refund ``completes`` the order (or the named item),
    the whole remaining balance instead, so that the line nets to exactly zero; never more than
    what remains."""
    remaining = line_amount - taken
    if completes:
        return remaining
    return min(round_money(line_amount * fraction), remaining)


def clawback_line(
    line: Line,
    refund: OrderRefunded,
    *,
    fraction: Decimal,
    amount: Decimal,
    customer_id: str | None,
    when: Recognition,
) -> Line | None:
    """The negative line a refund books against ``line`` (SPEC §5, basis ``refund``): same payee
    and part, ``base`` = the clawed line's amount, ``rate`` = the refunded fraction, recognised at
    the refund. It keeps the rule and rule version of the line it claws back."""
    if amount == ZERO:
        return None
    return Line(
        payee=line.payee,
        part=line.part,
        basis="refund",
        base=line.amount,
        rate=fraction_rate(fraction),
        amount=-amount,
        customer_id=customer_id,
        order_id=line.order_id,
        sku=line.sku,
        product_class=line.product_class,
        event_id=refund.event_id,
        recognised_at=when.at,
        month=when.month,
        day=when.day,
        rule=line.rule,
        rule_version=line.rule_version,
        channel_id=line.channel_id,
    )


def fraction_rate(fraction: Decimal) -> Decimal:
    """A refunded fraction as a statement rate: at most 6 places (half-up), at least 2."""
    shown = min(fraction, Decimal(1)).quantize(RATE_PLACES, rounding=ROUND_HALF_UP).normalize()
    exponent = shown.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return shown.quantize(CENT) if places < 2 else shown
