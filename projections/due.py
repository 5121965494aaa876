"""The due list (待跟进, SPEC §7): who the front line should contact at time T, and why.

A pure fold over the events that happened by T (``occurred_at ≤ T``). Four kinds of item:

``post_assessment``
    an attended assessment (at A, the ``assessment.attended`` time) still inside its 24 h window
    (A ≤ T < A + 24 h) with no treatment order (an order holding a fill item or a course package;
    the assessment fee does not decide anything) and no ``followup.logged`` since A.
    Deadline: A + 24 h, when the decisive window closes.
``followup_timeout``
    a protected lead (T before ``protected_until``) whose owner has not been in touch for
    ``followup_timeout_days − 2`` days: the last contact is the latest of the owner staff's own
    ``followup.logged`` for the customer, the customer's last paid order, and the start of the
    current ownership. Deadline: last contact + ``followup_timeout_days``, when a
    ``followup_timeout`` transfer ticket becomes eligible (§4) — it may already have passed.
``stalled_course``
    a customer with course-package sessions outstanding (not expired) and no session delivered
    for 14 days (since the last delivery on any of their orders, or since the course was paid if
    none). Deadline: the earliest ``valid_until`` of those packages (end of that day), or none.
``expiring_package``
    an order item with sessions left whose ``valid_until`` ends within 30 days of T. Deadline: the
    end of ``valid_until`` (local), when the sessions left become breakage.

**Urgency** — what can still be saved comes first: items whose deadline is still ahead, soonest
first; then items whose deadline has passed, the most recently passed first; then items without a
deadline, the longest waiting first (ties: customer id, kind, reference). Each item says how many
hours are left (negative: overdue by that much).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from ledger.events import (
    AssessmentAttended,
    AssessmentBooked,
    FollowupLogged,
    LedgerEvent,
    OrderPaid,
    SessionDelivered,
)
from ledger.identity import Identity, canonical_key
from policies import RuleBook, RuleSet
from policies.fulfillment import (
    EXPIRY_WARNING_DAYS,
    POST_ASSESSMENT_WINDOW,
    STALLED_COURSE_DAYS,
    followup_warning_after,
    hours_until,
)
from projections.attribution import attribute, rule_book, rules_at
from projections.ledgers import TREATMENT_CLASSES
from projections.liability import end_of_day, item_positions, owner_channel

DUE_KINDS = ("post_assessment", "followup_timeout", "stalled_course", "expiring_package")


@dataclass(frozen=True)
class DueItem:
    kind: str
    customer_id: str
    phone: str | None  # E.164; the CLI masks it unless --unmasked
    owner_staff_id: str | None
    channel_id: str
    store_id: str | None
    why: str
    since: datetime  # what the item waits on: the assessment, the last contact, the last session, the sale
    deadline: datetime | None
    hours_left: Decimal | None  # rounded to 0.1 h for display; ``overdue`` is exact
    reference: str  # appointment id, order ids, order/sku, or when protection ends
    overdue: bool  # the deadline has passed (exactly, not as rounded in hours_left)

    def sort_key(self) -> tuple:
        """Urgency: deadlines still ahead, soonest first; then deadlines passed, most recently
        passed first (the freshest are the most salvageable); then items without a deadline,
        the longest waiting first. Ties: customer id, kind, reference."""
        tail = (self.customer_id, DUE_KINDS.index(self.kind), self.reference)
        if self.deadline is None:
            return (2, self.since.timestamp(), *tail)
        if not self.overdue:
            return (0, self.deadline.timestamp(), *tail)
        return (1, -self.deadline.timestamp(), *tail)


@dataclass(frozen=True)
class DueList:
    at: datetime
    rules: RuleSet
    items: tuple[DueItem, ...]

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for i in self.items if i.kind == kind) for kind in DUE_KINDS}


def phone_of(identity: Identity) -> dict[str, str]:
    """The first valid phone of every (surviving) customer, from its identity keys."""
    phones: dict[str, str] = {}
    for customer in sorted(identity.keys_of, key=lambda c: identity.created_at[c]):
        root = identity.root(customer)
        if root in phones:
            continue
        for key in identity.keys_of[customer]:
            key = identity.plain_key(key) or ""  # a keyed hash shows its phone only when it can be decrypted
            if key.startswith("phone:"):
                phones[root] = key.removeprefix("phone:")
                break
    return phones


def due_list(events: Sequence[LedgerEvent], at: datetime, book: RuleBook | None = None) -> DueList:
    """Everything due at ``at`` (an aware moment), most urgent first."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("the due list needs a moment with a UTC offset")
    book = book or rule_book(events)
    rules = rules_at(book, at)
    known = sorted((e for e in events if e.occurred_at <= at), key=canonical_key)
    attr = attribute(known, book=book)
    identity = attr.identity
    phones = phone_of(identity)
    items: list[DueItem] = []

    def item(kind: str, customer: str, store: str | None, why: str, since: datetime, deadline: datetime | None, reference: str) -> DueItem:
        channel_id, _, staff = owner_channel(attr, customer, at)
        return DueItem(
            kind, customer, phones.get(customer), staff, channel_id, store, why, since, deadline,
            hours_until(deadline, at) if deadline is not None else None, reference,
            deadline is not None and deadline <= at,
        )

    bookings: dict[str, AssessmentBooked] = {}
    attended: list[tuple[AssessmentAttended, str]] = []
    followups: dict[str, list[tuple[datetime, str]]] = {}
    treatment_paid: dict[str, list[datetime]] = {}
    paid: dict[str, datetime] = {}
    last_session: dict[str, datetime] = {}
    for event in known:
        customer = identity.customer_of(event)
        if customer is None:
            continue
        if isinstance(event, AssessmentBooked):
            bookings.setdefault(event.appointment_id, event)
        elif isinstance(event, AssessmentAttended):
            attended.append((event, customer))
        elif isinstance(event, FollowupLogged):
            followups.setdefault(customer, []).append((event.occurred_at, event.by))
        elif isinstance(event, OrderPaid):
            paid[customer] = event.occurred_at
            if any(i.product_class in TREATMENT_CLASSES for i in event.items):
                treatment_paid.setdefault(customer, []).append(event.occurred_at)
        elif isinstance(event, SessionDelivered):
            last_session[customer] = event.occurred_at

    # 1. the 24 h window after an attended assessment
    for event, customer in attended:
        assessed = event.occurred_at
        closes = assessed + POST_ASSESSMENT_WINDOW
        if not (assessed <= at < closes):
            continue
        if any(t >= assessed for t in treatment_paid.get(customer, ())):
            continue
        if any(t >= assessed for t, _ in followups.get(customer, ())):
            continue
        booking = bookings.get(event.appointment_id)
        items.append(item(
            "post_assessment", customer, booking.store_id if booking else None,
            "assessed; no treatment order or follow-up yet",
            assessed, closes, event.appointment_id,
        ))

    # 2. protected leads whose owner has gone quiet
    warn_after = followup_warning_after(rules.followup_timeout_days)
    timeout = timedelta(days=rules.followup_timeout_days)
    for customer in identity.customers():
        ca = attr.of(customer)
        if ca is None or ca.protected_until is None or not at < ca.protected_until:
            continue
        owner = ca.owner_at(at)
        if owner is None:
            continue
        contacts = [owner.since]
        contacts += [t for t, by in followups.get(customer, ()) if by == owner.staff_id]
        if customer in paid:
            contacts.append(paid[customer])
        last = max(contacts)
        if at - last < warn_after:
            continue
        quiet_days = (at - last).days
        items.append(item(
            "followup_timeout", customer, attr.directory.store_of(owner.staff_id),
            f"protected; owner quiet {quiet_days} d, takeover after {rules.followup_timeout_days} d",
            last, last + timeout, f"protection until {rules.local_date(ca.protected_until)}",
        ))

    # 3 and 4: open items as of T
    positions = [p for p in item_positions(known, at + timedelta(microseconds=1), attr, rules) if p.outstanding > 0]
    courses: dict[str, list] = {}
    for p in positions:
        if p.product_class == "course_package" and p.customer_id is not None:
            courses.setdefault(p.customer_id, []).append(p)
    stall = timedelta(days=STALLED_COURSE_DAYS)
    for customer in sorted(courses):
        open_courses = courses[customer]
        since = max(p.paid_at for p in open_courses)
        if customer in last_session:
            since = max(since, last_session[customer])
        if at - since < stall:
            continue
        expiries = [end_of_day(p.valid_until, rules) for p in open_courses if p.valid_until is not None]
        left = sum(p.outstanding for p in open_courses)
        items.append(item(
            "stalled_course", customer, open_courses[0].store_id,
            f"{left} sessions left, none for {(at - since).days} d",
            since, min(expiries) if expiries else None, ", ".join(p.order_id for p in open_courses),
        ))
    warning = timedelta(days=EXPIRY_WARNING_DAYS)
    for p in positions:
        if p.valid_until is None or p.customer_id is None:
            continue
        expires = end_of_day(p.valid_until, rules)
        if not (at < expires <= at + warning):
            continue
        items.append(item(
            "expiring_package", p.customer_id, p.store_id,
            f"{p.outstanding} of {p.sessions_sold} left, valid until {p.valid_until}",
            p.paid_at, expires, f"{p.order_id}/{p.sku}",
        ))
    return DueList(at, rules, tuple(sorted(items, key=DueItem.sort_key)))


__all__ = ["DUE_KINDS", "DueItem", "DueList", "due_list", "phone_of"]
