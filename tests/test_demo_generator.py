"""The demo generator (ledger/demo.py): deterministic, streaming, valid by SPEC §2, and shaped like a
clinic group whose three channel kinds behave differently (SPEC §1).

The rules are checked here directly (``check_events``), so these tests do not depend on
``ledger.events``; when that module is present, every event is also validated through it.
"""

from __future__ import annotations

import calendar
import io
import re
import sys
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import islice, takewhile
from typing import Any

import pytest

from ledger.demo import EVENTS_PER_CUSTOMER, generate, stores_for, write_jsonl

START = date(2026, 9, 1)
END = date(2026, 12, 1)  # three months from START

REFERENCE_TYPES = {"store.registered", "staff.registered", "channel.registered", "entry_point.issued", "resource.declared"}
TAG_VOCABULARY = {"injury_type", "urgency", "imaging_done", "assessed", "payment_band", "target_sport"}
STAFF_ROLES = {"channel_agent", "consultant", "clinician", "store_manager", "front_desk"}
PAID_VIA = {"store", "mini_program", "douyin", "meituan", "dianping"}
NO_SHOW_REASONS = {"schedule_conflict", "cost_concern", "unsure_of_value", "symptoms_improved", "chose_competitor",
                   "unreachable", "other"}
TRANSFER_TRIGGERS = {"followup_timeout", "customer_request", "cross_store"}
PRODUCT_CLASSES = {"assessment", "fill_item", "course_package"}
MONEY = re.compile(r"^\d+\.\d{2}$")
MOBILE = re.compile(r"^1[3-9]\d{9}$")
PLATFORM_USER = re.compile(r"^[a-z]+:\d+$")


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(generate())


@pytest.fixture(scope="module")
def view(events: list[dict[str, Any]]) -> CustomerView:
    return CustomerView(events)


# ---------------------------------------------------------------------------------------------
# determinism and speed
# ---------------------------------------------------------------------------------------------


def test_same_arguments_give_the_same_bytes(tmp_path):
    to_path = tmp_path / "demo.jsonl"
    count = write_jsonl(to_path, seed=3, customers=300)
    as_text, as_bytes = io.StringIO(), io.BytesIO()
    assert write_jsonl(as_text, seed=3, customers=300) == count
    assert write_jsonl(as_bytes, seed=3, customers=300) == count
    written = to_path.read_bytes()
    assert written == as_text.getvalue().encode("utf-8") == as_bytes.getvalue()
    assert written.count(b"\n") == count
    assert "静安".encode() in written  # ensure_ascii=False: Chinese as UTF-8, not \\u escapes


def test_different_seeds_give_different_data():
    assert list(generate(seed=1, customers=200)) != list(generate(seed=2, customers=200))


def test_default_run_is_fast():
    began = time.perf_counter()
    count = sum(1 for _ in generate())
    assert time.perf_counter() - began < 2.0
    assert count > 600 * EVENTS_PER_CUSTOMER * 0.7


def test_events_per_customer_matches_the_documented_ratio(events):
    per_customer = len(events) / 600
    assert EVENTS_PER_CUSTOMER * 0.8 <= per_customer <= EVENTS_PER_CUSTOMER * 1.2


def test_stores_scale_with_customers():
    assert stores_for(600) == 3
    assert stores_for(50_000) == 50
    assert _stores_registered(generate(customers=5000)) == 5
    assert _stores_registered(generate(customers=50, stores=1)) == 1


def _stores_registered(events: Iterable[dict[str, Any]]) -> int:
    return _consume(takewhile(lambda e: e["type"] == "store.registered", events))  # stores come first


# ---------------------------------------------------------------------------------------------
# validity (SPEC §2, §2.1, §2.2)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {},
    {"seed": 3, "customers": 1500, "months": 2, "stores": 5},
    {"seed": 5, "customers": 300, "months": 1, "stores": 1, "start": date(2027, 1, 31)},
    {"seed": 9, "customers": 0},
])
def test_every_rule_holds(options):
    events = list(generate(**options))
    assert check_events(events, options.get("start", START), options.get("months", 3)) == []


