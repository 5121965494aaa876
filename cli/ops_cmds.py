"""``liability``, ``ledgers`` and ``due``: fulfillment liability and forecast, the three ledgers,
and the due list (SPEC §7, §9) — plus the renderers the demo prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.common import JsonOption, StoreOption, UnmaskedOption, emit_json, fail, money, opened_store, stdout
from ledger.events import NO_SHOW_REASONS, LedgerEvent
from ledger.privacy import mask_phone
from projections.attribution import rule_book
from projections.due import DUE_KINDS, DueItem, DueList, due_list
from projections.ledgers import ChannelLedgers, LedgersReport, ledgers
from policies.fulfillment import month_end
from projections.liability import Breakdown, LiabilityReport, liability, rules_on

app = typer.Typer()


def _events(store: str | None) -> list[LedgerEvent]:
    with opened_store(store) as ledger:
        return [r.event for r in ledger.read()]


def _month(value: str) -> str:
    try:
        parsed = datetime.strptime(value, "%Y-%m")
    except ValueError:
        raise typer.BadParameter(f"--month takes YYYY-MM, not {value!r}") from None
    return parsed.strftime("%Y-%m")


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{option} takes a date YYYY-MM-DD, not {value!r}") from None


# --- liability ---------------------------------------------------------------------------------


@app.command("liability")
def liability_cmd(
    as_of: Annotated[str, typer.Option("--as-of", help="Business day D (YYYY-MM-DD, in the rules' time zone); everything up to the end of D counts.")],
    months: Annotated[int, typer.Option("--months", min=1, max=36, help="Forecast months, starting with the month of D+1 (prorated from D+1).")] = 3,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Outstanding sessions, deferred revenue (合同负债) and breakage as of D; hours owed per store and month vs declared capacity (SPEC §7)."""
    day = _day(as_of, "--as-of")
    report = liability(_events(store), day, months)
    if json:
        emit_json(report.as_json())
        return
    render_liability_summary(report)
    _breakdown_table(report.by_channel, "by owner channel at payment", "channel", with_kind=True)
    _breakdown_table(report.by_product_class, "by product class", "class")


def _breakdown_table(rows: Sequence[Breakdown], title: str, first: str, with_kind: bool = False, console: Console = stdout) -> None:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(first, overflow="fold")
    if with_kind:
        table.add_column("kind", overflow="fold")
    for name in ("open\nitems", "sessions", "hours", "deferred\nrevenue", "expired\nsessions", "breakage"):
        table.add_column(name, justify="right", overflow="fold")
    for b in rows:
        t = b.totals
        cells = [b.key] + ([b.kind or ""] if with_kind else [])
        cells += [
            f"{t.items:,}", f"{t.outstanding_sessions:,}", money(t.outstanding_hours), money(t.deferred_revenue),
            f"{t.breakage_sessions:,}", money(t.breakage_amount),
        ]
        table.add_row(*cells)
    console.print(table)


def _flagged(utilisation: Decimal | None, flagged: bool) -> str:
    return _percent(utilisation) + (" OVER" if flagged else "")


def _sessions(n: int) -> str:
    return f"{n:,} session" + ("" if n == 1 else "s")


