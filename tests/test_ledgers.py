"""The three ledgers (三张账, SPEC §7): lead quality, deal structure, fulfillment pressure.

The clinic (tests/scenario.py CLINIC): live codes qr-ortho-a1 (a1, ortho, medical_trust) and
qr-gym-a2 (a2, gym, sports_scene); douyin (online_platform) takes platform leads recorded by staff.
Months are business months in Asia/Shanghai (the shipped rules).
"""

from __future__ import annotations

from decimal import Decimal as D

import orjson

from ledger.events import NO_SHOW_REASONS
from policies import RuleBook, default_rules
from projections.ledgers import LedgersReport, Ratio, ledgers
from tests.golden import run_cli
from tests.scenario import CLINIC, scenario, write

BOOK = RuleBook.single(default_rules())


def month(text: str, m: str = "2026-07") -> LedgersReport:
    return ledgers(scenario(CLINIC + text), m, BOOK)


def lead(n: int, at: str = "2026-07-02T10:00:00+08:00", entry: str = "qr-gym-a2", phone: str | None = None) -> str:
    phone = phone or f"1391234{n:04d}"
    return f'{{"event_id": "l{n}", "type": "lead.captured", "occurred_at": "{at}", "person": {{"phone": "{phone}"}}, "via": "scan", "entry_point_id": "{entry}"}}'


def booked(n: int, appointment: str, at: str = "2026-07-03T10:00:00+08:00", phone: str | None = None) -> str:
    phone = phone or f"1391234{n:04d}"
    return (
        f'{{"event_id": "b-{appointment}", "type": "assessment.booked", "occurred_at": "{at}", "appointment_id": "{appointment}", '
        f'"person": {{"phone": "{phone}"}}, "store_id": "sh-jingan", "clinician_id": "p1", "slot_start": "2026-07-10T10:00:00+08:00", "slot_minutes": 45}}'
    )


def attended(appointment: str, at: str = "2026-07-10T10:00:00+08:00") -> str:
    return f'{{"event_id": "a-{appointment}", "type": "assessment.attended", "occurred_at": "{at}", "appointment_id": "{appointment}"}}'


def no_show(appointment: str, reason: str, at: str = "2026-07-10T10:00:00+08:00") -> str:
    return f'{{"event_id": "n-{appointment}", "type": "assessment.no_show", "occurred_at": "{at}", "appointment_id": "{appointment}", "reason": "{reason}"}}'


def paid(n: int, order: str, at: str, product_class: str = "course_package", amount: str = "4000", sessions: int = 10, cost: str | None = None, valid_until: str | None = None) -> str:
    cost_field = f', "cost": "{cost}"' if cost else ""
    until = f', "valid_until": "{valid_until}"' if valid_until else ""
    return (
        f'{{"event_id": "o-{order}", "type": "order.paid", "occurred_at": "{at}", "order_id": "{order}", '
        f'"person": {{"phone": "1391234{n:04d}"}}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", '
        f'"items": [{{"sku": "{product_class}-{order}", "product_class": "{product_class}", "sessions": {sessions}, "session_minutes": 60, "amount": "{amount}"{cost_field}}}]{until}}}'
    )


def lines(*parts: str) -> str:
    return "\n".join(parts)


# --- lead quality ----------------------------------------------------------------------------------


def test_each_no_show_reason_is_counted_and_the_no_show_rate_is_over_attended_plus_no_shows() -> None:
    events = [lead(1), booked(1, "ap-0"), attended("ap-0")]
    for k, reason in enumerate(NO_SHOW_REASONS, start=1):
        events += [booked(1, f"ap-{k}"), no_show(f"ap-{k}", reason)]
    events += [booked(1, "ap-c"), '{"event_id": "x-c", "type": "assessment.cancelled", "occurred_at": "2026-07-09T10:00:00+08:00", "appointment_id": "ap-c"}']
    gym = month(lines(*events)).channel("gym").tally.lead_quality()
    assert gym["no_show_reasons"] == {reason: 1 for reason in NO_SHOW_REASONS}
    assert (gym["booked"], gym["attended"], gym["no_shows"], gym["cancelled"]) == (9, 1, 7, 1)
    assert gym["no_show_rate"] == Ratio(7, 8)  # the cancellation is not a no-show, nor in the denominator
    assert gym["no_show_rate"].text() == "7/8 = 87.5%"