def test_every_event_passes_the_event_schema(events):
    ledger_events = pytest.importorskip("ledger.events")
    for event in events:
        ledger_events.parse_event(event)


def test_reference_events_come_first_and_before_start(events):
    kinds = [e["type"] in REFERENCE_TYPES for e in events]
    first_other = kinds.index(False)
    assert not any(kinds[first_other:])
    assert all(_when(e["occurred_at"]).date() <= START for e in events[:first_other])
    assert {e["type"] for e in events[:first_other]} == REFERENCE_TYPES


def test_a_few_events_arrive_late(events):
    late = 0
    latest = ""
    for event in events:  # same offset everywhere, so the ISO strings sort in time order
        if event["occurred_at"] < latest:
            late += 1
        latest = max(latest, event["occurred_at"])
    assert 0.003 <= late / len(events) <= 0.025


def test_event_ids_are_readable_and_in_file_order(events):
    assert [e["event_id"] for e in events[:3]] == ["demo-000001", "demo-000002", "demo-000003"]
    assert len({e["event_id"] for e in events}) == len(events)


# ---------------------------------------------------------------------------------------------
# the group
# ---------------------------------------------------------------------------------------------


def test_each_store_has_a_full_team_and_capacity(events):
    stores = {e["store_id"] for e in events if e["type"] == "store.registered"}
    roles = defaultdict(Counter)
    for e in events:
        if e["type"] == "staff.registered":
            roles[e["store_id"]][e["role"]] += 1
    declared = Counter((e["store_id"], e["kind"]) for e in events if e["type"] == "resource.declared")
    for store in stores:
        assert set(roles[store]) == STAFF_ROLES
        assert roles[store]["store_manager"] == 1
        assert declared[(store, "clinician")] == roles[store]["clinician"]
        assert declared[(store, "room")] >= 2


def test_channels_of_all_three_kinds_with_chinese_names(events):
    channels = [e for e in events if e["type"] == "channel.registered"]
    assert {c["kind"] for c in channels} == {"medical_trust", "sports_scene", "online_platform"}
    assert all(re.search(r"[\u4e00-\u9fff]", c["name"]) for c in channels)
    assert {c["channel_id"] for c in channels if c["kind"] == "online_platform"} == {
        "ol-douyin", "ol-meituan", "ol-dianping", "ol-xiaohongshu"}


def test_an_entry_point_is_retired_and_scanned_afterwards(events):
    retired = [e for e in events if e["type"] == "entry_point.retired"]
    assert len(retired) == 1
    code, at = retired[0]["entry_point_id"], retired[0]["occurred_at"]
    assert START.isoformat() < at < END.isoformat()
    later_scans = [e for e in events if e["type"] == "lead.captured" and e.get("entry_point_id") == code
                   and e["occurred_at"] > at]
    assert len(later_scans) >= 2


# ---------------------------------------------------------------------------------------------
# behaviour by channel kind (SPEC §1, §7)
# ---------------------------------------------------------------------------------------------


def test_channel_kinds_behave_differently(view):
    leads = view.customers_by_source_kind()
    assert len(leads["online_platform"]) > len(leads["sports_scene"]) > len(leads["medical_trust"])

    arrival = {kind: view.share(customers, view.attended) for kind, customers in leads.items()}
    assert arrival["medical_trust"] > arrival["sports_scene"] > arrival["online_platform"]

    no_show = {kind: view.share(customers, view.no_showed) for kind, customers in leads.items()}
    assert no_show["online_platform"] > no_show["medical_trust"]

    value = {kind: view.average_order_value(customers) for kind, customers in leads.items()}
    assert value["medical_trust"] > value["sports_scene"] > value["online_platform"]

    packages = {kind: view.package_share(customers) for kind, customers in leads.items()}
    assert packages["medical_trust"] > packages["online_platform"]

    days = {kind: view.mean_days_to_first_slot(customers) for kind, customers in leads.items()}
    assert days["medical_trust"] > days["sports_scene"]

    assert view.platform_paid_share(leads["online_platform"]) > 0.3
    assert view.platform_paid_share(leads["medical_trust"]) < 0.05  # only if they came back through a platform