def _percent(value: Decimal | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def render_liability_summary(report: LiabilityReport, console: Console = stdout) -> None:
    """The liability at a glance: totals, by store, by channel kind, and the forecast per store and
    month against capacity, with months under pressure flagged."""
    rules, t = report.rules, report.totals
    console.print(
        f"[bold]fulfillment liability as of {report.as_of}[/] (end of day, {rules.timezone}) · rules {rules.version}"
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_row("outstanding sessions", f"{t.outstanding_sessions:,} on {t.items:,} open order items")
    grid.add_row("outstanding hours", money(t.outstanding_hours))
    grid.add_row("deferred revenue (合同负债)", money(t.deferred_revenue))
    grid.add_row("breakage to date (expired)", f"{_sessions(t.breakage_sessions)} · {money(t.breakage_amount)}")
    console.print(grid)
    _breakdown_table(report.by_store, "by store", "store", console=console)
    _breakdown_table(report.by_kind, "by owner channel kind", "kind", console=console)

    threshold = rules.pressure_threshold
    table = Table(
        title="forecast: hours owed at cadence vs declared capacity",
        title_justify="left",
        show_edge=False,
        caption=f"OVER: utilisation above the pressure threshold ({_percent(threshold)})",
        caption_justify="left",
    )
    table.add_column("store", overflow="fold")
    table.add_column("month", no_wrap=True)
    for name in ("days", "hours", "clinician\nhours", "clinician\nutil.", "room\nhours", "room\nutil."):
        table.add_column(name, justify="right", overflow="fold")
    for row in report.forecast:
        table.add_row(
            row.store_id, row.month, str(row.days), money(row.hours),
            money(row.capacity_hours), _flagged(row.utilisation, row.flagged),
            money(row.room_capacity_hours), _flagged(row.room_utilisation, row.room_flagged),
        )
    console.print(table)
    s = report.forecast_sessions
    first = report.forecast[0] if report.forecast else None
    cadence = ", ".join(f"{cls} {rate}/week" for cls, rate in rules.cadence_per_week.items())
    console.print(
        f"cadence {cadence}; of {t.outstanding_sessions:,} outstanding sessions {s.scheduled:,} fall in the "
        f"forecast, {s.beyond_horizon:,} after it, {s.expiring_unused:,} would expire unused at that cadence, "
        f"{s.unscheduled:,} are not forecast (cadence 0)."
    )
    if first is not None and first.days < (month_end(report.as_of + timedelta(days=1)).day):
        console.print(
            f"{first.month} counts {first.days} days (from the day after {report.as_of}): hours and capacity are prorated alike."
        )


# --- the three ledgers ------------------------------------------------------------------------


def _count(key: str) -> Callable[[dict], str]:
    return lambda ledger: f"{ledger[key]:,}"


def _ratio(key: str) -> Callable[[dict], str]:
    return lambda ledger: ledger[key].text()


def _percent_of(key: str) -> Callable[[dict], str]:
    """A money ratio: the percentage only; its numerator and denominator are the rows around it."""
    return lambda ledger: ledger[key].percent()


def _money(key: str) -> Callable[[dict], str]:
    return lambda ledger: "–" if ledger[key] is None else money(ledger[key])


def _reason(reason: str) -> Callable[[dict], str]:
    return lambda ledger: f"{ledger['no_show_reasons'][reason]:,}"


LEAD_QUALITY_ROWS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("leads", _count("leads")),
    ("valid leads", _count("valid_leads")),
    ("invalid leads", _count("invalid_leads")),
    ("collisions (撞单)", _count("collisions")),
    ("triaged", _count("triaged")),
    ("  routed offline", _count("routed_offline")),
    ("  routed online", _count("routed_online")),
    ("booked", _count("booked")),
    ("attended", _count("attended")),
    ("no-shows", _count("no_shows")),
    ("cancelled", _count("cancelled")),
    ("no-show rate", _ratio("no_show_rate")),
    *((f"  {reason}", _reason(reason)) for reason in NO_SHOW_REASONS),
    ("arrival rate", _ratio("arrival_rate")),
)
DEAL_STRUCTURE_ROWS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("assessed customers", _count("assessed_customers")),
    ("paid after assessment", _count("paying_after_assessment")),
    ("conversion rate", _ratio("conversion_rate")),
    ("  within 24 h", _ratio("conversion_within_24h")),
    ("  after 24 h", _count("converted_after_24h")),
    ("orders", _count("orders")),
    ("  amount", _money("order_amount")),
    ("  average", _money("average_order_value")),
    ("assessments", _count("assessments")),
    ("  amount", _money("assessment_amount")),
    ("fill items", _count("fill_items")),
    ("  amount", _money("fill_item_amount")),
    ("course packages", _count("course_packages")),
    ("  amount", _money("course_package_amount")),
    ("gross margin", _percent_of("gross_margin")),
    ("  amount − cost", _money("costed_margin")),
    ("  amount", _money("costed_amount")),
    ("  cost known", _ratio("cost_known")),
)
FULFILLMENT_PRESSURE_ROWS: tuple[tuple[str, Callable[[dict], str]], ...] = (
    ("sessions sold", _count("sessions_sold")),
    ("  delivered", _count("sessions_delivered")),
    ("  refunded", _count("sessions_refunded")),
    ("  expired", _count("sessions_expired")),
    ("outstanding at end", _count("outstanding_sessions")),
    ("  hours", _money("outstanding_hours")),
    ("deferred revenue", _money("deferred_revenue")),
    ("refunds", _count("refunds")),
    ("  refunded", _money("refunded_amount")),
    ("  paid", _money("paid_amount")),
    ("refund rate", _percent_of("refund_rate")),
)
LEDGERS = (
    ("lead quality (线索质量)", "lead_quality", LEAD_QUALITY_ROWS),
    ("deal structure (成交结构)", "deal_structure", DEAL_STRUCTURE_ROWS),
    ("fulfillment pressure (履约压力)", "fulfillment_pressure", FULFILLMENT_PRESSURE_ROWS),
)
LEDGER_NOTES = {
    "lead_quality": "leads under their own channel, later steps under the owner channel then; "
    "no-show rate = no-shows ÷ (attended + no-shows); arrival rate = the month's valid leads that attended",
    "deal_structure": "the month's assessed customers, under the owner channel at the assessment; "
    "converted = paid a fill item or course after it; gross margin over items with a known cost",
    "fulfillment_pressure": "order items under the owner channel at payment; balances at the end of the month; "
    "refund rate = refunded ÷ paid in the month",
}


