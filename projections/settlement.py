"""Settlement (SPEC §5, §6): the month's statement lines, statements, closing, what-if.

A pure fold over the ledger's events — given with their ledger positions, because closing is
about *when an event was recorded* — under the adopted rule book (or, for a what-if, one rule
set). No I/O, no wall clock; everything is sorted explicitly.

The pipeline, in one place (`Settlement`):

1. `commission_lines(events, book)` — every commission line of every month, in canonical order
   (``occurred_at``, then ``event_id``): identity and attribution first
   (`projections.attribution.attribute`), then orders and sessions (source, deal, repurchase,
   fulfillment lines), then refunds (clawbacks). The rules of a line are those in force at its
   recognition moment (`RuleBook.in_force_at`); a line older than every adopted rule set is
   never guessed: settling its month raises `NoRulesForLine`.
2. `Settlement.statement(month)` — the month's lines, per-payee totals, the rule versions used
   and the SHA-256 digest of the canonical content (month, rule versions, lines, totals — not the
   position). The same events in another store or another arrival order give the same digest.
3. Closing (`settlement.closed`, written by ``close``): a closed month is rebuilt from the events
   recorded up to the position its close was built to, so it reproduces the recorded digest
   whatever was recorded since (`Statement.closed` says whether it did).
4. Adjustments: a change that falls in a closed month M (a late event, a retroactive rule) is
   settled in the first month after M that is not closed, as lines with ``adjustment_of = M``:
   the difference between M's lines now and M's lines at the position where M was last accounted
   — M's close, or the close of a later month that already absorbed M's adjustments. A line M
   gained is ``added``; a line M lost (or whose amount changed) is ``reversed`` (negated) and the
   new one ``added``. A late lead that moves a source line therefore pays back the old owner and
   pays the new one.
5. What-if (`Settlement(..., rules=R)`): every adopted version is replaced by the one rule set
   R, for every date (its ``effective_from`` is ignored) — attribution included, so a shorter
   protection period can move owners. `compare` diffs it against the rules in force, per payee
   and per line, with the reason for each change. Nothing is written.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson

from ledger.events import LedgerEvent, OrderPaid, OrderRefunded, SessionDelivered, SettlementClosed
from ledger.identity import canonical_key
from policies import NoRulesInForce, RuleBook, RuleChange, RuleSet, diff_rules
from policies.attribution import source_window_ends_at
from policies.commission import (
    ZERO,
    Line,
    Recognition,
    clawback_amount,
    clawback_line,
    deal_line,
    fulfillment_line,
    main_clinician,
    repurchase_line,
    source_line,
)
from projections.attribution import Attribution, Ownership, attribute, rule_book
from projections.directory import Directory

Positioned = tuple[int, LedgerEvent]
DEFAULT_ZONE = "Asia/Shanghai"


# --- months -------------------------------------------------------------------------------


def parse_month(text: str) -> str:
    """Validate ``YYYY-MM``; raises ValueError with a readable message."""
    try:
        parsed = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise ValueError(f"a month is written YYYY-MM (e.g. 2026-07), not {text!r}") from None
    return parsed.strftime("%Y-%m")


def month_first_day(month: str) -> date:
    year, number = (int(p) for p in month.split("-"))
    return date(year, number, 1)


def next_month(month: str) -> str:
    first = month_first_day(month)
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1).strftime("%Y-%m")


def previous_month(month: str) -> str:
    return (month_first_day(month) - timedelta(days=1)).strftime("%Y-%m")


def month_last_day(month: str) -> date:
    return month_first_day(next_month(month)) - timedelta(days=1)


def months_between(first: str, last: str) -> list[str]:
    """Months strictly between ``first`` and ``last``."""
    out, month = [], next_month(first)
    while month < last:
        out.append(month)
        month = next_month(month)
    return out


# --- rule books ---------------------------------------------------------------------------


class FixedRuleBook(RuleBook):
    """A what-if book: one rule set for every date, whatever its ``effective_from`` says."""

    __slots__ = ("_fixed",)

    def __init__(self, rules: RuleSet):
        super().__init__([(0, rules)])
        self._fixed = rules

    def in_force(self, on: date) -> RuleSet:
        return self._fixed

    def in_force_at(self, moment: datetime) -> RuleSet:
        return self._fixed


class NoRulesForLine(NoRulesInForce):
    """A commission line falls before every adopted rule set: it is never guessed (§6)."""

    def __init__(self, on: date, earliest: date | None, event_id: str, month: str, order: tuple[Any, ...] = ()):
        super().__init__(on, earliest)
        self.event_id = event_id
        self.month = month
        self.order = order  # (which check of the statement, phase, canonical key): the first one wins
        self.args = (f"{self.args[0]} (event {event_id} has commission lines in {month}; adopt a rule set that covers it)",)


def zone_for(book: RuleBook, on: date) -> ZoneInfo:
    """The time zone of the rules in force on ``on`` (the earliest rules before them all)."""
    try:
        return book.in_force(on).tz
    except NoRulesInForce:
        if book.adoptions:
            return min(book.adoptions, key=lambda a: (a.rules.effective_from, a.position)).rules.tz
        return ZoneInfo(DEFAULT_ZONE)


def month_ends_at(month: str, book: RuleBook) -> datetime:
    """The first instant after ``month`` in the time zone of the rules in force on its last day."""
    zone = zone_for(book, month_last_day(month))
    return datetime.combine(month_first_day(next_month(month)), time(0), tzinfo=zone)


# --- the fold: every line of every month ----------------------------------------------------


@dataclass(frozen=True)
class SourceDecision:
    """Why an order item earned a source line or not: the evidence `compare` quotes."""

    order_id: str
    sku: str
    outcome: str  # "paid" | "no owner" | "outside window" | "zero amount" | "unknown channel kind"
    owner: Ownership | None
    source_event_id: str | None
    source_at: datetime | None
    window_ends_at: datetime | None
    paid_at: datetime


@dataclass(frozen=True)
class Unsettled:
    """A fact whose lines have no rule set in force (before the earliest ``effective_from``)."""

    event_id: str
    month: str
    error: NoRulesInForce
    order: tuple[Any, ...] = ()  # where the fold met it: (phase, canonical key) — merges keep fold order


@dataclass
class Commission:
    """Every commission line the events give, grouped by recognition month."""

    book: RuleBook
    attribution: Attribution
    by_month: dict[str, list[Line]] = field(default_factory=dict)
    unsettled: dict[str, list[Unsettled]] = field(default_factory=dict)
    findings: dict[str, list[str]] = field(default_factory=dict)
    finding_order: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    source_decisions: dict[tuple[str, str], SourceDecision] = field(default_factory=dict)

    def add(self, line: Line | None) -> Line | None:
        if line is not None:
            self.by_month.setdefault(line.month, []).append(line)
        return line

    def note(self, month: str, text: str, event: LedgerEvent, phase: int = 0) -> None:
        """A finding of ``month`` raised by ``event`` (``phase`` 1: the refunds pass)."""
        self.findings.setdefault(month, []).append(text)
        self.finding_order.setdefault(month, []).append((phase, *canonical_key(event)))

    @property
    def months(self) -> list[str]:
        return sorted(set(self.by_month) | set(self.unsettled))


def commission_lines(events: Iterable[LedgerEvent], book: RuleBook | None = None, directory: Directory | None = None) -> Commission:
    """Every source, deal, fulfillment, repurchase and clawback line of ``events`` (SPEC §5).

    Any order in; canonical order inside. ``book`` defaults to the adopted rule sets and
    ``directory`` to the reference data among ``events`` (one customer's fold passes both in)."""
    ordered = sorted(events, key=canonical_key)
    book = book if book is not None else rule_book(ordered)
    attribution = attribute(ordered, book, directory=directory)
    identity = attribution.identity
    out = Commission(book, attribution)

    def recognise(event: LedgerEvent, phase: int = 0) -> Recognition | Unsettled:
        try:
            return Recognition.at_moment(event.occurred_at, book.in_force_at(event.occurred_at))
        except NoRulesInForce as error:
            zone = zone_for(book, event.occurred_at.date())
            month = event.occurred_at.astimezone(zone).strftime("%Y-%m")
            unsettled = Unsettled(event.event_id, month, error, (phase, *canonical_key(event)))
            out.unsettled.setdefault(unsettled.month, []).append(unsettled)
            return unsettled

    orders: dict[str, OrderPaid] = {}
    orders_of: dict[str | None, list[OrderPaid]] = {}
    deliveries: dict[str, list[tuple[tuple[datetime, str], str]]] = {}
    for event in ordered:
        if isinstance(event, OrderPaid) and event.order_id not in orders:
            orders[event.order_id] = event
            orders_of.setdefault(identity.customer_of(event), []).append(event)
        elif isinstance(event, SessionDelivered):
            deliveries.setdefault(event.order_id, []).append((canonical_key(event), event.clinician_id))
    rank = {o.order_id: n for customer_orders in orders_of.values() for n, o in enumerate(customer_orders)}

    order_lines: dict[str, list[Line]] = {}
    unsettled_orders: dict[str, Unsettled] = {}
    for event in ordered:
        if isinstance(event, OrderPaid):
            if orders.get(event.order_id) is not event:
                continue
            when = recognise(event)
            if isinstance(when, Unsettled):
                unsettled_orders[event.order_id] = when
                continue
            customer = identity.customer_of(event)
            lines: list[Line] = []
            for item in event.items:
                lines += _source(out, event, item, customer, when)
                line = out.add(deal_line(event, item, customer_id=customer, when=when))
                lines += [line] if line else []
            if rank[event.order_id] > 0:
                previous = orders_of[customer][rank[event.order_id] - 1]
                key = canonical_key(event)
                clinician = main_clinician(d for d in deliveries.get(previous.order_id, ()) if d[0] < key)
                if clinician is not None:
                    for item in event.items:
                        line = out.add(repurchase_line(event, item, clinician_id=clinician, customer_id=customer, when=when))
                        lines += [line] if line else []
            order_lines[event.order_id] = lines
        elif isinstance(event, SessionDelivered):
            order = orders.get(event.order_id)
            item = order.item(event.sku) if order else None
            when = recognise(event)
            if isinstance(when, Unsettled):
                continue
            if item is None:
                out.note(when.month, f"session {event.event_id}: order {event.order_id} has no such item to value the session by; no fulfillment line", event)
                continue
            out.add(fulfillment_line(event, item, customer_id=identity.customer_of(event), when=when))

    _clawbacks(out, ordered, orders, order_lines, unsettled_orders, recognise)
    return out


def _source(out: Commission, order: OrderPaid, item: Any, customer: str | None, when: Recognition) -> list[Line]:
    """The source line of one item, and the decision behind it (kept for `compare`)."""
    found = out.attribution.of(customer) if customer else None
    owner = found.owner_at(order.occurred_at) if found else None
    source = found.source if found else None
    window_end = source_window_ends_at(source.at, when.rules) if source else None
    key = (order.order_id, item.sku)

    def decide(outcome: str) -> None:
        out.source_decisions[key] = SourceDecision(
            order.order_id, item.sku, outcome, owner, source.event_id if source else None,
            source.at if source else None, window_end, order.occurred_at,
        )

    if owner is None or source is None or window_end is None:
        decide("no owner")
        return []
    if order.occurred_at >= window_end:
        decide("outside window")
        return []
    if owner.channel_kind is None:
        decide("unknown channel kind")
        out.note(when.month, f"order {order.order_id}: the owner's channel {owner.channel_id or '?'} is not registered, so no source rate applies; no source line", order)
        return []
    line = out.add(source_line(
        order, item, customer_id=customer, owner_staff_id=owner.staff_id,
        channel_id=owner.channel_id, channel_kind=owner.channel_kind, when=when,
    ))
    decide("paid" if line else "zero amount")
    return [line] if line else []


def _clawbacks(out, ordered, orders, order_lines, unsettled_orders, recognise) -> None:
    """Refunds in canonical order: each takes back its share of the order's source, deal and
    repurchase lines (SPEC §5); the refund that completes the order (or its item) takes what
    remains, so a full refund nets those lines to exactly zero."""
    refunded_order: dict[str, Decimal] = {}
    refunded_item: dict[tuple[str, str], Decimal] = {}
    taken: dict[tuple[str, ...], Decimal] = {}
    for event in ordered:
        if not isinstance(event, OrderRefunded):
            continue
        order = orders.get(event.order_id)
        if order is None:
            continue
        when = recognise(event, phase=1)
        if isinstance(when, Unsettled):
            continue
        if event.order_id in unsettled_orders:
            first = unsettled_orders[event.order_id]
            out.unsettled.setdefault(when.month, []).append(Unsettled(event.event_id, when.month, first.error, (1, *canonical_key(event))))
            continue
        refunded_order[event.order_id] = refunded_order.get(event.order_id, ZERO) + event.amount
        order_complete = refunded_order[event.order_id] >= order.amount
        item_complete = False
        if event.sku is not None:
            item = order.item(event.sku)
            if item is None:
                out.note(when.month, f"refund {event.event_id}: order {event.order_id} has no item {event.sku}; nothing clawed back", event, phase=1)
                continue
            item_key = (event.order_id, event.sku)
            refunded_item[item_key] = refunded_item.get(item_key, ZERO) + event.amount
            item_complete = refunded_item[item_key] >= item.amount
            scope_amount = item.amount
        else:
            scope_amount = order.amount
        fraction = event.amount / scope_amount if scope_amount else Decimal(0)
        for line in order_lines.get(event.order_id, ()):
            in_scope = event.sku is None or line.sku == event.sku
            if not (in_scope or order_complete):
                continue
            already = taken.get(line.key, ZERO)
            completes = order_complete or (in_scope and item_complete)
            amount = clawback_amount(line.amount, fraction if in_scope else Decimal(0), already, completes)
            if amount == ZERO:
                continue
            taken[line.key] = already + amount
            shown = fraction if in_scope else amount / line.amount
            out.add(clawback_line(line, event, fraction=shown, amount=amount, customer_id=line.customer_id, when=when))


# --- statements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PayeeTotal:
    payee: str
    source: Decimal
    deal: Decimal
    fulfillment: Decimal

    @property
    def total(self) -> Decimal:
        return self.source + self.deal + self.fulfillment

    def as_json(self) -> dict[str, str]:
        return {
            "source": f"{self.source:.2f}",
            "deal": f"{self.deal:.2f}",
            "fulfillment": f"{self.fulfillment:.2f}",
            "total": f"{self.total:.2f}",
        }


@dataclass(frozen=True)
class Closure:
    """A ``settlement.closed`` as recorded: the month, its digest, the position its statement was
    built to, and where the close itself sits in the ledger."""

    month: str
    digest: str
    built_position: int
    recorded_position: int
    event_id: str
    chain_head: str | None


@dataclass(frozen=True)
class ClosedCheck:
    """A closed month rebuilt: did it reproduce the digest recorded by ``close``?"""

    closure: Closure
    rebuilt_digest: str

    @property
    def verified(self) -> bool:
        return self.closure.digest == self.rebuilt_digest


@dataclass(frozen=True)
class MonthLines:
    """A month's lines, sorted, with its findings (and their fold order) and the closed months
    it adjusts: a statement before totals, rule versions and digest (`Settlement.month_lines`)."""

    lines: tuple[Line, ...]
    findings: tuple[str, ...]
    finding_order: tuple[tuple[Any, ...], ...]
    adjusts: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    """One month's statement (SPEC §6)."""

    month: str
    position: int
    rule_versions: tuple[str, ...]
    lines: tuple[Line, ...]
    totals: tuple[PayeeTotal, ...]
    digest: str
    findings: tuple[str, ...] = ()
    closed: ClosedCheck | None = None
    what_if: str | None = None  # the what-if rule set's version
    adjusts: tuple[str, ...] = ()  # closed months whose late changes this statement settles
    adjustments_go_to: str | None = None  # closed month: where its late changes are settled
    finding_order: tuple[tuple[Any, ...], ...] = ()  # the fold order of ``findings`` (merging customers' parts)

    @property
    def grand_total(self) -> PayeeTotal:
        return PayeeTotal(
            "",
            sum((t.source for t in self.totals), ZERO),
            sum((t.deal for t in self.totals), ZERO),
            sum((t.fulfillment for t in self.totals), ZERO),
        )

    def total_of(self, payee: str) -> PayeeTotal:
        return next((t for t in self.totals if t.payee == payee), PayeeTotal(payee, ZERO, ZERO, ZERO))

    def content(self) -> dict[str, Any]:
        """What the digest covers: month, rule versions, lines, totals (never the position)."""
        return statement_content(self.month, self.rule_versions, self.lines, self.totals)


def statement_content(month: str, versions: Sequence[str], lines: Sequence[Line], totals: Sequence[PayeeTotal]) -> dict[str, Any]:
    return content_of(month, versions, [line.as_json() for line in lines], totals)


def content_of(month: str, versions: Sequence[str], lines: list[dict[str, Any]], totals: Sequence[PayeeTotal]) -> dict[str, Any]:
    """`statement_content` with the lines already in their JSON form."""
    return {"month": month, "rule_versions": list(versions), "lines": lines, "totals": {t.payee: t.as_json() for t in totals}}


_NO_LINES = b'{"lines":[],'


def statement_digest(month: str, versions: Sequence[str], lines: Iterable[dict[str, Any]], totals: Sequence[PayeeTotal]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, UTF-8, no spaces) of ``content_of(...)``,
    with the lines hashed one at a time as they come, so that a month of 130,000 lines is never
    held as JSON objects and one string at once (that was the peak of a rebuild's memory): the
    same bytes as hashing the whole content, since "lines" is the first of its sorted keys."""
    rest = orjson.dumps(content_of(month, versions, [], totals), option=orjson.OPT_SORT_KEYS)
    assert rest.startswith(_NO_LINES)
    digest = hashlib.sha256(_NO_LINES[:-2])
    for n, line in enumerate(lines):
        digest.update(b"," if n else b"")
        digest.update(orjson.dumps(line, option=orjson.OPT_SORT_KEYS))
    digest.update(b"]," + rest[len(_NO_LINES):])
    return digest.hexdigest()


def payee_totals(lines: Iterable[Line]) -> tuple[PayeeTotal, ...]:
    """Per payee and part, sums of rounded lines (adjustments included), sorted by payee."""
    return totals_of((line.payee, line.part, line.amount) for line in lines)


def totals_of(amounts: Iterable[tuple[str, str, Decimal]]) -> tuple[PayeeTotal, ...]:
    """`payee_totals` of (payee, part, amount) triples."""
    sums: dict[str, dict[str, Decimal]] = {}
    for payee, part, amount in amounts:
        parts = sums.setdefault(payee, {"source": ZERO, "deal": ZERO, "fulfillment": ZERO})
        parts[part] += amount
    return tuple(PayeeTotal(p, s["source"], s["deal"], s["fulfillment"]) for p, s in sorted(sums.items()))


def diff_month_lines(month: str, before: Sequence[Line], now: Sequence[Line]) -> list[Line]:
    """Adjustment lines that carry ``month`` from ``before`` to ``now`` (module docstring, 4)."""
    old = {line.key: line for line in before}
    new = {line.key: line for line in now}
    out: list[Line] = []
    for key, line in old.items():
        if key not in new or new[key].amount != line.amount:
            out.append(line.adjusting(month, "reversed"))
    for key, line in new.items():
        if key not in old or old[key].amount != line.amount:
            out.append(line.adjusting(month, "added"))
    return out


class ReferenceAt(Protocol):
    """The rule book and reference data as they stood at a ledger position, with a generation
    number that changes whenever they did."""

    def at(self, position: int) -> tuple[int, RuleBook, Directory]: ...


class Settlement:
    """Statements of a ledger: its events with their positions, up to ``position``.

    ``rules`` makes it a what-if: that one rule set replaces every adopted version for every date
    (attribution included). Folds are cached per position (a closed month and the adjustments
    need the lines as they stood at earlier positions).

    ``reference``: one customer's settlement (`projections.state`) — ``recorded`` then holds only
    that customer's events and the closes, and the rule book and reference data as they stood at
    a position come from ``reference.at(position)``."""

    def __init__(
        self,
        recorded: Iterable[Positioned],
        *,
        position: int | None = None,
        rules: RuleSet | None = None,
        reference: ReferenceAt | None = None,
    ):
        self.recorded: list[Positioned] = sorted(recorded, key=lambda pe: pe[0])
        self._positions = [p for p, _ in self.recorded]
        last = self._positions[-1] if self._positions else 0
        self.position = max(position, last) if position is not None else last
        self.what_if = rules
        self.reference = reference
        self._folds: dict[tuple[int, int], Commission] = {}
        # Lines never depend on settlement.closed events: folds are cached by how many *other*
        # events they include, so a run of closes shares one fold.
        self._facts_before: list[int] = []
        count = 0
        for _, event in self.recorded:
            count += not isinstance(event, SettlementClosed)
            self._facts_before.append(count)

    # -- folds at a position ----------------------------------------------------------------

    def events_upto(self, position: int) -> list[LedgerEvent]:
        return [e for _, e in self.recorded[: bisect_right(self._positions, position)]]

    def _index(self, position: int) -> int:
        """How many recorded events are at or before ``position``."""
        return bisect_right(self._positions, position)

    def commission(self, position: int | None = None) -> Commission:
        position = self.position if position is None else position
        n = self._index(position)
        facts = self._facts_before[n - 1] if n else 0
        generation, book, directory = self.reference.at(position) if self.reference is not None else (0, None, None)
        if (facts, generation) not in self._folds:
            events = [e for _, e in self.recorded[:n] if not isinstance(e, SettlementClosed)]
            book = FixedRuleBook(self.what_if) if self.what_if is not None else book
            self._folds[(facts, generation)] = commission_lines(events, book, directory)
        return self._folds[(facts, generation)]

    @property
    def book(self) -> RuleBook:
        return self.commission().book

    def closures(self, position: int | None = None) -> dict[str, Closure]:
        """Months closed by ``settlement.closed`` events recorded up to ``position``."""
        position = self.position if position is None else position
        found: dict[str, Closure] = {}
        for recorded_at, event in self.recorded[: self._index(position)]:
            if isinstance(event, SettlementClosed) and event.month not in found:
                built = event.position if event.position is not None else recorded_at - 1
                found[event.month] = Closure(event.month, event.digest, built, recorded_at, event.event_id, event.chain_head)
        return found

    # -- statements -------------------------------------------------------------------------

    def statement(self, month: str) -> Statement:
        """``month``'s statement: a closed month as it was closed (rebuilt to its close position,
        with the check against the recorded digest); an open month as of ``self.position``."""
        closes = self.closures()
        if month in closes:
            closure = closes[month]
            built = self._statement_at(month, closure.built_position)
            check = ClosedCheck(closure, built.digest) if self.what_if is None else None
            return _with(built, closed=check, adjustments_go_to=adjustments_target(month, closes))
        return self._statement_at(month, self.position)

    def month_lines(self, month: str) -> MonthLines:
        """What `statement` holds of ``month`` before it is totalled and hashed: its sorted lines
        (adjustments included), findings and the closed months it adjusts — for a caller that
        keeps a customer's share of the month and totals it later (`projections.state`)."""
        closure = self.closures().get(month)
        return self._month_at(month, closure.built_position if closure is not None else self.position)

    def _statement_at(self, month: str, position: int) -> Statement:
        at = self._month_at(month, position)
        totals = payee_totals(at.lines)
        versions = self._versions(self.commission(position).book, month, at.lines)
        digest = statement_digest(month, versions, (line.as_json() for line in at.lines), totals)
        return Statement(
            month, position, versions, at.lines, totals, digest, at.findings,
            what_if=self.what_if.version if self.what_if is not None else None,
            adjusts=at.adjusts,
            finding_order=at.finding_order,
        )

    def _month_at(self, month: str, position: int) -> MonthLines:
        fold = self.commission(position)
        if not fold.book:
            first = month_first_day(month)
            raise NoRulesInForce(first, None)
        self._refuse_unsettled(fold, month, (0, ""))
        lines = list(fold.by_month.get(month, ()))
        findings = list(fold.findings.get(month, ()))
        finding_order = tuple(fold.finding_order.get(month, ()))
        closes = self.closures(position)
        adjusted: list[str] = []
        for earlier in self.adjustment_sources(month, closes):
            then = self.last_accounted(earlier, month, closes)
            before = self.commission(then)
            self._refuse_unsettled(fold, earlier, (1, earlier))
            changes = diff_month_lines(earlier, before.by_month.get(earlier, ()), fold.by_month.get(earlier, ()))
            if changes:
                adjusted.append(earlier)
                lines += changes
        lines.sort(key=Line.sort_key)
        return MonthLines(tuple(lines), tuple(findings), finding_order, tuple(sorted(adjusted)))

    @staticmethod
    def _refuse_unsettled(fold: Commission, month: str, check: tuple[int, str]) -> None:
        if month in fold.unsettled:
            first = fold.unsettled[month][0]
            raise NoRulesForLine(first.error.on, first.error.earliest, first.event_id, month, (*check, *first.order))

    @staticmethod
    def _versions(book: RuleBook, month: str, lines: Sequence[Line]) -> tuple[str, ...]:
        return Settlement.versions_used(book, month, {line.rule_version for line in lines})

    @staticmethod
    def versions_used(book: RuleBook, month: str, used: set[str]) -> tuple[str, ...]:
        """The rule versions the lines were computed under, in the book's order; for a month
        without lines, the version in force on its first day (none before every rule set)."""
        if not used:
            try:
                used = {book.in_force(month_first_day(month)).version}
            except NoRulesInForce:
                return ()
        order = {v: n for n, v in enumerate(book.versions)}
        return tuple(sorted(used, key=lambda v: (order.get(v, len(order)), v)))

    @staticmethod
    def adjustment_sources(month: str, closes: dict[str, Closure]) -> list[str]:
        """Closed months whose late changes ``month`` settles: the run of closed months right
        before it (``month`` is the first month after each of them that is not closed)."""
        found, earlier = [], previous_month(month)
        while earlier in closes:
            found.append(earlier)
            earlier = previous_month(earlier)
        return sorted(found)

    @staticmethod
    def last_accounted(month: str, settling: str, closes: dict[str, Closure]) -> int:
        """The position at which closed ``month``'s lines were last settled: its own close, or
        the close of a later month that absorbed its adjustments — one built when ``month`` and
        every month between them were already closed."""
        best = closes[month].built_position
        for later in months_between(month, settling):
            closure = closes.get(later)
            if closure is None:
                continue
            between = [closes.get(m) for m in [month, *months_between(month, later)]]
            if all(c is not None and c.recorded_position <= closure.built_position for c in between):
                best = max(best, closure.built_position)
        return best

    # -- months ------------------------------------------------------------------------------

    def months_with_activity(self) -> list[str]:
        """Months that have lines: their own, or adjustments of closed months (for export)."""
        closes = self.closures()
        months = set(self.commission().months) | set(closes)
        months |= {adjustments_target(closed, closes) for closed in closes}
        found = []
        for month in sorted(months):
            if month in closes or self.statement(month).lines:
                found.append(month)
        return found

    def open_months_before(self, month: str) -> list[str]:
        """Months before ``month`` that have lines and are not closed (close refuses to skip them)."""
        closes = self.closures()
        candidates = {m for m in self.commission().months if m < month and m not in closes}
        for closed in closes:
            target = adjustments_target(closed, closes)
            if target < month:
                candidates.add(target)
        return sorted(m for m in candidates if self._has_lines(m))

    def _has_lines(self, month: str) -> bool:
        fold = self.commission()
        if month in fold.unsettled or fold.by_month.get(month):
            return True
        return bool(self.statement(month).lines)


def adjustments_target(closed: str, closes: dict[str, Closure]) -> str:
    """Where closed month ``closed``'s late changes are settled: the first month after it that is
    not closed."""
    target = next_month(closed)
    while target in closes:
        target = next_month(target)
    return target


def _with(statement: Statement, **changes: Any) -> Statement:
    from dataclasses import replace

    return replace(statement, **changes)


def close_event(statement: Statement, book: RuleBook, chain_head: str | None) -> SettlementClosed:
    """The ``settlement.closed`` for an open month's statement (SPEC §6).

    ``event_id`` is ``close-YYYY-MM`` (a month closes once); ``occurred_at`` is the first instant
    after the month in the time zone of the rules in force on its last day — deterministic, and
    harmless to canonical-order folds (a close has no customer and no reference)."""
    return SettlementClosed(
        event_id=f"close-{statement.month}",
        occurred_at=month_ends_at(statement.month, book),
        month=statement.month,
        digest=statement.digest,
        position=statement.position,
        chain_head=chain_head,
    )


def latest_month_with_activity(events: Iterable[LedgerEvent], rules: RuleSet | RuleBook) -> str | None:
    """The latest month (in the rules' time zone) in which an order was paid, a session
    delivered or a refund made — the month the demo shows. None for a ledger without any."""
    latest: datetime | None = None
    for event in events:
        if isinstance(event, (OrderPaid, SessionDelivered, OrderRefunded)):
            if latest is None or event.occurred_at > latest:
                latest = event.occurred_at
    if latest is None:
        return None
    if isinstance(rules, RuleBook):
        zone = zone_for(rules, latest.date())
        return latest.astimezone(zone).strftime("%Y-%m")
    return rules.month_of(latest)


# --- what-if: compare against the rules in force --------------------------------------------


@dataclass(frozen=True)
class LineChange:
    status: str  # "added" | "removed" | "changed"
    old: Line | None
    new: Line | None
    reason: str

    @property
    def line(self) -> Line:
        return self.new or self.old  # type: ignore[return-value]

    @property
    def old_amount(self) -> Decimal:
        return self.old.amount if self.old else ZERO

    @property
    def new_amount(self) -> Decimal:
        return self.new.amount if self.new else ZERO

    @property
    def change(self) -> Decimal:
        return self.new_amount - self.old_amount


@dataclass(frozen=True)
class PayeeChange:
    payee: str
    old: PayeeTotal
    new: PayeeTotal

    @property
    def change(self) -> Decimal:
        return self.new.total - self.old.total


@dataclass(frozen=True)
class Comparison:
    """A what-if statement against the statement under the rules in force (SPEC §6)."""

    month: str
    baseline: Statement
    what_if: Statement
    rule_changes: tuple[tuple[str, tuple[RuleChange, ...]], ...]  # (version in force, changes)
    payees: tuple[PayeeChange, ...]
    lines: tuple[LineChange, ...]


_ATTRIBUTION_RULES = ("protection_days", "reattribute_after_protection", "followup_timeout_days")
_RULE_WORDS = {
    "protection_days": ("protection", " days"),
    "followup_timeout_days": ("follow-up timeout", " days"),
    "source_window_days": ("source window", " days"),
    "reattribute_after_protection": ("reattribute after protection", ""),
}


def describe_change(change: RuleChange) -> str:
    """``protection 90→3 days``, ``rate deal_rate.fill_item 0.02→0.03``."""
    def show(value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        return format(value, "f") if isinstance(value, Decimal) else str(value)

    if change.field in _RULE_WORDS:
        word, unit = _RULE_WORDS[change.field]
        return f"{word} {show(change.old)}→{show(change.new)}{unit}"
    if "rate" in change.field:
        return f"rate {change.field} {show(change.old)}→{show(change.new)}"
    return f"{change.field} {show(change.old)}→{show(change.new)}"


def compare(baseline: Settlement, what_if: Settlement, month: str) -> Comparison:
    """Diff ``month`` under ``what_if``'s rules against ``baseline`` (the rules in force): per
    payee (old total, new total, change) and per line (added, removed, changed), each line with
    the reason a person can check."""
    assert what_if.what_if is not None, "compare needs a what-if settlement"
    old_statement = baseline.statement(month)
    new_statement = what_if.statement(month)
    rules_new = what_if.what_if
    book = baseline.commission(old_statement.position).book
    versions = old_statement.rule_versions or tuple(v for v in book.versions[-1:])
    rule_changes = tuple((v, tuple(diff_rules(book.get(v), rules_new))) for v in versions)
    before = baseline.commission(old_statement.position)
    after = what_if.commission(new_statement.position)

    old_lines = {line.key: line for line in old_statement.lines}
    new_lines = {line.key: line for line in new_statement.lines}
    changes: list[LineChange] = []
    for key in sorted(set(old_lines) | set(new_lines), key=lambda k: (old_lines.get(k) or new_lines[k]).sort_key()):
        old, new = old_lines.get(key), new_lines.get(key)
        if old is not None and new is not None and old.amount == new.amount:
            continue
        status = "changed" if old and new else ("added" if new else "removed")
        rules_old = _baseline_rules(book, old, new, rules_new)
        changes.append(LineChange(status, old, new, _reason(old, new, before, after, rules_old, rules_new)))

    payees = sorted({t.payee for t in old_statement.totals} | {t.payee for t in new_statement.totals})
    payee_changes = tuple(PayeeChange(p, old_statement.total_of(p), new_statement.total_of(p)) for p in payees)
    return Comparison(month, old_statement, new_statement, rule_changes, payee_changes, tuple(changes))


def _baseline_rules(book: RuleBook, old: Line | None, new: Line | None, fallback: RuleSet) -> RuleSet:
    """The rules in force for a line: those it was computed under, or for a line only the
    what-if has, those in force at its recognition moment."""
    if old is not None and old.rule_version in book:
        return book.get(old.rule_version)
    line = old or new
    assert line is not None
    try:
        return book.in_force_at(line.recognised_at)
    except NoRulesInForce:
        return fallback


def _rule_value(rules: RuleSet, path: str) -> Any:
    return dict(rules.flat()).get(path)


def _reason(old: Line | None, new: Line | None, before: Commission, after: Commission, rules_old: RuleSet, rules_new: RuleSet) -> str:
    line = new or old
    assert line is not None
    prefix = ""
    if line.basis == "refund":
        prefix = f"clawback follows the {line.part} line: "
    if line.part == "source":
        d0 = before.source_decisions.get((line.order_id, line.sku))
        d1 = after.source_decisions.get((line.order_id, line.sku))
        why = _source_reason(d0, d1, rules_old, rules_new)
        if why:
            return prefix + why
    r0, r1 = _rule_value(rules_old, line.rule), _rule_value(rules_new, line.rule)
    if r0 != r1:
        return prefix + describe_change(RuleChange(line.rule, r0, r1))
    if old is not None and new is not None and old.base != new.base:
        return prefix + f"base {old.base:.2f}→{new.base:.2f}"
    if line.adjustment_of:
        return prefix + f"adjustment of closed {line.adjustment_of} differs under the other rules"
    changed = [describe_change(c) for c in diff_rules(rules_old, rules_new) if c.field not in ("version", "effective_from")]
    return prefix + ("; ".join(changed) if changed else f"rules {rules_old.version}→{rules_new.version}")


def _who(owner: Ownership | None) -> str:
    if owner is None:
        return "nobody"
    return f"{owner.staff_id}/{owner.channel_id or '?'}"


def _source_reason(d0: SourceDecision | None, d1: SourceDecision | None, rules_old: RuleSet, rules_new: RuleSet) -> str | None:
    if d0 is None or d1 is None:
        return None
    o0, o1 = d0.owner, d1.owner
    if (o0 and (o0.staff_id, o0.channel_id)) != (o1 and (o1.staff_id, o1.channel_id)):
        why = [describe_change(c) for c in diff_rules(rules_old, rules_new) if c.field in _ATTRIBUTION_RULES]
        if o1 is None:
            how = "no owner at payment"
        elif o1.via == "reattribution":
            how = f"lead {o1.event_id} from {o1.staff_id} now takes the source"
        elif o1.via == "ticket":
            how = f"ticket {o1.ticket_id} now moves the customer to {o1.staff_id}"
        else:
            was = f"{o0.via} {o0.ticket_id or o0.event_id}" if o0 else "no owner"
            how = f"{o1.staff_id} keeps the source ({was} no longer applies)"
        what = "owner changed" if (o0 and o0.staff_id) != (o1 and o1.staff_id) else "owner's channel changed"
        if o0 and o1 and o0.channel_kind != o1.channel_kind:
            how += f"; its channel is {o1.channel_kind} (was {o0.channel_kind})"
        return f"{what}: " + ", ".join([*why, how]) + f" (was {_who(o0)}, now {_who(o1)})"
    if d0.outcome != d1.outcome and "outside window" in (d0.outcome, d1.outcome):
        days = (d1.paid_at - d1.source_at).days if d1.source_at else None
        change = describe_change(RuleChange("source_window_days", rules_old.source_window_days, rules_new.source_window_days))
        after = f": paid {days} days after the source lead {d1.source_event_id}" if days is not None else ""
        return change + after
    return None
