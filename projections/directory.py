"""Reference data (SPEC §2): stores, staff, channels, entry points, capacity — as of the stream.

A pure fold in canonical order. A later registration of the same id replaces the earlier one
(a renamed store, a staff member moving store); an entry point's retirement is kept with its time
so that a scan can be judged against the moment it happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ledger.events import (
    ChannelRegistered,
    EntryPointIssued,
    EntryPointRetired,
    LedgerEvent,
    ResourceDeclared,
    StaffRegistered,
    StoreRegistered,
)
from ledger.identity import canonical_key


@dataclass(frozen=True)
class Staff:
    staff_id: str
    name: str
    role: str
    store_id: str


@dataclass(frozen=True)
class Channel:
    channel_id: str
    name: str
    kind: str
    partner: str


@dataclass(frozen=True)
class EntryPoint:
    entry_point_id: str
    channel_id: str
    owner_staff_id: str
    store_id: str
    issued_at: datetime
    retired_at: datetime | None = None

    def retired_by(self, moment: datetime) -> bool:
        return self.retired_at is not None and self.retired_at <= moment


@dataclass(frozen=True)
class Capacity:
    """Weekly hours of one clinician or room from ``since`` on (the latest declaration wins)."""

    resource_id: str
    kind: str
    store_id: str
    weekly_hours: Decimal
    since: datetime


@dataclass
class Directory:
    stores: dict[str, str] = field(default_factory=dict)
    staff: dict[str, Staff] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    entry_points: dict[str, EntryPoint] = field(default_factory=dict)
    capacity: dict[str, list[Capacity]] = field(default_factory=dict)

    def observe(self, event: LedgerEvent) -> None:
        if isinstance(event, StoreRegistered):
            self.stores[event.store_id] = event.name
        elif isinstance(event, StaffRegistered):
            self.staff[event.staff_id] = Staff(event.staff_id, event.name, event.role, event.store_id)
        elif isinstance(event, ChannelRegistered):
            self.channels[event.channel_id] = Channel(event.channel_id, event.name, event.kind, event.partner)
        elif isinstance(event, EntryPointIssued):
            previous = self.entry_points.get(event.entry_point_id)
            self.entry_points[event.entry_point_id] = EntryPoint(
                event.entry_point_id,
                event.channel_id,
                event.owner_staff_id,
                event.store_id,
                event.occurred_at,
                previous.retired_at if previous else None,
            )
        elif isinstance(event, EntryPointRetired):
            point = self.entry_points.get(event.entry_point_id)
            if point is not None and (point.retired_at is None or event.occurred_at < point.retired_at):
                self.entry_points[event.entry_point_id] = EntryPoint(
                    point.entry_point_id, point.channel_id, point.owner_staff_id, point.store_id, point.issued_at, event.occurred_at
                )
            elif point is None:
                self._early_retirements[event.entry_point_id] = event.occurred_at
        elif isinstance(event, ResourceDeclared):
            self.capacity.setdefault(event.resource_id, []).append(
                Capacity(event.resource_id, event.kind, event.store_id, event.weekly_hours, event.occurred_at)
            )

    _early_retirements: dict[str, datetime] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """Plain JSON data of a built directory (`Directory.from_state` reads it back): kept
        with the projections so one customer's query need not refold the reference data."""
        moment = lambda value: value.isoformat() if value is not None else None  # noqa: E731
        return {
            "stores": self.stores,
            "staff": [[s.staff_id, s.name, s.role, s.store_id] for s in self.staff.values()],
            "channels": [[c.channel_id, c.name, c.kind, c.partner] for c in self.channels.values()],
            "entry_points": [
                [e.entry_point_id, e.channel_id, e.owner_staff_id, e.store_id, moment(e.issued_at), moment(e.retired_at)]
                for e in self.entry_points.values()
            ],
            "capacity": [[c.resource_id, c.kind, c.store_id, str(c.weekly_hours), moment(c.since)] for cs in self.capacity.values() for c in cs],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Directory:
        moment = lambda text: datetime.fromisoformat(text) if text is not None else None  # noqa: E731
        directory = cls(stores=dict(state["stores"]))
        directory.staff = {row[0]: Staff(*row) for row in state["staff"]}
        directory.channels = {row[0]: Channel(*row) for row in state["channels"]}
        directory.entry_points = {row[0]: EntryPoint(*row[:4], moment(row[4]), moment(row[5])) for row in state["entry_points"]}
        for resource_id, kind, store_id, hours, since in state["capacity"]:
            directory.capacity.setdefault(resource_id, []).append(Capacity(resource_id, kind, store_id, Decimal(hours), moment(since)))
        return directory

    def channel_kind(self, channel_id: str | None) -> str | None:
        channel = self.channels.get(channel_id or "")
        return channel.kind if channel else None

    def store_of(self, staff_id: str | None) -> str | None:
        staff = self.staff.get(staff_id or "")
        return staff.store_id if staff else None

    def capacity_on(self, resource_id: str, moment: datetime) -> Capacity | None:
        """The declaration in force at ``moment`` (declarations are kept in canonical order)."""
        current = None
        for declared in self.capacity.get(resource_id, ()):
            if declared.since <= moment:
                current = declared
        return current


def build_directory(events: Iterable[LedgerEvent]) -> Directory:
    """The reference data of a stream (any order in, canonical order inside)."""
    directory = Directory()
    for event in sorted(events, key=canonical_key):
        directory.observe(event)
    for point_id, retired_at in directory._early_retirements.items():
        point = directory.entry_points.get(point_id)
        if point is not None and point.retired_at is None:
            directory.entry_points[point_id] = EntryPoint(
                point.entry_point_id, point.channel_id, point.owner_staff_id, point.store_id, point.issued_at, retired_at
            )
    return directory