def _header(name: str) -> str:
    """A channel kind on two lines (``medical`` / ``trust``) so that five columns fit 80 characters."""
    return name.replace("_", "\n", 1) if name.count("_") == 1 else name


def render_three_ledgers(columns: Sequence[tuple[str, ChannelLedgers]], month: str, console: Console = stdout) -> None:
    """The three ledgers as metric rows, one column per channel, kind or the group."""
    for title, part, rows in LEDGERS:
        table = Table(
            title=f"{month} · {title}", title_justify="left", show_edge=False,
            caption=LEDGER_NOTES[part], caption_justify="left",
        )
        data = [getattr(ledger.tally, part)() for _, ledger in columns]
        cells = [[cell(d) for d in data] for _, cell in rows]
        table.add_column("", no_wrap=True)
        for n, (header, _) in enumerate(columns):
            # numbers never break; a ratio ("13/53 = 24.5%") may wrap at its spaces on a narrow screen
            unbreakable = max((len(row[n]) for row in cells if " " not in row[n]), default=1)
            table.add_column(_header(header), justify="right", overflow="fold", min_width=unbreakable)
        for (label, _), row in zip(rows, cells):
            table.add_row(label, *row)
        console.print(table)


def render_ledgers_by_kind(report: LedgersReport, console: Console = stdout) -> None:
    """The three ledgers side by side for the three channel kinds, walk-ins and the group."""
    columns = [(k.kind, k) for k in report.kinds] + [("group", report.total)]
    render_three_ledgers(columns, report.month, console)


