"""The attribution rules of SPEC §4, as pure functions of facts and a rule set.

Each function answers one question and says why, so that the trace an auditor reads can quote it:
is this lead valid; when does protection end; is this transfer ticket eligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from policies.ruleset import RuleSet


@dataclass(frozen=True)
class Verdict:
    """A yes/no answer with the reason a person can read."""

    ok: bool
    reason: str


def protection_ends_at(source_at: datetime, rules: RuleSet) -> datetime:
    """保护期: exactly ``protection_days`` × 24 hours after the source's ``occurred_at`` (§4)."""
    return source_at + timedelta(hours=24 * rules.protection_days)


def source_window_ends_at(source_at: datetime, rules: RuleSet) -> datetime:
    """Source rewards are paid on orders within ``source_window_days`` × 24 h of the source (§5)."""
    return source_at + timedelta(hours=24 * rules.source_window_days)


def lead_validity(
    *,
    has_valid_contact: bool,
    via: str,
    entry_point_known: bool,
    entry_point_retired: bool,
    recorder_known: bool,
    channel_known: bool,
) -> Verdict:
    """A valid lead (§4): a valid phone or a WeChat/platform id, and a live entry point (scan) or
    a known recording staff member and channel (manual, platform)."""
    if not has_valid_contact:
        return Verdict(False, "no valid phone, WeChat id or platform user")
    if via == "scan":
        if not entry_point_known:
            return Verdict(False, "entry point unknown")
        if entry_point_retired:
            return Verdict(False, "entry point retired before the scan")
        return Verdict(True, "scan of a live entry point")
    if not recorder_known:
        return Verdict(False, "recorded_by is not a registered staff member")
    if not channel_known:
        return Verdict(False, "channel is not registered")
    return Verdict(True, f"{via} lead by a registered staff member")


def ticket_eligibility(
    *,
    trigger: str,
    requested_by: str,
    decided_by: str,
    requested_at: datetime,
    owner_staff_id: str | None,
    owner_store_id: str | None,
    to_store_id: str | None,
    owner_followups: tuple[datetime, ...],
    customer_payments: tuple[datetime, ...],
    rules: RuleSet,
) -> Verdict:
    """Whether an approved transfer ticket may move ownership (§4).

    * the decider must not be the requester (no self-approval);
    * ``followup_timeout``: the owner logged no follow-up for this customer and the customer paid
      no order in the ``followup_timeout_days`` before the request;
    * ``customer_request``: always;
    * ``cross_store``: the receiving staff member's store differs from the owner's.
    """
    if decided_by == requested_by:
        return Verdict(False, f"self-approval: {decided_by} requested and decided the ticket")
    if owner_staff_id is None:
        return Verdict(False, "the customer has no owner to transfer from (no valid lead yet)")
    if trigger == "customer_request":
        return Verdict(True, "customer_request: always eligible")
    if trigger == "followup_timeout":
        days = rules.followup_timeout_days
        since = requested_at - timedelta(hours=24 * days)
        recent_followups = [t for t in owner_followups if since <= t <= requested_at]
        if recent_followups:
            last = max(recent_followups)
            return Verdict(False, f"followup_timeout: owner {owner_staff_id} followed up on {last.date()} (within {days} days before the request)")
        recent_payments = [t for t in customer_payments if since <= t <= requested_at]
        if recent_payments:
            return Verdict(False, f"followup_timeout: the customer paid on {max(recent_payments).date()} (within {days} days before the request)")
        return Verdict(True, f"followup_timeout: no follow-up by {owner_staff_id} and no payment in the {days} days before the request")
    if trigger == "cross_store":
        if to_store_id is None:
            return Verdict(False, "cross_store: the receiving staff member is not registered")
        if to_store_id == owner_store_id:
            return Verdict(False, f"cross_store: the receiving staff member is in the owner's store ({to_store_id})")
        return Verdict(True, f"cross_store: {owner_store_id or 'unknown store'} → {to_store_id}")
    return Verdict(False, f"unknown trigger {trigger!r}")
