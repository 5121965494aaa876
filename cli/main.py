"""The ``channel-ledger`` command: one typer app composed from the command modules.

A command line names one command, and only that command's module is imported: the rest of the
CLI (the report's charts, the service, the demo generator, the operational views) would add
about a fifth to every ``settle``'s start-up, which is most of its time on an up-to-date store.
``--help``, no command, or a name that is not a command compose every module (typer then lists
them, or says what is unknown). `COMMANDS` must name every command (tests/test_cli.py checks).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

MODULES = (
    "store_cmds", "ingest_cmd", "attribution_cmds", "demo_cmd", "verify_cmd", "ops_cmds",
    "settle_cmds", "projection_cmds", "report_cmd", "serve_cmd", "privacy_cmd",
)
COMMANDS = {
    "init": "store_cmds", "events": "store_cmds",
    "ingest": "ingest_cmd",
    "attribution": "attribution_cmds", "trace": "attribution_cmds", "collisions": "attribution_cmds",
    "demo": "demo_cmd",
    "verify": "verify_cmd",
    "liability": "ops_cmds", "ledgers": "ops_cmds", "due": "ops_cmds",
    "settle": "settle_cmds", "close": "settle_cmds", "export": "settle_cmds", "policy": "settle_cmds",
    "rebuild": "projection_cmds", "refresh": "projection_cmds",
    "report": "report_cmd",
    "serve": "serve_cmd",
    "forget": "privacy_cmd",
}
HELP = "Event-sourced attribution, commission and fulfillment ledger for clinic groups' channels."


def build_app(modules: tuple[str, ...] = MODULES) -> typer.Typer:
    """The CLI with the commands of ``modules`` (every command by default)."""
    app = typer.Typer(
        name="channel-ledger",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,  # locals can hold personal data
        add_completion=False,
    )

    @app.callback()
    def _group() -> None:  # a group even when one command is composed: `channel-ledger settle …` keeps its name
        pass

    _group.__doc__ = HELP
    for name in modules:
        module = importlib.import_module(f"cli.{name}")
        app.registered_commands.extend(module.app.registered_commands)
        app.registered_groups.extend(module.app.registered_groups)
    return app


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules a command line needs: its command's, or all of them."""
    words = argv[1:]
    if not words or words[0].startswith("-") or words[0] not in COMMANDS:
        return MODULES
    return (COMMANDS[words[0]],)


def __getattr__(name: str) -> Any:  # `from cli.main import app`: the whole CLI (tests, tools)
    if name == "app":
        return build_app()
    raise AttributeError(name)


LONG_LIVED = ("serve",)  # commands that run until stopped: they keep the cyclic collector


def main() -> None:
    """Console entry point: known errors become one line on stderr and exit code 1.

    A one-shot command runs with the cyclic collector paused (`ledger.collector`): the views
    that fold the whole store (``ledgers``, ``due``, ``liability``, ``collisions``, ``report``,
    ``export``, ``close``, a what-if ``settle``) keep every event while they allocate millions
    more objects, and the collector walked that heap again and again for cycles the folds never
    make — ``ledgers --month`` at 1M events 44.5 → 34.0 s, the same output. The process ends with
    the command; ``serve`` keeps the collector."""
    from contextlib import nullcontext

    from rich.markup import escape

    from ledger.collector import collector_paused

    app = build_app(modules_for(sys.argv))
    from cli.common import known_errors, stderr

    command = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        with nullcontext() if command in LONG_LIVED else collector_paused():
            app(standalone_mode=True)
    except known_errors() as error:
        stderr.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False)
        hint = getattr(error, "hint", None)
        if hint:
            stderr.print(f"hint: {hint}")
        sys.exit(1)


if __name__ == "__main__":
    main()
