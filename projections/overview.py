"""The group at a glance: what the ledger holds, counted (the demo's first summary).

A pure fold over the events (any order in; identity is resolved in canonical order). Attribution,
settlement and the three ledgers are projections of their own; this one only counts facts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from ledger.events import (
    ChannelRegistered,
    EntryPointIssued,
    LeadCaptured,
    LedgerEvent,
    OrderPaid,
    OrderRefunded,
    ResourceDeclared,
    StaffRegistered,
    StoreRegistered,
)
from ledger.identity import resolve_identities


@dataclass(frozen=True)
class KindLeads:
    kind: str
    channels: int
    leads: int


@dataclass(frozen=True)
class Overview:
    first_day: str | None
    last_day: str | None
    events: int
    events_by_type: tuple[tuple[str, int], ...]
    stores: int
    staff_by_role: tuple[tuple[str, int], ...]
    entry_points: int
    resources: int
    customers: int
    customers_without_lead: int
    merge_candidates: int
    merges: int
    leads_by_kind: tuple[KindLeads, ...]
    orders: int
    order_amount: Decimal
    course_packages: int
    fill_items: int
    refunds: int
    refund_amount: Decimal
    order_amount_by_month: tuple[tuple[str, Decimal], ...]

    def as_json(self) -> dict:
        return {
            "period": {"first_day": self.first_day, "last_day": self.last_day},
            "events": self.events,
            "events_by_type": dict(self.events_by_type),
            "stores": self.stores,
            "staff_by_role": dict(self.staff_by_role),
            "entry_points": self.entry_points,
            "resources": self.resources,
            "customers": self.customers,
            "customers_without_lead": self.customers_without_lead,
            "merge_candidates": self.merge_candidates,
            "merges": self.merges,
            "leads_by_kind": {k.kind: {"channels": k.channels, "leads": k.leads} for k in self.leads_by_kind},
            "orders": self.orders,
            "order_amount": f"{self.order_amount:.2f}",
            "course_packages": self.course_packages,
            "fill_items": self.fill_items,
            "refunds": self.refunds,
            "refund_amount": f"{self.refund_amount:.2f}",
            "order_amount_by_month": {m: f"{a:.2f}" for m, a in self.order_amount_by_month},
        }


def overview(events: Iterable[LedgerEvent], month_of) -> Overview:
    """Count the facts. ``month_of(datetime) -> "YYYY-MM"`` in the rules' time zone."""
    events = list(events)
    identity = resolve_identities(events)
    by_type = Counter(e.type for e in events)
    roles = Counter(e.role for e in events if isinstance(e, StaffRegistered))
    channel_kind = {e.channel_id: e.kind for e in events if isinstance(e, ChannelRegistered)}
    entry_channel = {e.entry_point_id: e.channel_id for e in events if isinstance(e, EntryPointIssued)}
    leads = Counter()
    customers_with_lead = set()
    for e in events:
        if isinstance(e, LeadCaptured):
            channel = entry_channel.get(e.entry_point_id or "") if e.via == "scan" else e.channel_id
            leads[channel_kind.get(channel or "", "unknown")] += 1
            customers_with_lead.add(identity.customer_of(e))
    orders = [e for e in events if isinstance(e, OrderPaid)]
    refunds = [e for e in events if isinstance(e, OrderRefunded)]
    by_month: Counter[str] = Counter()
    for o in orders:
        by_month[month_of(o.occurred_at)] += o.amount
    days = sorted(e.occurred_at.date().isoformat() for e in events) if events else []
    customers = identity.customers()
    kinds = sorted(set(channel_kind.values()) | set(leads))
    return Overview(
        first_day=days[0] if days else None,
        last_day=days[-1] if days else None,
        events=len(events),
        events_by_type=tuple(sorted(by_type.items())),
        stores=len({e.store_id for e in events if isinstance(e, StoreRegistered)}),
        staff_by_role=tuple(sorted(roles.items())),
        entry_points=len(entry_channel),
        resources=len({e.resource_id for e in events if isinstance(e, ResourceDeclared)}),
        customers=len(customers),
        customers_without_lead=sum(1 for c in customers if c not in customers_with_lead),
        merge_candidates=len(identity.merge_candidates),
        merges=len(identity.merges),
        leads_by_kind=tuple(KindLeads(k, sum(1 for v in channel_kind.values() if v == k), leads[k]) for k in kinds),
        orders=len(orders),
        order_amount=sum((o.amount for o in orders), Decimal("0.00")),
        course_packages=sum(1 for o in orders for i in o.items if i.product_class == "course_package"),
        fill_items=sum(1 for o in orders for i in o.items if i.product_class == "fill_item"),
        refunds=len(refunds),
        refund_amount=sum((r.amount for r in refunds), Decimal("0.00")),
        order_amount_by_month=tuple(sorted(by_month.items())),
    )
