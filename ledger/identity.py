"""Customers and identity (SPEC §3): who each event is about.

A customer is resolved from exact identity keys (a valid phone in E.164, a WeChat id, a platform
user). The fold runs in *canonical order* — ``occurred_at``, then ``event_id`` — so that the answer
never depends on the order in which events arrived (ledger order would: two stores holding the
same facts must agree):

* an event naming a key already known belongs to that key's customer;
* an event naming several keys links the unknown ones to the customer of the known ones;
* an event naming only unknown keys starts a new customer, whose id is derived from that event's
  id (``C-`` + 10 hex digits of its SHA-256): stable, and free of personal data;
* when one event's keys point at two different customers, the event goes to the customer created
  first and the pair is reported as a `MergeCandidate`; nothing is merged automatically;
* ``customers.merged`` joins the merged customer into the survivor (union–find): everything either
  ever did belongs to the survivor from then on, in every projection.

Events that name no person (an attendance, a session, a refund, a ticket decision) belong to the
customer of the appointment, order or ticket they refer to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from ledger.events import (
    EVENT_CLASSES,
    AssessmentAttended,
    AssessmentBooked,
    AssessmentCancelled,
    AssessmentNoShow,
    CustomersMerged,
    LedgerEvent,
    OrderPaid,
    OrderRefunded,
    Person,
    SessionDelivered,
    TransferDecided,
    TransferRequested,
)

CustomerId = str


def canonical_key(event: LedgerEvent) -> tuple[datetime, str]:
    """The order every projection folds in: when it happened, then its id (never arrival order)."""
    return (event.occurred_at, event.event_id)


def customer_id_for(event_id: str) -> CustomerId:
    return "C-" + hashlib.sha256(event_id.encode()).hexdigest()[:10].upper()


@dataclass(frozen=True)
class MergeCandidate:
    """One event's keys pointed at two customers: a human should look (and maybe merge)."""

    kept: CustomerId  # the customer created first, who got the event
    other: CustomerId
    event_id: str
    occurred_at: datetime
    keys: tuple[str, ...]  # identity key kinds involved, e.g. ("phone", "wechat"): no values


