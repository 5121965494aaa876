"""The three-part split (SPEC §5) and the month's statement (SPEC §6), in the domain's notation.

Each test states its events as JSON Lines on top of `CLINIC` (one store's staff, an ortho
channel of kind medical_trust with a1's live code, a gym channel of kind sports_scene with a2's
live code, and douyin of kind online_platform), the shipped rules adopted, and the statement
lines it expects as small tuples:

    (event_id, payee, part, basis, base, rate, amount)
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from cli.store_cmds import adoption_event
from ledger.events import LedgerEvent
from policies import NoRulesInForce, RuleSet, default_rules, load_rules
from projections.settlement import Settlement, Statement, compare, latest_month_with_activity
from tests.scenario import CLINIC, scenario

RULES_DIR = Path(__file__).parent / "rules"
ADOPT = orjson.dumps(adoption_event(default_rules()).wire()).decode()


def adopt_line(rules: RuleSet) -> str:
    return orjson.dumps(adoption_event(rules).wire()).decode()


def events_of(text: str, *, adopt: str = ADOPT) -> list[LedgerEvent]:
    """The shipped rules, the clinic, then the scenario's lines."""
    return scenario(adopt + "\n" + CLINIC + text)


def settlement_of(text: str, *, rules: RuleSet | None = None, adopt: str = ADOPT) -> Settlement:
    return Settlement(list(enumerate(events_of(text, adopt=adopt), start=1)), rules=rules)


def statement(text: str, month: str, **kwargs) -> Statement:
    return settlement_of(text, **kwargs).statement(month)


def rows(st: Statement) -> list[tuple[str, ...]]:
    return [
        (l.event_id, l.payee, l.part, l.basis, f"{l.base:.2f}", format(l.rate, "f"), f"{l.amount:.2f}")
        for l in st.lines
    ]


def amounts(st: Statement) -> list[tuple[str, str, str, str]]:
    return [(l.event_id, l.payee, l.basis if l.basis != "order" else l.part, f"{l.amount:.2f}") for l in st.lines]


# A customer who scans a1's ortho code (medical_trust) and one who scans a2's gym code.
ORTHO_LEAD = '{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-02T10:00:00+08:00", "person": {"phone": "13800000001"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}'
GYM_LEAD = '{"event_id": "l2", "type": "lead.captured", "occurred_at": "2026-07-02T11:00:00+08:00", "person": {"phone": "13800000002"}, "via": "scan", "entry_point_id": "qr-gym-a2"}'
DOUYIN_LEAD = '{"event_id": "l3", "type": "lead.captured", "occurred_at": "2026-07-02T12:00:00+08:00", "person": {"platform_user": "douyin:8842"}, "via": "platform", "channel_id": "douyin", "recorded_by": "a3"}'


# --- source and deal: every cell of the rate tables ------------------------------------------

THREE_ITEMS = '[{"sku": "assess", "product_class": "assessment", "sessions": 1, "session_minutes": 60, "amount": "300.00"}, {"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}, {"sku": "course", "product_class": "course_package", "sessions": 10, "session_minutes": 50, "amount": "5000.00"}]'


@pytest.mark.parametrize(
    ("lead", "person", "owner", "fill", "course"),
    [
        (ORTHO_LEAD, '{"phone": "13800000001"}', "a1", ("0.03", "15.00"), ("0.08", "400.00")),  # medical_trust
        (GYM_LEAD, '{"phone": "13800000002"}', "a2", ("0.04", "20.00"), ("0.10", "500.00")),  # sports_scene
        (DOUYIN_LEAD, '{"platform_user": "douyin:8842"}', "a3", ("0.02", "10.00"), ("0.05", "250.00")),  # online_platform
    ],
    ids=["medical_trust", "sports_scene", "online_platform"],
)
def test_source_and_deal_lines_use_every_cell_of_the_rate_tables(lead, person, owner, fill, course) -> None:
    st = statement(lead + f"""
        {{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {person}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": {THREE_ITEMS}}}
    """, "2026-07")
    # assessment rates are 0.00 in every table: no line (a statement lists money that moves)
    # lines of one event sort by sku, then part
    assert rows(st) == [
        ("o1", owner, "source", "order", "5000.00", *course),
        ("o1", "c1", "deal", "order", "5000.00", "0.05", "250.00"),
        ("o1", owner, "source", "order", "500.00", *fill),
        ("o1", "c1", "deal", "order", "500.00", "0.02", "10.00"),
    ]
    line = st.lines[2]
    assert line.rule == f"source_rate.{ {'a1': 'medical_trust', 'a2': 'sports_scene', 'a3': 'online_platform'}[owner] }.fill_item"
    assert line.rule_version == "2026.1" and line.sku == "fill" and line.product_class == "fill_item"


