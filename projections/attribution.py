"""Attribution and ownership (归属, SPEC §4): who each customer belongs to, and the evidence.

A pure fold, customer by customer, over that customer's events in canonical order (occurred_at,
then event_id: arrival order never matters), under the rule set in force at each event's moment:

* the **source** is the first valid lead — it never changes;
* the **owner** starts as the source's staff and channel and changes only through an approved and
  eligible transfer ticket (from the decision's time on), or — with
  ``reattribute_after_protection`` — through a valid lead from another owner after protection ended;
* every later valid lead from another owner or channel is a **collision** (撞单), recorded with
  whether it fell inside protection (保护期);
* invalid leads are kept and counted, never attributed;
* each step is a `Decision` naming the rule and its version: the auditor's trace.

`Attribution.owner_at(customer, moment)` is what settlement asks for every payment.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ledger.events import (
    CustomersMerged,
    FollowupLogged,
    LeadCaptured,
    LedgerEvent,
    OrderPaid,
    PolicyAdopted,
    TransferDecided,
    TransferRequested,
)
from ledger.identity import CustomerId, Identity, canonical_key
from policies import NoRulesInForce, RuleBook, RuleSet
from policies.attribution import lead_validity, protection_ends_at, ticket_eligibility
from projections.directory import Directory, build_directory


@dataclass(frozen=True)
class Lead:
    """One ``lead.captured`` as the rules see it."""

    event_id: str
    at: datetime
    via: str
    channel_id: str | None
    channel_kind: str | None
    entry_point_id: str | None
    staff_id: str | None
    valid: bool
    reason: str


@dataclass(frozen=True)
class Ownership:
    """Who holds the attribution from ``since`` on."""

    staff_id: str
    channel_id: str | None
    channel_kind: str | None
    since: datetime
    via: str  # "source" | "ticket" | "reattribution"
    event_id: str
    ticket_id: str | None = None


@dataclass(frozen=True)
class Collision:
    """撞单: a later valid lead from another owner or channel."""

    event_id: str
    at: datetime
    staff_id: str | None
    channel_id: str | None
    channel_kind: str | None
    owner_staff_id: str
    owner_channel_id: str | None
    inside_protection: bool
    protected_until: datetime
    effect: str  # "recorded" | "reattributed"
    rule_version: str


@dataclass(frozen=True)
class TicketVerdict:
    ticket_id: str
    trigger: str
    requested_at: datetime
    requested_by: str
    to_staff_id: str
    to_channel_id: str | None
    decision: str | None  # "approved" | "rejected" | None (pending)
    decided_at: datetime | None
    decided_by: str | None
    eligible: bool | None
    reason: str
    effect: str  # "owner changed" | "no effect" | "pending"
    rule_version: str | None
    request_event_id: str
    decision_event_id: str | None


@dataclass(frozen=True)
class Decision:
    """One step of the evidence chain: what the rules decided at an event, and under which version."""

    event_id: str
    at: datetime
    kind: str  # source | invalid_lead | collision | repeat_lead | ticket | owner_changed | reattributed
    text: str
    rule: str  # the SPEC rule, e.g. "§4 source"
    rule_version: str


@dataclass(frozen=True)
class CustomerAttribution:
    customer_id: CustomerId
    source: Lead | None
    protected_until: datetime | None
    owners: tuple[Ownership, ...]
    collisions: tuple[Collision, ...]
    tickets: tuple[TicketVerdict, ...]
    invalid_leads: tuple[Lead, ...]
    decisions: tuple[Decision, ...]

    def owner_at(self, moment: datetime) -> Ownership | None:
        """The owner holding the attribution at ``moment`` (None before the first valid lead)."""
        index = bisect_right([o.since for o in self.owners], moment)
        return self.owners[index - 1] if index else None

    @property
    def owner(self) -> Ownership | None:
        return self.owners[-1] if self.owners else None


@dataclass
class Attribution:
    """Attribution of every customer, with the identity and reference data it was built from."""

    identity: Identity
    directory: Directory
    customers: dict[CustomerId, CustomerAttribution] = field(default_factory=dict)

    def of(self, customer: CustomerId) -> CustomerAttribution | None:
        return self.customers.get(self.identity.root(customer))

    def owner_at(self, customer: CustomerId, moment: datetime) -> Ownership | None:
        found = self.of(customer)
        return found.owner_at(moment) if found else None

    def collisions(self) -> list[tuple[CustomerId, Collision]]:
        found = [(cid, c) for cid, ca in self.customers.items() for c in ca.collisions]
        return sorted(found, key=lambda pair: (pair[1].at, pair[1].event_id))


def rule_book(events: Iterable[LedgerEvent]) -> RuleBook:
    """The adopted rule sets, ranked in canonical order (so the book is the same in every store)."""
    adoptions = sorted((e for e in events if isinstance(e, PolicyAdopted)), key=canonical_key)
    return RuleBook((rank, RuleSet.from_event_rules(e.rules)) for rank, e in enumerate(adoptions, start=1))


def rules_at(book: RuleBook, moment: datetime) -> RuleSet:
    """The rule set in force at ``moment``; facts older than every rule set are judged by the
    earliest one (attribution must answer for them; settlement refuses such lines instead)."""
    try:
        return book.in_force_at(moment)
    except NoRulesInForce:
        return book.earliest


def describe_lead(event: LeadCaptured, directory: Directory) -> Lead:
    point = directory.entry_points.get(event.entry_point_id or "") if event.via == "scan" else None
    if event.via == "scan":
        channel_id = point.channel_id if point else None
        staff_id = point.owner_staff_id if point else None
    else:
        channel_id, staff_id = event.channel_id, event.recorded_by
    person = event.person
    verdict = lead_validity(
        has_valid_contact=person.phone_is_valid or bool(person.wechat_id) or bool(person.platform_user),
        via=event.via,
        entry_point_known=point is not None,
        entry_point_retired=bool(point and point.retired_by(event.occurred_at)),
        recorder_known=(event.recorded_by or "") in directory.staff,
        channel_known=(event.channel_id or "") in directory.channels,
    )
    return Lead(
        event.event_id,
        event.occurred_at,
        event.via,
        channel_id,
        directory.channel_kind(channel_id),
        event.entry_point_id,
        staff_id,
        verdict.ok,
        verdict.reason,
    )


def _who(staff_id: str | None, channel_id: str | None) -> str:
    return f"{staff_id or '?'} / {channel_id or '?'}"


def attribute_customer(
    customer: CustomerId,
    events: Sequence[LedgerEvent],
    directory: Directory,
    book: RuleBook,
) -> CustomerAttribution:
    """Fold one customer's events (already in canonical order) into their attribution."""
    source: Lead | None = None
    protected_until: datetime | None = None
    owners: list[Ownership] = []
    collisions: list[Collision] = []
    invalid: list[Lead] = []
    decisions: list[Decision] = []
    tickets: dict[str, TicketVerdict] = {}
    requests: dict[str, TransferRequested] = {}
    followups: dict[str, list[datetime]] = {}
    payments: list[datetime] = []

    def owner_at(moment: datetime) -> Ownership | None:
        current = None
        for o in owners:
            if o.since <= moment:
                current = o
        return current

    for event in events:
        rules = rules_at(book, event.occurred_at)
        version = rules.version
        if isinstance(event, LeadCaptured):
            lead = describe_lead(event, directory)
            if not lead.valid:
                invalid.append(lead)
                decisions.append(Decision(event.event_id, event.occurred_at, "invalid_lead", f"lead not valid: {lead.reason}; kept, never attributed", "§4 valid lead", version))
                continue
            assert lead.staff_id is not None
            if source is None:
                source = lead
                protected_until = protection_ends_at(lead.at, rules)
                owners.append(Ownership(lead.staff_id, lead.channel_id, lead.channel_kind, lead.at, "source", lead.event_id))
                decisions.append(Decision(
                    event.event_id, event.occurred_at, "source",
                    f"first valid lead: source is {_who(lead.staff_id, lead.channel_id)} ({lead.channel_kind}); "
                    f"protected for {rules.protection_days} days, until {protected_until.isoformat()}",
                    "§4 source, protection period", version,
                ))
                continue
            owner = owners[-1]
            if (lead.staff_id, lead.channel_id) == (owner.staff_id, owner.channel_id):
                decisions.append(Decision(event.event_id, event.occurred_at, "repeat_lead", f"another lead from the owner {_who(owner.staff_id, owner.channel_id)}: no effect", "§4 collision", version))
                continue
            assert protected_until is not None
            inside = event.occurred_at < protected_until
            effect = "recorded"
            if not inside and rules.reattribute_after_protection:
                effect = "reattributed"
            collisions.append(Collision(
                event.event_id, event.occurred_at, lead.staff_id, lead.channel_id, lead.channel_kind,
                owner.staff_id, owner.channel_id, inside, protected_until, effect, version,
            ))
            where = "inside" if inside else "after"
            if effect == "reattributed":
                owners.append(Ownership(lead.staff_id, lead.channel_id, lead.channel_kind, lead.at, "reattribution", lead.event_id))
                protected_until = protection_ends_at(lead.at, rules)
                decisions.append(Decision(
                    event.event_id, event.occurred_at, "reattributed",
                    f"collision {where} protection (ended {owner_protection_text(collisions[-1])}); reattribute_after_protection is on: "
                    f"owner is now {_who(lead.staff_id, lead.channel_id)}, protected until {protected_until.isoformat()}",
                    "§4 reattribute_after_protection", version,
                ))
            else:
                note = "" if inside else "; reattribute_after_protection is off"
                decisions.append(Decision(
                    event.event_id, event.occurred_at, "collision",
                    f"collision {where} protection by {_who(lead.staff_id, lead.channel_id)}: recorded, owner stays {_who(owner.staff_id, owner.channel_id)}{note}",
                    "§4 collision", version,
                ))
        elif isinstance(event, FollowupLogged):
            followups.setdefault(event.by, []).append(event.occurred_at)
        elif isinstance(event, OrderPaid):
            payments.append(event.occurred_at)
        elif isinstance(event, TransferRequested):
            requests[event.ticket_id] = event
            tickets[event.ticket_id] = TicketVerdict(
                event.ticket_id, event.trigger, event.occurred_at, event.requested_by, event.to_staff_id, event.to_channel_id,
                None, None, None, None, "awaiting a decision", "pending", None, event.event_id, None,
            )
            decisions.append(Decision(event.event_id, event.occurred_at, "ticket", f"transfer ticket {event.ticket_id} requested by {event.requested_by}: {event.trigger} → {event.to_staff_id}", "§4 transfer ticket", version))
        elif isinstance(event, TransferDecided):
            request = requests.get(event.ticket_id)
            if request is None:
                decisions.append(Decision(event.event_id, event.occurred_at, "ticket", f"decision on ticket {event.ticket_id} dated before its request: no effect", "§4 transfer ticket", version))
                continue
            verdict_text, eligible, effect = _decide(event, request, owner_at, followups, payments, directory, rules)
            tickets[event.ticket_id] = TicketVerdict(
                request.ticket_id, request.trigger, request.occurred_at, request.requested_by, request.to_staff_id, request.to_channel_id,
                event.decision, event.occurred_at, event.decided_by, eligible, verdict_text, effect, version, request.event_id, event.event_id,
            )
            decisions.append(Decision(event.event_id, event.occurred_at, "ticket", f"ticket {event.ticket_id} {event.decision} by {event.decided_by}: {verdict_text}", "§4 transfer ticket eligibility", version))
            if effect == "owner changed":
                before = owner_at(request.occurred_at)
                assert before is not None
                channel = request.to_channel_id or before.channel_id
                owners.append(Ownership(request.to_staff_id, channel, directory.channel_kind(channel), event.occurred_at, "ticket", event.event_id, request.ticket_id))
                decisions.append(Decision(event.event_id, event.occurred_at, "owner_changed", f"owner is now {_who(request.to_staff_id, channel)} (was {_who(before.staff_id, before.channel_id)})", "§4 owner", version))
    return CustomerAttribution(
        customer,
        source,
        protected_until,
        tuple(owners),
        tuple(collisions),
        tuple(sorted(tickets.values(), key=lambda t: (t.requested_at, t.ticket_id))),
        tuple(invalid),
        tuple(decisions),
    )