class Identity:
    """The identity fold. Feed events with `observe` in canonical order, then ask `customer_of`."""

    def __init__(self, keep_events: bool = True) -> None:
        # ``keep_events`` False: `by_event` stays empty, and the customer of an event that names
        # a person is only what `observe_touch` returns — for a caller that keeps it more
        # compactly than a dict of every event (a rebuild, `ledger.projector`).
        self.keep_events = keep_events
        self.owner_of_key: dict[str, CustomerId] = {}
        self.keys_of: dict[CustomerId, list[str]] = {}
        self.created_at: dict[CustomerId, tuple[datetime, str]] = {}
        self.parent: dict[CustomerId, CustomerId] = {}
        self.by_event: dict[str, CustomerId] = {}
        self.by_reference: dict[str, CustomerId] = {}  # "order:<id>", "appointment:<id>", "ticket:<id>"
        self.merge_candidates: list[MergeCandidate] = []
        self.merges: list[tuple[CustomerId, CustomerId, str]] = []  # (merged, survivor, event_id)
        # A store that encrypts personal data keys people by keyed hashes (``phone:#…``,
        # `ledger.sealing`); from the people it could decrypt the fold learns which plain key each
        # hash stands for, to look customers up by phone and to show keys (`plain_key`).
        self.stored_key_of: dict[str, str] = {}
        self.plain_key_of: dict[str, str] = {}

    # -- union–find ----------------------------------------------------------------------

    def root(self, customer: CustomerId) -> CustomerId:
        path = []
        while customer in self.parent:
            path.append(customer)
            customer = self.parent[customer]
        for c in path:
            self.parent[c] = customer
        return customer

    def customers(self) -> list[CustomerId]:
        """Every customer that has not been merged into another, in creation order."""
        alive = [c for c in self.created_at if c not in self.parent]
        return sorted(alive, key=lambda c: self.created_at[c])

    def members(self, customer: CustomerId) -> list[CustomerId]:
        """The customer and every customer merged into it."""
        root = self.root(customer)
        return sorted((c for c in self.created_at if self.root(c) == root), key=lambda c: self.created_at[c])

    # -- resolution ----------------------------------------------------------------------

    def resolve(self, person: Person, event: LedgerEvent) -> CustomerId:
        return self._resolve(_person_keys(person), event.event_id, canonical_key(event))

    def _resolve(self, person: PersonKeys, event_id: str, key: tuple[datetime, str]) -> CustomerId:
        keys, plain_keys = person
        if plain_keys is not None:
            for plain, stored in zip(plain_keys, keys):
                self.stored_key_of[plain] = stored
                self.plain_key_of[stored] = plain
        found: list[CustomerId] = []
        for identity_key in keys:
            owner = self.owner_of_key.get(identity_key)
            if owner is not None:
                owner = self.root(owner)
                if owner not in found:
                    found.append(owner)
        if not found:
            customer = customer_id_for(event_id)
            if customer in self.created_at:  # the same event resolving a second person (a merge)
                customer = customer_id_for(event_id + "#2")
            self.created_at[customer] = key
            self.keys_of[customer] = []
        else:
            found.sort(key=lambda c: self.created_at[c])
            customer = found[0]
            for other in found[1:]:
                kinds = tuple(sorted({k.split(":", 1)[0].rstrip("?") for k in keys}))
                self.merge_candidates.append(MergeCandidate(customer, other, event_id, key[0], kinds))
        for identity_key in keys:
            if identity_key not in self.owner_of_key:
                self.owner_of_key[identity_key] = customer
                self.keys_of[customer].append(identity_key)
        return customer

    def observe(self, event: LedgerEvent) -> CustomerId | None:
        """Assign one event (in canonical order) to a customer; None for reference data."""
        return self.observe_touch(touch_of(event))

    def observe_touch(self, touch: Touch) -> CustomerId | None:
        """`observe` of what the fold needs of an event (`touch_of`)."""
        if touch.merged:
            survivor = self._resolve(touch.people[0], touch.event_id, touch.key)
            merged = self._resolve(touch.people[1], touch.event_id, touch.key)
            survivor, merged = self.root(survivor), self.root(merged)
            if survivor != merged:
                self.parent[merged] = survivor
                self.merges.append((merged, survivor, touch.event_id))
            if self.keep_events:
                self.by_event[touch.event_id] = survivor
            return survivor
        if touch.people:
            customer = self._resolve(touch.people[0], touch.event_id, touch.key)
            if touch.defines is not None:
                self.by_reference.setdefault(touch.defines, customer)
            if self.keep_events:
                self.by_event[touch.event_id] = customer
            return customer
        return None

    def customer_of(self, event: LedgerEvent) -> CustomerId | None:
        """The (surviving) customer an event is about, after the fold; None for reference data."""
        return self.customer_of_touch(event.event_id, reference_of(event))

    def customer_of_touch(self, event_id: str, reference: str | None) -> CustomerId | None:
        """`customer_of` by the event's id and the order, appointment or ticket it refers to."""
        direct = self.by_event.get(event_id)
        if direct is not None:
            return self.root(direct)
        if reference is None:
            return None
        customer = self.by_reference.get(reference)
        return self.root(customer) if customer is not None else None

    def lookup(self, ref: str) -> CustomerId | None:
        """A customer by phone, WeChat id, platform user or customer id (SPEC §9 ``REF``)."""
        ref = ref.strip()
        if ref in self.created_at:
            return self.root(ref)
        candidates = []
        if ":" in ref:
            candidates.append("platform:" + ref)
        candidates.append("wechat:" + ref)
        person_phone = _phone_key(ref)
        if person_phone:
            candidates.insert(0, person_phone)
        for key in candidates:
            owner = self.owner_of_key.get(self.stored_key_of.get(key, key))
            if owner is not None:
                return self.root(owner)
        return None


    def plain_key(self, key: str) -> str | None:
        """An identity key as a person may see it: itself, or for a keyed hash the plain key it
        stands for when known (None when its personal data was forgotten or is sealed)."""
        if ":#" not in key:
            return key
        return self.plain_key_of.get(key)


