"""Attribution and ownership (SPEC §4), one rule a scenario, in the events' own notation.

The clinic (tests/scenario.py CLINIC): store sh-jingan with agents a1, a2, consultant c1,
clinicians p1, p2 and manager m1; store sh-xuhui with agent a3. Channels: ortho (medical_trust),
gym (sports_scene), douyin (online_platform). Live codes: qr-ortho-a1 (a1, ortho), qr-gym-a2 (a2, gym).
"""

from __future__ import annotations

import random
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import RuleBook, default_rules
from projections.attribution import Attribution, attribute
from tests.scenario import CLINIC, scenario

RULES = default_rules()
BOOK = RuleBook.single(RULES)
REATTRIBUTING = RuleBook.single(RULES.model_copy(update={"reattribute_after_protection": True, "version": "2026.1-reattr"}))


def attribution_of(text: str, book: RuleBook = BOOK) -> Attribution:
    return attribute(scenario(CLINIC + text), book)


def the_customer(a: Attribution, ref: str = "18612345678"):
    customer = a.identity.lookup(ref)
    assert customer is not None
    return a.of(customer)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


SCAN_A1 = '{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}'
SCAN_A2_LATER = '{{"event_id": "l2", "type": "lead.captured", "occurred_at": "{t}", "person": {{"phone": "18612345678"}}, "via": "scan", "entry_point_id": "qr-gym-a2"}}'


def test_the_first_valid_lead_is_the_source_and_protection_runs_90_days() -> None:
    c = the_customer(attribution_of(SCAN_A1))
    assert (c.source.staff_id, c.source.channel_id, c.source.channel_kind, c.source.event_id) == ("a1", "ortho", "medical_trust", "l1")
    assert c.protected_until == at("2026-10-01T14:20:00+08:00")
    assert (c.owner.staff_id, c.owner.channel_id, c.owner.via) == ("a1", "ortho", "source")


def test_first_valid_lead_wins_across_identity_keys_linked_later() -> None:
    """A WeChat lead (earlier) and a phone lead (later) are one customer once an order names both."""
    c = the_customer(attribution_of("""
        {"event_id": "l9", "type": "lead.captured", "occurred_at": "2026-07-05T10:00:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}
        {"event_id": "l8", "type": "lead.captured", "occurred_at": "2026-07-02T10:00:00+08:00", "person": {"wechat_id": "wx_sun"}, "via": "scan", "entry_point_id": "qr-gym-a2"}
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T10:00:00+08:00", "order_id": "so-1", "person": {"wechat_id": "wx_sun", "phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "a", "product_class": "assessment", "sessions": 0, "amount": "199"}]}
    """), "wx_sun")
    assert c.source.event_id == "l8" and c.source.staff_id == "a2"
    # the phone lead came later from another owner: a collision; it stayed a separate customer until
    # the order named both keys, so it is a merge candidate rather than this customer's event
    a = attribution_of("""
        {"event_id": "l9", "type": "lead.captured", "occurred_at": "2026-07-05T10:00:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}
        {"event_id": "l8", "type": "lead.captured", "occurred_at": "2026-07-02T10:00:00+08:00", "person": {"wechat_id": "wx_sun"}, "via": "scan", "entry_point_id": "qr-gym-a2"}
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T10:00:00+08:00", "order_id": "so-1", "person": {"wechat_id": "wx_sun", "phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "a", "product_class": "assessment", "sessions": 0, "amount": "199"}]}
    """)
    [candidate] = a.identity.merge_candidates
    assert candidate.event_id == "o1" and candidate.keys == ("phone", "wechat")
    wechat, phone = a.identity.lookup("wx_sun"), a.identity.lookup("18612345678")
    assert (candidate.kept, candidate.other) == (wechat, phone), "the order goes to the customer created first (l8, 2 July)"
    assert candidate.occurred_at == at("2026-07-06T10:00:00+08:00")
    assert a.identity.customers() == [wechat, phone]


def test_first_valid_lead_wins_across_a_merge() -> None:
    text = """
        {"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-10T10:00:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}
        {"event_id": "l2", "type": "lead.captured", "occurred_at": "2026-07-01T12:00:00+08:00", "person": {"platform_user": "douyin:8842"}, "via": "platform", "channel_id": "douyin", "recorded_by": "a2"}
        {"event_id": "m1", "type": "customers.merged", "occurred_at": "2026-08-01T10:00:00+08:00", "survivor": {"phone": "18612345678"}, "merged": {"platform_user": "douyin:8842"}, "by": "m1", "reason": "同一人"}
    """
    a = attribution_of(text)
    c = the_customer(a)
    assert a.identity.lookup("douyin:8842") == c.customer_id
    assert (c.source.event_id, c.source.staff_id, c.source.channel_kind) == ("l2", "a2", "online_platform")
    assert [col.event_id for col in c.collisions] == ["l1"]


def test_a_collision_inside_protection_is_recorded_and_ownership_stays() -> None:
    c = the_customer(attribution_of(SCAN_A1 + "\n" + SCAN_A2_LATER.format(t="2026-08-15T09:00:00+08:00")))
    [col] = c.collisions
    assert (col.event_id, col.staff_id, col.channel_id, col.inside_protection, col.effect) == ("l2", "a2", "gym", True, "recorded")
    assert c.owner.staff_id == "a1" and len(c.owners) == 1


