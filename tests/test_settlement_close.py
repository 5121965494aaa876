"""Closing a month, late events, and statements that do not depend on the store (SPEC §6).

Run against SQLite and PostgreSQL (`store_url`): a closed month is rebuilt from the events
recorded up to its close, and what arrives later is settled in the next open month as
adjustments. The same events in another store, or in another arrival order, give the same digest.
"""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

import pytest

from ledger.events import SettlementClosed
from ledger.ingest import ingest_events
from ledger.store import LedgerStore
from policies import load_rules
from projections.settlement import Settlement, close_event
from tests.scenario import CLINIC, scenario
from tests.test_settlement import ADOPT, RULES_DIR, adopt_line

JULY = ADOPT + "\n" + CLINIC + """
{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-02T10:00:00+08:00", "person": {"phone": "13800000001"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}
{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-20T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 10, "session_minutes": 50, "amount": "5000.00"}]}
{"event_id": "s1", "type": "session.delivered", "occurred_at": "2026-08-03T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}
"""
# Recorded after July is closed: an earlier lead from a2's gym code (so a2 is the source after
# all), and a session delivered in July.
LATE = """
{"event_id": "l0", "type": "lead.captured", "occurred_at": "2026-06-25T10:00:00+08:00", "person": {"phone": "13800000001"}, "via": "scan", "entry_point_id": "qr-gym-a2"}
{"event_id": "s0", "type": "session.delivered", "occurred_at": "2026-07-25T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p2", "room_id": "room-a", "minutes": 50}
"""


def record(store: LedgerStore, text: str) -> None:
    report = ingest_events(store, scenario(text))
    assert not report.rejected, report.rejected


def settlement_of(store: LedgerStore) -> Settlement:
    position = store.position()
    return Settlement([(r.position, r.event) for r in store.read(upto=position)], position=position)


def close(store: LedgerStore, month: str) -> SettlementClosed:
    """What ``channel-ledger close`` records."""
    position = store.position()
    recorded = list(store.read(upto=position))
    settlement = Settlement([(r.position, r.event) for r in recorded], position=position)
    event = close_event(settlement.statement(month), settlement.book, recorded[-1].chain)
    assert ingest_events(store, [event]).accepted == 1
    return event


def adjustments(statement) -> list[tuple[str, str, str, str, str]]:
    return [(l.event_id, l.payee, l.part, l.adjustment or "", f"{l.amount:.2f}") for l in statement.lines if l.adjustment_of]


def test_a_closed_month_never_changes_and_late_events_adjust_the_next_open_month(store: LedgerStore) -> None:
    record(store, JULY)
    closed = close(store, "2026-07")
    assert closed.event_id == "close-2026-07"
    assert closed.occurred_at.isoformat() == "2026-08-01T00:00:00+08:00"
    july_before = settlement_of(store).statement("2026-07")
    assert [(l.payee, f"{l.amount:.2f}") for l in july_before.lines] == [("a1", "400.00"), ("c1", "250.00")]

    record(store, LATE)
    now = settlement_of(store)
    july = now.statement("2026-07")
    assert july.digest == closed.digest == july_before.digest
    assert july.position == closed.position and july.closed is not None and july.closed.verified
    assert july.adjustments_go_to == "2026-08"

    august = now.statement("2026-08")
    # the source moves from a1 (ortho, 0.08) to a2 (gym, 0.10); the late July session is added
    assert adjustments(august) == [
        ("o1", "a1", "source", "reversed", "-400.00"),
        ("o1", "a2", "source", "added", "500.00"),
        ("s0", "p2", "fulfillment", "added", "50.00"),
    ]
    assert {l.adjustment_of for l in august.lines if l.adjustment_of} == {"2026-07"}
    assert august.adjusts == ("2026-07",)
    assert [(l.event_id, l.payee) for l in august.lines if not l.adjustment_of] == [("s1", "p1")]
    totals = {t.payee: t.total for t in august.totals}
    assert totals == {"a1": Decimal("-400.00"), "a2": Decimal("500.00"), "p1": Decimal("50.00"), "p2": Decimal("50.00")}


