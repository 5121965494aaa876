"""The envelope and payload rules of SPEC §2 and §2.1, one rule a test."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from ledger.events import InvalidEvent, ResourceDeclared, normalise_phone, parse_event
from ledger.store import PydanticMapper
from eventsourcing.persistence import JSONTranscoder, StoredEvent

LEAD = {
    "event_id": "e1",
    "type": "lead.captured",
    "occurred_at": "2026-07-03T14:20:00+08:00",
    "person": {"phone": "186 1234 5678", "name": "孙悦"},
    "via": "scan",
    "entry_point_id": "qr-1",
}


def findings(obj: dict) -> list[tuple[str, str]]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(obj)
    return [(f.field, f.reason) for f in caught.value.findings]


@pytest.mark.parametrize(
    "raw",
    ["186 1234 5678", "18612345678", "+86 186-1234-5678", "008618612345678", "+8618612345678", "(186) 1234-5678"],
)
def test_mainland_mobiles_are_normalised_to_e164(raw: str) -> None:
    assert normalise_phone(raw) == ("+8618612345678", True)


def test_a_phone_that_is_not_a_number_is_kept_but_invalid() -> None:
    event = parse_event({**LEAD, "person": {"phone": "12345"}})
    assert event.person.phone == "12345"
    assert not event.person.phone_is_valid
    assert event.person.identity_keys() == ("phone?:12345",)


def test_a_time_without_offset_is_rejected() -> None:
    assert findings({**LEAD, "occurred_at": "2026-07-03T14:20:00"}) == [
        ("occurred_at", "a time without an offset is rejected (add e.g. +08:00)")
    ]


def test_event_id_length_is_bounded() -> None:
    assert findings({**LEAD, "event_id": ""})[0][0] == "event_id"
    assert findings({**LEAD, "event_id": "x" * 129})[0][0] == "event_id"
    assert parse_event({**LEAD, "event_id": "x" * 128}).event_id == "x" * 128


def test_unknown_type_lists_the_catalogue() -> None:
    [(field, reason)] = findings({**LEAD, "type": "lead.stolen"})
    assert field == "type" and "lead.captured" in reason and "order.paid" in reason


def test_a_person_needs_an_identity_key_and_a_name_is_not_one() -> None:
    [(field, reason)] = findings({**LEAD, "person": {"name": "孙悦"}})
    assert field == "person" and "at least one of phone, wechat_id, platform_user" in reason


def test_scan_needs_an_entry_point_and_manual_needs_channel_and_staff() -> None:
    assert "entry_point_id is required" in findings({**LEAD, "entry_point_id": None})[0][1]
    manual = {**LEAD, "via": "manual", "entry_point_id": None, "channel_id": "gym"}
    assert "recorded_by" in findings(manual)[0][1]


ORDER = {
    "event_id": "o1",
    "type": "order.paid",
    "occurred_at": "2026-07-06T17:30:00+08:00",
    "order_id": "so-1",
    "person": {"phone": "18612345678"},
    "store_id": "s1",
    "closed_by": "c1",
    "paid_via": "store",
    "items": [{"sku": "knee-12", "product_class": "course_package", "sessions": 12, "session_minutes": 50, "amount": "6960.00"}],
}


@pytest.mark.parametrize("amount", ["6960", 6960, "6960.5", 6960.25, "0"])
def test_money_is_a_decimal_with_at_most_two_places(amount) -> None:
    order = parse_event({**ORDER, "items": [{**ORDER["items"][0], "amount": amount}]})
    assert order.items[0].amount == Decimal(str(amount)).quantize(Decimal("0.01"))
    assert isinstance(order.items[0].amount, Decimal)


@pytest.mark.parametrize(
    ("amount", "reason"),
    [("-1.00", "negative money is rejected"), ("1.005", "money has more than 2 decimal places"), ("abc", "not a decimal amount: 'abc'"), (True, "money must be a decimal string or number")],
)
def test_bad_money_is_rejected_with_its_field(amount, reason: str) -> None:
    assert findings({**ORDER, "items": [{**ORDER["items"][0], "amount": amount}]}) == [("items.0.amount", reason)]


def test_money_is_written_with_two_decimals() -> None:
    order = parse_event({**ORDER, "items": [{**ORDER["items"][0], "amount": 100}]})
    assert order.wire()["items"][0]["amount"] == "100.00"


def test_a_sku_appears_once_per_order() -> None:
    item = ORDER["items"][0]
    assert "each sku may appear once" in findings({**ORDER, "items": [item, item]})[0][1]


TRIAGE = {
    "event_id": "t1",
    "type": "lead.triaged",
    "occurred_at": "2026-07-03T15:00:00+08:00",
    "person": {"phone": "18612345678"},
    "by": "a1",
    "intake": {"pain_site": "左膝", "duration_days": 45, "trauma": True, "prior_imaging": True, "sport": "篮球"},
    "route": "offline_assessment",
    "tags": {"injury_type": "半月板损伤", "urgency": "medium"},
}


def test_tags_outside_the_closed_vocabulary_are_rejected_with_the_allowed_keys() -> None:
    [(field, reason)] = findings({**TRIAGE, "tags": {"urgency": "high", "vip": True, "mood": "ok"}})
    assert field == "tags"
    assert reason == (
        "unknown tag mood, vip; allowed tags: injury_type, urgency, imaging_done, assessed, payment_band, target_sport"
    )


def test_tag_values_are_checked_too() -> None:
    assert findings({**TRIAGE, "tags": {"urgency": "panic"}})[0][0] == "tags.urgency"


def test_unknown_fields_are_rejected() -> None:
    assert findings({**LEAD, "colour": "red"}) == [("colour", "unknown field")]


def test_every_finding_is_reported_not_only_the_first() -> None:
    found = findings({**ORDER, "paid_via": "cash", "store_id": "", "items": []})
    assert {f for f, _ in found} == {"paid_via", "store_id", "items"}


def test_wire_form_round_trips() -> None:
    order = parse_event(ORDER)
    assert parse_event(order.wire()) == order
    assert orjson.loads(orjson.dumps(order.wire()))["type"] == "order.paid"


def test_an_older_stored_shape_is_upcast_when_read() -> None:
    """resource.declared v1 called the capacity hours_per_week; the store still reads it."""
    v1_state = {
        "v": 1,
        "e": {"event_id": "r1", "occurred_at": "2026-07-01T10:10:00+08:00", "resource_id": "p1", "kind": "clinician", "store_id": "s1", "hours_per_week": 40},
        "d": "0" * 64,
        "c": "0" * 64,
    }
    stored = StoredEvent("ev:r1", 1, "ledger.events:ResourceDeclared", orjson.dumps(v1_state))
    entry = PydanticMapper(transcoder=JSONTranscoder()).to_domain_event(stored)
    assert isinstance(entry.event, ResourceDeclared)
    assert entry.event.weekly_hours == Decimal(40)
    assert ResourceDeclared.class_version == 2
