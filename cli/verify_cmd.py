"""``verify``: check the store's integrity (SPEC §10) — recompute the hash chain, find the first break."""

from __future__ import annotations

import sys

import typer

from cli.common import JsonOption, StoreOption, emit_json, opened_store, stderr, stdout
from cli.ingest_cmd import event_progress
from ledger.verify import VerifyReport, verify as verify_store

app = typer.Typer()


def report_json(report: VerifyReport) -> dict:
    found = report.first_break
    return {
        "ok": report.ok,
        "events": report.events,
        "writes": report.writes,
        "rows": report.rows,
        "position": report.position,
        "head": report.head,
        "chain_version": report.chain_version,
        "anchors": report.anchors,
        "seconds": round(report.seconds, 3),
        "events_per_second": round(report.events_per_second),
        "first_break": None
        if found is None
        else {
            "position": found.position,
            "kind": found.kind,
            "reason": found.reason,
            "event_id": found.event_id,
            "detail": list(found.detail),
        },
    }


def print_report(report: VerifyReport) -> None:
    counts = (
        f"{report.events:,} events in {report.writes:,} writes, to position {report.position:,} · "
        f"{report.seconds:.2f} s ({report.events_per_second:,.0f} events/s)"
    )
    found = report.first_break
    if found is None:
        stdout.print(f"chain intact: {counts}", markup=False)
        stdout.print(f"head {report.head} (write {report.chain_version:,})", markup=False)
        if report.anchors:
            stdout.print(f"closed months checked against the chain: {report.anchors}", markup=False)
        return
    # One clear line (grep-able), then the evidence.
    stdout.print(f"BROKEN at position {found.position:,}: {found.kind}: {found.reason}", markup=False)
    if found.event_id:
        stdout.print(f"  event_id: {found.event_id}", markup=False)
    for line in found.detail:
        stdout.print(f"  {line}", markup=False)
    stdout.print(f"  checked before the break: {counts}", markup=False)
    stdout.print(f"  chain head there: {report.head}", markup=False)


@app.command()
def verify(store: StoreOption = None, json: JsonOption = False) -> None:
    """Check the store's integrity (SPEC §10): recompute every event's digest and the hash chain in
    ledger order, and the write records. Prints the first position where the chain breaks and why
    (changed content, deleted, swapped or inserted event, link mismatch). Exit code 1 when broken."""
    with opened_store(store) as ledger, event_progress("verifying") as progress:
        task = progress.add_task("verifying", total=None)
        report = verify_store(ledger, progress=lambda n: progress.advance(task, n))
    if json:
        emit_json(report_json(report))
    else:
        print_report(report)
    if not report.ok:
        if not json:
            sys.stdout.flush()  # the evidence first, then the hint
            stderr.print("hint: restore from a backup, or investigate the rows named above", markup=False)
        raise typer.Exit(1)
