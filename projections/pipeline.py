"""The one place where the projections are assembled from the recorded stream.

``facts(recorded)`` takes what the store yields (any order), keeps the highest position it saw,
puts the events in canonical order and derives what every projection shares: identity, reference
data and the rule book. Projections are then plain functions of these facts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from ledger.events import LedgerEvent
from ledger.identity import Identity, canonical_key
from ledger.store import Recorded
from policies import RuleBook
from projections.attribution import Attribution, attribute, rule_book
from projections.directory import Directory, build_directory


@dataclass(frozen=True)
class Facts:
    """The stream up to ``position``, in canonical order, with what all projections share."""

    position: int
    events: tuple[LedgerEvent, ...]

    @cached_property
    def book(self) -> RuleBook:
        return rule_book(self.events)

    @cached_property
    def identity(self) -> Identity:
        identity = Identity()
        for event in self.events:
            identity.observe(event)
        return identity

    @cached_property
    def directory(self) -> Directory:
        return build_directory(self.events)

    @cached_property
    def attribution(self) -> Attribution:
        return attribute(self.events, self.book, self.identity, self.directory)

    @property
    def rule_versions(self) -> tuple[str, ...]:
        return self.book.versions


def facts(recorded: Iterable[Recorded], position: int | None = None) -> Facts:
    """Facts from what the store yields. ``position``: the ledger position the read was bounded by
    (``store.read(upto=position)``); by default the highest position among the events."""
    highest = 0
    events: list[LedgerEvent] = []
    for r in recorded:
        highest = max(highest, r.position)
        events.append(r.event)
    events.sort(key=canonical_key)
    return Facts(highest if position is None else position, tuple(events))


def facts_with(recorded: Iterable[Recorded], position: int, book: RuleBook, directory: Directory) -> Facts:
    """`facts` of one customer's events, with the rule book and reference data given rather than
    folded from the events (kept by `ledger.projector`; they must be those as of ``position``)."""
    found = facts(recorded, position)
    found.__dict__["book"] = book  # fills the cached properties
    found.__dict__["directory"] = directory
    return found


def facts_of(events: Iterable[LedgerEvent], position: int = 0) -> Facts:
    """Facts from bare events (tests, what-if runs)."""
    return Facts(position, tuple(sorted(events, key=canonical_key)))
