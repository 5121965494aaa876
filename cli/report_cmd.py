"""``report``: the month as one self-contained HTML page for the group owner (issue #8)."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from cli.common import StoreOption, fail, opened_store, stdout

app = typer.Typer()


@app.command("report")
def report_cmd(
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM, in the rules' time zone.", show_default=False)],
    out: Annotated[str, typer.Option("--out", help="Write the page to this file (UTF-8); '-' prints it to stdout.", show_default=False)],
    lang: Annotated[str, typer.Option("--lang", help="Labels in Chinese (zh) or English (en).")] = "zh",
    as_of: Annotated[str | None, typer.Option("--as-of", help="Business day D (YYYY-MM-DD) of the liability and the forecast; default the month's last day.", show_default=False)] = None,
    store: StoreOption = None,
) -> None:
    """One HTML page of a month that opens anywhere, offline (inline CSS and SVG, no script): the
    three ledgers per channel kind as charts, the forecast as a store × month utilisation heatmap
    with flagged months, the commission totals per payee and part, and the statement digest with
    its rule versions."""
    from cli.report import render_report  # matplotlib: loaded for this command only

    day = None
    if as_of is not None:
        try:
            day = date.fromisoformat(as_of)
        except ValueError:
            fail(f"--as-of takes a date YYYY-MM-DD, not {as_of!r}")
    target = None if out == "-" else Path(out)
    if target is not None and not target.parent.is_dir():
        fail(f"--out {out}: folder {target.parent} does not exist")
    with opened_store(store) as ledger:
        page = render_report(ledger, month, lang=lang, as_of=day)
    data = page.encode("utf-8")
    if target is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target.write_bytes(data)
    stdout.print(f"wrote the report of {month} to {out} ({len(data) / 1024:,.0f} KB)")