def test_assessment_cells_pay_when_a_rule_set_gives_them_a_rate() -> None:
    rules = default_rules().model_copy(update={"version": "t-assess"})
    data = rules.canonical_dict()
    data["source_rate"]["medical_trust"]["assessment"] = "0.01"
    data["deal_rate"]["assessment"] = "0.02"
    st = statement(ORTHO_LEAD + """
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "assess", "product_class": "assessment", "sessions": 1, "session_minutes": 60, "amount": "300.00"}]}
    """, "2026-07", rules=RuleSet.from_event_rules(data))
    assert rows(st) == [
        ("o1", "a1", "source", "order", "300.00", "0.01", "3.00"),
        ("o1", "c1", "deal", "order", "300.00", "0.02", "6.00"),
    ]


def test_a_walk_in_earns_no_source_line_but_the_deal_is_paid() -> None:
    st = statement("""
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13900000009"}, "store_id": "sh-jingan", "closed_by": "m1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "480.00"}]}
    """, "2026-07")
    assert rows(st) == [("o1", "m1", "deal", "order", "480.00", "0.02", "9.60")]


def test_the_source_goes_to_the_owner_at_payment_time_after_an_approved_transfer() -> None:
    st = statement(ORTHO_LEAD + """
        {"event_id": "t1", "type": "ownership.transfer_requested", "occurred_at": "2026-07-03T09:00:00+08:00", "ticket_id": "tk-1", "person": {"phone": "13800000001"}, "to_staff_id": "a2", "to_channel_id": "gym", "trigger": "customer_request", "requested_by": "a2"}
        {"event_id": "t2", "type": "ownership.transfer_decided", "occurred_at": "2026-07-03T12:00:00+08:00", "ticket_id": "tk-1", "decision": "approved", "decided_by": "m1"}
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "mini_program", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
    """, "2026-07")
    # a2 now owns the customer through the gym channel: sports_scene's fill_item rate
    assert rows(st)[0] == ("o1", "a2", "source", "order", "500.00", "0.04", "20.00")
    assert st.lines[0].channel_id == "gym"


# --- fulfillment -------------------------------------------------------------------------------

COURSE_ORDER = '{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13900000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 3, "session_minutes": 50, "amount": "1000.00"}]}'


def test_a_session_pays_the_clinician_a_share_of_the_unrounded_session_value() -> None:
    st = statement(COURSE_ORDER + """
        {"event_id": "s1", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}
        {"event_id": "s2", "type": "session.delivered", "occurred_at": "2026-07-09T10:00:00+08:00", "order_id": "so-1", "sku": "course", "clinician_id": "p2", "room_id": "room-a", "minutes": 50}
    """, "2026-07")
    # 1000.00 ÷ 3 = 333.333…; × 0.10 = 33.333… → 33.33 (the base is shown rounded)
    assert [r for r in rows(st) if r[3] == "session"] == [
        ("s1", "p1", "fulfillment", "session", "333.33", "0.10", "33.33"),
        ("s2", "p2", "fulfillment", "session", "333.33", "0.10", "33.33"),
    ]


def test_every_line_rounds_half_up_to_the_cent() -> None:
    st = statement("""
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13900000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "100.25"}]}
        {"event_id": "s1", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}
    """, "2026-07")
    # deal 100.25 × 0.02 = 2.005 → 2.01; session 100.25 × 0.10 = 10.025 → 10.03 (banker's rounding would give 2.00 and 10.02)
    assert amounts(st) == [("o1", "c1", "deal", "2.01"), ("s1", "p1", "session", "10.03")]


