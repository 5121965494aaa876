"""The due list (SPEC §7): who to contact at T, and why — each kind of item, and what is not due yet.

The clinic (tests/scenario.py CLINIC): agent a2 owns leads scanned on qr-gym-a2 (gym), a1 those on
qr-ortho-a1 (ortho); both at store sh-jingan. Shipped rules: followup_timeout_days 7 (the list
warns after 5 days), protection 90 days, Asia/Shanghai.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal as D

import orjson

from policies import RuleBook, default_rules
from projections.due import DueItem, DueList, due_list
from tests.golden import run_cli
from tests.scenario import CLINIC, scenario, write

BOOK = RuleBook.single(default_rules())

LEAD = '{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-02T10:00:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-gym-a2"}\n'
ASSESSED = """
    {"event_id": "b1", "type": "assessment.booked", "occurred_at": "2026-07-03T10:00:00+08:00", "appointment_id": "ap-1", "person": {"phone": "18612345678"}, "store_id": "sh-jingan", "clinician_id": "p1", "slot_start": "2026-07-10T10:00:00+08:00", "slot_minutes": 45}
    {"event_id": "a1", "type": "assessment.attended", "occurred_at": "2026-07-10T10:00:00+08:00", "appointment_id": "ap-1"}
"""
COURSE = (
    '{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-05T15:00:00+08:00", "order_id": "so-1", '
    '"person": {"phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", '
    '"items": [{"sku": "pt-10", "product_class": "course_package", "sessions": 10, "session_minutes": 60, "amount": "4000"}], '
    '"valid_until": "2026-08-31"}\n'
)


def followup(event_id: str, at: str, by: str = "a2") -> str:
    return f'{{"event_id": "{event_id}", "type": "followup.logged", "occurred_at": "{at}", "person": {{"phone": "18612345678"}}, "by": "{by}", "medium": "wechat"}}\n'


def session(event_id: str, at: str) -> str:
    return f'{{"event_id": "{event_id}", "type": "session.delivered", "occurred_at": "{at}", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 60}}\n'


def due(text: str, at: str) -> DueList:
    return due_list(scenario(CLINIC + text), datetime.fromisoformat(at), BOOK)


def of_kind(d: DueList, kind: str) -> list[DueItem]:
    return [i for i in d.items if i.kind == kind]


# --- the 24 h window after an attended assessment ------------------------------------------------


def test_an_attended_assessment_is_due_inside_its_24_hour_window() -> None:
    [item] = of_kind(due(LEAD + ASSESSED, "2026-07-10T18:00:00+08:00"), "post_assessment")
    assert (item.customer_id, item.phone, item.owner_staff_id, item.channel_id, item.store_id) == (
        item.customer_id, "+8618612345678", "a2", "gym", "sh-jingan",
    )
    assert item.deadline == datetime.fromisoformat("2026-07-11T10:00:00+08:00")
    assert item.hours_left == D("16.0") and item.reference == "ap-1"


def test_the_window_is_not_due_after_a_follow_up_or_a_treatment_order_or_once_closed() -> None:
    after_followup = LEAD + ASSESSED + followup("f1", "2026-07-10T12:00:00+08:00", by="c1")
    assert of_kind(due(after_followup, "2026-07-10T18:00:00+08:00"), "post_assessment") == []
    ordered = LEAD + ASSESSED + """
        {"event_id": "o2", "type": "order.paid", "occurred_at": "2026-07-10T11:00:00+08:00", "order_id": "so-2", "person": {"phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "shock-3", "product_class": "fill_item", "sessions": 3, "session_minutes": 30, "amount": "600"}]}
    """
    assert of_kind(due(ordered, "2026-07-10T18:00:00+08:00"), "post_assessment") == []
    assert of_kind(due(LEAD + ASSESSED, "2026-07-11T10:00:00+08:00"), "post_assessment") == []  # closed
    assert of_kind(due(LEAD + ASSESSED, "2026-07-10T09:59:00+08:00"), "post_assessment") == []  # not yet


def test_paying_the_assessment_fee_does_not_close_the_window() -> None:
    fee = LEAD + ASSESSED + """
        {"event_id": "o3", "type": "order.paid", "occurred_at": "2026-07-10T10:50:00+08:00", "order_id": "so-3", "person": {"phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "assess", "product_class": "assessment", "sessions": 1, "session_minutes": 45, "amount": "199"}]}
    """
    assert len(of_kind(due(fee, "2026-07-10T18:00:00+08:00"), "post_assessment")) == 1


# --- protected leads about to time out -------------------------------------------------------------


def test_a_protected_lead_is_due_when_its_owner_has_been_quiet_for_timeout_minus_2_days() -> None:
    assert of_kind(due(LEAD, "2026-07-07T09:59:00+08:00"), "followup_timeout") == []  # 4 d 23 h 59 min
    [item] = of_kind(due(LEAD, "2026-07-07T10:00:00+08:00"), "followup_timeout")
    assert (item.owner_staff_id, item.channel_id, item.store_id) == ("a2", "gym", "sh-jingan")
    assert item.deadline == datetime.fromisoformat("2026-07-09T10:00:00+08:00")  # a takeover ticket is eligible then
    assert item.hours_left == D("48.0") and not item.overdue
    [late] = of_kind(due(LEAD, "2026-07-09T10:01:00+08:00"), "followup_timeout")
    assert late.overdue and str(late.hours_left) == "0.0"  # a minute late is late, however it rounds


def test_only_the_owners_own_follow_up_or_a_payment_resets_the_clock() -> None:
    by_owner = LEAD + followup("f1", "2026-07-05T10:00:00+08:00")
    assert of_kind(due(by_owner, "2026-07-07T10:00:00+08:00"), "followup_timeout") == []
    by_someone_else = LEAD + followup("f1", "2026-07-05T10:00:00+08:00", by="a1")
    assert len(of_kind(due(by_someone_else, "2026-07-07T10:00:00+08:00"), "followup_timeout")) == 1
    paying = LEAD + COURSE
    assert of_kind(due(paying, "2026-07-09T10:00:00+08:00"), "followup_timeout") == []
    [item] = of_kind(due(paying, "2026-07-10T15:00:00+08:00"), "followup_timeout")
    assert item.since == datetime.fromisoformat("2026-07-05T15:00:00+08:00")


def test_a_lead_is_no_longer_due_once_its_protection_has_ended() -> None:
    assert len(of_kind(due(LEAD, "2026-09-30T09:00:00+08:00"), "followup_timeout")) == 1  # overdue, still protected
    assert of_kind(due(LEAD, "2026-09-30T10:00:00+08:00"), "followup_timeout") == []  # 90 days are over


# --- stalled courses -------------------------------------------------------------------------------


def test_a_course_customer_without_a_session_for_14_days_is_due() -> None:
    text = LEAD + COURSE + session("s1", "2026-07-06T10:00:00+08:00")
    assert of_kind(due(text, "2026-07-20T09:59:00+08:00"), "stalled_course") == []
    [item] = of_kind(due(text, "2026-07-20T10:00:00+08:00"), "stalled_course")
    assert item.since == datetime.fromisoformat("2026-07-06T10:00:00+08:00")
    assert item.why == "9 sessions left, none for 14 d"
    assert item.deadline == datetime.fromisoformat("2026-09-01T00:00:00+08:00")  # when the package expires


def test_a_course_with_nothing_left_is_not_stalled() -> None:
    used_up = LEAD + COURSE + '\n{"event_id": "r1", "type": "order.refunded", "occurred_at": "2026-07-06T10:00:00+08:00", "refund_id": "rf-1", "order_id": "so-1", "amount": "4000", "sessions": 10}'
    assert of_kind(due(used_up, "2026-07-25T10:00:00+08:00"), "stalled_course") == []


# --- packages expiring -----------------------------------------------------------------------------


def test_a_package_expiring_within_30_days_with_sessions_left_is_due() -> None:
    text = LEAD + COURSE + session("s1", "2026-07-06T10:00:00+08:00")
    assert of_kind(due(text, "2026-08-01T23:59:00+08:00"), "expiring_package") == []  # 30 days and a minute
    [item] = of_kind(due(text, "2026-08-02T00:00:00+08:00"), "expiring_package")
    assert item.deadline == datetime.fromisoformat("2026-09-01T00:00:00+08:00")
    assert item.hours_left == D("720.0") and item.reference == "so-1/pt-10"
    assert item.why == "9 of 10 left, valid until 2026-08-31"
    assert of_kind(due(text, "2026-09-01T00:00:00+08:00"), "expiring_package") == []  # expired: breakage now


# --- urgency -------------------------------------------------------------------------------------


def test_the_list_is_ordered_by_urgency_upcoming_deadlines_first_then_overdue_then_no_deadline() -> None:
    text = LEAD + ASSESSED + """
        {"event_id": "l2", "type": "lead.captured", "occurred_at": "2026-06-20T10:00:00+08:00", "person": {"phone": "13912340002"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}
        {"event_id": "o9", "type": "order.paid", "occurred_at": "2026-06-20T15:00:00+08:00", "order_id": "so-9", "person": {"phone": "13912340009"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "pt-10", "product_class": "course_package", "sessions": 10, "session_minutes": 60, "amount": "4000"}]}
    """
    d = due(text, "2026-07-10T18:00:00+08:00")
    assert [(i.kind, i.reference) for i in d.items] == [
        ("post_assessment", "ap-1"),  # 16 h left
        ("followup_timeout", "protection until 2026-09-30"),  # l1: overdue since 9 July 10:00
        ("followup_timeout", "protection until 2026-09-18"),  # l2: overdue since 27 June
        ("stalled_course", "so-9"),  # a walk-in's course without expiry: no deadline
    ]
    assert [i.overdue for i in d.items] == [False, True, True, False]
    assert d.items[3].owner_staff_id is None and d.items[3].channel_id == "walk-in"


# --- the command -----------------------------------------------------------------------------------


def test_due_masks_phones_unless_unmasked_and_reads_a_time_without_offset_in_the_rules_zone(tmp_path, sqlite_store_url) -> None:
    path = write(tmp_path, CLINIC + LEAD + ASSESSED)
    assert run_cli(["init", "--store", sqlite_store_url]).returncode == 0
    assert run_cli(["ingest", path, "--store", sqlite_store_url]).returncode == 0
    done = run_cli(["due", "--at", "2026-07-10 18:00", "--kind", "post_assessment", "--json", "--store", sqlite_store_url])
    assert done.returncode == 0, done.stderr.decode()
    out = orjson.loads(done.stdout)
    assert out["at"] == "2026-07-10T18:00:00+08:00" and out["count"] == 1
    [item] = out["items"]
    assert item["phone"] == "186****5678" and item["hours_left"] == "16.0"
    assert {"kind", "customer_id", "owner_staff_id", "channel_id", "store_id", "why", "deadline"} <= set(item)
    text = run_cli(["due", "--at", "2026-07-10T18:00+08:00", "--store", sqlite_store_url]).stdout.decode()
    assert "186****5678" in text and "18612345678" not in text
    unmasked = run_cli(["due", "--at", "2026-07-10T18:00+08:00", "--unmasked", "--json", "--store", sqlite_store_url])
    assert orjson.loads(unmasked.stdout)["items"][0]["phone"] == "+8618612345678"
    bad = run_cli(["due", "--at", "2026-07-10T18:00", "--kind", "nope", "--store", sqlite_store_url])
    assert bad.returncode == 1 and bad.stderr.decode().startswith("Error: unknown due kind 'nope'")