def _channel_tables(report: LedgersReport, console: Console = stdout) -> None:
    """One line per channel for each ledger: the channel view of the month."""
    heads = {
        "lead_quality": ("leads", "valid", "collisions", "triaged off/on", "booked", "attended", "no-show rate", "arrival rate"),
        "deal_structure": ("assessed", "conversion", "within 24 h", "orders", "avg order", "fill items", "courses", "gross margin"),
        "fulfillment_pressure": ("sold", "delivered", "outstanding", "hours", "deferred revenue", "refund rate"),
    }

    def cells(part: str, d: dict) -> list[str]:
        if part == "lead_quality":
            return [
                str(d["leads"]), str(d["valid_leads"]), str(d["collisions"]),
                f"{d['routed_offline']}/{d['routed_online']}", str(d["booked"]), str(d["attended"]),
                d["no_show_rate"].text(), d["arrival_rate"].text(),
            ]
        if part == "deal_structure":
            aov = d["average_order_value"]
            return [
                str(d["assessed_customers"]), d["conversion_rate"].text(), d["conversion_within_24h"].text(),
                str(d["orders"]), "–" if aov is None else money(aov),
                f"{d['fill_items']} · {money(d['fill_item_amount'])}",
                f"{d['course_packages']} · {money(d['course_package_amount'])}",
                d["gross_margin"].percent(),
            ]
        return [
            str(d["sessions_sold"]), str(d["sessions_delivered"]), str(d["outstanding_sessions"]),
            money(d["outstanding_hours"]), money(d["deferred_revenue"]), d["refund_rate"].percent(),
        ]

    for title, part, _ in LEDGERS:
        table = Table(title=f"{report.month} · {title} · per channel", title_justify="left", show_edge=False)
        table.add_column("channel", no_wrap=True)
        for head in heads[part]:
            table.add_column(head, justify="right", overflow="fold")
        for ledger in report.channels:
            table.add_row(ledger.channel_id, *cells(part, getattr(ledger.tally, part)()))
        console.print(table)
    reasons = Table(title=f"{report.month} · no-show reasons per channel", title_justify="left", show_edge=False)
    reasons.add_column("channel", no_wrap=True)
    for reason in NO_SHOW_REASONS:
        reasons.add_column(reason.replace("_", "\n"), justify="right", overflow="fold")
    for ledger in report.channels:
        counts = ledger.tally.no_show_reasons
        reasons.add_row(ledger.channel_id, *(str(counts[r]) for r in NO_SHOW_REASONS))
    console.print(reasons)


