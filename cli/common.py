"""What every command shares: the store option, JSON output, errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from ledger.store import STORE_ENV, LedgerStore, StoreError, store_url_from

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help=f"Store URL: sqlite:///path.db (default ./channel-ledger.db) or postgresql://user@host:port/db[?schema=s]. Also ${STORE_ENV}.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON (stable keys, money as strings).")]
UnmaskedOption = Annotated[bool, typer.Option("--unmasked", help="Show phone numbers in full (personal data).")]


class CommandError(Exception):
    """A refused command: printed as ``Error: <message>`` (and a hint), exit code 1."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def fail(message: str, hint: str | None = None) -> NoReturn:
    raise CommandError(message, hint)


@contextmanager
def opened_store(url: str | None) -> Iterator[LedgerStore]:
    store = LedgerStore(store_url_from(url))
    try:
        yield store
    finally:
        store.close()


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def json_bytes(payload: Any) -> bytes:
    """A JSON document as every ``--json`` prints it (and the HTTP service sends it): sorted keys,
    two-space indent, UTF-8, money as strings, a final newline."""
    return orjson.dumps(payload, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def emit_json(payload: Any) -> None:
    """Write a JSON document to stdout (`json_bytes`)."""
    sys.stdout.buffer.write(json_bytes(payload))
    sys.stdout.flush()


def money(value: Decimal) -> str:
    """Money as finance reads it: two decimals, half-up already applied upstream."""
    return f"{value:.2f}"


def known_errors() -> tuple[type[BaseException], ...]:
    from ledger.events import InvalidEvent

    extra: list[type[BaseException]] = [CommandError, StoreError, InvalidEvent]
    try:
        from policies import NoRulesInForce, RuleFileError

        extra += [RuleFileError, NoRulesInForce]
    except ImportError:  # pragma: no cover - policies always ship
        pass
    return tuple(extra)


LARGE_TABLE = 200  # rows; above this a table is printed plain (rich lays out ~1 ms a row)


def print_table(table: Table) -> None:
    """Print a table; a large one (a month's 2,000 payees, 130,000 lines) as plain aligned
    columns — the same columns and totals, without rich's per-cell layout cost."""
    if table.row_count <= LARGE_TABLE:
        stdout.print(table)
        return
    columns = table.columns
    cells = [[str(cell) for cell in column._cells] for column in columns]
    widths = [max([cell_len(str(column.header)), *map(cell_len, cells[i])]) for i, column in enumerate(columns)]

    def row(values: list[str]) -> str:
        out = []
        for value, width, column in zip(values, widths, columns):
            pad = " " * (width - cell_len(value))
            out.append(pad + value if column.justify == "right" else value + pad)
        return " │ ".join(out).rstrip()

    rule = "─┼─".join("─" * w for w in widths)
    lines = [row([str(c.header) for c in columns]), rule]
    for n in range(table.row_count):
        lines.append(row([cells[i][n] for i in range(len(columns))]))
        if table.rows[n].end_section and n + 1 < table.row_count:
            lines.append(rule)
    stdout.file.write("\n".join(lines) + "\n")
    stdout.file.flush()