def test_adjustments_are_settled_once_then_the_next_close_absorbs_them(store: LedgerStore) -> None:
    record(store, JULY)
    close(store, "2026-07")
    record(store, LATE)
    august_close = close(store, "2026-08")
    record(store, """
        {"event_id": "s00", "type": "session.delivered", "occurred_at": "2026-07-28T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}
        {"event_id": "s8", "type": "session.delivered", "occurred_at": "2026-08-28T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p2", "room_id": "room-a", "minutes": 50}
    """)
    now = settlement_of(store)
    august = now.statement("2026-08")
    assert august.digest == august_close.digest and august.closed.verified
    assert len(adjustments(august)) == 3  # as it was closed
    september = now.statement("2026-09")
    # only what came after August's close: July's new session and August's
    assert adjustments(september) == [("s00", "p1", "fulfillment", "added", "50.00"), ("s8", "p2", "fulfillment", "added", "50.00")]
    assert [l.adjustment_of for l in september.lines] == ["2026-07", "2026-08"]


def test_a_rule_set_adopted_after_the_close_for_the_closed_month_is_settled_as_adjustments(store: LedgerStore) -> None:
    record(store, JULY)
    july_close = close(store, "2026-07")
    bonus = load_rules(RULES_DIR / "march_sports_bonus.toml").model_copy(update={"effective_from": date(2026, 7, 1)})
    record(store, adopt_line(bonus))
    now = settlement_of(store)
    assert now.statement("2026-07").digest == july_close.digest
    # deal_rate.course_package 0.05 → 0.06 from July on
    assert adjustments(now.statement("2026-08")) == [
        ("o1", "c1", "deal", "reversed", "-250.00"),
        ("o1", "c1", "deal", "added", "300.00"),
    ]


def test_a_closed_month_whose_events_changed_does_not_verify() -> None:
    events = scenario(JULY)
    recorded = list(enumerate(events, start=1))
    honest = Settlement(recorded).statement("2026-07")
    forged = SettlementClosed(
        event_id="close-2026-07", occurred_at=events[-1].occurred_at, month="2026-07",
        digest="0" * 64, position=len(recorded),
    )
    check = Settlement([*recorded, (len(recorded) + 1, forged)]).statement("2026-07").closed
    assert check is not None and not check.verified and check.rebuilt_digest == honest.digest


# --- the same facts, the same digest ------------------------------------------------------------


