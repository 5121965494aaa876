"""What every command shares: the store option, JSON output, errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console

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


def emit_json(payload: Any) -> None:
    """Write a JSON document to stdout: sorted keys, two-space indent, UTF-8."""
    data = orjson.dumps(payload, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    sys.stdout.buffer.write(data + b"\n")
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