def test_a_collision_after_protection_with_reattribution_off_keeps_the_owner() -> None:
    c = the_customer(attribution_of(SCAN_A1 + "\n" + SCAN_A2_LATER.format(t="2026-10-01T14:20:00+08:00")))
    [col] = c.collisions
    assert (col.inside_protection, col.effect) == (False, "recorded")  # protection ends exactly at 90 × 24 h
    assert c.owner.staff_id == "a1"


def test_a_collision_after_protection_with_reattribution_on_moves_the_owner_from_the_lead() -> None:
    c = the_customer(attribution_of(SCAN_A1 + "\n" + SCAN_A2_LATER.format(t="2026-10-02T09:00:00+08:00"), REATTRIBUTING))
    [col] = c.collisions
    assert (col.inside_protection, col.effect) == (False, "reattributed")
    assert (c.owner.staff_id, c.owner.channel_id, c.owner.via, c.owner.since) == ("a2", "gym", "reattribution", at("2026-10-02T09:00:00+08:00"))
    assert c.protected_until == at("2026-12-31T09:00:00+08:00")  # a new protection period
    assert c.source.staff_id == "a1"  # the source never changes
    assert c.owner_at(at("2026-10-02T08:59:00+08:00")).staff_id == "a1"


def test_reattribution_on_does_nothing_inside_protection() -> None:
    c = the_customer(attribution_of(SCAN_A1 + "\n" + SCAN_A2_LATER.format(t="2026-09-30T09:00:00+08:00"), REATTRIBUTING))
    assert c.collisions[0].effect == "recorded" and c.owner.staff_id == "a1"


def test_a_lead_from_a_retired_entry_point_is_invalid_and_never_attributed() -> None:
    c = the_customer(attribution_of("""
        {"event_id": "x1", "type": "entry_point.retired", "occurred_at": "2026-07-02T00:00:00+08:00", "entry_point_id": "qr-ortho-a1"}
    """ + SCAN_A1))
    assert c.source is None and c.owner is None
    [lead] = c.invalid_leads
    assert (lead.event_id, lead.reason) == ("l1", "entry point retired before the scan")


def test_a_manual_lead_by_an_unknown_recorder_is_invalid_and_a_later_valid_one_is_the_source() -> None:
    c = the_customer(attribution_of("""
        {"event_id": "l0", "type": "lead.captured", "occurred_at": "2026-07-01T12:00:00+08:00", "person": {"phone": "18612345678"}, "via": "manual", "channel_id": "gym", "recorded_by": "ghost"}
    """ + SCAN_A1))
    assert [lead.reason for lead in c.invalid_leads] == ["recorded_by is not a registered staff member"]
    assert c.source.event_id == "l1"


def ticket(trigger: str, to: str, requested_by: str, decided_by: str, decision: str = "approved", requested: str = "2026-08-01T09:00:00+08:00", decided: str = "2026-08-01T12:00:00+08:00", to_channel: str = "") -> str:
    channel = f', "to_channel_id": "{to_channel}"' if to_channel else ""
    return (
        f'{{"event_id": "t-req", "type": "ownership.transfer_requested", "occurred_at": "{requested}", "ticket_id": "tk-1", "person": {{"phone": "18612345678"}}, "to_staff_id": "{to}"{channel}, "trigger": "{trigger}", "requested_by": "{requested_by}", "note": ""}}\n'
        f'{{"event_id": "t-dec", "type": "ownership.transfer_decided", "occurred_at": "{decided}", "ticket_id": "tk-1", "decision": "{decision}", "decided_by": "{decided_by}", "note": ""}}'
    )


FOLLOWUP = '{{"event_id": "f1", "type": "followup.logged", "occurred_at": "{t}", "person": {{"phone": "18612345678"}}, "by": "a1", "medium": "wechat"}}'
PAYMENT = '{{"event_id": "o1", "type": "order.paid", "occurred_at": "{t}", "order_id": "so-1", "person": {{"phone": "18612345678"}}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{{"sku": "a", "product_class": "assessment", "sessions": 0, "amount": "199"}}]}}'


def verdict(text: str):
    c = the_customer(attribution_of(SCAN_A1 + "\n" + text))
    [t] = c.tickets
    return c, t


def test_customer_request_is_always_eligible_and_moves_the_owner_from_the_decision() -> None:
    c, t = verdict(ticket("customer_request", "c1", "c1", "m1"))
    assert (t.eligible, t.effect) == (True, "owner changed")
    assert (c.owner.staff_id, c.owner.channel_id, c.owner.ticket_id) == ("c1", "ortho", "tk-1")  # channel held before
    assert c.owner_at(at("2026-08-01T11:59:00+08:00")).staff_id == "a1"  # not from the request
    assert c.owner_at(at("2026-08-01T12:00:00+08:00")).staff_id == "c1"


