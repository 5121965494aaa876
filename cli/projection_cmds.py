"""``rebuild`` and ``refresh``: the kept projections (issue 4 item 5), with their positions."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.common import JsonOption, StoreOption, emit_json, opened_store, stdout
from cli.ingest_cmd import event_progress
from ledger.projector import Projector, Refreshed, Workers

app = typer.Typer()
WorkersOption = Annotated[int | None, typer.Option(
    "--workers", min=1,
    help="Processes settling customers side by side (default: one per core, up to 4, from 50,000 events to fold; also $CHANNEL_LEDGER_WORKERS).",
)]


STAGE_UNITS = {"settling customers": "customers", "merging statements": "months"}  # the rest count events


def _run(store: str | None, full: bool, workers: int | None = None) -> tuple[Refreshed, float]:
    with opened_store(store) as ledger, event_progress("rebuilding" if full else "refreshing") as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, unit=STAGE_UNITS.get(stage, "events"))
            bar.update(tasks[stage], completed=done, total=total)

        started = time.perf_counter()
        projector = Projector(ledger)
        shares: Workers = "auto" if workers is None else workers
        done = projector.rebuild(progress, shares) if full else projector.refresh(progress, shares)
        return done, time.perf_counter() - started


def _report(done: Refreshed, seconds: float, json: bool) -> None:
    if json:
        emit_json({
            "kind": done.kind, "position": done.position, "events_read": done.events_read,
            "customers_settled": done.customers, "parts_written": done.parts, "reason": done.reason,
            "seconds": round(seconds, 3), "workers_peak_rss_mib": [round(m, 1) for m in done.workers_peak_rss_mib],
        })
        return
    if done.kind == "current":
        stdout.print(f"settlement projection is up to date at position {done.position:,}")
        return
    rate = f" ({done.events_read / seconds:,.0f} events/s)" if seconds > 0 and done.events_read else ""
    why = f" — {done.reason}" if done.reason else ""
    if done.workers_peak_rss_mib:
        shares = ", ".join(f"{m:,.0f}" for m in done.workers_peak_rss_mib)
        why += f" (shared out to {len(done.workers_peak_rss_mib)} worker process(es), peak RSS {shares} MiB)"
    stdout.print(
        f"{done.kind}: settlement projection at position {done.position:,}: read {done.events_read:,} events, "
        f"settled {done.customers:,} customers, wrote {done.parts:,} customer-month parts in {seconds:.2f} s{rate}{why}"
    )


@app.command()
def rebuild(
    store: StoreOption = None,
    json: JsonOption = False,
    workers: WorkersOption = None,
) -> None:
    """Drop the kept projections and rebuild them from every event (after a rule or code change;
    a crash during it leaves the previous projection in place)."""
    _report(*_run(store, full=True, workers=workers), json)


@app.command()
def refresh(store: StoreOption = None, json: JsonOption = False, workers: WorkersOption = None) -> None:
    """Bring the kept projections up to date, reading only the events recorded since their
    position (every command that reads them does this first)."""
    _report(*_run(store, full=False, workers=workers), json)
