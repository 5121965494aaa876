"""The rules of record (SPEC §2.2): what the ledger refuses to record, and the state it checks against.

Facts are recorded; rules decide their effect later. So this module refuses only what is
impossible: a reference to something the ledger has never seen (a scan of an unknown entry point,
a session or refund for an unknown order, an outcome for an unknown appointment, a decision for an
unknown ticket), a session beyond what remains on its order item, a refund above what was paid
minus earlier refunds, a ticket decided twice, an id (order, refund, ticket, appointment, policy
version, closed month) reused by a different event.

`RecordState` is a fold over the recorded stream (order does not matter: every check is a count
or a set membership), with an undo log so that a batch validated against it can be rolled back
when another writer commits first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from ledger.events import (
    AssessmentAttended,
    AssessmentBooked,
    AssessmentCancelled,
    AssessmentNoShow,
    ChannelRegistered,
    EntryPointIssued,
    LeadCaptured,
    LedgerEvent,
    OrderPaid,
    OrderRefunded,
    PolicyAdopted,
    SessionDelivered,
    SettlementClosed,
    StaffRegistered,
    StoreRegistered,
    TransferDecided,
    TransferRequested,
)


def _fold_code() -> str:
    """What a kept fold is tagged with: a digest of this module's own source, which defines the
    fold and every check. A kept fold that another version of it made is then not taken over
    — the next ingest replays the store once and keeps a fresh one — without anyone having to
    remember to bump a version number (nor to rebuild)."""
    return "sha256:" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


_FOLD_CODE = _fold_code()


@dataclass(frozen=True)
class Refusal:
    """Why the ledger will not record an event. ``unresolved`` marks a reference that may still
    resolve later in the same ingest (events may arrive out of order within a file)."""

    field: str
    reason: str
    unresolved: bool = False


@dataclass(frozen=True)
class ItemBalance:
    sku: str
    sessions: int
    amount: Decimal
    sessions_used: int = 0  # delivered + refunded sessions
    refunded: Decimal = Decimal("0.00")

    @property
    def sessions_left(self) -> int:
        return self.sessions - self.sessions_used


@dataclass(frozen=True)
class OrderBalance:
    event_id: str
    amount: Decimal
    items: tuple[ItemBalance, ...]
    refunded: Decimal = Decimal("0.00")

    def item(self, sku: str | None) -> ItemBalance | None:
        if sku is not None:
            return next((i for i in self.items if i.sku == sku), None)
        with_sessions = [i for i in self.items if i.sessions > 0]
        return with_sessions[0] if len(with_sessions) == 1 else None

    def with_item(self, item: ItemBalance) -> OrderBalance:
        return replace(self, items=tuple(item if i.sku == item.sku else i for i in self.items))


_MISSING = object()


class RecordState:
    """What the ledger knows that decides whether an event can be recorded."""

    def __init__(self) -> None:
        self.position = 0
        self.entry_points: dict[str, str] = {}
        self.stores: dict[str, str] = {}
        self.staff: dict[str, str] = {}
        self.channels: dict[str, str] = {}
        self.orders: dict[str, OrderBalance] = {}
        self.refunds: dict[str, str] = {}
        self.appointments: dict[str, str] = {}
        self.outcomes: dict[str, str] = {}
        self.tickets: dict[str, str] = {}
        self.decisions: dict[str, str] = {}
        self.policies: dict[str, str] = {}
        self.closes: dict[str, str] = {}
        self._undo: list[tuple[dict[str, Any], str, Any]] | None = None

    # -- transactions --------------------------------------------------------------------

    def begin(self) -> None:
        self._undo = []

    def commit(self, position: int | None = None) -> None:
        self._undo = None
        if position is not None:
            self.position = max(self.position, position)

    def rollback(self) -> None:
        for table, key, old in reversed(self._undo or []):
            if old is _MISSING:
                del table[key]
            else:
                table[key] = old
        self._undo = None

    def _set(self, table: dict[str, Any], key: str, value: Any) -> None:
        if self._undo is not None:
            self._undo.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    # -- kept between runs (`ledger.ingest.load_record_state`) ----------------------------

    FORMAT = _FOLD_CODE  # a fold kept by other code (this module changed) is replayed, not restored
    _TABLES = ("entry_points", "stores", "staff", "channels", "refunds", "appointments", "outcomes", "tickets", "decisions", "policies", "closes")

    def state(self) -> dict[str, Any]:
        """The fold as plain JSON data, with the position it reached (`restore` reads it back)."""
        assert self._undo is None, "only a committed state is kept"
        data: dict[str, Any] = {"format": self.FORMAT, "position": self.position}
        data.update((name, getattr(self, name)) for name in self._TABLES)
        data["orders"] = {
            order_id: [o.event_id, str(o.amount), str(o.refunded), [[i.sku, i.sessions, str(i.amount), i.sessions_used, str(i.refunded)] for i in o.items]]
            for order_id, o in self.orders.items()
        }
        return data

    @property
    def pristine(self) -> bool:
        """Nothing folded in yet (what a kept fold may be restored into)."""
        return self.position == 0 and not self.orders and not any(getattr(self, name) for name in self._TABLES)

    def restore(self, data: dict[str, Any]) -> bool:
        """Take over a kept fold (in place: a long-lived state keeps its identity); False, and
        nothing changed, when it was kept in another format."""
        if data.get("format") != self.FORMAT:
            return False
        for name in self._TABLES:
            setattr(self, name, dict(data[name]))
        self.orders = {
            order_id: OrderBalance(event_id, Decimal(amount), tuple(ItemBalance(sku, n, Decimal(a), used, Decimal(r)) for sku, n, a, used, r in items), Decimal(refunded))
            for order_id, (event_id, amount, refunded, items) in data["orders"].items()
        }
        self.position = int(data["position"])
        return True

    # -- the fold ------------------------------------------------------------------------

    def replay(self, recorded: Iterable[tuple[int, LedgerEvent]]) -> None:
        """Fold already-recorded events in (their checks passed when they were recorded)."""
        for position, event in recorded:
            self.admit(event)
            self.position = max(self.position, position)

    def admit(self, event: LedgerEvent) -> Refusal | None:
        """Check one event against the state; when it can be recorded, fold it in and return None."""
        check = _CHECKS.get(type(event))
        return check(self, event) if check else None


def _claim(state: RecordState, table: dict[str, str], key: str, event: LedgerEvent, field: str, what: str) -> Refusal | None:
    """An id that names one fact only: re-use by another event is impossible."""
    holder = table.get(key)
    if holder is not None and holder != event.event_id:
        return Refusal(field, f"{what} {key!r} was already recorded by event {holder!r}")
    state._set(table, key, event.event_id)
    return None


def _register(table_name: str, id_field: str):
    def check(state: RecordState, event: Any) -> None:
        state._set(getattr(state, table_name), getattr(event, id_field), event.event_id)
        return None

    return check


def _lead(state: RecordState, event: LeadCaptured) -> Refusal | None:
    if event.via == "scan" and event.entry_point_id not in state.entry_points:
        return Refusal("entry_point_id", f"unknown entry point {event.entry_point_id!r}", unresolved=True)
    return None


def _booked(state: RecordState, event: AssessmentBooked) -> Refusal | None:
    return _claim(state, state.appointments, event.appointment_id, event, "appointment_id", "appointment")


def _once(state: RecordState, event: LedgerEvent, key: str, parents: dict[str, str], done: dict[str, str], field: str, parent: str, already: str) -> Refusal | None:
    """A follow-up fact that needs its parent recorded and happens at most once per parent
    (an appointment's outcome, a ticket's decision)."""
    if key not in parents:
        return Refusal(field, f"unknown {parent} {key!r}", unresolved=True)
    holder = done.get(key)
    if holder is not None and holder != event.event_id:
        return Refusal(field, f"{parent} {key!r} " + already.format(holder=repr(holder)))
    state._set(done, key, event.event_id)
    return None


def _outcome(state: RecordState, event: Any) -> Refusal | None:
    return _once(state, event, event.appointment_id, state.appointments, state.outcomes, "appointment_id", "appointment", "already has an outcome (event {holder})")


def _paid(state: RecordState, event: OrderPaid) -> Refusal | None:
    holder = state.orders.get(event.order_id)
    if holder is not None:
        if holder.event_id == event.event_id:
            return None
        return Refusal("order_id", f"order {event.order_id!r} was already paid by event {holder.event_id!r}")
    items = tuple(ItemBalance(i.sku, i.sessions, i.amount) for i in event.items)
    state._set(state.orders, event.order_id, OrderBalance(event.event_id, event.amount, items))
    return None


def _order_item(state: RecordState, order_id: str, sku: str | None) -> tuple[OrderBalance | None, ItemBalance | None, Refusal | None]:
    order = state.orders.get(order_id)
    if order is None:
        return None, None, Refusal("order_id", f"unknown order {order_id!r}", unresolved=True)
    if sku is None:
        return order, order.item(None), None
    item = order.item(sku)
    if item is None:
        return order, None, Refusal("sku", f"order {order_id!r} has no item {sku!r}")
    return order, item, None


def _session(state: RecordState, event: SessionDelivered) -> Refusal | None:
    order, item, refusal = _order_item(state, event.order_id, event.sku)
    if refusal:
        return refusal
    assert order is not None
    if item is None:
        return Refusal("sku", f"order {event.order_id!r} has several items with sessions: name the sku")
    if item.sessions_left < 1:
        return Refusal(
            "order_id",
            f"no session left on order {event.order_id!r} item {item.sku!r} "
            f"({item.sessions} sold, {item.sessions_used} delivered or refunded)",
        )
    state._set(state.orders, event.order_id, order.with_item(replace(item, sessions_used=item.sessions_used + 1)))
    return None


def _refund(state: RecordState, event: OrderRefunded) -> Refusal | None:
    order, item, refusal = _order_item(state, event.order_id, event.sku)
    if refusal:
        return refusal
    assert order is not None
    holder = state.refunds.get(event.refund_id)
    if holder is not None and holder != event.event_id:
        return Refusal("refund_id", f"refund {event.refund_id!r} was already recorded by event {holder!r}")
    left = order.amount - order.refunded
    if event.amount > left:
        return Refusal("amount", f"refund {event.amount} is above what was paid minus earlier refunds ({left}) on order {event.order_id!r}")
    if event.sku is not None and item is not None and event.amount > item.amount - item.refunded:
        return Refusal("amount", f"refund {event.amount} is above what remains of item {item.sku!r} ({item.amount - item.refunded})")
    sessions = event.sessions or 0
    if sessions:
        if item is None:
            return Refusal("sku", f"order {event.order_id!r} has several items with sessions: name the sku of the refunded sessions")
        if sessions > item.sessions_left:
            return Refusal("sessions", f"refund of {sessions} sessions is above the {item.sessions_left} left on item {item.sku!r}")
    updated = replace(order, refunded=order.refunded + event.amount)
    if item is not None and (sessions or event.sku is not None):
        refunded_item = replace(
            item,
            sessions_used=item.sessions_used + sessions,
            refunded=item.refunded + (event.amount if event.sku is not None else Decimal(0)),
        )
        updated = updated.with_item(refunded_item)
    state._set(state.refunds, event.refund_id, event.event_id)
    state._set(state.orders, event.order_id, updated)
    return None


def _requested(state: RecordState, event: TransferRequested) -> Refusal | None:
    return _claim(state, state.tickets, event.ticket_id, event, "ticket_id", "ticket")


def _decided(state: RecordState, event: TransferDecided) -> Refusal | None:
    return _once(state, event, event.ticket_id, state.tickets, state.decisions, "ticket_id", "ticket", "was already decided by event {holder}")


def _policy(state: RecordState, event: PolicyAdopted) -> Refusal | None:
    return _claim(state, state.policies, event.version, event, "version", "rule set version")


def _closed(state: RecordState, event: SettlementClosed) -> Refusal | None:
    return _claim(state, state.closes, event.month, event, "month", "closed month")


_CHECKS: dict[type[LedgerEvent], Any] = {
    StoreRegistered: _register("stores", "store_id"),
    StaffRegistered: _register("staff", "staff_id"),
    ChannelRegistered: _register("channels", "channel_id"),
    EntryPointIssued: _register("entry_points", "entry_point_id"),
    LeadCaptured: _lead,
    AssessmentBooked: _booked,
    AssessmentAttended: _outcome,
    AssessmentNoShow: _outcome,
    AssessmentCancelled: _outcome,
    OrderPaid: _paid,
    SessionDelivered: _session,
    OrderRefunded: _refund,
    TransferRequested: _requested,
    TransferDecided: _decided,
    PolicyAdopted: _policy,
    SettlementClosed: _closed,
}
