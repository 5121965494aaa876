"""Settlement kept per customer (issue 4 item 5, issue 6): the statement as parts that can be
stored, refreshed one customer at a time and merged back into exactly the statement the plain
fold gives.

Commission lines never cross customers: a customer's lines (and the adjustments of closed months
they cause) depend only on that customer's connected component of events, the closes, and the
rule book and reference data as they stood at a position. So:

1. `split` sorts a ledger into reference data (rule sets, stores, channels, staff, entry points,
   resources), closes (``settlement.closed``) and everything else, and groups the rest into
   components by the customer they end up in (`component_key`).
2. `customer_parts` settles one component: for every month it touches, its share of that
   month's statement — lines (adjustments included), findings with their fold order, and the
   first refusal (a line before every rule set) if any. A `Part` is plain data (`Part.state`).
3. `statement_from_parts` merges the parts of a month into the `Statement` the plain fold
   (`Settlement.statement`) gives: the same lines, totals, rule versions, findings and digest
   (tested against each other on demo ledgers with closes and late events).

Pure: no I/O, no clock. The store side (what is kept where, and when it is refreshed) is
`ledger.projector`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from ledger.events import LedgerEvent, SettlementClosed
from ledger.identity import Identity, canonical_key, customer_id_for, is_reference_data, reference_of
from policies import NoRulesInForce, RuleBook
from policies.commission import LINE_FIELDS, Line, line_json, line_sort_key
from projections.attribution import rule_book
from projections.directory import Directory, build_directory
from projections.settlement import (
    ClosedCheck,
    Closure,
    NoRulesForLine,
    PayeeTotal,
    Positioned,
    Settlement,
    Statement,
    adjustments_target,
    month_first_day,
    statement_digest,
    totals_of,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --- what every customer's fold shares -------------------------------------------------------


class Reference:
    """The rule book and reference data as they stood at any position (`ReferenceAt`)."""

    def __init__(self, recorded: Iterable[Positioned]):
        self.recorded: list[Positioned] = sorted(recorded, key=lambda pe: pe[0])
        self._positions = [p for p, _ in self.recorded]
        self._built: dict[int, tuple[RuleBook, Directory]] = {}

    def at(self, position: int) -> tuple[int, RuleBook, Directory]:
        generation = bisect_right(self._positions, position)
        if generation not in self._built:
            events = [e for _, e in self.recorded[:generation]]
            self._built[generation] = (rule_book(events), build_directory(events))
        book, directory = self._built[generation]
        return generation, book, directory


@dataclass
class Split:
    """A ledger sorted for per-customer settlement."""

    reference: list[Positioned] = field(default_factory=list)
    closes: list[Positioned] = field(default_factory=list)
    components: dict[str, list[Positioned]] = field(default_factory=dict)


def component_key(identity: Identity, event: LedgerEvent) -> str:
    """The component an event belongs to: its (surviving) customer; an event that refers to an
    order, appointment or ticket nobody has yet stays with that reference; anything else alone."""
    return component_key_of(identity, event.event_id, reference_of(event))


def component_key_of(identity: Identity, event_id: str, reference: str | None) -> str:
    """`component_key` by the event's id and the reference it makes (`Touch.refers`)."""
    customer = identity.customer_of_touch(event_id, reference)
    if customer is not None:
        return customer
    return "ref:" + reference if reference is not None else "event:" + event_id


def superseded_keys(events: Iterable[LedgerEvent]) -> set[str]:
    """Every component key a set of events (whole components) may have been kept under: a
    customer id is made from the id of the event that created the customer, so the ids every
    event *could* have created cover the customers they formed before — renamed by a late
    earlier lead or merged since — without refolding them; plus references that had no owner
    yet. (Keys nobody holds are harmless to delete; keys of other components cannot appear.)"""
    keys: set[str] = set()
    for event in events:
        keys.add(customer_id_for(event.event_id))
        keys.add(customer_id_for(event.event_id + "#2"))
        reference = reference_of(event)
        keys.add("ref:" + reference if reference is not None else "event:" + event.event_id)
    return keys