# --- repurchase --------------------------------------------------------------------------------

REPEAT = '{"event_id": "o2", "type": "order.paid", "occurred_at": "2026-07-20T17:30:00+08:00", "order_id": "so-2", "person": {"phone": "13900000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course2", "product_class": "course_package", "sessions": 10, "session_minutes": 50, "amount": "4000.00"}, {"sku": "fill2", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "300.00"}]}'


def _session(eid: str, day: str, clinician: str, order: str = "so-1") -> str:
    return f'{{"event_id": "{eid}", "type": "session.delivered", "occurred_at": "2026-07-{day}T10:00:00+08:00", "order_id": "{order}", "clinician_id": "{clinician}", "room_id": "room-a", "minutes": 50}}'


def repurchase_rows(st: Statement) -> list[tuple[str, ...]]:
    return [r for r in rows(st) if r[3] == "repurchase"]


def test_a_repeat_order_pays_repurchase_to_the_clinician_with_most_sessions_of_the_previous_order() -> None:
    st = statement("\n".join([COURSE_ORDER, _session("s1", "08", "p2"), _session("s2", "09", "p1"), _session("s3", "10", "p1"), REPEAT]), "2026-07")
    # p1 delivered 2 of so-1's sessions, p2 one; only the course_package item of so-2 pays
    assert repurchase_rows(st) == [("o2", "p1", "fulfillment", "repurchase", "4000.00", "0.03", "120.00")]
    assert not [r for r in rows(st) if r[0] == "o1" and r[3] == "repurchase"]  # the first order is not a repeat


def test_a_repurchase_tie_goes_to_the_later_delivery() -> None:
    st = statement("\n".join([COURSE_ORDER, _session("s1", "08", "p1"), _session("s2", "09", "p2"), REPEAT]), "2026-07")
    assert repurchase_rows(st) == [("o2", "p2", "fulfillment", "repurchase", "4000.00", "0.03", "120.00")]


def test_no_repurchase_line_when_nobody_delivered_the_previous_order_before_the_repeat() -> None:
    # s1 is delivered after the repeat order was paid: it does not count for that repurchase
    st = statement("\n".join([COURSE_ORDER, REPEAT, _session("s1", "25", "p1")]), "2026-07")
    assert repurchase_rows(st) == []


# --- refunds -----------------------------------------------------------------------------------

GYM_COURSE = GYM_LEAD + """
{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 12, "session_minutes": 50, "amount": "6960.00"}]}
{"event_id": "s1", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}
"""


def test_a_partial_refund_claws_back_source_and_deal_in_the_refund_month_but_not_fulfillment() -> None:
    settlement = settlement_of(GYM_COURSE + """
        {"event_id": "rf1", "type": "order.refunded", "occurred_at": "2026-08-20T11:00:00+08:00", "refund_id": "rf-1", "order_id": "so-1", "amount": "580.00", "sessions": 1}
    """)
    july, august = settlement.statement("2026-07"), settlement.statement("2026-08")
    assert amounts(july) == [("o1", "a2", "source", "696.00"), ("o1", "c1", "deal", "348.00"), ("s1", "p1", "session", "58.00")]
    # round(696.00 × 580 ÷ 6960) = 58.00; round(348.00 × 580 ÷ 6960) = 29.00
    assert rows(august) == [
        ("rf1", "a2", "source", "refund", "696.00", "0.083333", "-58.00"),
        ("rf1", "c1", "deal", "refund", "348.00", "0.083333", "-29.00"),
    ]


