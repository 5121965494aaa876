"""``ingest``: validate and append events; every rejection reported with file, line and reason."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from cli.common import JsonOption, StoreOption, emit_json, fail, opened_store, stderr, stdout
from ledger.ingest import IngestReport, ingest_files

app = typer.Typer()


class _Count(ProgressColumn):
    """How far a task is, in its own unit (a task's ``unit`` field; events unless it says)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.completed:,} {task.fields.get('unit', 'events')}")


def event_progress(description: str, total: int | None = None) -> Progress:
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )


def report_json(report: IngestReport, collisions: list[dict] | None = None, collisions_checked: bool = True) -> dict:
    return {
        "accepted": report.accepted,
        "repeated": report.repeated,
        "rejected": [
            {"file": r.file, "line": r.line, "event_id": r.event_id, "field": r.field, "reason": r.reason}
            for r in report.rejected
        ],
        "collisions": collisions or [],
        "collisions_checked": collisions_checked,
        "written": report.written,
        "positions": list(report.positions) if report.positions else None,
    }


COLLISION_SCAN_LIMIT = 300_000  # events: up to here a plain fold of the whole store is the cheaper check
COLLISION_CHECK_LEADS = 5_000  # new leads: up to here their customers' components are folded, at any store size


def collisions_seen(ledger, report: IngestReport) -> list[dict] | None:
    """Collisions (撞单) caused by leads this ingest accepted: the agent who collided is told at once.

    The customers of the new leads are folded alone — their connected components, found through
    the index, with the kept reference data — which gives them the attribution a fold of the
    whole store gives (`ledger.neighbourhood`), at a cost that follows the new leads, not the
    store. A bulk load of more than `COLLISION_CHECK_LEADS` leads into a small store folds the
    store instead (a sequential read beats that many index lookups); into a store above
    `COLLISION_SCAN_LIMIT` events it is not checked inline (None) and `channel-ledger
    collisions` answers."""
    from cli.attribution_cmds import collision_json, local_facts
    from ledger.projector import components_of
    from projections.pipeline import facts

    if not report.accepted_leads or not report.written:
        return []
    position = ledger.position()
    if len(report.accepted_leads) <= COLLISION_CHECK_LEADS:
        f = local_facts(ledger, components_of(ledger, list(ledger.lookup(report.accepted_leads).values())), position)
    elif position <= COLLISION_SCAN_LIMIT:
        f = facts(ledger.read(upto=position), position)
    else:
        return None
    if not f.book.adoptions:
        return []
    new = set(report.accepted_leads)
    return [{"customer_id": cid, **collision_json(c)} for cid, c in f.attribution.collisions() if c.event_id in new]


def print_collisions(collisions: list[dict] | None, new_leads: int) -> None:
    if collisions is None:
        stdout.print(f"{new_leads:,} new leads: too many for the inline collision check on a store this large; run channel-ledger collisions")
        return
    if not collisions:
        return
    stdout.print(f"collisions seen (撞单): {len(collisions)}")
    for c in collisions:
        where = "inside" if c["inside_protection"] else "after"
        stdout.print(
            f"  {c['event_id']}: {c['staff_id']} / {c['channel_id']} collided with owner {c['owner_staff_id']} / "
            f"{c['owner_channel_id']} on customer {c['customer_id']} ({where} protection; {c['effect']})",
            markup=False,
        )


def print_report(report: IngestReport) -> None:
    line = f"accepted {report.accepted:,} · repeated {report.repeated:,} · rejected {len(report.rejected):,}"
    stdout.print(line)
    if report.positions:
        stdout.print(f"recorded at ledger positions {report.positions[0]:,}–{report.positions[1]:,}")
    if not report.written:
        stdout.print("[bold]nothing was written[/] (--atomic: the input is accepted whole or not at all)")
    for r in report.rejected:
        # FILE:LINE: event_id: field: reason — one line each, like a compiler (and grep-able).
        stdout.print(f"{r.file}:{r.line}: {r.event_id or '-'}: {r.field}: {r.reason}", markup=False)


@app.command()
def ingest(
    files: Annotated[list[str], typer.Argument(help="JSON Lines or CSV files; '-' reads stdin.")],
    atomic: Annotated[bool, typer.Option("--atomic", help="All or nothing: write only if every line is accepted.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl or csv (default: by extension / content).")] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Validate and append events (SPEC §2.2). Exit code 1 if anything was rejected."""
    if fmt not in (None, "jsonl", "csv"):
        raise typer.BadParameter("--format must be jsonl or csv")
    for path in files:
        if path != "-" and not os.access(path, os.R_OK):
            reason = "no such file" if not os.path.exists(path) else "not readable"
            fail(f"cannot read {path}: {reason}", hint="nothing was ingested")
    with opened_store(store) as ledger, event_progress("ingesting") as progress:
        task = progress.add_task("ingesting", total=None)
        report = ingest_files(ledger, files, atomic=atomic, fmt=fmt, progress=lambda n: progress.advance(task, n))
        collisions = collisions_seen(ledger, report)
    if json:
        emit_json(report_json(report, collisions, collisions is not None))
    else:
        print_report(report)
        print_collisions(collisions, len(report.accepted_leads))
    if report.rejected:
        raise typer.Exit(1)