def split(recorded: Iterable[Positioned]) -> Split:
    """Reference data, closes and customer components of a ledger (any order in)."""
    out = Split()
    facts: list[Positioned] = []
    for pe in recorded:
        event = pe[1]
        if isinstance(event, SettlementClosed):
            out.closes.append(pe)
        elif is_reference_data(event):
            out.reference.append(pe)
        else:
            facts.append(pe)
    facts.sort(key=lambda pe: canonical_key(pe[1]))
    identity = Identity()
    for _, event in facts:
        identity.observe(event)
    for pe in facts:
        out.components.setdefault(component_key(identity, pe[1]), []).append(pe)
    return out


# --- one customer's share of each month --------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The first line of a month that no rule set covers (`NoRulesForLine`)."""

    order: tuple[Any, ...]  # `plain_order`
    on: date
    earliest: date | None
    event_id: str
    month: str

    def error(self) -> NoRulesForLine:
        return NoRulesForLine(self.on, self.earliest, self.event_id, self.month, self.order)


@dataclass(frozen=True)
class Part:
    """One component's share of one month's statement."""

    lines: tuple[list[Any], ...] = ()  # `line_state` of each line: merged without decoding
    findings: tuple[tuple[tuple[Any, ...], str], ...] = ()
    adjusts: tuple[str, ...] = ()
    refusal: Refusal | None = None

    @property
    def empty(self) -> bool:
        return not (self.lines or self.findings or self.adjusts or self.refusal)

    def state(self) -> dict[str, Any]:
        """Plain JSON data (`Part.from_state` reads it back exactly)."""
        state: dict[str, Any] = {}
        if self.lines:
            state["l"] = list(self.lines)
        if self.findings:
            state["f"] = [[list(order), text] for order, text in self.findings]
        if self.adjusts:
            state["a"] = list(self.adjusts)
        if self.refusal is not None:
            r = self.refusal
            state["r"] = [list(r.order), r.on.isoformat(), r.earliest.isoformat() if r.earliest else None, r.event_id, r.month]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], texts: dict[str, str] | None = None) -> Part:
        """``texts``: one copy of each text the lines hold, shared between parts (`month_parts`)."""
        refusal = None
        if "r" in state:
            order, on, earliest, event_id, month = state["r"]
            refusal = Refusal(tuple(order), date.fromisoformat(on), date.fromisoformat(earliest) if earliest else None, event_id, month)
        lines = state.get("l", ())
        if texts is not None:
            lines = [[texts.setdefault(v, v) if type(v) is str else v for v in line] for line in lines]
        return cls(
            tuple(lines),
            tuple((tuple(o), text) for o, text in state.get("f", ())),
            tuple(state.get("a", ())),
            refusal,
        )


def month_parts(states: Iterable[bytes]) -> list[Part]:
    """Every component's kept part of one month (`Part.state` as JSON), decoded for merging.
    A month's lines repeat their texts — payees, parts, rules, channels, customers, orders,
    days — and decoding makes a new string of each; sharing one copy halves what a month's
    merge holds (the 1M demo's busiest month of 130,014 lines: 159 -> 52 MiB)."""
    texts: dict[str, str] = {}
    return [Part.from_state(orjson.loads(state), texts) for state in states]


def customer_parts(recorded: Sequence[Positioned], closes: Sequence[Positioned], reference: Reference, position: int) -> dict[str, Part]:
    """One component's part of every month it touches, as of ``position``."""
    settlement = Settlement([*recorded, *closes], position=position, reference=reference)
    closed = settlement.closures()
    months = set(settlement.commission().months) | set(closed) | {adjustments_target(m, closed) for m in closed}
    parts: dict[str, Part] = {}
    for month in sorted(months):
        try:
            at = settlement.month_lines(month)  # totals and digest are the merged statement's
        except NoRulesForLine as refused:
            part = Part(refusal=Refusal(plain_order(refused.order), refused.on, refused.earliest, refused.event_id, refused.month))
        except NoRulesInForce:
            continue  # nothing adopted at all: every statement refuses; nothing to keep
        else:
            findings = tuple((plain_order(o), text) for o, text in zip(at.finding_order, at.findings))
            part = Part(tuple(line_state(line) for line in at.lines), findings, at.adjusts)
        if not part.empty:
            parts[month] = part
    return parts


# --- a month's statement from its parts -----------------------------------------------------------