def test_a_full_refund_in_parts_nets_source_and_deal_to_exactly_zero() -> None:
    # 99.99 sports_scene course: source 9.999 → 10.00, deal 4.9995 → 5.00. Three refunds of
    # 33.33: round(10.00 × ⅓) = 3.33 twice, and the last refund takes the remaining 3.34 (not
    # 3.33, which would leave a cent); deal 1.67, 1.67, then the remaining 1.66.
    settlement = settlement_of(GYM_LEAD + """
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 3, "session_minutes": 50, "amount": "99.99"}]}
        {"event_id": "rf1", "type": "order.refunded", "occurred_at": "2026-07-10T11:00:00+08:00", "refund_id": "rf-1", "order_id": "so-1", "amount": "33.33"}
        {"event_id": "rf2", "type": "order.refunded", "occurred_at": "2026-07-11T11:00:00+08:00", "refund_id": "rf-2", "order_id": "so-1", "amount": "33.33"}
        {"event_id": "rf3", "type": "order.refunded", "occurred_at": "2026-08-02T11:00:00+08:00", "refund_id": "rf-3", "order_id": "so-1", "amount": "33.33"}
    """)
    july, august = settlement.statement("2026-07"), settlement.statement("2026-08")
    assert amounts(july) == [
        ("o1", "a2", "source", "10.00"), ("o1", "c1", "deal", "5.00"),
        ("rf1", "a2", "refund", "-3.33"), ("rf1", "c1", "refund", "-1.67"),
        ("rf2", "a2", "refund", "-3.33"), ("rf2", "c1", "refund", "-1.67"),
    ]
    assert amounts(august) == [("rf3", "a2", "refund", "-3.34"), ("rf3", "c1", "refund", "-1.66")]
    both = july.lines + august.lines
    for payee in ("a2", "c1"):
        assert sum(l.amount for l in both if l.payee == payee) == Decimal("0.00")


def test_a_single_full_refund_nets_the_order_to_zero_and_keeps_earned_fulfillment() -> None:
    st = statement(GYM_COURSE + """
        {"event_id": "rf1", "type": "order.refunded", "occurred_at": "2026-07-30T11:00:00+08:00", "refund_id": "rf-1", "order_id": "so-1", "amount": "6960.00", "sessions": 11}
    """, "2026-07")
    totals = {t.payee: t.total for t in st.totals}
    assert totals == {"a2": Decimal("0.00"), "c1": Decimal("0.00"), "p1": Decimal("58.00")}
    assert [r[6] for r in rows(st) if r[3] == "refund"] == ["-696.00", "-348.00"]


def test_a_refund_naming_a_sku_claws_back_only_that_item_over_the_item_amount() -> None:
    st = statement(GYM_LEAD + """
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 10, "session_minutes": 50, "amount": "4000.00"}, {"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
        {"event_id": "rf1", "type": "order.refunded", "occurred_at": "2026-07-10T11:00:00+08:00", "refund_id": "rf-1", "order_id": "so-1", "sku": "fill", "amount": "250.00"}
    """, "2026-07")
    # half the fill item: source 20.00 → -10.00, deal 10.00 → -5.00; the course lines are untouched
    assert [r for r in rows(st) if r[3] == "refund"] == [
        ("rf1", "a2", "source", "refund", "20.00", "0.50", "-10.00"),
        ("rf1", "c1", "deal", "refund", "10.00", "0.50", "-5.00"),
    ]
    assert all(l.sku == "fill" for l in st.lines if l.basis == "refund")


def test_a_refund_claws_back_the_repurchase_line_too() -> None:
    st = statement("\n".join([COURSE_ORDER, _session("s1", "08", "p1"), REPEAT]) + """
        {"event_id": "rf1", "type": "order.refunded", "occurred_at": "2026-07-25T11:00:00+08:00", "refund_id": "rf-1", "order_id": "so-2", "sku": "course2", "amount": "1000.00"}
    """, "2026-07")
    assert [r for r in rows(st) if r[0] == "rf1"] == [
        ("rf1", "c1", "deal", "refund", "200.00", "0.25", "-50.00"),
        ("rf1", "p1", "fulfillment", "refund", "120.00", "0.25", "-30.00"),
    ]


# --- source window ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid_at", "source_paid"),
    [("2027-07-02T09:59:00+08:00", True), ("2027-07-02T10:00:00+08:00", False)],
    ids=["just-inside", "at-the-end"],
)
def test_the_source_window_ends_exactly_365_days_after_the_source_lead(paid_at: str, source_paid: bool) -> None:
    st = statement(ORTHO_LEAD + f"""
        {{"event_id": "o1", "type": "order.paid", "occurred_at": "{paid_at}", "order_id": "so-1", "person": {{"phone": "13800000001"}}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}}]}}
    """, "2027-07")
    assert [r[2] for r in rows(st)] == (["source", "deal"] if source_paid else ["deal"])


