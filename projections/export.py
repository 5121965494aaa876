"""Events and projections as Arrow tables, for ``export`` and ``settle --out`` (SPEC §6, §9).

A producer is a pure function of an `ExportContext` (the positioned events, the position, the
settlement) returning a ``pyarrow.Table``; `PRODUCERS` lists them as ``(name, producer)`` and the
CLI writes one Parquet file per name. To export another projection, append a producer.

Every table carries, in its schema metadata, the ledger position it was built to and the rule
versions (``channel_ledger.position``, ``channel_ledger.rule_versions``). Money is
``decimal128(18, 2)``, rates ``decimal128(12, 6)``; phones in event payloads are masked
(``138****8000``) unless the context is ``unmasked``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa

from ledger.identity import resolve_identities
from ledger.privacy import masked_person
from policies.commission import Line
from projections.settlement import Positioned, Settlement, Statement

MONEY = pa.decimal128(18, 2)
RATE = pa.decimal128(12, 6)
META_PREFIX = "channel_ledger."

LINE_SCHEMA = pa.schema([
    ("month", pa.string()),
    ("payee", pa.string()),
    ("part", pa.string()),
    ("basis", pa.string()),
    ("base", MONEY),
    ("rate", RATE),
    ("amount", MONEY),
    ("customer_id", pa.string()),
    ("order_id", pa.string()),
    ("sku", pa.string()),
    ("product_class", pa.string()),
    ("channel_id", pa.string()),
    ("event_id", pa.string()),
    ("recognised_at", pa.timestamp("us", tz="UTC")),
    ("date", pa.date32()),
    ("rule", pa.string()),
    ("rule_version", pa.string()),
    ("adjustment_of", pa.string()),
    ("adjustment", pa.string()),
])

EVENT_SCHEMA = pa.schema([
    ("position", pa.int64()),
    ("event_id", pa.string()),
    ("type", pa.string()),
    ("occurred_at", pa.timestamp("us", tz="UTC")),
    ("customer_id", pa.string()),
    ("payload", pa.string()),
])


def with_metadata(table: pa.Table, metadata: dict[str, Any]) -> pa.Table:
    """``table`` with ``channel_ledger.*`` schema metadata (values as text; lists as JSON)."""
    encoded = {
        (META_PREFIX + key).encode(): (value if isinstance(value, str) else orjson.dumps(value).decode()).encode()
        for key, value in sorted(metadata.items())
    }
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **encoded})


def read_metadata(schema: pa.Schema) -> dict[str, str]:
    """The ``channel_ledger.*`` metadata of a schema, keys without the prefix."""
    return {
        k.decode()[len(META_PREFIX):]: v.decode()
        for k, v in (schema.metadata or {}).items()
        if k.decode().startswith(META_PREFIX)
    }


def lines_table(rows: Iterable[tuple[str, Line]]) -> pa.Table:
    """Statement lines as rows, each with the month of the statement it belongs to."""
    columns: dict[str, list[Any]] = {name: [] for name in LINE_SCHEMA.names}
    for month, line in rows:
        columns["month"].append(month)
        for name in LINE_SCHEMA.names[1:]:
            value = line.day if name == "date" else getattr(line, name)
            if name == "rate":
                value = Decimal(value).quantize(Decimal("0.000001"))
            columns[name].append(value)
    return pa.table(columns, schema=LINE_SCHEMA)


def statement_table(statement: Statement) -> pa.Table:
    """One statement's lines, with month, position, rule versions, digest and totals as metadata."""
    table = lines_table((statement.month, line) for line in statement.lines)
    return with_metadata(table, {
        "month": statement.month,
        "position": str(statement.position),
        "rule_versions": list(statement.rule_versions),
        "digest": statement.digest,
        "totals": {t.payee: t.as_json() for t in statement.totals},
        **({"what_if": statement.what_if} if statement.what_if else {}),
    })


def _masked_wire(wire: dict[str, Any], unmasked: bool) -> dict[str, Any]:
    for key in ("person", "survivor", "merged"):
        if key in wire:
            wire[key] = masked_person(wire[key], unmasked)
    return wire


@dataclass
class ExportContext:
    """What producers read: the ledger's events with positions, and its settlement."""

    recorded: Sequence[Positioned]
    position: int
    settlement: Settlement
    unmasked: bool = False

    @property
    def rule_versions(self) -> list[str]:
        return list(self.settlement.book.versions)

    def metadata(self, **extra: Any) -> dict[str, Any]:
        return {"position": str(self.position), "rule_versions": self.rule_versions, **extra}


def events_producer(context: ExportContext) -> pa.Table:
    """One row per event in ledger order: position, id, type, when (UTC), customer, payload."""
    identity = resolve_identities(e for _, e in context.recorded)
    columns: dict[str, list[Any]] = {name: [] for name in EVENT_SCHEMA.names}
    for position, event in context.recorded:
        wire = _masked_wire(event.wire(), context.unmasked)
        for key in ("event_id", "type", "occurred_at"):
            wire.pop(key, None)
        columns["position"].append(position)
        columns["event_id"].append(event.event_id)
        columns["type"].append(event.type)
        columns["occurred_at"].append(event.occurred_at)
        columns["customer_id"].append(identity.customer_of(event))
        columns["payload"].append(orjson.dumps(wire, option=orjson.OPT_SORT_KEYS).decode())
    table = pa.table(columns, schema=EVENT_SCHEMA)
    return with_metadata(table, context.metadata(masked=str(not context.unmasked).lower()))


def statement_lines_producer(context: ExportContext) -> pa.Table:
    """The statement lines of every month with activity (closed months as they were closed)."""
    statements = [context.settlement.statement(m) for m in context.settlement.months_with_activity()]
    table = lines_table((s.month, line) for s in statements for line in s.lines)
    return with_metadata(table, context.metadata(
        months=[s.month for s in statements],
        digests={s.month: s.digest for s in statements},
    ))


Producer = Callable[[ExportContext], pa.Table]

PRODUCERS: list[tuple[str, Producer]] = [
    ("events", events_producer),
    ("statement_lines", statement_lines_producer),
]