def closures_of(closes: Iterable[Positioned]) -> dict[str, Closure]:
    """The months closed by these ``settlement.closed`` events (the first close of a month counts)."""
    found: dict[str, Closure] = {}
    for recorded_at, event in sorted(closes, key=lambda pe: pe[0]):
        assert isinstance(event, SettlementClosed)
        if event.month not in found:
            built = event.position if event.position is not None else recorded_at - 1
            found[event.month] = Closure(event.month, event.digest, built, recorded_at, event.event_id, event.chain_head)
    return found


def statement_from_parts(month: str, parts: Iterable[Part], *, reference: Reference, closes: dict[str, Closure], position: int) -> Statement:
    """The month's statement from every component's part: what `Settlement.statement` gives."""
    closure = closes.get(month)
    at = closure.built_position if closure is not None else position
    _, book, _ = reference.at(at)
    if not book:
        raise NoRulesInForce(month_first_day(month), None)
    parts = list(parts)
    refusals = [p.refusal for p in parts if p.refusal is not None]
    if refusals:
        raise min(refusals, key=lambda r: r.order).error()
    # Lines stay plain data: sorted, totalled and hashed as `Line` would be, decoded only if read.
    states = sorted((state for p in parts for state in p.lines), key=_state_sort_key)
    findings = sorted((f for p in parts for f in p.findings), key=lambda f: f[0])
    totals = totals_of((state[_PAYEE], state[_PART], Decimal(state[_AMOUNT])) for state in states)
    versions = Settlement.versions_used(book, month, {state[_RULE_VERSION] for state in states})
    digest = statement_digest(month, versions, (_state_json(state) for state in states), totals)
    adjusting = sum(1 for state in states if state[_ADJUSTMENT_OF])
    return Statement(
        month, at, versions, KeptLines(orjson.dumps(states), len(states), adjusting), totals, digest,  # type: ignore[arg-type]
        findings=tuple(text for _, text in findings),
        closed=ClosedCheck(closure, digest) if closure is not None else None,
        adjusts=tuple(sorted({m for p in parts for m in p.adjusts})),
        adjustments_go_to=adjustments_target(month, closes) if closure is not None else None,
        finding_order=tuple(order for order, _ in findings),
    )


# --- a merged statement, kept -------------------------------------------------------------------


class KeptLines(Sequence[Line]):
    """A kept statement's lines, decoded only when someone reads them (totals, the digest and
    the counts are kept beside them, so the usual statement view never decodes a line)."""

    def __init__(self, states: bytes | Callable[[], bytes], count: int, adjustments: int):
        self._states = states  # orjson of the `line_state` lists, or how to fetch them
        self._lines: tuple[Line, ...] | None = None
        self.count = count
        self.adjustments = adjustments  # how many lines adjust closed months

    @property
    def raw(self) -> bytes:
        if callable(self._states):
            self._states = self._states()
        return self._states

    def _decoded(self) -> tuple[Line, ...]:
        if self._lines is None:
            self._lines = tuple(line_of(s) for s in orjson.loads(self.raw))
        return self._lines

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self._decoded()[index]

    def __iter__(self) -> Iterator[Line]:
        return iter(self._decoded())

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


def lines_json(lines: Sequence[Line], payee: str | None = None) -> list[dict[str, Any]]:
    """Every line's `Line.as_json` (only ``payee``'s, if given), in order. Kept lines are turned
    into JSON straight from their kept states, without building a `Line` each: half the time of
    a million-event month's ``settle --json``."""
    if isinstance(lines, KeptLines):
        return [_state_json(state) for state in orjson.loads(lines.raw) if payee is None or state[_PAYEE] == payee]
    return [line.as_json() for line in lines if payee is None or line.payee == payee]


def adjustment_count(lines: Sequence[Line]) -> int:
    """How many of a statement's lines adjust closed months (kept lines know without decoding)."""
    kept = getattr(lines, "adjustments", None)
    return kept if kept is not None else sum(1 for line in lines if line.adjustment_of)