def test_leads_count_under_their_own_channel_valid_invalid_and_collisions() -> None:
    text = lines(
        lead(1),
        lead(2),
        lead(3, phone="12345"),  # not a phone: recorded, counted, never valid
        lead(4, at="2026-07-04T10:00:00+08:00", entry="qr-ortho-a1", phone="13912340001"),  # collides with l1
        '{"event_id": "l5", "type": "lead.captured", "occurred_at": "2026-07-05T10:00:00+08:00", "person": {"platform_user": "douyin:77"}, "via": "platform", "channel_id": "douyin", "recorded_by": "a1"}',
        '{"event_id": "tr1", "type": "lead.triaged", "occurred_at": "2026-07-06T10:00:00+08:00", "person": {"phone": "13912340001"}, "by": "a2", "intake": {"pain_site": "膝", "duration_days": 30, "trauma": false, "prior_imaging": false}, "route": "offline_assessment"}',
        '{"event_id": "tr2", "type": "lead.triaged", "occurred_at": "2026-07-06T11:00:00+08:00", "person": {"platform_user": "douyin:77"}, "by": "a1", "intake": {"pain_site": "肩", "duration_days": 3, "trauma": false, "prior_imaging": false}, "route": "online_screening"}',
    )
    r = month(text)
    gym, ortho, douyin = (r.channel(c).tally.lead_quality() for c in ("gym", "ortho", "douyin"))
    assert (gym["leads"], gym["valid_leads"], gym["invalid_leads"], gym["collisions"]) == (3, 2, 1, 0)
    assert (ortho["leads"], ortho["valid_leads"], ortho["collisions"]) == (1, 1, 1)  # the channel that collided
    assert (gym["triaged"], gym["routed_offline"], douyin["triaged"], douyin["routed_online"]) == (1, 1, 1, 1)
    kind = r.kind("sports_scene").tally.lead_quality()
    assert (kind["leads"], kind["valid_leads"]) == (3, 2)
    assert r.total.tally.lead_quality()["leads"] == 5


def test_arrival_rate_is_the_months_valid_leads_that_attended_an_assessment() -> None:
    text = lines(
        lead(1), lead(2), lead(3), lead(4, phone="12345"),
        booked(1, "ap-1"), attended("ap-1"),
        booked(2, "ap-2", at="2026-07-20T10:00:00+08:00"), attended("ap-2", at="2026-08-03T10:00:00+08:00"),  # arrives in August
        booked(3, "ap-3"), no_show("ap-3", "unreachable"),
    )
    gym = month(text).channel("gym").tally.lead_quality()
    assert gym["arrival_rate"] == Ratio(2, 3)  # invalid lead l4 is not in the denominator
    assert gym["attended"] == 1  # …while July's attended count is July's attendances
    assert month(text, "2026-08").channel("gym").tally.lead_quality()["arrival_rate"] == Ratio(0, 0)


def test_steps_after_the_lead_count_under_the_owner_channel_at_the_time_and_walk_ins_apart() -> None:
    text = lines(
        lead(1), booked(1, "ap-1"), attended("ap-1"),
        booked(9, "ap-9"), attended("ap-9"),  # no lead at all: a walk-in
    )
    r = month(text)
    assert r.channel("gym").tally.lead_quality()["attended"] == 1
    assert r.channel("walk-in").tally.lead_quality()["attended"] == 1
    assert r.kind("walk-in").tally.deal_structure()["assessed_customers"] == 1


# --- deal structure --------------------------------------------------------------------------------