def owner_protection_text(collision: Collision) -> str:
    return collision.protected_until.isoformat()


def _decide(event, request, owner_at, followups, payments, directory: Directory, rules: RuleSet) -> tuple[str, bool | None, str]:
    if event.decision == "rejected":
        return "rejected: no effect", None, "no effect"
    owner = owner_at(request.occurred_at)
    verdict = ticket_eligibility(
        trigger=request.trigger,
        requested_by=request.requested_by,
        decided_by=event.decided_by,
        requested_at=request.occurred_at,
        owner_staff_id=owner.staff_id if owner else None,
        owner_store_id=directory.store_of(owner.staff_id) if owner else None,
        to_store_id=directory.store_of(request.to_staff_id),
        owner_followups=tuple(followups.get(owner.staff_id, ())) if owner else (),
        customer_payments=tuple(payments),
        rules=rules,
    )
    if verdict.ok:
        return f"eligible ({verdict.reason})", True, "owner changed"
    return f"approved but not eligible: {verdict.reason}; no effect", False, "no effect"


def attribute(
    events: Sequence[LedgerEvent],
    book: RuleBook | None = None,
    identity: Identity | None = None,
    directory: Directory | None = None,
) -> Attribution:
    """Attribution of every customer in ``events`` (any order in)."""
    ordered = sorted(events, key=canonical_key)
    book = book or rule_book(ordered)
    if identity is None:
        identity = Identity()
        for event in ordered:
            identity.observe(event)
    directory = directory or build_directory(ordered)
    timelines: dict[CustomerId, list[LedgerEvent]] = {}
    for event in ordered:
        if isinstance(event, CustomersMerged):
            continue
        customer = identity.customer_of(event)
        if customer is not None:
            timelines.setdefault(customer, []).append(event)
    result = Attribution(identity, directory)
    for customer in identity.customers():
        result.customers[customer] = attribute_customer(customer, timelines.get(customer, []), directory, book)
    return result