def test_the_ticket_channel_is_used_when_given() -> None:
    c, _ = verdict(ticket("customer_request", "c1", "c1", "m1", to_channel="gym"))
    assert (c.owner.channel_id, c.owner.channel_kind) == ("gym", "sports_scene")


def test_followup_timeout_is_eligible_when_the_owner_was_silent_and_nothing_was_paid() -> None:
    c, t = verdict(FOLLOWUP.format(t="2026-07-20T10:00:00+08:00") + "\n" + ticket("followup_timeout", "a2", "a2", "m1"))
    assert (t.eligible, t.effect, c.owner.staff_id) == (True, "owner changed", "a2")


def test_followup_timeout_is_not_eligible_after_a_recent_followup() -> None:
    c, t = verdict(FOLLOWUP.format(t="2026-07-28T10:00:00+08:00") + "\n" + ticket("followup_timeout", "a2", "a2", "m1"))
    assert (t.eligible, t.effect, c.owner.staff_id) == (False, "no effect", "a1")
    assert "followed up on 2026-07-28" in t.reason


def test_followup_timeout_is_not_eligible_after_a_recent_payment() -> None:
    c, t = verdict(PAYMENT.format(t="2026-07-30T10:00:00+08:00") + "\n" + ticket("followup_timeout", "a2", "a2", "m1"))
    assert (t.eligible, c.owner.staff_id) == (False, "a1")
    assert "the customer paid on 2026-07-30" in t.reason


def test_cross_store_is_eligible_to_another_store_only() -> None:
    c, t = verdict(ticket("cross_store", "a3", "a3", "m1"))
    assert (t.eligible, c.owner.staff_id) == (True, "a3")
    c, t = verdict(ticket("cross_store", "a2", "a2", "m1"))
    assert (t.eligible, c.owner.staff_id) == (False, "a1")
    assert t.reason == "approved but not eligible: cross_store: the receiving staff member is in the owner's store (sh-jingan); no effect"


def test_self_approval_is_refused() -> None:
    c, t = verdict(ticket("customer_request", "c1", "m1", "m1"))
    assert (t.eligible, t.effect, c.owner.staff_id) == (False, "no effect", "a1")
    assert "self-approval" in t.reason


def test_a_rejected_ticket_has_no_effect() -> None:
    c, t = verdict(ticket("customer_request", "c1", "c1", "m1", decision="rejected"))
    assert (t.decision, t.eligible, t.effect, c.owner.staff_id) == ("rejected", None, "no effect", "a1")


def test_an_undecided_ticket_is_pending() -> None:
    c = the_customer(attribution_of(SCAN_A1 + "\n" + ticket("customer_request", "c1", "c1", "m1").splitlines()[0]))
    assert c.tickets[0].effect == "pending" and c.owner.staff_id == "a1"


def test_a_walk_in_has_no_source_and_a_ticket_cannot_give_one() -> None:
    c = the_customer(attribution_of(PAYMENT.format(t="2026-07-30T10:00:00+08:00") + "\n" + ticket("customer_request", "c1", "c1", "m1")))
    assert c.source is None and c.owner is None
    assert c.tickets[0].reason.startswith("approved but not eligible: the customer has no owner")


def test_every_decision_names_its_rule_and_version() -> None:
    c, _ = verdict(ticket("customer_request", "c1", "c1", "m1"))
    assert [(d.kind, d.rule_version) for d in c.decisions] == [
        ("source", "2026.1"), ("ticket", "2026.1"), ("ticket", "2026.1"), ("owner_changed", "2026.1"),
    ]


STORY = CLINIC + "\n".join([
    SCAN_A1,
    SCAN_A2_LATER.format(t="2026-08-15T09:00:00+08:00"),
    FOLLOWUP.format(t="2026-07-20T10:00:00+08:00"),
    '{"event_id": "l3", "type": "lead.captured", "occurred_at": "2026-07-04T09:00:00+08:00", "person": {"wechat_id": "wx_b", "phone": "13900001111"}, "via": "platform", "channel_id": "douyin", "recorded_by": "a2"}',
    '{"event_id": "l4", "type": "lead.captured", "occurred_at": "2026-07-04T09:00:00+08:00", "person": {"wechat_id": "wx_b"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}',
    ticket("followup_timeout", "a2", "a2", "m1"),
])


def summary(a: Attribution) -> list[tuple]:
    return sorted(
        (cid, c.source.event_id if c.source else None, tuple((o.staff_id, o.since) for o in c.owners), tuple(x.event_id for x in c.collisions), tuple(t.effect for t in c.tickets))
        for cid, c in a.customers.items()
    )


def test_out_of_order_arrival_gives_the_same_attribution() -> None:
    events = scenario(STORY)
    expected = summary(attribute(events, BOOK))
    shuffled = list(events)
    random.Random(3).shuffle(shuffled)
    assert summary(attribute(shuffled, BOOK)) == expected
    assert summary(attribute(list(reversed(events)), BOOK)) == expected


@settings(max_examples=60, deadline=None)
@given(st.permutations(scenario(STORY)))
def test_attribution_does_not_depend_on_arrival_order(events) -> None:
    assert summary(attribute(list(events), BOOK)) == summary(attribute(scenario(STORY), BOOK))