def _phone_key(ref: str) -> str | None:
    from ledger.events import normalise_phone

    phone, valid = normalise_phone(ref)
    return "phone:" + phone if valid else None


PersonKeys = tuple[tuple[str, ...], tuple[str, ...] | None]  # identity keys; the plain ones behind hashes


@dataclass(frozen=True, slots=True)
class Touch:
    """What the identity fold needs of an event — a few hundred bytes instead of the decoded
    event, so a rebuild can fold identity over a whole ledger before it groups the events."""

    event_id: str
    key: tuple[datetime, str]  # canonical order
    people: tuple[PersonKeys, ...]  # the person; a merge's survivor and merged
    merged: bool = False
    defines: str | None = None  # "order:<id>" … the reference this event creates
    refers: str | None = None  # `reference_of`


def _person_keys(person: Person) -> PersonKeys:
    keys = person.identity_keys()
    plain = person.plain_identity_keys() if person._keys is not None and not person._withheld else None
    return keys, plain


def touch_of(event: LedgerEvent) -> Touch:
    if isinstance(event, CustomersMerged):
        return Touch(event.event_id, canonical_key(event), (_person_keys(event.survivor), _person_keys(event.merged)), merged=True)
    person = event.person_ref
    if person is None:
        return Touch(event.event_id, canonical_key(event), (), refers=reference_of(event))
    defines = None
    if isinstance(event, OrderPaid):
        defines = "order:" + event.order_id
    elif isinstance(event, AssessmentBooked):
        defines = "appointment:" + event.appointment_id
    elif isinstance(event, TransferRequested):
        defines = "ticket:" + event.ticket_id
    return Touch(event.event_id, canonical_key(event), (_person_keys(person),), defines=defines, refers=reference_of(event))


def reference_of(event: LedgerEvent) -> str | None:
    if isinstance(event, (SessionDelivered, OrderRefunded)):
        return "order:" + event.order_id
    if isinstance(event, (AssessmentAttended, AssessmentNoShow, AssessmentCancelled)):
        return "appointment:" + event.appointment_id
    if isinstance(event, TransferDecided):
        return "ticket:" + event.ticket_id
    return None


def resolve_identities(events: Iterable[LedgerEvent]) -> Identity:
    """Run the identity fold over events (any order in, canonical order inside)."""
    identity = Identity()
    for event in sorted(events, key=canonical_key):
        identity.observe(event)
    return identity


def index_terms(event: LedgerEvent) -> tuple[str, ...]:
    """What the store's secondary index files an event under, so that one customer's events can be
    found without reading the stream: its identity keys (``k:``), the customer id it would create
    (``c:``), the order, appointment or ticket it names (``o:``, ``a:``, ``t:``), and ``d:`` for
    reference data and rule sets (read by every customer's fold)."""
    people_fields, reference_fields = _INDEXED_FIELDS[type(event)]
    terms: list[str] = []
    for name in people_fields:
        terms.extend("k:" + key for key in getattr(event, name).identity_keys())
    if people_fields:
        terms.append("c:" + customer_id_for(event.event_id))
        if isinstance(event, CustomersMerged):
            terms.append("c:" + customer_id_for(event.event_id + "#2"))
    for name, prefix in reference_fields:
        value = getattr(event, name)
        if value is not None:
            terms.append(prefix + value)
    if is_reference_data(event):
        terms.append("d:")
    return tuple(dict.fromkeys(terms))


def is_reference_data(event: LedgerEvent) -> bool:
    """Reference data and rule sets: events about no customer that every customer's fold reads
    (filed under ``d:``). ``settlement.closed`` is neither."""
    people_fields, reference_fields = _INDEXED_FIELDS[type(event)]
    return not people_fields and not reference_fields and event.type != "settlement.closed"


def _indexed_fields(cls: type[LedgerEvent]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    fields = cls.model_fields
    people = tuple(name for name in ("person", "survivor", "merged") if name in fields)
    references = tuple((name, prefix) for name, prefix in (("order_id", "o:"), ("appointment_id", "a:"), ("ticket_id", "t:")) if name in fields)
    return people, references


_INDEXED_FIELDS = {cls: _indexed_fields(cls) for cls in EVENT_CLASSES}
