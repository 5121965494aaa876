"""``settle``, ``close``, ``export`` and the ``policy`` group: commission settlement (SPEC §5, §6, §8)."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from cli.common import JsonOption, StoreOption, UnmaskedOption, emit_json, fail, money, opened_store, print_table, stderr, stdout
from cli.ingest_cmd import event_progress
from cli.store_cmds import adoption_event
from ledger.events import PolicyAdopted
from ledger.ingest import ingest_events
from ledger.projector import Projector
from ledger.store import LedgerStore, parse_store_url, store_url_from
from policies import RuleBook, RuleChange, RuleSet, diff_rules, load_rules
from policies.commission import Line, rate_text
from projections.attribution import rule_book
from projections.directory import Directory
from projections.settlement import (
    Comparison,
    Positioned,
    Settlement,
    Statement,
    close_event,
    compare,
    describe_change,
    latest_month_with_activity,
    month_ends_at,
    next_month,
    parse_month,
)
from projections.state import adjustment_count, lines_json

app = typer.Typer()
policy_app = typer.Typer(
    help="Rule sets (SPEC §8): show the rules in force, adopt a rule file, diff two rule sets.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")

MonthOption = Annotated[str, typer.Option("--month", help="The month, YYYY-MM, in the rules' time zone.", show_default=False)]
CHANGES_SHOWN = 40


# --- loading ------------------------------------------------------------------------------


def load_ledger(ledger: LedgerStore) -> tuple[list[Positioned], int, str | None]:
    """Every event with its position, the position read to, and the chain head there."""
    position = ledger.position()
    recorded: list[Positioned] = []
    chain: str | None = None
    with event_progress("reading the ledger") as progress:
        task = progress.add_task("reading the ledger", total=None)
        for r in ledger.read(upto=position):
            recorded.append((r.position, r.event))
            chain = r.chain
            if len(recorded) % 5000 == 0:
                progress.advance(task, 5000)
    return recorded, position, chain


def _month(text: str) -> str:
    try:
        return parse_month(text)
    except ValueError as error:
        fail(str(error))


def statement_summary(store_url: str | None) -> tuple[Statement, Directory] | None:
    """The statement of the latest month with activity in a store, with the staff directory for
    names (for the demo: ``render_statement_summary(*summary)``); None if the ledger has no
    order, session or refund yet."""
    with opened_store(store_url) as ledger:
        recorded, position, _ = load_ledger(ledger)
    settlement = Settlement(recorded, position=position)
    month = latest_month_with_activity((e for _, e in recorded), settlement.book)
    if month is None:
        return None
    return settlement.statement(month), settlement.commission().attribution.directory


# --- settle -------------------------------------------------------------------------------


@app.command()
def settle(
    month: MonthOption,
    rules_file: Annotated[Path | None, typer.Option("--rules", help="What-if: settle under this rule file instead of the adopted rules (it replaces every adopted version, attribution included). Nothing is written.", show_default=False)] = None,
    compare_rules: Annotated[bool, typer.Option("--compare", help="With --rules: what changes against the rules in force, per payee and per line, and why.")] = False,
    out: Annotated[str | None, typer.Option("--out", help="Write the lines to FILE.parquet (month, position, rule versions, digest in the metadata) or FILE.csv (UTF-8 with BOM); '-' prints the CSV to stdout.", show_default=False)] = None,
    lines: Annotated[bool, typer.Option("--lines", help="List every line (or, with --compare, every changed line).")] = False,
    payee: Annotated[str | None, typer.Option("--payee", help="Only this payee's lines and totals: one payee's statement (the digest stays the whole month's).", show_default=False)] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """The month's commission statement (SPEC §6): totals per payee and part, the lines, the rule
    versions, the position and the digest. A closed month is shown as it was closed."""
    month = _month(month)
    if compare_rules and rules_file is None:
        fail("--compare needs --rules FILE", hint="e.g. channel-ledger settle --month 2026-07 --rules new.toml --compare")
    if compare_rules and out is not None:
        fail("--out writes one statement; it cannot be combined with --compare")
    if out is not None and out != "-" and not out.lower().endswith((".parquet", ".csv")):
        fail(f"--out {out}: the file name must end in .parquet or .csv (or be '-' for CSV on stdout)")
    what_if_rules = load_rules(rules_file) if rules_file is not None else None
    if what_if_rules is None:  # the kept projection, refreshed: reads only what is new
        with opened_store(store) as ledger:  # open while showing: the lines are fetched if shown
            statement, directory = Projector(ledger).statement(month)
            _show_statement(statement, directory, out, json, lines, payee)
        return
    with opened_store(store) as ledger:
        recorded, position, _ = load_ledger(ledger)
    settlement = Settlement(recorded, position=position)
    directory = settlement.commission().attribution.directory
    if what_if_rules is not None and compare_rules:
        comparison = compare(settlement, Settlement(recorded, position=position, rules=what_if_rules), month)
        if json:
            emit_json(comparison_json(comparison, directory))
        else:
            render_comparison(comparison, directory, str(rules_file), show_all=lines)
        return
    statement = Settlement(recorded, position=position, rules=what_if_rules).statement(month)
    _show_statement(statement, directory, out, json, lines, payee)


def _show_statement(statement: Statement, directory: Directory, out: str | None, json: bool, lines: bool, payee: str | None) -> None:
    if out is not None:
        write_statement(statement, out, directory)
        if out == "-":
            return
    if json:
        emit_json(statement_json(statement, directory, payee))
    elif out is None:
        render_statement(statement, directory, show_lines=lines, payee=payee)
    else:
        stdout.print(f"wrote {len(statement.lines):,} lines of {statement.month} to {out} (digest {statement.digest})")
    _check_closed(statement)


def _check_closed(statement: Statement) -> None:
    check = statement.closed
    if check is not None and not check.verified:
        stderr.print(
            f"[bold red]Error:[/] {statement.month} was closed with digest {check.closure.digest} at position "
            f"{check.closure.built_position}, but rebuilding it there gives {check.rebuilt_digest}. "
            "Events up to the close were changed (tampering) or the settlement code changed; run the store's integrity check.",
        )
        raise typer.Exit(1)


def _payee_info(directory: Directory, payee: str) -> tuple[str, str, str]:
    staff = directory.staff.get(payee)
    return (staff.name, staff.role, staff.store_id) if staff else ("?", "?", "?")


def statement_json(statement: Statement, directory: Directory, payee: str | None = None) -> dict[str, Any]:
    """SPEC §9 keys (month, rule_versions, position, digest, lines, totals) and more."""
    totals = [t for t in statement.totals if payee is None or t.payee == payee]
    check = statement.closed
    return {
        "month": statement.month,
        "rule_versions": list(statement.rule_versions),
        "position": statement.position,
        "digest": statement.digest,
        "lines": lines_json(statement.lines, payee),
        "totals": {t.payee: t.as_json() for t in totals},
        "grand_total": statement.grand_total.as_json(),
        "payees": {
            t.payee: dict(zip(("name", "role", "store_id"), _payee_info(directory, t.payee)))
            for t in totals
        },
        "payee": payee,
        "what_if": statement.what_if,
        "adjusts": list(statement.adjusts),
        "closed": None if check is None else {
            "digest": check.closure.digest,
            "position": check.closure.built_position,
            "recorded_at_position": check.closure.recorded_position,
            "rebuilt_digest": check.rebuilt_digest,
            "verified": check.verified,
            "adjustments_go_to": statement.adjustments_go_to,
        },
        "findings": list(statement.findings),
    }


def _status(statement: Statement) -> str:
    if statement.what_if:
        return f"what-if under rules {statement.what_if} (not adopted; nothing written)"
    check = statement.closed
    if check is None:
        return "open"
    verdict = "digest verified" if check.verified else "[bold red]DIGEST MISMATCH[/]"
    return f"closed (built to position {check.closure.built_position:,}; {verdict})"


def render_statement(statement: Statement, directory: Directory, *, show_lines: bool = False, payee: str | None = None) -> None:
    title = f"Statement {statement.month}"
    if payee:
        title += f" · payee {payee}"
    stdout.print(f"[bold]{title}[/] · {_status(statement)}")
    totals = [t for t in statement.totals if payee is None or t.payee == payee]
    table = Table(show_edge=False, title_justify="left")
    for column, justify in (("payee", "left"), ("name", "left"), ("role", "left"), ("source", "right"), ("deal", "right"), ("fulfillment", "right"), ("total", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for t in totals:
        name, role, _ = _payee_info(directory, t.payee)
        table.add_row(t.payee, name, role, money(t.source), money(t.deal), money(t.fulfillment), money(t.total))
    if payee is None:
        g = statement.grand_total
        table.add_section()
        table.add_row("total", f"{len(totals)} payees", "", money(g.source), money(g.deal), money(g.fulfillment), money(g.total))
    if totals:
        print_table(table)
    else:
        stdout.print("no commission lines" + (f" for {payee}" if payee else "") + " in this month")
    # the whole month's counts without reading its lines (a kept statement decodes them lazily)
    shown = statement.lines if payee is None else [line for line in statement.lines if line.payee == payee]
    adjustments = adjustment_count(shown)
    summary = _count(len(shown), "line")
    if adjustments:
        summary += f", of which {adjustments:,} adjust closed months ({', '.join(statement.adjusts)})"
    if show_lines and shown:
        stdout.print()
        print_lines(shown)
    elif shown:
        summary += " · --lines lists them"
    stdout.print(summary)
    for finding in statement.findings:
        stdout.print(f"note: {finding}", markup=False)
    if statement.closed is not None and statement.adjustments_go_to:
        stdout.print(f"later changes to {statement.month} are settled in {statement.adjustments_go_to} as adjustments")
    stdout.print(f"rule versions: {', '.join(statement.rule_versions) or 'none'}")
    stdout.print(f"position:      {statement.position:,}")
    stdout.print(f"digest:        {statement.digest}")


def line_kind(line: Line) -> str:
    """What a line pays for, in one word: source, deal, session, repurchase, refund·source …"""
    kind = {"order": line.part, "session": "session", "repurchase": "repurchase"}.get(line.basis)
    if kind is None:  # a clawback: name the line it claws back
        kind = "refund·" + ("repurchase" if line.part == "fulfillment" else line.part)
    return kind


def lines_table(lines: Sequence[Line]) -> Table:
    """The lines, one row each, in statement order; customer ids and rules are in --json/CSV.

    Adjustments of a closed month get a ``status`` column (added / reversed) in place of the
    order: their dates already say which month they adjust."""
    adjusting = any(line.adjustment_of for line in lines)
    versions = {line.rule_version for line in lines}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    columns = [("date", "left"), ("event", "left"), ("status" if adjusting else "order", "left"), ("sku", "left"),
               ("kind", "left"), ("payee", "left"), ("base", "right"), ("rate", "right"), ("amount", "right")]
    if len(versions) > 1:
        columns.append(("rules", "left"))
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for line in lines:
        row = [line.day.isoformat(), line.event_id, line.adjustment or "" if adjusting else line.order_id, line.sku,
               line_kind(line), line.payee, money(line.base), rate_text(line.rate), money(line.amount)]
        if len(versions) > 1:
            row.append(line.rule_version)
        table.add_row(*row)
    return table


def print_lines(lines: Sequence[Line]) -> None:
    """The month's own lines, then one table per closed month it adjusts."""
    own = [line for line in lines if not line.adjustment_of]
    if own:
        print_table(lines_table(own))
    for month in sorted({line.adjustment_of for line in lines if line.adjustment_of}):
        adjusting = [line for line in lines if line.adjustment_of == month]
        total = sum((line.amount for line in adjusting), Decimal("0.00"))
        stdout.print(f"\nadjustments of closed {month} (recorded after its close): {_count(len(adjusting), 'line')}, {_signed(total)}")
        print_table(lines_table(adjusting))


