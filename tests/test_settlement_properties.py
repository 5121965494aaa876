"""Invariants of settlement (SPEC §5, §6, §10), checked on generated journeys (hypothesis):

* every statement's parts add up: per payee, each part's total is the sum of its lines, and the
  total is source + deal + fulfillment;
* shuffled arrival order gives the same statements (same digests);
* a digest hashed line by line is the digest of the statement's whole canonical content;
* a rebuild — the same events read back and recorded in a fresh store — gives the same digests;
* refunds never make a payee's take from an order negative, and a fully refunded order's
  source, deal and repurchase lines net to exactly zero.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.events import LedgerEvent, OrderPaid, OrderRefunded, parse_event
from ledger.ingest import ingest_events
from ledger.store import LedgerStore
from projections.settlement import Settlement
from tests.test_settlement import events_of

CST = timezone(timedelta(hours=8))
START = datetime(2026, 7, 1, tzinfo=CST)
MONTHS = ("2026-07", "2026-08", "2026-09", "2026-10", "2026-11")
LEADS = (
    '"via": "scan", "entry_point_id": "qr-ortho-a1"',
    '"via": "scan", "entry_point_id": "qr-gym-a2"',
    '"via": "platform", "channel_id": "douyin", "recorded_by": "a3"',
)
CLASSES = ("assessment", "fill_item", "course_package")
money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999.99"), places=2)


def _at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat()


@st.composite
def journeys(draw) -> str:
    """JSON Lines of a few customers: leads (some colliding), orders of 1–3 items, sessions,
    refunds (partial, by sku, and sometimes the whole remainder)."""
    lines: list[str] = []
    for c in range(draw(st.integers(1, 3))):
        phone = f"1380000{c:04d}"
        for n in range(draw(st.integers(0, 2))):
            lines.append(f'{{"event_id": "c{c}-l{n}", "type": "lead.captured", "occurred_at": "{_at(draw(st.integers(0, 40 * 1440)))}", "person": {{"phone": "{phone}"}}, {draw(st.sampled_from(LEADS))}}}')
        for k in range(draw(st.integers(1, 3))):
            order, paid = f"so-{c}-{k}", draw(st.integers(0, 90 * 1440))
            items = draw(st.lists(st.tuples(st.sampled_from(CLASSES), st.integers(0, 4), money), min_size=1, max_size=3))
            body = ", ".join(
                f'{{"sku": "k{j}", "product_class": "{cls}", "sessions": {s}, "session_minutes": 50, "amount": "{a}"}}'
                for j, (cls, s, a) in enumerate(items)
            )
            lines.append(f'{{"event_id": "c{c}-o{k}", "type": "order.paid", "occurred_at": "{_at(paid)}", "order_id": "{order}", "person": {{"phone": "{phone}"}}, "store_id": "sh-jingan", "closed_by": "{draw(st.sampled_from(["c1", "m1"]))}", "paid_via": "store", "items": [{body}]}}')
            for j, (_, sessions, _) in enumerate(items):
                for s in range(draw(st.integers(0, sessions))):
                    lines.append(f'{{"event_id": "c{c}-o{k}-s{j}{s}", "type": "session.delivered", "occurred_at": "{_at(paid + draw(st.integers(1, 20 * 1440)))}", "order_id": "{order}", "sku": "k{j}", "clinician_id": "{draw(st.sampled_from(["p1", "p2"]))}", "room_id": "room-a", "minutes": 50}}')
            left = sum((a for _, _, a in items), Decimal("0.00"))
            item_left = {f"k{j}": a for j, (_, _, a) in enumerate(items)}
            for r in range(draw(st.integers(0, 3))):
                if left <= 0:
                    break
                sku = draw(st.sampled_from([None, *item_left]))
                cap = min(left, item_left[sku]) if sku else left
                if cap <= 0:
                    continue
                whole = draw(st.booleans())
                amount = cap if whole else min(cap, (cap * Decimal(draw(st.integers(1, 99))) / 100).quantize(Decimal("0.01")) or Decimal("0.01"))
                left -= amount
                if sku:
                    item_left[sku] -= amount
                named = f', "sku": "{sku}"' if sku else ""
                lines.append(f'{{"event_id": "c{c}-o{k}-r{r}", "type": "order.refunded", "occurred_at": "{_at(paid + draw(st.integers(1, 40 * 1440)))}", "refund_id": "rf-{order}-{r}", "order_id": "{order}", "amount": "{amount}"{named}}}')
    return "\n".join(lines)


def statements(events: list[LedgerEvent], positions: list[int] | None = None) -> dict[str, object]:
    recorded = list(zip(positions or range(1, len(events) + 1), events))
    settlement = Settlement(recorded)
    return {m: settlement.statement(m) for m in MONTHS}


@settings(max_examples=60, deadline=None)
@given(journeys())
def test_every_statement_adds_up(text: str) -> None:
    for st_ in statements(events_of(text)).values():
        grand = Decimal("0.00")
        for total in st_.totals:
            mine = [l for l in st_.lines if l.payee == total.payee]
            for part in ("source", "deal", "fulfillment"):
                assert getattr(total, part) == sum((l.amount for l in mine if l.part == part), Decimal("0.00"))
            assert total.total == total.source + total.deal + total.fulfillment
            grand += total.total
        assert grand == st_.grand_total.total == sum((l.amount for l in st_.lines), Decimal("0.00"))
        assert all(l.amount == l.amount.quantize(Decimal("0.01")) for l in st_.lines)


@settings(max_examples=60, deadline=None)
@given(journeys())
def test_a_digest_hashed_line_by_line_is_the_digest_of_the_whole_content(text: str) -> None:
    for month, st_ in statements(events_of(text)).items():
        whole = orjson.dumps(st_.content(), option=orjson.OPT_SORT_KEYS)
        assert st_.digest == hashlib.sha256(whole).hexdigest(), month


@settings(max_examples=60, deadline=None)
@given(journeys(), st.randoms(use_true_random=False))
def test_shuffled_arrival_gives_the_same_digests(text: str, rng) -> None:
    events = events_of(text)
    shuffled = list(events)
    rng.shuffle(shuffled)
    before = {m: s.digest for m, s in statements(events).items()}
    after = {m: s.digest for m, s in statements(shuffled).items()}
    assert before == after


@settings(max_examples=60, deadline=None)
@given(journeys())
def test_refunds_never_take_more_than_was_paid_and_a_full_refund_nets_to_zero(text: str) -> None:
    events = events_of(text)
    lines = [l for s in statements(events).values() for l in s.lines if l.basis != "session"]
    orders = {e.order_id: e for e in events if isinstance(e, OrderPaid)}
    refunded: dict[str, Decimal] = {}
    for e in events:
        if isinstance(e, OrderRefunded):
            refunded[e.order_id] = refunded.get(e.order_id, Decimal(0)) + e.amount
    for order_id, order in orders.items():
        take: dict[tuple[str, str], Decimal] = {}
        for l in lines:
            if l.order_id == order_id:
                take[(l.payee, l.part)] = take.get((l.payee, l.part), Decimal(0)) + l.amount
        assert all(v >= 0 for v in take.values()), take
        if refunded.get(order_id) == order.amount:
            assert all(v == 0 for v in take.values()), take


@settings(max_examples=60, deadline=None)
@given(journeys())
def test_a_rebuild_from_the_wire_form_gives_the_same_digests(text: str) -> None:
    events = events_of(text)
    rebuilt = [parse_event(e.wire()) for e in events]
    assert {m: s.digest for m, s in statements(events).items()} == {m: s.digest for m, s in statements(rebuilt).items()}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journeys(), st.randoms(use_true_random=False))
def test_a_fresh_store_with_the_same_events_in_any_order_gives_the_same_digests(text: str, rng) -> None:
    events = events_of(text)
    expected = {m: s.digest for m, s in statements(events).items()}
    shuffled = list(events)
    rng.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as folder, LedgerStore(f"sqlite:///{Path(folder) / 'ledger.db'}") as store:
        report = ingest_events(store, shuffled)
        assert not report.rejected, report.rejected
        recorded = [(r.position, r.event) for r in store.read()]
    settlement = Settlement(recorded)
    assert {m: settlement.statement(m).digest for m in MONTHS} == expected
