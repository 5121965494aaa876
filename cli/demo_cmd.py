"""``demo``: build a realistic clinic group into a fresh store and show what the ledger sees."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.columns import Columns
from rich.panel import Panel
from rich.table import Table

from cli.common import JsonOption, StoreOption, emit_json, fail, money, opened_store, stdout
from cli.ingest_cmd import event_progress, print_report, report_json
from cli.store_cmds import initialise
from ledger.ingest import Ingest, parse_lines
from ledger.sources import SourceLine
from ledger.store import reset_store, store_url_from
from cli.ops_cmds import render_ledgers_by_kind, render_liability_summary
from cli.settle_cmds import render_statement_summary, statement_json, statement_summary
from projections.ledgers import ledgers
from projections.liability import liability
from projections.overview import Overview, overview
from projections.pipeline import facts
from policies import default_rules

app = typer.Typer()


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Random seed: the same seed builds the same group.")] = 7,
    customers: Annotated[int, typer.Option(help="How many customers (about 12 events each: 83,000 make ~1,000,000 events).")] = 600,
    months: Annotated[int, typer.Option(help="How many months of journeys.")] = 3,
    start: Annotated[str, typer.Option(help="First day of the demo period (YYYY-MM-DD).")] = "2026-09-01",
    out: Annotated[Path | None, typer.Option("--out", help="Write the events as JSON Lines instead of ingesting.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Wipe the store first if it already holds events.")] = False,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Build a clinic group (stores, staff, channels of all three kinds, months of journeys) into a
    fresh store, and print what the ledger makes of it."""
    try:
        first_day = date.fromisoformat(start)
    except ValueError:
        raise typer.BadParameter(f"--start takes YYYY-MM-DD, not {start!r}") from None
    if customers < 1 or months < 1:
        raise typer.BadParameter("--customers and --months must be at least 1")
    from ledger import demo as generator

    options = {"seed": seed, "customers": customers, "start": first_day, "months": months}
    if out is not None:
        with out.open("w", encoding="utf-8") as sink:
            count = generator.write_jsonl(sink, **options)
        stdout.print(f"wrote {count:,} events to {out}")
        return
    url = store_url_from(store)
    with opened_store(url) as ledger:
        existing = ledger.position()
    if existing:
        if not replace:
            fail(f"the store already holds {existing:,} events", hint="add --replace to rebuild the demo there, or pick another --store")
        reset_store(url)
    with opened_store(url) as ledger:
        initialise(ledger)
        run = Ingest(ledger)
        with event_progress("building the demo group") as progress:
            task = progress.add_task("building the demo group", total=None)
            run.progress = lambda n: progress.advance(task, n)
            lines = (SourceLine("demo", n, obj=obj) for n, obj in enumerate(generator.generate(**options), start=1))
            run.feed(parse_lines(lines, run.report))
            report = run.finish()
        position = ledger.position()
        f = facts(ledger.read(upto=position), position)
        where = ledger.location.display
    rules = default_rules()
    summary = overview(f.events, rules.month_of)
    month = summary.order_amount_by_month[-1][0] if summary.order_amount_by_month else rules.month_of(f.events[-1].occurred_at)
    as_of = date.fromisoformat(summary.last_day) if summary.last_day else first_day
    three_ledgers = ledgers(f.events, month, book=f.book, attr=f.attribution)
    owed = liability(f.events, as_of, book=f.book)
    statement = statement_summary(url)
    if json:
        emit_json(
            {
                "store": where,
                "ingest": report_json(report),
                "overview": summary.as_json(),
                "statement": statement_json(*statement) if statement else None,
                "ledgers": three_ledgers.as_json(),
                "liability": owed.as_json(),
            }
        )
        return
    stdout.rule(f"channel-ledger demo · seed {seed} · {customers:,} customers · {where}")
    print_report(report)
    render_overview(summary)
    if statement:
        stdout.rule(f"commissions · {statement[0].month}")
        render_statement_summary(*statement)
    stdout.rule(f"the three ledgers · {month}")
    render_ledgers_by_kind(three_ledgers)
    stdout.rule(f"fulfillment liability · as of {as_of}")
    render_liability_summary(owed)
    stdout.print(
        f"\nExplore ({where}): channel-ledger settle --month {month} --lines · ledgers --month {month} · "
        f"liability --as-of {as_of} · due --at {as_of} · collisions --month {month} · trace <phone or customer id>"
    )


def render_overview(o: Overview) -> None:
    group = Table.grid(padding=(0, 2))
    group.add_row("period", f"{o.first_day} → {o.last_day}")
    group.add_row("events", f"{o.events:,}")
    group.add_row("stores", str(o.stores))
    group.add_row("staff", ", ".join(f"{n} {role}" for role, n in o.staff_by_role))
    group.add_row("entry points", str(o.entry_points))
    group.add_row("clinicians & rooms", str(o.resources))
    group.add_row("customers", f"{o.customers:,} ({o.customers_without_lead:,} walk-ins without a lead)")
    group.add_row("merge candidates", f"{o.merge_candidates} (merged: {o.merges})")

    kinds = Table(title="leads by channel kind", title_justify="left", show_edge=False)
    kinds.add_column("kind")
    kinds.add_column("channels", justify="right")
    kinds.add_column("leads", justify="right")
    for k in o.leads_by_kind:
        kinds.add_row(k.kind, str(k.channels), f"{k.leads:,}")

    sales = Table(title="sales (CNY)", title_justify="left", show_edge=False)
    sales.add_column("month")
    sales.add_column("paid", justify="right")
    for month, amount in o.order_amount_by_month:
        sales.add_row(month, money(amount))
    sales.add_row("orders", f"{o.orders:,}")
    sales.add_row("course packages / fill items", f"{o.course_packages:,} / {o.fill_items:,}")
    sales.add_row("refunds", f"{o.refunds:,} · {money(o.refund_amount)}")

    stdout.print(Panel(group, title="the group", title_align="left"))
    stdout.print(Columns([kinds, sales], padding=(0, 6)))