CSV_COLUMNS = (
    "month", "payee", "payee_name", "role", "part", "basis", "base", "rate", "amount", "customer_id", "order_id", "sku",
    "product_class", "channel_id", "event_id", "recognised_at", "date", "rule", "rule_version", "adjustment_of", "adjustment",
)


def statement_csv(statement: Statement, directory: Directory) -> str:
    """The lines as CSV text (money as two-decimal strings), one row per line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in statement.lines:
        data = line.as_json()
        name, role, _ = _payee_info(directory, line.payee)
        row = {**data, "month": statement.month, "payee_name": name, "role": role}
        writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    return buffer.getvalue()


def write_statement(statement: Statement, out: str, directory: Directory) -> None:
    if out == "-":
        sys.stdout.write(statement_csv(statement, directory))
        sys.stdout.flush()
        return
    path = Path(out)
    if path.suffix.lower() == ".csv":
        path.write_text("\ufeff" + statement_csv(statement, directory), encoding="utf-8", newline="")
        return
    import pyarrow.parquet as pq

    from projections.export import statement_table

    pq.write_table(statement_table(statement), path)


# --- what-if comparison -------------------------------------------------------------------


def _changes_json(changes: Sequence[RuleChange]) -> list[dict[str, Any]]:
    def value(v: Any) -> Any:
        return rate_text(v) if hasattr(v, "quantize") else (v.isoformat() if isinstance(v, date) else v)

    return [{"field": c.field, "old": value(c.old), "new": value(c.new), "text": describe_change(c)} for c in changes]


def comparison_json(c: Comparison, directory: Directory) -> dict[str, Any]:
    return {
        "month": c.month,
        "rules_in_force": list(c.baseline.rule_versions),
        "what_if": c.what_if.what_if,
        "rule_changes": {version: _changes_json(changes) for version, changes in c.rule_changes},
        "baseline": {"position": c.baseline.position, "digest": c.baseline.digest, "total": c.baseline.grand_total.as_json()},
        "what_if_statement": {"position": c.what_if.position, "digest": c.what_if.digest, "total": c.what_if.grand_total.as_json()},
        "payees": [
            {
                "payee": p.payee,
                "name": _payee_info(directory, p.payee)[0],
                "old": p.old.as_json(),
                "new": p.new.as_json(),
                "change": money(p.change),
            }
            for p in c.payees
        ],
        "lines": [
            {
                "status": ch.status,
                "payee": ch.line.payee,
                "part": ch.line.part,
                "basis": ch.line.basis,
                "event_id": ch.line.event_id,
                "order_id": ch.line.order_id,
                "sku": ch.line.sku,
                "adjustment_of": ch.line.adjustment_of,
                "old_amount": money(ch.old_amount),
                "new_amount": money(ch.new_amount),
                "change": money(ch.change),
                "reason": ch.reason,
                "old": ch.old.as_json() if ch.old else None,
                "new": ch.new.as_json() if ch.new else None,
            }
            for ch in c.lines
        ],
    }


def render_comparison(c: Comparison, directory: Directory, source: str, *, show_all: bool = False) -> None:
    in_force = ", ".join(c.baseline.rule_versions) or "none"
    stdout.print(f"[bold]What-if {c.month}[/]: rules {source} (version {c.what_if.what_if}, not adopted) against the rules in force ({in_force})")
    for version, changes in c.rule_changes:
        listed = "; ".join(describe_change(ch) for ch in changes if ch.field not in ("version", "effective_from"))
        stdout.print(f"rule changes from {version}: {listed or 'none besides the version name'}", markup=False)
    moved = [p for p in c.payees if p.change or p.old.total != p.new.total]
    table = Table(show_edge=False)
    for column, justify in (("payee", "left"), ("name", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for p in moved:
        table.add_row(p.payee, _payee_info(directory, p.payee)[0], money(p.old.total), money(p.new.total), _signed(p.change))
    old, new = c.baseline.grand_total.total, c.what_if.grand_total.total
    table.add_section()
    table.add_row("total", f"{len(c.payees)} payees", money(old), money(new), _signed(new - old))
    stdout.print(table)
    unchanged = len(c.payees) - len(moved)
    if unchanged:
        stdout.print(f"{unchanged} payees unchanged")
    if not c.lines:
        stdout.print("no line changes")
        return
    counts = {s: sum(1 for ch in c.lines if ch.status == s) for s in ("added", "removed", "changed")}
    stdout.print(f"\n{len(c.lines):,} line changes ({counts['added']} added, {counts['removed']} removed, {counts['changed']} changed)")
    shown = c.lines if show_all else c.lines[:CHANGES_SHOWN]
    lines = Table(show_edge=False)
    for column, justify in (("", "left"), ("event", "left"), ("part", "left"), ("payee", "left"), ("before", "right"), ("after", "right"), ("reason", "left")):
        lines.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for ch in shown:
        part = ch.line.part if ch.line.basis in ("order", "session") else f"{ch.line.part} · {ch.line.basis}"
        lines.add_row(ch.status, ch.line.event_id, part, ch.line.payee, money(ch.old_amount), money(ch.new_amount), ch.reason)
    stdout.print(lines)
    if len(shown) < len(c.lines):
        stdout.print(f"… {len(c.lines) - len(shown):,} more (--lines for all, --json for everything)")
    stdout.print(f"digest in force {c.baseline.digest}\ndigest what-if  {c.what_if.digest}")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _signed(amount: Any) -> str:
    return ("+" if amount > 0 else "") + money(amount)


# --- close --------------------------------------------------------------------------------


@app.command()
def close(month: MonthOption, store: StoreOption = None, json: JsonOption = False) -> None:
    """Close a month (SPEC §6): record its statement's digest. A closed month never changes; events
    recorded later that fall in it are settled in the next open month as adjustments."""
    month = _month(month)
    with opened_store(store) as ledger:
        recorded, position, chain = load_ledger(ledger)
        settlement = Settlement(recorded, position=position)
        closes = settlement.closures()
        if month in closes:
            done = closes[month]
            fail(
                f"{month} is already closed (built to position {done.built_position:,}, digest {done.digest})",
                hint=f"a closed month never changes; see it with: channel-ledger settle --month {month}",
            )
        book = settlement.book
        ends = month_ends_at(month, book)
        now = datetime.now(ends.tzinfo)
        if now < ends:
            fail(f"{month} has not ended yet (it ends {ends.isoformat()})", hint="close a month once it is over")
        waiting = settlement.open_months_before(month)
        if waiting:
            fail(
                f"{waiting[0]} has commission lines and is still open: months close in order",
                hint=f"close it first: channel-ledger close --month {waiting[0]}",
            )
        statement = settlement.statement(month)
        event = close_event(statement, book, chain)
        report = ingest_events(ledger, [event], source="close")
        if report.rejected:
            fail(f"could not close {month}: {report.rejected[0].reason}")
        recorded_at = report.positions[0] if report.positions else None
    g = statement.grand_total
    if json:
        emit_json({
            "month": month,
            "digest": statement.digest,
            "position": statement.position,
            "recorded_at_position": recorded_at,
            "rule_versions": list(statement.rule_versions),
            "lines": len(statement.lines),
            "grand_total": g.as_json(),
            "event_id": event.event_id,
        })
        return
    stdout.print(f"closed {month}: {_count(len(statement.lines), 'line')}, {_count(len(statement.totals), 'payee')}, total {money(g.total)} "
                 f"(source {money(g.source)} · deal {money(g.deal)} · fulfillment {money(g.fulfillment)})")
    stdout.print(f"built to position {statement.position:,} under rules {', '.join(statement.rule_versions) or 'none'}")
    stdout.print(f"digest {statement.digest}")
    stdout.print(f"later events that fall in {month} will be settled in {next_month(month)} (or the next open month) as adjustments")


# --- export -------------------------------------------------------------------------------


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the Parquet files to (created if missing).", show_default=False)],
    unmasked: UnmaskedOption = False,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Events and projections as Parquet files (pyarrow), each with the ledger position and the rule
    versions in its metadata. Phones are masked (138****8000) unless --unmasked."""
    import pyarrow.parquet as pq

    from projections.export import PRODUCERS, ExportContext

    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a directory")
    with opened_store(store) as ledger:
        recorded, position, _ = load_ledger(ledger)
    context = ExportContext(recorded, position, Settlement(recorded, position=position), unmasked)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, producer in PRODUCERS:
        table = producer(context)
        path = out / f"{name}.parquet"
        pq.write_table(table, path)
        written.append({"name": name, "file": str(path), "rows": table.num_rows})
    if json:
        emit_json({"position": position, "rule_versions": context.rule_versions, "files": written, "masked": not unmasked})
        return
    for w in written:
        stdout.print(f"{w['file']}: {w['rows']:,} rows")
    stdout.print(f"position {position:,} · rules {', '.join(context.rule_versions) or 'none'} · phones {'in full' if unmasked else 'masked'}")