def generated_journeys(seed: int, customers: int = 12) -> str:
    """A few months of journeys with every kind of line: leads of all three kinds (some
    colliding), orders with several items, sessions, repeat orders, partial and full refunds."""
    rng = random.Random(seed)
    lines: list[str] = []
    leads = [
        ('"via": "scan", "entry_point_id": "qr-ortho-a1"'),
        ('"via": "scan", "entry_point_id": "qr-gym-a2"'),
        ('"via": "platform", "channel_id": "douyin", "recorded_by": "a3"'),
    ]
    classes = [("assessment", 1, "300.00"), ("fill_item", 1, "480.00"), ("course_package", 6, "2999.99"), ("course_package", 12, "6960.00")]
    for n in range(customers):
        phone = f"1380000{n:04d}"
        day = 1 + rng.randrange(20)
        if rng.random() < 0.85:
            lines.append(f'{{"event_id": "g{n}-lead", "type": "lead.captured", "occurred_at": "2026-07-{day:02d}T09:{n % 60:02d}:00+08:00", "person": {{"phone": "{phone}"}}, {rng.choice(leads)}}}')
        if rng.random() < 0.3:
            lines.append(f'{{"event_id": "g{n}-lead2", "type": "lead.captured", "occurred_at": "2026-07-{day + 2:02d}T09:00:00+08:00", "person": {{"phone": "{phone}"}}, {rng.choice(leads)}}}')
        for k in range(rng.randint(1, 3)):
            items = rng.sample(classes, rng.randint(1, 2))
            items_json = ", ".join(
                f'{{"sku": "sku{j}", "product_class": "{c}", "sessions": {s}, "session_minutes": 50, "amount": "{a}"}}'
                for j, (c, s, a) in enumerate(items)
            )
            month, pday = 7 + k, 5 + rng.randrange(20)
            order = f"so-{n}-{k}"
            lines.append(f'{{"event_id": "g{n}-o{k}", "type": "order.paid", "occurred_at": "2026-{month:02d}-{pday:02d}T{10 + rng.randrange(13)}:30:00+08:00", "order_id": "{order}", "person": {{"phone": "{phone}"}}, "store_id": "sh-jingan", "closed_by": "{rng.choice(["c1", "m1"])}", "paid_via": "store", "items": [{items_json}]}}')
            for j, (_, sessions, _) in enumerate(items):
                for s in range(rng.randint(0, sessions)):
                    lines.append(f'{{"event_id": "g{n}-o{k}-s{j}-{s}", "type": "session.delivered", "occurred_at": "2026-{month:02d}-{pday:02d}T{8 + s:02d}:00:00+08:00", "order_id": "{order}", "sku": "sku{j}", "clinician_id": "{rng.choice(["p1", "p2"])}", "room_id": "room-a", "minutes": 50}}')
            total = sum(Decimal(a) for _, _, a in items)
            roll = rng.random()
            if roll < 0.2:
                lines.append(f'{{"event_id": "g{n}-o{k}-rf", "type": "order.refunded", "occurred_at": "2026-{month + 1:02d}-02T11:00:00+08:00", "refund_id": "rf-{order}", "order_id": "{order}", "amount": "{total}"}}')
            elif roll < 0.45:
                part = (total / 3).quantize(Decimal("0.01"))
                for r in range(2):
                    lines.append(f'{{"event_id": "g{n}-o{k}-rf{r}", "type": "order.refunded", "occurred_at": "2026-{month + 1:02d}-0{3 + r}T11:00:00+08:00", "refund_id": "rf-{order}-{r}", "order_id": "{order}", "amount": "{part}"}}')
    return "\n".join(lines)


MONTHS = ("2026-07", "2026-08", "2026-09", "2026-10")


def digests(store: LedgerStore) -> dict[str, str]:
    settlement = settlement_of(store)
    return {m: settlement.statement(m).digest for m in MONTHS}


def test_the_same_events_in_another_store_and_another_arrival_order_give_the_same_digests(store: LedgerStore, tmp_path) -> None:
    events = scenario(JULY + generated_journeys(seed=3))
    assert not ingest_events(store, events).rejected
    shuffled = list(events)
    random.Random(11).shuffle(shuffled)
    with LedgerStore(f"sqlite:///{tmp_path / 'other.db'}") as other:
        report = ingest_events(other, shuffled)
        assert not report.rejected and report.accepted == len(events)
        assert digests(other) == digests(store)
        assert settlement_of(other).statement("2026-08").lines  # the months are not empty


def test_rebuilding_from_the_stored_events_gives_the_same_digests(store: LedgerStore, tmp_path) -> None:
    assert not ingest_events(store, scenario(JULY + generated_journeys(seed=5))).rejected
    first = digests(store)
    assert digests(store) == first  # running it twice
    with LedgerStore(f"sqlite:///{tmp_path / 'rebuilt.db'}") as fresh:
        assert not ingest_events(fresh, [r.event for r in store.read()]).rejected
        assert digests(fresh) == first


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_generated_journeys_are_accepted_and_settle(seed: int) -> None:
    events = scenario(JULY + generated_journeys(seed))
    settlement = Settlement(list(enumerate(events, start=1)))
    assert any(settlement.statement(m).lines for m in MONTHS)
