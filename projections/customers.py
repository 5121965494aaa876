"""Customers for review (SPEC §3): possible duplicates beyond exact keys, and one customer's events.

Possible duplicates are reported, never merged: the same store, the same last four phone digits,
and similar names (`ledger.names`). Names are never an identity key on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ledger.events import AssessmentBooked, LeadCaptured, LedgerEvent, OrderPaid, Person
from ledger.identity import CustomerId, Identity, canonical_key
from projections.directory import Directory

if TYPE_CHECKING:
    from ledger.names import PersonCard, PossibleDuplicate


def _stores_of(event: LedgerEvent, directory: Directory) -> tuple[str, ...]:
    if isinstance(event, (AssessmentBooked, OrderPaid)):
        return (event.store_id,)
    if isinstance(event, LeadCaptured):
        if event.via == "scan":
            point = directory.entry_points.get(event.entry_point_id or "")
            return (point.store_id,) if point else ()
        store = directory.store_of(event.recorded_by)
        return (store,) if store else ()
    return ()


def person_cards(events: Iterable[LedgerEvent], identity: Identity, directory: Directory) -> list[PersonCard]:
    """What the duplicate matcher needs about each customer: stores, names, last four digits."""
    from ledger.names import PersonCard  # pypinyin's dictionaries load in ~0.2 s: only when asked

    stores: dict[CustomerId, set[str]] = {}
    names: dict[CustomerId, set[str]] = {}
    last4: dict[CustomerId, set[str]] = {}
    for event in events:
        customer = identity.customer_of(event)
        if customer is None:
            continue
        stores.setdefault(customer, set()).update(_stores_of(event, directory))
        people: list[Person] = [p for p in (getattr(event, "person", None), getattr(event, "survivor", None), getattr(event, "merged", None)) if p]
        for person in people:
            if person.name:
                names.setdefault(customer, set()).add(person.name)
            if person.phone and person.phone_is_valid:
                last4.setdefault(customer, set()).add(person.phone[-4:])
    return [
        PersonCard(c, tuple(sorted(stores.get(c, ()))), tuple(sorted(names.get(c, ()))), tuple(sorted(last4.get(c, ()))))
        for c in sorted(set(stores) | set(names))
        if names.get(c) and last4.get(c) and stores.get(c)
    ]


def find_possible_duplicates(events: Sequence[LedgerEvent], identity: Identity, directory: Directory) -> list[PossibleDuplicate]:
    from ledger.names import possible_duplicates

    return possible_duplicates(person_cards(events, identity, directory))


def customer_events(events: Iterable[LedgerEvent], identity: Identity, customer: CustomerId) -> list[LedgerEvent]:
    """Every event of one (surviving) customer, merged customers included, in canonical order."""
    root = identity.root(customer)
    mine = [e for e in events if identity.customer_of(e) == root]
    return sorted(mine, key=canonical_key)