@app.command("ledgers")
def ledgers_cmd(
    month: Annotated[str, typer.Option("--month", help="Business month YYYY-MM (in the rules' time zone).")],
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel (id; 'walk-in' for customers without an owner), beside its kind and the group.")] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """The three ledgers of a month (三张账, SPEC §7): lead quality, deal structure, fulfillment pressure, per channel and kind."""
    month = _month(month)
    report = ledgers(_events(store), month)
    selected: ChannelLedgers | None = None
    if channel is not None:
        selected = report.channel(channel)
        if selected is None:
            known = ", ".join(c.channel_id for c in report.channels)
            fail(f"unknown channel {channel!r}", hint=f"known channels: {known}")
    if json:
        payload = report.as_json()
        if selected is not None:
            payload["channels"] = [selected.as_json()]
        emit_json(payload)
        return
    stdout.print(f"[bold]the three ledgers · {month}[/] ({report.rules.timezone}) · rules {report.rules.version}")
    if selected is not None:
        kind = next((k for k in report.kinds if k.kind == selected.kind), None)
        columns = [(selected.channel_id, selected)]
        if kind is not None:
            columns.append((f"all {kind.kind}", kind))
        columns.append(("group", report.total))
        render_three_ledgers(columns, month)
        return
    render_ledgers_by_kind(report)
    _channel_tables(report)


# --- the due list -------------------------------------------------------------------------------


def _moment(value: str, events: Sequence[LedgerEvent]) -> datetime:
    """``--at``: an ISO date-time (with or without offset) or a date (00:00); without an offset it
    is read in the time zone of the rules in force on that day."""
    text = value.strip().replace(" ", "T", 1)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"--at takes a date-time like 2026-11-20T10:00 (offset optional), not {value!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        rules = rules_on(rule_book(events), moment.date())
        moment = moment.replace(tzinfo=rules.tz)
    return moment


def _hours_left(item: DueItem) -> str:
    if item.hours_left is None:
        return "–"
    h = abs(item.hours_left)
    text = f"{h / 24:.1f} d" if h >= 48 else f"{h:.1f} h"
    return f"overdue\n{text}" if item.overdue else text


def _due_json(due: DueList, items: Sequence[DueItem], unmasked: bool) -> dict:
    def phone(value: str | None) -> str | None:
        if value is None:
            return None
        return value if unmasked else mask_phone(value)

    return {
        "at": due.at.isoformat(),
        "rule_version": due.rules.version,
        "timezone": due.rules.timezone,
        "counts": {kind: sum(1 for i in items if i.kind == kind) for kind in DUE_KINDS},
        "items": [
            {
                "kind": i.kind,
                "customer_id": i.customer_id,
                "phone": phone(i.phone),
                "owner_staff_id": i.owner_staff_id,
                "channel_id": i.channel_id,
                "store_id": i.store_id,
                "why": i.why,
                "since": i.since.isoformat(),
                "deadline": i.deadline.isoformat() if i.deadline else None,
                "hours_left": None if i.hours_left is None else f"{i.hours_left:.1f}",
                "overdue": i.overdue,
                "reference": i.reference,
            }
            for i in items
        ],
    }


@app.command("due")
def due_cmd(
    at: Annotated[str, typer.Option("--at", help="The moment T: YYYY-MM-DDTHH:MM[+08:00] (no offset: the rules' time zone; a date alone: 00:00).")],
    kinds: Annotated[list[str] | None, typer.Option("--kind", help=f"Only this kind (repeatable): {', '.join(DUE_KINDS)}.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="Only customers owned by this staff member.")] = None,
    store_id: Annotated[str | None, typer.Option("--store-id", help="Only items of this store.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Show at most this many (0: all).")] = 0,
    store: StoreOption = None,
    json: JsonOption = False,
    unmasked: UnmaskedOption = False,
) -> None:
    """The due list at T, most urgent first (SPEC §7): 24 h after assessments, quiet protected leads, stalled courses, expiring packages."""
    for kind in kinds or []:
        if kind not in DUE_KINDS:
            fail(f"unknown due kind {kind!r}", hint="one of: " + ", ".join(DUE_KINDS))
    events = _events(store)
    moment = _moment(at, events)
    due = due_list(events, moment)
    items = [
        i for i in due.items
        if (not kinds or i.kind in kinds)
        and (owner is None or i.owner_staff_id == owner)
        and (store_id is None or i.store_id == store_id)
    ]
    shown = items if limit == 0 else items[:limit]
    if json:
        payload = _due_json(due, shown, unmasked)
        payload["count"] = len(items)
        emit_json(payload)
        return
    render_due(due, items, shown, unmasked)


DUE_LABELS = {
    "post_assessment": "24 h window",
    "followup_timeout": "follow-up",
    "stalled_course": "stalled course",
    "expiring_package": "expiring",
}


def render_due(due: DueList, items: Sequence[DueItem], shown: Sequence[DueItem], unmasked: bool = False, console: Console = stdout) -> None:
    """The due list as a table, most urgent first; phones masked unless ``unmasked``."""
    counts = ", ".join(f"{sum(1 for i in items if i.kind == k)} {k}" for k in DUE_KINDS)
    console.print(f"[bold]due at {due.at.isoformat(timespec='minutes')}[/] · {len(items)} items: {counts}")
    table = Table(show_edge=False, show_lines=True)
    for name in ("#", "left", "due", "customer", "owner", "store", "why"):
        table.add_column(name, justify="right" if name in ("#", "left") else "left", overflow="fold")
    for n, i in enumerate(shown, start=1):
        phone = "" if i.phone is None else (i.phone if unmasked else mask_phone(i.phone))
        table.add_row(
            str(n), _hours_left(i), DUE_LABELS[i.kind], f"{i.customer_id}\n{phone}".rstrip(),
            f"{i.owner_staff_id or '–'}\n{i.channel_id}", i.store_id or "–", escape(f"{i.why}\n{i.reference}"),
        )
    console.print(table)
    if len(shown) < len(items):
        console.print(f"… {len(items) - len(shown):,} more (use --limit 0 for all)")


__all__ = ["app", "render_due", "render_ledgers_by_kind", "render_liability_summary", "render_three_ledgers"]