# --- the demo's summary -------------------------------------------------------------------


def render_statement_summary(statement: Statement, directory: Directory | None = None, top: int = 8) -> None:
    """The month's statement in a few lines: totals per part, and the top payees."""
    g = statement.grand_total
    stdout.print(f"[bold]commission statement {statement.month}[/] · {len(statement.lines):,} lines · {len(statement.totals)} payees · rules {', '.join(statement.rule_versions)}")
    parts = Table(show_edge=False)
    for column in ("source", "deal", "fulfillment", "total"):
        parts.add_column(column, justify="right")
    parts.add_row(money(g.source), money(g.deal), money(g.fulfillment), money(g.total))
    stdout.print(parts)
    best = sorted(statement.totals, key=lambda t: (-t.total, t.payee))[:top]
    table = Table(title=f"top {len(best)} payees", title_justify="left", show_edge=False)
    for column, justify in (("payee", "left"), ("name", "left"), ("role", "left"), ("source", "right"), ("deal", "right"), ("fulfillment", "right"), ("total", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for t in best:
        name, role, _ = _payee_info(directory, t.payee) if directory else ("", "", "")
        table.add_row(t.payee, name, role, money(t.source), money(t.deal), money(t.fulfillment), money(t.total))
    stdout.print(table)
    stdout.print(f"digest {statement.digest} · full statement: channel-ledger settle --month {statement.month}")


# --- policy -------------------------------------------------------------------------------


def _adoptions(recorded: Sequence[Positioned]) -> list[tuple[int, PolicyAdopted]]:
    return [(p, e) for p, e in recorded if isinstance(e, PolicyAdopted)]


def _book(recorded: Sequence[Positioned]) -> RuleBook:
    return rule_book(e for _, e in recorded)


def _adopted(ledger: LedgerStore) -> list[Positioned]:
    """The store's rule set adoptions, in ledger order, found through the index (filed under
    ``d:`` with the reference data) instead of by reading every event: ``policy show`` on the
    1M demo store 12.4 s and 2.1 GB → well under a second."""
    return [(r.position, r.event) for r in ledger.reference_data() if isinstance(r.event, PolicyAdopted)]


@policy_app.command("show")
def policy_show(
    on: Annotated[str | None, typer.Option("--on", help="The rules in force on this day (YYYY-MM-DD); default: the latest adopted version.", show_default=False)] = None,
    version: Annotated[str | None, typer.Option("--version", help="Show this adopted version.", show_default=False)] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Show a rule set in force (its rates and periods) and every adopted version."""
    with opened_store(store) as ledger:
        recorded = _adopted(ledger)
    book = _book(recorded)
    if not book:
        fail("no rule set has been adopted", hint="channel-ledger init adopts the shipped rules")
    if version is not None:
        if version not in book:
            fail(f"rule version {version!r} was never adopted", hint=f"adopted: {', '.join(book.versions)}")
        rules = book.get(version)
    elif on is not None:
        try:
            day = date.fromisoformat(on)
        except ValueError:
            fail(f"--on takes a date YYYY-MM-DD, not {on!r}")
        rules = book.in_force(day)
    else:
        rules = book.get(book.versions[-1])
    adopted = _adoptions(recorded)
    if json:
        emit_json({
            "version": rules.version,
            "rules": rules.canonical_dict(),
            "digest": rules.digest(),
            "adopted": [
                {"version": e.version, "effective_from": e.effective_from.isoformat(), "position": p, "event_id": e.event_id}
                for p, e in adopted
            ],
        })
        return
    render_rules(rules)
    stdout.print()
    table = Table(title="adopted versions", title_justify="left", show_edge=False)
    for column in ("version", "effective from", "time zone", "adopted at position", ""):
        table.add_column(column)
    for p, e in sorted(adopted, key=lambda pe: (pe[1].effective_from, pe[0])):
        table.add_row(e.version, e.effective_from.isoformat(), str(e.rules.get("timezone", "")), f"{p:,}", "◀ shown" if e.version == rules.version else "")
    stdout.print(table)


def render_rules(rules: RuleSet) -> None:
    stdout.print(f"[bold]rule set {rules.version}[/] · effective from {rules.effective_from} · time zone {rules.timezone}")
    periods = Table.grid(padding=(0, 2))
    periods.add_row("protection (保护期)", f"{rules.protection_days} days")
    periods.add_row("follow-up timeout", f"{rules.followup_timeout_days} days")
    periods.add_row("reattribute after protection", "yes" if rules.reattribute_after_protection else "no")
    periods.add_row("source window", f"{rules.source_window_days} days")
    periods.add_row("fulfillment rate (履约)", rate_text(rules.fulfillment_rate))
    periods.add_row("repurchase rate (复购)", rate_text(rules.repurchase_rate))
    periods.add_row("pressure threshold", rate_text(rules.pressure_threshold))
    stdout.print(periods)
    rates = Table(show_edge=False)
    rates.add_column("rate")
    classes = ("assessment", "fill_item", "course_package")
    for cls in classes:
        rates.add_column(cls, justify="right")
    for kind, row in rules.source_rate.items():
        rates.add_row(f"source_rate.{kind}", *(rate_text(row[c]) for c in classes))
    rates.add_row("deal_rate", *(rate_text(rules.deal_rate[c]) for c in classes))
    rates.add_row("cadence_per_week", *(str(rules.cadence_per_week[c]) for c in classes))
    stdout.print(rates)


@policy_app.command("adopt")
def policy_adopt(
    file: Annotated[Path, typer.Argument(help="A rule file (TOML, SPEC §8).", show_default=False)],
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Adopt a rule file: record policy.adopted, so that lines from its effective_from on are
    settled under it. Try it first with: settle --month M --rules FILE --compare."""
    rules = load_rules(file)
    with opened_store(store) as ledger:
        recorded, position, _ = load_ledger(ledger)
        book = _book(recorded)
        if rules.version in book:
            if book.get(rules.version) != rules:
                fail(
                    f"rule version {rules.version!r} is already adopted with different rules",
                    hint="a version names one rule set forever: give the changed rules a new version",
                )
            if json:
                emit_json({"version": rules.version, "adopted": False, "already_adopted": True})
            else:
                stdout.print(f"rule set {rules.version} is already adopted (nothing written)")
            return
        previous = _in_force_or_none(book, rules.effective_from)
        report = ingest_events(ledger, [adoption_event(rules)], source=str(file))
        if report.rejected:
            fail(f"could not adopt {rules.version}: {report.rejected[0].reason}")
        at = report.positions[0] if report.positions else position
        closed = sorted(m for m in Settlement(recorded, position=position).closures() if m >= rules.effective_from.strftime("%Y-%m"))
    changes = diff_rules(previous, rules) if previous else []
    if json:
        emit_json({
            "version": rules.version,
            "effective_from": rules.effective_from.isoformat(),
            "adopted": True,
            "position": at,
            "replaces": previous.version if previous else None,
            "changes": _changes_json(changes),
            "closed_months_affected": closed,
        })
        return
    stdout.print(f"adopted rule set {rules.version}, effective from {rules.effective_from}, at position {at:,}")
    if previous is not None:
        listed = [describe_change(c) for c in changes if c.field not in ("version", "effective_from")]
        stdout.print(f"changes from {previous.version}: {'; '.join(listed) or 'none besides the version'}", markup=False)
    if closed:
        stdout.print(f"note: {', '.join(closed)} already closed; what these rules change there is settled as adjustments in the next open month")


def _in_force_or_none(book: RuleBook, day: date) -> RuleSet | None:
    try:
        return book.in_force(day)
    except LookupError:
        return None


@policy_app.command("diff")
def policy_diff(
    a: Annotated[str, typer.Argument(help="A rule file, or the version name of an adopted rule set.", show_default=False)],
    b: Annotated[str, typer.Argument(help="A rule file, or the version name of an adopted rule set.", show_default=False)],
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Every rule that differs between two rule sets (files or adopted versions)."""
    first, second = _rules_named(a, store), _rules_named(b, store)
    changes = diff_rules(first, second)
    if json:
        emit_json({"a": first.version, "b": second.version, "changes": _changes_json(changes)})
        return
    if not changes:
        stdout.print(f"{first.version} and {second.version} are the same rules")
        return
    table = Table(show_edge=False)
    table.add_column("rule")
    table.add_column(first.version, justify="right")
    table.add_column(second.version, justify="right")
    for c in _changes_json(changes):
        table.add_row(c["field"], str(c["old"]), str(c["new"]))
    stdout.print(table)


def _rules_named(name: str, store: str | None) -> RuleSet:
    path = Path(name)
    if path.exists() or name.endswith(".toml"):
        return load_rules(path)
    location = parse_store_url(store_url_from(store))
    if location.kind == "sqlite" and not Path(location.env["SQLITE_DBNAME"]).exists():
        fail(f"{name!r} is neither a rule file nor an adopted version (there is no store at {location.display})")
    with opened_store(store) as ledger:
        book = _book(_adopted(ledger))
    if name in book:
        return book.get(name)
    fail(f"{name!r} is neither a rule file nor an adopted version", hint=f"adopted versions: {', '.join(book.versions) or 'none'}")