def kept_statement_state(statement: Statement) -> tuple[dict[str, Any], bytes]:
    """What a merged statement keeps — everything but its position and closed check (which come
    from the projection's header when it is read back) — and, apart, its lines."""
    return {
        "versions": list(statement.rule_versions),
        "lines": len(statement.lines),
        "adjustments": adjustment_count(statement.lines),
        "totals": [[t.payee, str(t.source), str(t.deal), str(t.fulfillment)] for t in statement.totals],
        "digest": statement.digest,
        "findings": [[list(plain_order(o)), text] for o, text in zip(statement.finding_order, statement.findings)],
        "adjusts": list(statement.adjusts),
    }, statement.lines.raw if isinstance(statement.lines, KeptLines) else orjson.dumps([line_state(line) for line in statement.lines])


def kept_statement(month: str, state: dict[str, Any], lines: bytes | Callable[[], bytes], *, closes: dict[str, Closure], position: int) -> Statement:
    """A kept statement read back as of ``position`` (the inverse of `kept_statement_state`)."""
    closure = closes.get(month)
    totals = tuple(PayeeTotal(p, Decimal(s), Decimal(d), Decimal(f)) for p, s, d, f in state["totals"])
    return Statement(
        month, closure.built_position if closure is not None else position, tuple(state["versions"]),
        KeptLines(lines, state["lines"], state["adjustments"]), totals, state["digest"],  # type: ignore[arg-type]
        findings=tuple(text for _, text in state["findings"]),
        closed=ClosedCheck(closure, state["digest"]) if closure is not None else None,
        adjusts=tuple(state["adjusts"]),
        adjustments_go_to=adjustments_target(month, closes) if closure is not None else None,
        finding_order=tuple(tuple(o) for o, _ in state["findings"]),
    )


# --- plain data -------------------------------------------------------------------------------------

_DECIMALS = {"base", "rate", "amount"}


def line_state(line: Line) -> list[Any]:
    """A line as plain data, exactly (money and rates unrounded, moments with their offset)."""
    out: list[Any] = []
    for name in LINE_FIELDS:
        value = getattr(line, name)
        if isinstance(value, (Decimal, datetime, date)):
            value = str(value) if isinstance(value, Decimal) else value.isoformat()
        out.append(value)
    return out


_INDEX = {name: n for n, name in enumerate(LINE_FIELDS)}
_PAYEE, _PART, _BASIS, _AMOUNT = _INDEX["payee"], _INDEX["part"], _INDEX["basis"], _INDEX["amount"]
_RULE_VERSION, _ADJUSTMENT_OF, _ADJUSTMENT = _INDEX["rule_version"], _INDEX["adjustment_of"], _INDEX["adjustment"]
_RECOGNISED_AT, _EVENT_ID, _SKU = _INDEX["recognised_at"], _INDEX["event_id"], _INDEX["sku"]


def _state_sort_key(state: Sequence[Any]) -> tuple[Any, ...]:
    """`Line.sort_key` of a line state (the moment as an instant, as datetimes compare)."""
    moment = epoch_microseconds(datetime.fromisoformat(state[_RECOGNISED_AT]))
    return line_sort_key(
        state[_ADJUSTMENT_OF], moment, state[_EVENT_ID], state[_SKU], state[_PART], state[_BASIS], state[_ADJUSTMENT], state[_PAYEE]
    )


def _state_json(state: Sequence[Any]) -> dict[str, Any]:
    """`Line.as_json` of a line state (its moments were stored in their ``isoformat``)."""
    values = dict(zip(LINE_FIELDS, state))
    for name in _DECIMALS:
        values[name] = Decimal(values[name])
    return line_json(values)


def line_of(state: Sequence[Any]) -> Line:
    values = dict(zip(LINE_FIELDS, state))
    for name in _DECIMALS:
        values[name] = Decimal(values[name])
    values["recognised_at"] = datetime.fromisoformat(values["recognised_at"])
    values["day"] = date.fromisoformat(values["day"])
    return Line(**values)


def plain_order(order: tuple[Any, ...]) -> tuple[Any, ...]:
    """A fold-order key as JSON scalars (moments as microseconds since the epoch): it sorts the
    same, and reads back the same from a store."""
    return tuple(epoch_microseconds(v) if isinstance(v, datetime) else v for v in order)


def epoch_microseconds(moment: datetime) -> int:
    """An aware moment as whole microseconds since the epoch: ordered as the instants are."""
    return (moment - EPOCH) // _MICROSECOND
