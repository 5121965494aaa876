"""Fulfillment rules (SPEC §7): expiry and breakage, the forecast cadence, capacity, due-ness.

Pure functions of facts and a rule set; no wall clock, no I/O. Units:

* sessions are ``int``; minutes are ``int``; hours are ``Decimal`` (minutes ÷ 60, rounded half-up
  to 0.01 only where a total is shown);
* capacity is declared in weekly hours (``resource.declared``) and prorated by days: a month (or
  the part of a month) of ``d`` days holds ``weekly_hours × d ÷ 7`` hours;
* days are business days in the rule set's time zone (``RuleSet.local_date``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

TWO_PLACES = Decimal("0.01")
RATE_PLACES = Decimal("0.0001")

# --- the due list's thresholds (SPEC §7) -----------------------------------------------------

POST_ASSESSMENT_WINDOW = timedelta(hours=24)
"""The decisive window after an attended assessment: a treatment plan is sold here or rarely."""

STALLED_COURSE_DAYS = 14
"""A course customer with sessions outstanding and no session for this many days has stalled."""

EXPIRY_WARNING_DAYS = 30
"""A package whose ``valid_until`` is at most this many days away, with sessions left, is due."""

FOLLOWUP_WARNING_DAYS_BEFORE_TIMEOUT = 2
"""The due list warns this many days before a ``followup_timeout`` ticket becomes eligible (§4)."""


def followup_warning_after(followup_timeout_days: int) -> timedelta:
    """How long without an owner follow-up (or a payment) before a protected lead is due:
    ``followup_timeout_days − 2`` days (never below zero)."""
    return timedelta(days=max(followup_timeout_days - FOLLOWUP_WARNING_DAYS_BEFORE_TIMEOUT, 0))


# --- expiry and breakage ---------------------------------------------------------------------


def is_expired(valid_until: date | None, on: date) -> bool:
    """Whether an item's sessions have expired by business day ``on``.

    A session may be used through the whole ``valid_until`` day (local); from the next day on the
    sessions still open are breakage (sold, never delivered, no longer owed). No ``valid_until``:
    the item never expires."""
    return valid_until is not None and on > valid_until


def hours(minutes: int) -> Decimal:
    """Minutes as hours, rounded half-up to 0.01 (for totals shown to a person)."""
    return (Decimal(minutes) / 60).quantize(TWO_PLACES, ROUND_HALF_UP)


def money(amount: Decimal) -> Decimal:
    """Money rounded half-up to 0.01 CNY."""
    return amount.quantize(TWO_PLACES, ROUND_HALF_UP)


# --- the forecast cadence --------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Where an item's outstanding sessions fall at the rule set's cadence.

    ``days`` are the expected session days inside the horizon (and on or before ``valid_until``);
    ``expiring`` sessions would fall after ``valid_until`` at that cadence (expected breakage);
    ``beyond`` sessions fall after the horizon but before any expiry; ``unscheduled`` are sessions
    of a class with cadence 0 (not forecast). ``len(days) + expiring + beyond + unscheduled`` is
    always the outstanding count."""

    days: tuple[date, ...]
    expiring: int
    beyond: int
    unscheduled: int


def _sessions_by(offset_days: int, cadence: Decimal) -> int:
    """How many sessions k ≥ 1 have ``ceil(7k ÷ cadence) ≤ offset_days``, i.e. k ≤ offset·cadence÷7."""
    if offset_days <= 0:
        return 0
    return int((Decimal(offset_days) * cadence / 7).to_integral_value(ROUND_FLOOR))


def spread_sessions(
    outstanding: int,
    cadence_per_week: Decimal,
    as_of: date,
    horizon_end: date,
    valid_until: date | None,
) -> Spread:
    """Spread ``outstanding`` sessions at ``cadence_per_week`` from the day after ``as_of`` (§7).

    Session k (1-based) is expected on ``as_of + ceil(7k ÷ cadence)`` days: at 2 a week on days
    4, 7, 11, 14, …; at 1 a week every 7th day. Sessions stop when used up, at ``valid_until``
    (later ones are counted as ``expiring``) and at ``horizon_end`` (later ones are ``beyond``).
    """
    if outstanding <= 0:
        return Spread((), 0, 0, 0)
    if cadence_per_week <= 0:
        return Spread((), 0, 0, outstanding)
    last_day = horizon_end if valid_until is None else min(horizon_end, valid_until)
    fitting = min(outstanding, _sessions_by((last_day - as_of).days, cadence_per_week))
    days = tuple(
        as_of + timedelta(days=int((Decimal(7 * k) / cadence_per_week).to_integral_value(ROUND_CEILING)))
        for k in range(1, fitting + 1)
    )
    rest = outstanding - fitting
    if valid_until is None or valid_until > horizon_end:
        # After the horizon: those that still fit before valid_until are `beyond`, the rest expire.
        if valid_until is None:
            return Spread(days, 0, rest, 0)
        before_expiry = min(outstanding, _sessions_by((valid_until - as_of).days, cadence_per_week)) - fitting
        return Spread(days, rest - before_expiry, before_expiry, 0)
    return Spread(days, rest, 0, 0)


# --- capacity and pressure -------------------------------------------------------------------


def capacity_hours(weekly_hours: Decimal, days: int) -> Decimal:
    """Declared weekly hours over ``days`` days: ``weekly_hours × days ÷ 7``, half-up to 0.01."""
    return (weekly_hours * days / 7).quantize(TWO_PLACES, ROUND_HALF_UP)


def utilisation(demand_hours: Decimal, capacity: Decimal) -> Decimal | None:
    """Forecast hours ÷ capacity hours, half-up to 4 places; None when there is no capacity."""
    if capacity <= 0:
        return None
    return (demand_hours / capacity).quantize(RATE_PLACES, ROUND_HALF_UP)


def is_under_pressure(demand_hours: Decimal, capacity: Decimal, threshold: Decimal) -> bool:
    """A month is flagged when its utilisation is above ``pressure_threshold``; hours owed where
    no capacity is declared at all are flagged too (there is nobody to deliver them)."""
    if capacity <= 0:
        return demand_hours > 0
    return demand_hours / capacity > threshold


# --- months ------------------------------------------------------------------------------------


def month_start(month: str) -> date:
    """``"2026-07"`` → 2026-07-01. Raises ``ValueError`` for anything that is not ``YYYY-MM``."""
    if len(month) != 7 or month[4] != "-":
        raise ValueError(f"a month is YYYY-MM, not {month!r}")
    return date(int(month[:4]), int(month[5:]), 1)


def next_month(day: date) -> date:
    """The first day of the month after ``day``'s month."""
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def month_end(day: date) -> date:
    """The last day of ``day``'s month."""
    return next_month(day) - timedelta(days=1)


def hours_until(deadline: datetime, at: datetime) -> Decimal:
    """Hours from ``at`` to ``deadline`` (negative when it has passed), half-up to 0.1."""
    seconds = Decimal(int((deadline - at).total_seconds()))
    left = (seconds / 3600).quantize(Decimal("0.1"), ROUND_HALF_UP)
    return left if left else Decimal("0.0")  # never "-0.0"