def test_conversion_inside_and_outside_24_hours_of_the_assessment() -> None:
    text = lines(
        *(lead(n) for n in range(1, 6)),
        *(lines(booked(n, f"ap-{n}"), attended(f"ap-{n}")) for n in range(1, 6)),
        paid(1, "so-1", "2026-07-11T09:59:00+08:00"),  # 23 h 59 min after: inside
        paid(2, "so-2", "2026-07-11T10:00:00+08:00"),  # exactly 24 h after: outside
        paid(3, "so-3", "2026-08-02T10:00:00+08:00", product_class="fill_item", amount="300", sessions=1),  # weeks later, next month
        paid(4, "so-4", "2026-07-10T10:30:00+08:00", product_class="assessment", amount="199", sessions=1),  # the fee: no conversion
        paid(5, "so-5", "2026-07-09T10:00:00+08:00"),  # paid before the assessment: not a conversion after it
    )
    deal = month(text).channel("gym").tally.deal_structure()
    assert (deal["assessed_customers"], deal["paying_after_assessment"]) == (5, 3)
    assert (deal["converted_within_24h"], deal["converted_after_24h"]) == (1, 2)
    assert deal["conversion_rate"] == Ratio(3, 5)
    assert deal["conversion_within_24h"] == Ratio(1, 5)


def test_order_mix_average_order_value_and_gross_margin_where_cost_is_known() -> None:
    text = lines(
        lead(1),
        paid(1, "so-1", "2026-07-11T10:00:00+08:00", amount="4000", cost="1500"),
        paid(1, "so-2", "2026-07-12T10:00:00+08:00", product_class="fill_item", amount="300", sessions=1, cost="100"),
        paid(1, "so-3", "2026-07-13T10:00:00+08:00", product_class="fill_item", amount="200", sessions=1),  # no cost
    )
    deal = month(text).channel("gym").tally.deal_structure()
    assert (deal["orders"], deal["order_amount"], deal["average_order_value"]) == (3, D("4500.00"), D("1500.00"))
    assert (deal["fill_items"], deal["fill_item_amount"], deal["course_packages"], deal["course_package_amount"]) == (2, D("500.00"), 1, D("4000.00"))
    assert deal["gross_margin"] == Ratio(D("2700.00"), D("4300.00"))  # only the items with a cost
    assert deal["cost_known"] == Ratio(2, 3)
    assert deal["gross_margin"].as_json() == {"numerator": "2700.00", "denominator": "4300.00", "rate": "0.6279"}


# --- fulfillment pressure --------------------------------------------------------------------------


def test_fulfillment_pressure_by_the_owner_channel_at_payment() -> None:
    text = lines(
        lead(1),
        paid(1, "so-1", "2026-07-05T10:00:00+08:00", amount="4000", sessions=10, valid_until="2026-12-31"),
        paid(1, "so-2", "2026-06-05T10:00:00+08:00", product_class="fill_item", amount="600", sessions=3, valid_until="2026-07-20"),
        '{"event_id": "s1", "type": "session.delivered", "occurred_at": "2026-07-06T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 60}',
        '{"event_id": "s2", "type": "session.delivered", "occurred_at": "2026-07-07T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 60}',
        '{"event_id": "s3", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "so-2", "clinician_id": "p1", "room_id": "room-a", "minutes": 60}',
        '{"event_id": "r1", "type": "order.refunded", "occurred_at": "2026-07-09T10:00:00+08:00", "refund_id": "rf-1", "order_id": "so-1", "amount": "800", "sessions": 2}',
    )
    # so-2 was paid in June, before the lead: a walk-in sale then; so-1 is the gym's
    r = month(text)
    gym = r.channel("gym").tally.fulfillment_pressure()
    assert (gym["sessions_sold"], gym["sessions_delivered"], gym["sessions_refunded"]) == (10, 2, 2)
    assert (gym["outstanding_sessions"], gym["outstanding_hours"], gym["deferred_revenue"]) == (6, D("6.00"), D("2400.00"))
    assert gym["refund_rate"] == Ratio(D("800.00"), D("4000.00"))
    walk_in = r.channel("walk-in").tally.fulfillment_pressure()
    # sold in June; one delivered in July; two left expired on 20 July (breakage in July)
    assert (walk_in["sessions_sold"], walk_in["sessions_delivered"], walk_in["sessions_expired"], walk_in["outstanding_sessions"]) == (0, 1, 2, 0)
    assert walk_in["refund_rate"] == Ratio(D("0.00"), D("0.00")) and walk_in["refund_rate"].rate is None