def test_every_no_show_reason_appears(events):
    reasons = {e["reason"] for e in events if e["type"] == "assessment.no_show"}
    assert reasons == NO_SHOW_REASONS


def test_transfer_tickets_cover_every_trigger_and_decision(events, view):
    requests = {e["ticket_id"]: e for e in events if e["type"] == "ownership.transfer_requested"}
    decisions = {e["ticket_id"]: e for e in events if e["type"] == "ownership.transfer_decided"}
    assert {r["trigger"] for r in requests.values()} == TRANSFER_TRIGGERS
    assert {d["decision"] for d in decisions.values()} == {"approved", "rejected"}
    assert any(decisions[t]["decided_by"] == r["requested_by"] for t, r in requests.items() if t in decisions)
    assert {view.ticket_eligible(r) for r in requests.values() if r["trigger"] == "followup_timeout"} == {True, False}
    assert {view.ticket_eligible(r) for r in requests.values() if r["trigger"] == "cross_store"} == {True, False}


# ---------------------------------------------------------------------------------------------
# customers and identity (SPEC §3, §4)
# ---------------------------------------------------------------------------------------------


def test_identity_keys_come_in_many_shapes(events):
    phones = [p["phone"] for p in _persons(events) if "phone" in p]
    shapes = {re.sub(r"\d", "9", phone) for phone in phones}
    assert {"99999999999", "999 9999 9999", "+99 999-9999-9999", "999999999999999", "+9999999999999"} <= shapes
    persons = list(_persons(events))
    assert any("wechat_id" in p for p in persons)
    assert any(PLATFORM_USER.match(p.get("platform_user", "")) for p in persons)
    assert any(len({"phone", "wechat_id", "platform_user"} & set(p)) >= 2 for p in persons)  # linking two keys


def test_customers_are_merged_and_namesakes_exist(events):
    assert any(e["type"] == "customers.merged" for e in events)
    named = {}
    for person in _persons(events):
        if "name" in person and "phone" in person:
            named.setdefault(_digits(person["phone"]), person["name"])
    simplified = {"張偉": "张伟", "王麗": "王丽", "劉洋": "刘洋", "陳靜": "陈静", "楊帆": "杨帆", "趙磊": "赵磊",
                  "黃婷": "黄婷", "吳軍": "吴军", "孫悅": "孙悦", "鄭浩": "郑浩"}
    by_name_and_last_four = defaultdict(set)
    for phone, name in named.items():
        by_name_and_last_four[(simplified.get(name, name), phone[-4:])].add(phone)
    assert any(len(phones) >= 2 for phones in by_name_and_last_four.values())


def test_collisions_inside_and_after_protection(view):
    gaps = view.collision_gaps_in_days()
    assert any(gap < 90 for gap in gaps)
    assert any(gap > 90 for gap in gaps)


def test_walk_ins_repeat_orders_and_refunds(events, view):
    assert view.walk_ins() >= 10
    assert view.repeat_package_buyers() >= 3
    paid = {e["order_id"]: _order_amount(e) for e in events if e["type"] == "order.paid"}
    refunds = defaultdict(Decimal)
    for e in events:
        if e["type"] == "order.refunded":
            refunds[e["order_id"]] += Decimal(e["amount"])
    assert any(total == paid[order] for order, total in refunds.items())  # full
    assert any(total < paid[order] for order, total in refunds.items())  # partial
    assert any(e["type"] == "order.refunded" and e.get("sessions") for e in events)


