"""Reading interchange files (SPEC §2): JSON Lines or CSV with dotted column names, streamed.

Each physical record becomes a `SourceLine` with its file and 1-based physical line number (in a
CSV the header is line 1) and either the decoded object or the reason it could not be decoded.
Nothing here knows event types; `ledger.events.parse_event` judges the objects.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

MAX_LINE_BYTES = 1_000_000
MAX_DEPTH = 32
STRUCTURED_COLUMNS = ("items", "rules", "tags", "intake", "person", "survivor", "merged")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


# The content is guessed only when the name does not say (stdin, other suffixes): a JSON Lines
# file whose first line is broken must not be read as CSV.
_FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class SourceLine:
    file: str
    line: int
    obj: Any = None
    error: str | None = None  # why the line could not be read as an object


def read_source(path: str, fmt: str | None = None) -> Iterator[SourceLine]:
    """Stream the records of ``path`` (``-`` for stdin). ``fmt``: ``jsonl``, ``csv`` or None (guess)."""
    name = "<stdin>" if path == "-" else path
    if path == "-":
        stream: IO[bytes] = sys.stdin.buffer
        yield from _read_stream(name, stream, fmt)
        return
    with open(path, "rb") as stream:
        yield from _read_stream(name, stream, fmt or _FORMAT_BY_SUFFIX.get(Path(path).suffix.lower()))


def _read_stream(name: str, stream: IO[bytes], fmt: str | None) -> Iterator[SourceLine]:
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)  # type: ignore[arg-type]
    if fmt is None:
        head = buffered.peek(4096)[:4096].lstrip(codecs.BOM_UTF8).lstrip()
        fmt = "jsonl" if not head or head[:1] == b"{" else "csv"
    if fmt == "csv":
        yield from _read_csv(name, buffered)
    else:
        yield from _read_jsonl(name, buffered)


def read_body(name: str, data: bytes, fmt: str) -> Iterator[SourceLine]:
    """The records of a body held in memory (an HTTP request): ``fmt`` is ``json`` (one JSON
    document, which may span lines: it is record 1), ``jsonl`` or ``csv``."""
    if fmt == "json":
        if not data.strip():
            yield SourceLine(name, 1, error="empty: no event")
            return
        yield _decode_json(name, 1, data.removeprefix(codecs.BOM_UTF8))
        return
    yield from _read_stream(name, io.BytesIO(data), fmt)


def _read_jsonl(name: str, stream: IO[bytes]) -> Iterator[SourceLine]:
    for number, raw in enumerate(stream, start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if not raw.strip():
            continue
        yield _decode_json(name, number, raw)


def _decode_json(name: str, number: int, raw: bytes) -> SourceLine:
    """One JSON object (a line of JSON Lines, or a whole document) or the reason it is not one."""
    if len(raw) > MAX_LINE_BYTES:
        return SourceLine(name, number, error=f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return SourceLine(name, number, error=f"not UTF-8 (byte {error.start})")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return SourceLine(name, number, error=f"not valid JSON: {str(error).split(':')[0]}")
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        return SourceLine(name, number, error=f"nested deeper than {MAX_DEPTH} levels")
    return SourceLine(name, number, obj=obj)


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level


class _LineCounter:
    """Wraps a text stream and counts physical lines, so a CSV record knows where it started."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.lines = 0

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        line = next(self.stream)
        self.lines += 1
        return line


def _read_csv(name: str, stream: IO[bytes]) -> Iterator[SourceLine]:
    # Bytes that are not UTF-8 decode to lone surrogates (surrogateescape), so that only the
    # record holding them is rejected: a strict decoder fails a whole 8 KiB chunk at once.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    counter = _LineCounter(text)
    csv.field_size_limit(MAX_LINE_BYTES)
    # strict: a quote left open to the end of the file, or text after a closing quote, is an
    # error; without it the rest of the file silently became one cell of the record.
    reader = csv.reader(counter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as error:
        yield SourceLine(name, 1, error=f"header is not valid CSV: {error}")
        return
    if any(_NOT_UTF8.search(h) for h in header):
        yield SourceLine(name, 1, error="header is not UTF-8")
        return
    header = [h.strip() for h in header]
    named = [h for h in header if h]
    if len(set(named)) != len(named):
        twice = sorted({h for h in named if named.count(h) > 1})
        yield SourceLine(name, 1, error=f"header names a column twice: {', '.join(map(repr, twice))}")
        return
    while True:
        start = counter.lines + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield SourceLine(name, start, error=f"not valid CSV: {error}")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if any(_NOT_UTF8.search(cell) for cell in row):
            yield SourceLine(name, start, error="not UTF-8")
            continue
        if len(row) > len(header):
            yield SourceLine(name, start, error=f"{len(row)} cells but {len(header)} columns in the header")
            continue
        try:
            yield SourceLine(name, start, obj=unflatten(dict(zip(header, row))))
        except ValueError as error:
            yield SourceLine(name, start, error=str(error))


def unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """Dotted columns to nested objects: ``person.phone`` → ``{"person": {"phone": …}}``,
    ``items.0.sku`` → ``{"items": [{"sku": …}]}``. Empty cells are absent; a structured column
    (``items``, ``rules``, ``tags``…) may also hold JSON."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or value == "" or not key:
            continue
        parts = key.split(".")
        conflict = ValueError(f"column {key!r} conflicts with another column for the same field")
        if len(parts) == 1 and parts[0] in STRUCTURED_COLUMNS and value.lstrip()[:1] in ("[", "{"):
            if key in out:
                raise conflict
            try:
                out[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError(f"column {key!r} holds invalid JSON") from None
            continue
        node: Any = out
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            nxt: Any = value if last else ({} if not _is_index(parts[depth + 1]) else [])
            if isinstance(node, list):
                if not _is_index(part) or len(part) > 4 or int(part) > 1000:
                    raise ValueError(f"column {key!r}: {part!r} is not a list index")
                slot: Any = int(part)
                while len(node) <= slot:
                    node.append(None)
            elif isinstance(node, dict):
                slot = part
                node.setdefault(slot, None)
            else:
                raise conflict
            if node[slot] is None:
                node[slot] = nxt
            elif last:
                raise conflict
            node = node[slot]
    _drop_holes(out)
    return out


def _is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def _drop_holes(node: Any) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _drop_holes(value)
    elif isinstance(node, list):
        node[:] = [v for v in node if v is not None]
        for value in node:
            _drop_holes(value)