# --- months, in the rules' time zone --------------------------------------------------------------


def test_an_order_at_2330_local_on_the_31st_is_in_that_month_though_it_is_1530_utc() -> None:
    text = """
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-31T15:30:00Z", "order_id": "so-1", "person": {"phone": "13900000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
        {"event_id": "o2", "type": "order.paid", "occurred_at": "2026-07-31T16:30:00Z", "order_id": "so-2", "person": {"phone": "13900000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
    """
    settlement = settlement_of(text)
    july, august = settlement.statement("2026-07"), settlement.statement("2026-08")
    assert [l.event_id for l in july.lines] == ["o1"] and str(july.lines[0].day) == "2026-07-31"
    assert [l.event_id for l in august.lines] == ["o2"] and str(august.lines[0].day) == "2026-08-01"


# --- rule versions ---------------------------------------------------------------------------------


def test_a_rule_change_adopted_mid_month_applies_from_its_effective_date() -> None:
    bonus = load_rules(RULES_DIR / "march_sports_bonus.toml").model_copy(update={"effective_from": date(2026, 7, 15)})
    text = GYM_LEAD + "\n" + adopt_line(bonus) + """
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-14T23:59:00+08:00", "order_id": "so-1", "person": {"phone": "13800000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
        {"event_id": "o2", "type": "order.paid", "occurred_at": "2026-07-15T00:00:00+08:00", "order_id": "so-2", "person": {"phone": "13800000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
    """
    st = statement(text, "2026-07")
    assert [(r[0], r[2], r[5], l.rule_version) for r, l in zip(rows(st), st.lines)] == [
        ("o1", "source", "0.04", "2026.1"),
        ("o1", "deal", "0.02", "2026.1"),
        ("o2", "source", "0.05", "2026.3"),
        ("o2", "deal", "0.02", "2026.3"),
    ]
    assert st.rule_versions == ("2026.1", "2026.3")


def test_a_line_before_every_rule_set_is_refused_not_guessed() -> None:
    settlement = settlement_of("""
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2025-12-30T10:00:00+08:00", "order_id": "so-1", "person": {"phone": "13900000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
        {"event_id": "o2", "type": "order.paid", "occurred_at": "2026-07-06T10:00:00+08:00", "order_id": "so-2", "person": {"phone": "13900000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
    """)
    with pytest.raises(NoRulesInForce, match=r"no rule set is in force on 2025-12-30.*event o1"):
        settlement.statement("2025-12")
    assert [l.event_id for l in settlement.statement("2026-07").lines] == ["o2"]


def test_no_rule_set_at_all_is_a_clear_error() -> None:
    with pytest.raises(NoRulesInForce, match="none has been adopted"):
        statement(COURSE_ORDER, "2026-07", adopt="")


# --- the statement ---------------------------------------------------------------------------------


def test_totals_per_payee_and_part_are_sums_of_rounded_lines() -> None:
    st = statement("\n".join([GYM_COURSE, _session("s2", "09", "p1")]), "2026-07")
    assert [(t.payee, t.as_json()) for t in st.totals] == [
        ("a2", {"source": "696.00", "deal": "0.00", "fulfillment": "0.00", "total": "696.00"}),
        ("c1", {"source": "0.00", "deal": "348.00", "fulfillment": "0.00", "total": "348.00"}),
        ("p1", {"source": "0.00", "deal": "0.00", "fulfillment": "116.00", "total": "116.00"}),
    ]
    assert st.grand_total.total == Decimal("1160.00")


def test_an_empty_month_has_a_statement_under_the_rules_in_force() -> None:
    st = statement(GYM_COURSE, "2026-09")
    assert st.lines == () and st.totals == () and st.rule_versions == ("2026.1",)
    assert len(st.digest) == 64