# --- rates, months, zeros ----------------------------------------------------------------------------


def test_rates_show_numerator_and_denominator_and_no_rate_without_a_denominator() -> None:
    assert Ratio(3, 10).text() == "3/10 = 30.0%"
    assert Ratio(3, 10).as_json() == {"numerator": 3, "denominator": 10, "rate": "0.3000"}
    assert Ratio(0, 0).text() == "0/0 = –"
    assert Ratio(0, 0).as_json() == {"numerator": 0, "denominator": 0, "rate": None}
    assert Ratio(2, 3).rate == D("0.6667")  # half-up to 4 places
    assert Ratio(D("1.00"), D("8.00")).as_json() == {"numerator": "1.00", "denominator": "8.00", "rate": "0.1250"}


def test_a_channel_with_nothing_in_the_month_shows_zeros() -> None:
    r = month(lead(1), "2026-09")
    for channel in ("ortho", "gym", "douyin", "walk-in"):
        j = r.channel(channel).as_json()
        assert j["lead_quality"]["leads"] == 0
        assert j["lead_quality"]["no_show_rate"] == {"numerator": 0, "denominator": 0, "rate": None}
        assert j["deal_structure"]["average_order_value"] is None
        assert j["fulfillment_pressure"]["deferred_revenue"] == "0.00"
    assert [k.kind for k in r.kinds] == ["medical_trust", "sports_scene", "online_platform", "walk-in"]


def test_the_month_is_read_in_the_rules_time_zone() -> None:
    text = lead(1, at="2026-07-31T16:30:00+00:00")  # 00:30 on 1 August in Shanghai
    assert month(text, "2026-07").channel("gym").tally.leads == 0
    assert month(text, "2026-08").channel("gym").tally.leads == 1


def test_kind_and_group_roll_ups_are_the_sums_of_their_channels() -> None:
    text = lines(lead(1), lead(2, entry="qr-ortho-a1"), booked(1, "ap-1"), attended("ap-1"), paid(1, "so-1", "2026-07-11T09:00:00+08:00"))
    r = month(text)
    assert r.total.tally.leads == sum(c.tally.leads for c in r.channels) == 2
    assert r.kind("sports_scene").tally.order_amount == r.channel("gym").tally.order_amount == D("4000.00")


# --- the command -----------------------------------------------------------------------------------


def test_ledgers_json_and_the_channel_filter(tmp_path, sqlite_store_url) -> None:
    path = write(tmp_path, CLINIC + lines(lead(1), booked(1, "ap-1"), attended("ap-1")))
    assert run_cli(["init", "--store", sqlite_store_url]).returncode == 0
    assert run_cli(["ingest", path, "--store", sqlite_store_url]).returncode == 0
    done = run_cli(["ledgers", "--month", "2026-07", "--channel", "gym", "--json", "--store", sqlite_store_url])
    assert done.returncode == 0, done.stderr.decode()
    out = orjson.loads(done.stdout)
    assert [c["channel_id"] for c in out["channels"]] == ["gym"]
    assert {"lead_quality", "deal_structure", "fulfillment_pressure"} <= set(out["channels"][0])
    assert out["channels"][0]["lead_quality"]["arrival_rate"] == {"numerator": 1, "denominator": 1, "rate": "1.0000"}
    unknown = run_cli(["ledgers", "--month", "2026-07", "--channel", "nope", "--store", sqlite_store_url])
    assert unknown.returncode == 1 and unknown.stderr.decode().startswith("Error: unknown channel 'nope'")
    bad = run_cli(["ledgers", "--month", "July", "--store", sqlite_store_url])
    assert bad.returncode == 2 and "--month takes YYYY-MM" in bad.stderr.decode()
