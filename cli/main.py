"""The ``channel-ledger`` command: one typer app composed from the command modules."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from cli import attribution_cmds, demo_cmd, ingest_cmd, ops_cmds, privacy_cmd, projection_cmds, report_cmd, serve_cmd, settle_cmds, store_cmds, verify_cmd
from cli.common import known_errors, stderr

app = typer.Typer(
    name="channel-ledger",
    help="Event-sourced attribution, commission and fulfillment ledger for clinic groups' channels.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold personal data
    add_completion=False,
)
for module in (store_cmds, ingest_cmd, attribution_cmds, demo_cmd, verify_cmd, ops_cmds, settle_cmds, projection_cmds, report_cmd, serve_cmd, privacy_cmd):
    app.registered_commands.extend(module.app.registered_commands)
    app.registered_groups.extend(module.app.registered_groups)


def main() -> None:
    """Console entry point: known errors become one line on stderr and exit code 1."""
    try:
        app(standalone_mode=True)
    except known_errors() as error:
        stderr.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False)
        hint = getattr(error, "hint", None)
        if hint:
            stderr.print(f"hint: {hint}")
        sys.exit(1)


if __name__ == "__main__":
    main()