def test_orders_use_every_product_class_and_sku_only_when_needed(events):
    classes = {i["product_class"] for e in events if e["type"] == "order.paid" for i in e["items"]}
    assert classes == PRODUCT_CLASSES
    assert any(e["type"] == "session.delivered" and "sku" in e for e in events)
    assert any(e["type"] == "session.delivered" and "sku" not in e for e in events)
    assert any("valid_until" in e for e in events if e["type"] == "order.paid")


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------


def test_generation_streams_in_bounded_memory():
    """~200k events through the iterator. After the first 150k (untraced, to keep the test fast),
    tracemalloc follows the last ~50k: had the generator kept what it yielded, they would all
    still be traced at the end; instead the peak (the journeys that started meanwhile) stays a
    small fraction of what holding those events takes."""
    stream = generate(seed=11, customers=200_000 // EVENTS_PER_CUSTOMER)
    _consume(islice(stream, 45_000))
    sample = list(islice(stream, 5_000))
    bytes_per_event = _deep_size(sample) / len(sample)
    del sample
    _consume(islice(stream, 100_000))
    tracemalloc.start()
    try:
        traced = _consume(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    holding = bytes_per_event * traced
    assert traced >= 30_000
    assert peak < holding / 4, f"peak {peak / 1e6:.1f} MB vs {holding / 1e6:.0f} MB to hold {traced} events"


# ---------------------------------------------------------------------------------------------
# the rule checker
# ---------------------------------------------------------------------------------------------


def check_events(events: Iterable[dict[str, Any]], start: date = START, months: int = 3) -> list[str]:
    """Every problem with the stream, as ``line N (event_id, type): reason``; empty when it holds.

    Checks the envelope, every field's shape, that every reference is defined earlier in the file,
    sessions never beyond what an item sold, refunds never above what was paid, and the closed tag
    vocabulary (SPEC §2, §2.1, §2.2)."""
    problems: list[str] = []
    ids: set[str] = set()
    stores: set[str] = set()
    staff: dict[str, dict[str, Any]] = {}
    channels: set[str] = set()
    codes: set[str] = set()
    rooms: set[str] = set()
    appointments: dict[str, str] = {}
    outcomes: set[str] = set()
    orders: dict[str, dict[str, Any]] = {}
    used: Counter[tuple[str, str]] = Counter()  # (order, sku) -> sessions delivered + refunded
    refunded: Counter[str] = Counter()
    tickets: set[str] = set()
    decided: set[str] = set()
    refund_ids: set[str] = set()
    reference_phase = True
    window_end = _months_later(start, months)

    for line, e in enumerate(events, start=1):
        def bad(reason: str) -> None:
            problems.append(f"line {line} ({e.get('event_id')}, {e.get('type')}): {reason}")

        def known(value: Any, table: Iterable[str], what: str) -> None:
            if value not in table:
                bad(f"{what} {value!r} is not defined earlier in the file")

        def is_staff(value: Any, role: str | None = None) -> None:
            known(value, staff, "staff")
            if role and value in staff and staff[value]["role"] != role:
                bad(f"{value} is a {staff[value]['role']}, not a {role}")

        event_id, kind = e.get("event_id"), e.get("type")
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= 128 or event_id in ids:
            bad("event_id missing, too long or repeated")
        ids.add(event_id)
        at = _when(e.get("occurred_at", ""))
        if at is None or at.utcoffset() != timedelta(hours=8):
            bad("occurred_at is not an ISO date-time with +08:00")
            continue
        if at.date() >= window_end:
            bad("occurred_at after the window")
        if kind in REFERENCE_TYPES:
            if not reference_phase:
                bad("reference event after journey events")
            if at.date() > start:
                bad("reference event dated after start")
        else:
            reference_phase = False
        for person_field in ("person", "survivor", "merged"):
            if person_field in e:
                problems.extend(f"line {line} ({event_id}): {p}" for p in _person_problems(e[person_field]))

        if kind == "store.registered":
            stores.add(e["store_id"])
        elif kind == "staff.registered":
            known(e["store_id"], stores, "store")
            if e["role"] not in STAFF_ROLES:
                bad("unknown role")
            staff[e["staff_id"]] = e
        elif kind == "channel.registered":
            if e["kind"] not in {"medical_trust", "sports_scene", "online_platform"}:
                bad("unknown channel kind")
            channels.add(e["channel_id"])
        elif kind == "entry_point.issued":
            known(e["channel_id"], channels, "channel")
            is_staff(e["owner_staff_id"], "channel_agent")
            known(e["store_id"], stores, "store")
            codes.add(e["entry_point_id"])
        elif kind == "entry_point.retired":
            known(e["entry_point_id"], codes, "entry point")
        elif kind == "resource.declared":
            known(e["store_id"], stores, "store")
            if e["kind"] == "clinician":
                is_staff(e["resource_id"], "clinician")
            elif e["kind"] == "room":
                rooms.add(e["resource_id"])
            else:
                bad("unknown resource kind")
            if not (isinstance(e["weekly_hours"], int) and 0 < e["weekly_hours"] <= 168):
                bad("weekly_hours out of range")
        elif kind == "lead.captured":
            if e["via"] == "scan":
                known(e.get("entry_point_id"), codes, "entry point")
            elif e["via"] in ("manual", "platform"):
                known(e.get("channel_id"), channels, "channel")
                is_staff(e.get("recorded_by"))
            else:
                bad("unknown via")
        elif kind == "lead.triaged":
            is_staff(e["by"])
            intake = e["intake"]
            if set(intake) != {"pain_site", "duration_days", "trauma", "prior_imaging", "sport"}:
                bad("intake fields")
            if not (isinstance(intake["trauma"], bool) and isinstance(intake["prior_imaging"], bool)
                    and isinstance(intake["duration_days"], int)):
                bad("intake types")
            if e["route"] not in ("offline_assessment", "online_screening"):
                bad("unknown route")
            if not set(e["tags"]) <= TAG_VOCABULARY:
                bad(f"tags outside the vocabulary: {set(e['tags']) - TAG_VOCABULARY}")
            if e["tags"].get("urgency", "low") not in ("low", "medium", "high"):
                bad("urgency")
            if e["tags"].get("payment_band", "low") not in ("low", "mid", "high"):
                bad("payment_band")
        elif kind == "followup.logged":
            is_staff(e["by"])
            if e["medium"] not in ("wechat", "phone", "in_store"):
                bad("unknown medium")
        elif kind == "assessment.booked":
            if e["appointment_id"] in appointments:
                bad("appointment booked twice")
            known(e["store_id"], stores, "store")
            is_staff(e["clinician_id"], "clinician")
            slot = _when(e["slot_start"])
            if slot is None or slot.utcoffset() != timedelta(hours=8) or slot < at:
                bad("slot_start must be an offset date-time after the booking")
            if not e["slot_minutes"] > 0:
                bad("slot_minutes")
            appointments[e["appointment_id"]] = e["slot_start"]
        elif kind in ("assessment.attended", "assessment.no_show", "assessment.cancelled"):
            known(e["appointment_id"], appointments, "appointment")
            if e["appointment_id"] in outcomes:
                bad("a second outcome for one appointment")
            outcomes.add(e["appointment_id"])
            if kind == "assessment.no_show" and e["reason"] not in NO_SHOW_REASONS:
                bad("unknown no-show reason")
        elif kind == "order.paid":
            if e["order_id"] in orders:
                bad("order paid twice")
            known(e["store_id"], stores, "store")
            is_staff(e["closed_by"])
            if e["paid_via"] not in PAID_VIA:
                bad("unknown paid_via")
            skus = [i["sku"] for i in e["items"]]
            if not skus or len(set(skus)) != len(skus):
                bad("items empty or skus repeated")
            for item in e["items"]:
                if item["product_class"] not in PRODUCT_CLASSES:
                    bad("unknown product_class")
                if not (isinstance(item["sessions"], int) and item["sessions"] >= 0):
                    bad("sessions must be an int >= 0")
                if item["sessions"] and not item["session_minutes"] > 0:
                    bad("session_minutes missing")
                for money_field in ("amount", "cost"):
                    if money_field in item and not MONEY.match(item[money_field]):
                        bad(f"{money_field} {item[money_field]!r} is not money")
            if "valid_until" in e and date.fromisoformat(e["valid_until"]) < at.date():
                bad("valid_until before payment")
            orders[e["order_id"]] = e
        elif kind == "session.delivered":
            order = orders.get(e["order_id"])
            if order is None:
                bad("session for an order not paid earlier in the file")
                continue
            with_sessions = [i for i in order["items"] if i["sessions"] > 0]
            if (len(with_sessions) > 1) != ("sku" in e):
                bad("sku must be named exactly when the order has more than one item with sessions")
            item = next((i for i in with_sessions if i["sku"] == e.get("sku", with_sessions[0]["sku"])), None)
            if item is None:
                bad("sku is not an item with sessions")
                continue
            used[(order["order_id"], item["sku"])] += 1
            if used[(order["order_id"], item["sku"])] > item["sessions"]:
                bad("session beyond the sessions sold")
            is_staff(e["clinician_id"], "clinician")
            known(e["room_id"], rooms, "room")
            if not e["minutes"] > 0:
                bad("minutes")
            if "valid_until" in order and at.date() > date.fromisoformat(order["valid_until"]):
                bad("session after the package expired")
        elif kind == "order.refunded":
            order = orders.get(e["order_id"])
            if order is None:
                bad("refund for an order not paid earlier in the file")
                continue
            if e["refund_id"] in refund_ids:
                bad("refund_id repeated")
            refund_ids.add(e["refund_id"])
            if not MONEY.match(e["amount"]):
                bad("amount is not money")
                continue
            refunded[order["order_id"]] += Decimal(e["amount"])  # type: ignore[assignment]
            if refunded[order["order_id"]] > _order_amount(order):
                bad("refunds above what was paid")
            if "sku" in e and e["sku"] not in {i["sku"] for i in order["items"]}:
                bad("refund names an sku not in the order")
            if e.get("sessions"):
                with_sessions = [i for i in order["items"] if i["sessions"] > 0]
                if "sku" not in e and len(with_sessions) != 1:
                    bad("refunded sessions without an sku on an order with several items with sessions")
                    continue
                sku = e.get("sku", with_sessions[0]["sku"])
                sold = next(i["sessions"] for i in order["items"] if i["sku"] == sku)
                used[(order["order_id"], sku)] += e["sessions"]
                if used[(order["order_id"], sku)] > sold:
                    bad("sessions refunded beyond those remaining")
        elif kind == "ownership.transfer_requested":
            if e["ticket_id"] in tickets:
                bad("ticket requested twice")
            tickets.add(e["ticket_id"])
            is_staff(e["to_staff_id"])
            is_staff(e["requested_by"])
            if "to_channel_id" in e:
                known(e["to_channel_id"], channels, "channel")
            if e["trigger"] not in TRANSFER_TRIGGERS:
                bad("unknown trigger")
        elif kind == "ownership.transfer_decided":
            known(e["ticket_id"], tickets, "ticket")
            if e["ticket_id"] in decided:
                bad("ticket decided twice")
            decided.add(e["ticket_id"])
            is_staff(e["decided_by"])
            if e["decision"] not in ("approved", "rejected"):
                bad("unknown decision")
        elif kind == "customers.merged":
            is_staff(e["by"])
        else:
            bad("unknown event type")
    return problems


def _person_problems(person: Any) -> list[str]:
    if not isinstance(person, dict) or not {"phone", "wechat_id", "platform_user"} & set(person):
        return [f"person without an identity key: {person!r}"]
    problems = []
    if set(person) - {"phone", "wechat_id", "platform_user", "name"}:
        problems.append(f"person has unexpected fields {set(person)}")
    if "phone" in person and not MOBILE.match(_digits(person["phone"])):
        problems.append(f"phone {person['phone']!r} is not a mainland mobile")
    if "platform_user" in person and not PLATFORM_USER.match(person["platform_user"]):
        problems.append(f"platform_user {person['platform_user']!r}")
    if "wechat_id" in person and not person["wechat_id"]:
        problems.append("empty wechat_id")
    return problems


# ---------------------------------------------------------------------------------------------
# a small customer view, enough to see the channel kinds' behaviour
# ---------------------------------------------------------------------------------------------


class CustomerView:
    """Customers resolved from identity keys (SPEC §3, over the whole file), each customer's source
    (first valid lead, §4) and what they did afterwards."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.parent: dict[str, str] = {}
        for e in events:
            for field_ in ("person", "survivor", "merged"):
                if field_ in e:
                    keys = _keys(e[field_])
                    for key in keys[1:]:
                        self._union(keys[0], key)
            if e["type"] == "customers.merged":
                self._union(_keys(e["survivor"])[0], _keys(e["merged"])[0])
        self.staff_store = {e["staff_id"]: e["store_id"] for e in events if e["type"] == "staff.registered"}
        codes = {e["entry_point_id"]: e for e in events if e["type"] == "entry_point.issued"}
        channel_kind = {e["channel_id"]: e["kind"] for e in events if e["type"] == "channel.registered"}
        retired = {e["entry_point_id"]: e["occurred_at"] for e in events if e["type"] == "entry_point.retired"}
        self.booking_customer: dict[str, str] = {}
        self.order_customer: dict[str, str] = {}
        self.valid_leads: dict[str, list[tuple[datetime, str, str]]] = defaultdict(list)  # (at, owner, channel)
        self.source_kind: dict[str, str] = {}
        self.attended: set[str] = set()
        self.no_showed: set[str] = set()
        self.orders: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.first_slot: dict[str, datetime] = {}
        self.followups: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self.leads = 0
        for e in sorted(events, key=lambda e: e["occurred_at"]):
            who = self._customer(e)
            at = _when(e["occurred_at"])
            if e["type"] == "lead.captured":
                if e["via"] == "scan":
                    code = codes[e["entry_point_id"]]
                    if e["entry_point_id"] in retired and retired[e["entry_point_id"]] <= e["occurred_at"]:
                        continue
                    owner, channel = code["owner_staff_id"], code["channel_id"]
                else:
                    owner, channel = e["recorded_by"], e["channel_id"]
                self.valid_leads[who].append((at, owner, channel))
                self.source_kind.setdefault(who, channel_kind[channel])
            elif e["type"] == "assessment.booked":
                self.booking_customer[e["appointment_id"]] = who
                self.first_slot.setdefault(who, _when(e["slot_start"]))
            elif e["type"] == "assessment.attended":
                self.attended.add(self.booking_customer[e["appointment_id"]])
            elif e["type"] == "assessment.no_show":
                self.no_showed.add(self.booking_customer[e["appointment_id"]])
            elif e["type"] == "order.paid":
                self.order_customer[e["order_id"]] = who
                self.orders[who].append(e)
            elif e["type"] == "followup.logged":
                self.followups[who].append((at, e["by"]))

    def _find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def _union(self, a: str, b: str) -> None:
        self.parent[self._find(a)] = self._find(b)

    def _customer(self, e: dict[str, Any]) -> str | None:
        if "person" in e:
            return self._find(_keys(e["person"])[0])
        return None

    def customers_by_source_kind(self) -> dict[str, set[str]]:
        kinds: dict[str, set[str]] = defaultdict(set)
        for customer, kind in self.source_kind.items():
            kinds[kind].add(customer)
        return kinds

    @staticmethod
    def share(customers: set[str], subset: set[str]) -> float:
        return len(customers & subset) / len(customers)

    def average_order_value(self, customers: set[str]) -> Decimal:
        amounts = [_order_amount(o) for c in customers for o in self.orders[c]]
        return sum(amounts, Decimal(0)) / len(amounts)

    def package_share(self, customers: set[str]) -> float:
        orders = [o for c in customers for o in self.orders[c]]
        return sum(any(i["product_class"] == "course_package" for i in o["items"]) for o in orders) / len(orders)

    def platform_paid_share(self, customers: set[str]) -> float:
        orders = [o for c in customers for o in self.orders[c]]
        return sum(o["paid_via"] in ("douyin", "meituan", "dianping") for o in orders) / len(orders)

    def mean_days_to_first_slot(self, customers: set[str]) -> float:
        """From the lead that brought the customer in (the latest before the slot) to the first slot."""
        gaps = []
        for c in customers:
            if c in self.first_slot:
                lead_at = max(at for at, _, _ in self.valid_leads[c] if at <= self.first_slot[c])
                gaps.append((self.first_slot[c] - lead_at).total_seconds() / 86400)
        return sum(gaps) / len(gaps)

    def collision_gaps_in_days(self) -> list[float]:
        """Days between the source and each later valid lead from another owner or channel (撞单)."""
        gaps = []
        for leads in self.valid_leads.values():
            first_at, owner, channel = leads[0]
            gaps += [(at - first_at).total_seconds() / 86400 for at, o, c in leads[1:] if (o, c) != (owner, channel)]
        return gaps

    def walk_ins(self) -> int:
        return sum(1 for c in self.orders if c not in self.valid_leads)

    def repeat_package_buyers(self) -> int:
        return sum(1 for orders in self.orders.values()
                   if any(i["product_class"] == "course_package" for o in orders[1:] for i in o["items"]))

    def ticket_eligible(self, request: dict[str, Any]) -> bool:
        """SPEC §4 eligibility against the source owner (no earlier ticket in these customers)."""
        who = self._customer(request)
        at, owner, _ = self.valid_leads[who][0]
        if request["trigger"] == "cross_store":
            return self.staff_store[request["to_staff_id"]] != self.staff_store[owner]
        if request["trigger"] == "followup_timeout":
            asked = _when(request["occurred_at"])
            since = asked - timedelta(days=7)
            followed = any(since <= t <= asked and by == owner for t, by in self.followups[who])
            paid = any(since <= _when(o["occurred_at"]) <= asked for o in self.orders[who])
            return not followed and not paid
        return True


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def _when(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo is not None else None


def _digits(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return digits[-11:] if digits.startswith(("0086", "86")) else digits


def _keys(person: dict[str, Any]) -> list[str]:
    keys = []
    if "phone" in person:
        keys.append("phone:" + _digits(person["phone"]))
    if "wechat_id" in person:
        keys.append("wechat:" + person["wechat_id"])
    if "platform_user" in person:
        keys.append("platform:" + person["platform_user"])
    return keys


def _persons(events: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for e in events:
        for field_ in ("person", "survivor", "merged"):
            if field_ in e:
                yield e[field_]


def _order_amount(order: dict[str, Any]) -> Decimal:
    return sum((Decimal(i["amount"]) for i in order["items"]), Decimal(0))


def _months_later(start: date, months: int) -> date:
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def _consume(events: Iterable[Any]) -> int:
    return sum(1 for _ in events)


def _deep_size(objects: list[Any]) -> int:
    """Bytes held by `objects` and everything they reference, each object counted once."""
    seen: set[int] = set()
    stack = list(objects)
    total = sys.getsizeof(objects)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
    return total