def test_the_digest_covers_content_not_position() -> None:
    events = events_of(GYM_COURSE)
    a = Settlement(list(enumerate(events, start=1))).statement("2026-07")
    b = Settlement(list(enumerate(events, start=101)), position=500).statement("2026-07")
    assert a.position != b.position and a.digest == b.digest


def test_the_latest_month_with_activity_is_taken_in_the_rules_time_zone() -> None:
    events = events_of(GYM_COURSE + """
        {"event_id": "s9", "type": "session.delivered", "occurred_at": "2026-08-31T16:30:00Z", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}
    """)
    assert latest_month_with_activity(events, default_rules()) == "2026-09"
    assert latest_month_with_activity(events_of(""), default_rules()) is None


# --- what-if ----------------------------------------------------------------------------------------

COLLISION = ORTHO_LEAD + """
{"event_id": "l9", "type": "lead.captured", "occurred_at": "2026-07-10T10:00:00+08:00", "person": {"phone": "13800000001"}, "via": "scan", "entry_point_id": "qr-gym-a2"}
{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-20T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 10, "session_minutes": 50, "amount": "5000.00"}]}
"""


def short_reattributing() -> RuleSet:
    data = load_rules(RULES_DIR / "short_protection.toml").canonical_dict()
    data["reattribute_after_protection"] = True
    return RuleSet.from_event_rules(data)


def test_a_what_if_with_a_short_protection_moves_the_source_to_the_later_lead() -> None:
    events = list(enumerate(events_of(COLLISION), start=1))
    baseline, what_if = Settlement(events), Settlement(events, rules=short_reattributing())
    comparison = compare(baseline, what_if, "2026-07")
    # in force: protection 90 days, a1 keeps the customer; what-if: protection 3 days and
    # re-attribution after it, so a2's gym lead of 07-10 takes over (sports_scene: 0.10)
    assert [(c.status, c.line.payee, f"{c.old_amount:.2f}", f"{c.new_amount:.2f}") for c in comparison.lines] == [
        ("removed", "a1", "400.00", "0.00"),
        ("added", "a2", "0.00", "500.00"),
    ]
    reason = comparison.lines[1].reason
    assert reason.startswith("owner changed: protection 90→3 days, reattribute after protection off→on")
    assert "lead l9 from a2 now takes the source" in reason
    assert {p.payee: (p.old.total, p.new.total, p.change) for p in comparison.payees if p.change} == {
        "a1": (Decimal("400.00"), Decimal("0.00"), Decimal("-400.00")),
        "a2": (Decimal("0.00"), Decimal("500.00"), Decimal("500.00")),
    }
    assert comparison.what_if.what_if == "2026.2-short" and comparison.baseline.what_if is None


def test_a_what_if_rate_change_names_the_rate() -> None:
    events = list(enumerate(events_of(GYM_LEAD + """
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13800000002"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "fill", "product_class": "fill_item", "sessions": 1, "session_minutes": 50, "amount": "500.00"}]}
    """), start=1))
    bonus = load_rules(RULES_DIR / "march_sports_bonus.toml")  # effective 2026-03-01, applied to July anyway
    comparison = compare(Settlement(events), Settlement(events, rules=bonus), "2026-07")
    assert [(c.status, c.line.part, c.reason) for c in comparison.lines] == [
        ("changed", "source", "rate source_rate.sports_scene.fill_item 0.04→0.05"),
    ]
    assert dict(comparison.rule_changes)["2026.1"][-1].field == "deal_rate.course_package"


def test_a_what_if_replaces_every_adopted_version_whatever_its_effective_date() -> None:
    # the what-if file takes effect on 2026-03-01, but settles January's lines too
    events = list(enumerate(events_of("""
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-01-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "13900000001"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "course", "product_class": "course_package", "sessions": 1, "session_minutes": 50, "amount": "1000.00"}]}
    """), start=1))
    st = Settlement(events, rules=load_rules(RULES_DIR / "march_sports_bonus.toml")).statement("2026-01")
    assert rows(st) == [("o1", "c1", "deal", "order", "1000.00", "0.06", "60.00")]
    assert st.rule_versions == ("2026.3",)
