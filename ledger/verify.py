"""Tamper evidence (SPEC §10, issue 7): recompute the ledger's hash chain from the stored rows.

What the store promises (`ledger.store`), and what is checked here, row by row in ledger order:

* every source event is the only event of its stream ``ev:<event_id>`` (version 1), under a topic
  the ledger knows, and its stream names the event its content holds;
* its content digest ``d`` is ``sha256`` of the canonical JSON of its interchange object — the
  stored body ``e`` plus its ``type`` (`digest_of_stored`, the same bytes as
  `ledger.store.content_digest` of the event);
* its link ``c`` is ``sha256(previous link ‖ digest)``, starting from the genesis link;
* every write ends with a `ChainLink` row of the ``chain`` stream: versions 1, 2, … without a gap,
  each with the head the chain reached and the number of events the write recorded;
* no event comes after the last write record (a write is one transaction: a crash leaves none);
* a ``settlement.closed`` that names a ``position`` and a ``chain_head`` agrees with the chain
  at that position (a closed statement is proven to come from exactly those events).

Rows are read in bulk (pages of raw tuples from one read snapshot) and states decoded with orjson
only: no pydantic, no upcasting (a digest is over the content as it was recorded). A large store
is checked in position ranges by worker processes, each against its own stored links, and the
ranges are then stitched at their seams (`_stitch`): by induction that is the whole chain. When
anything does not check out, the chain is walked in order from just before the failing range;
the walk stops at the first break and explains it from the rows around it: a changed content, a
deleted event, events swapped (moved), an event inserted by hand (with or without a plausible
link), a link or a write record that no longer matches.

A chain without a secret key proves order and content against what it was *published* as: an
intruder who rewrites every later link and write record too leaves a self-consistent chain. The
report's ``head`` is therefore the value to keep outside the store (closed months keep it inside).
"""

from __future__ import annotations

import gc
import hashlib
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.store import (
    CHAIN_STREAM,
    CHAIN_TOPIC,
    CLASS_BY_TOPIC,
    EVENT_STREAM_PREFIX,
    GENESIS,
    LedgerStore,
    StoreError,
    canonical_bytes,
    chain_next,
    pg_connect_args,
    wire_digest,
)

PAGE_ROWS = 20_000
PARALLEL_MIN_ROWS = 200_000  # below this, one process is as fast as starting several
MAX_WORKERS = 8
RANGES_PER_WORKER = 8
DIAGNOSIS_WINDOW = 2_000  # rows read past a break to explain it
TYPE_BY_TOPIC: dict[str, str] = {topic: cls.type for topic, cls in CLASS_BY_TOPIC.items()}

# The kinds of break, in the words of the report.
CHANGED = "changed content"
DELETED = "deleted event"
SWAPPED = "swapped events"
INSERTED = "inserted event"
LINK = "link mismatch"
WRITE_RECORD = "write record mismatch"
UNKNOWN_TOPIC = "unknown topic"
ANCHOR = "closed month mismatch"


@dataclass(frozen=True)
class Break:
    """Where the chain first breaks and why: one line for a person, and the evidence."""

    position: int
    kind: str
    reason: str
    event_id: str | None = None
    detail: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify`: counts, the recomputed head, the time taken, and the first break."""

    ok: bool
    events: int  # source events checked (up to the break)
    writes: int  # write records (chain links) checked
    rows: int  # rows read
    position: int  # the last position checked
    head: str  # the chain head recomputed up to the last event checked
    chain_version: int  # the last write record's version
    anchors: int  # closed months whose chain head was checked
    seconds: float
    first_break: Break | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float(self.events)


# --- the canonical content ------------------------------------------------------------------


def digest_of_stored(event_type: str, body: dict[str, Any]) -> str:
    """The content digest of a stored event body (the state's ``e``, which lacks ``type``).

    Equal to `ledger.store.content_digest` of the event it was made from: `wire_digest` of the
    interchange object, i.e. sha256 of its canonical JSON (`canonical_bytes`: sorted keys, UTF-8,
    no spaces). The hot loops below inline the same two calls."""
    return wire_digest({**body, "type": event_type})


# --- reading the rows -----------------------------------------------------------------------

Row = tuple[int, str, int, str, bytes]  # position, originator id, version, topic, state


@dataclass(frozen=True)
class _Source:
    """Where the rows are: enough to open a connection of one's own (also in a worker process).

    SQLite: table ``events_table_name``, position = rowid. PostgreSQL: ``"schema"."table"``,
    position = notification_id."""

    kind: str
    table: str
    display: str
    sqlite_path: str | None = None
    pg_args: dict[str, Any] | None = None

    @classmethod
    def of(cls, store: LedgerStore) -> _Source:
        name = store.recorder.events_table_name
        if store.location.kind == "sqlite":
            return cls("sqlite", name, store.location.display, sqlite_path=store.location.env["SQLITE_DBNAME"])
        schema = store.recorder.datastore.schema
        return cls("postgresql", f'"{schema}"."{name}"', store.location.display, pg_args=pg_connect_args(store.location.env))

    @property
    def position_column(self) -> str:
        return "rowid" if self.kind == "sqlite" else "notification_id"

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A read-only snapshot: one transaction for everything read through it."""
        try:
            if self.kind == "sqlite":
                conn = sqlite3.connect(self.sqlite_path or "", timeout=30)
                try:
                    conn.execute("BEGIN")
                    yield conn
                finally:
                    conn.close()
            else:
                import psycopg
                from psycopg.rows import tuple_row

                with psycopg.connect(**(self.pg_args or {}), row_factory=tuple_row) as conn:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield conn
                    conn.rollback()
        except StoreError:
            raise
        except Exception as error:  # the drivers' errors, as one line
            if not _is_database_error(error):
                raise
            raise StoreError(f"store {self.display}: {_one_line(error)}") from None

    def pages(self, after: int | None = None, upto: int | None = None, page: int = PAGE_ROWS) -> Iterator[list[Row]]:
        """The rows with ``after < position <= upto`` in ledger order, ``page`` at a time."""
        pos = self.position_column
        marker = "?" if self.kind == "sqlite" else "%s"
        where, params = [], []
        if after is not None:
            where.append(f"{pos} > {marker}")
            params.append(after)
        if upto is not None:
            where.append(f"{pos} <= {marker}")
            params.append(upto)
        sql = f"SELECT {pos}, originator_id, originator_version, topic, state FROM {self.table}"
        sql += (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {pos}"
        with self._connection() as conn:
            if self.kind == "sqlite":
                curs = conn.execute(sql, params)
            else:
                curs = conn.cursor(name="ledger_verify", binary=True)
                curs.itersize = page
                curs.execute(sql, params)
            while rows := self._fetch(curs, page):
                yield rows
            curs.close()

    def _fetch(self, curs: Any, page: int) -> list[Row]:
        try:
            return curs.fetchmany(page)
        except Exception as error:
            if not _is_database_error(error):
                raise
            raise StoreError(f"store {self.display}: {_one_line(error)}") from None

    def bounds(self) -> tuple[int, int]:
        """The first and the last position (0, 0 for an empty store)."""
        pos = self.position_column
        with self._connection() as conn:
            low, high = conn.execute(f"SELECT MIN({pos}), MAX({pos}) FROM {self.table}").fetchone()
        return (low or 0, high or 0)

    def last_link_at(self, position: int) -> str | None:
        """The stored link of the last source event at or before ``position``."""
        pos = self.position_column
        marker = "?" if self.kind == "sqlite" else "%s"
        sql = f"SELECT state FROM {self.table} WHERE {pos} <= {marker} AND topic != {marker} ORDER BY {pos} DESC LIMIT 1"
        with self._connection() as conn:
            row = conn.execute(sql, (position, CHAIN_TOPIC)).fetchone()
        if row is None:
            return GENESIS
        try:
            return orjson.loads(bytes(row[0]))["c"]
        except (ValueError, KeyError, TypeError):
            return None


def _is_database_error(error: BaseException) -> bool:
    from eventsourcing.persistence import PersistenceError

    if isinstance(error, (PersistenceError, sqlite3.Error)):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg ships with the ledger
        return False
    return isinstance(error, psycopg.Error)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- the fast path: ranges checked in parallel, then stitched -------------------------------


@dataclass
class _RangeSummary:
    """What one range of positions says about itself, and what its neighbours must agree with.

    Inside the range every event's link is checked against the *stored* link of the event before
    it; stitching then checks each range's first event against the previous range's last link.
    Together that is the whole chain, by induction."""

    after: int
    upto: int
    ok: bool = False
    error: str | None = None
    rows: int = 0
    events: int = 0
    writes: int = 0
    position: int = 0
    first_digest: bytes | None = None
    first_link: str | None = None
    last_link: str | None = None
    first_record: tuple[int, int, str] | None = None  # version, count, head
    events_before_first_record: int = 0
    last_version: int = 0
    since_record: int = 0
    last_record_position: int = 0
    last_event_position: int = 0
    anchors: list[tuple[int, str, int, str]] = field(default_factory=list)


def _check_range(source: _Source, after: int, upto: int, page: int = PAGE_ROWS) -> _RangeSummary:
    """Check the rows ``after < position <= upto`` on their own (runs in a worker process)."""
    summary = _RangeSummary(after, upto)
    try:
        collecting = gc.isenabled()
        gc.disable()  # millions of short-lived dicts: the cyclic collector only costs time here
        try:
            summary.ok = _check_range_rows(summary, source.pages(after, upto, page))
        finally:
            if collecting:
                gc.enable()
    except StoreError as error:
        summary.error = str(error)
    return summary


def _check_range_rows(s: _RangeSummary, pages: Iterator[list[Row]]) -> bool:
    loads, sha256, canonical, fromhex = orjson.loads, hashlib.sha256, canonical_bytes, bytes.fromhex
    types, chain_topic, prefix = TYPE_BY_TOPIC, CHAIN_TOPIC, EVENT_STREAM_PREFIX
    link: bytes | None = None
    for rows in pages:
        s.rows += len(rows)
        for position, originator_id, version, topic, state in rows:
            try:
                if topic == chain_topic:
                    record = loads(state)
                    head, count = record["head"], record["count"]
                    if originator_id != CHAIN_STREAM:
                        return False
                    if s.first_record is None:
                        s.first_record = (version, count, head)
                        s.events_before_first_record = s.events
                        if link is not None and head != link.hex():
                            return False
                    elif version != s.last_version + 1 or count != s.since_record or link is None or head != link.hex():
                        return False
                    s.last_version, s.since_record, s.last_record_position = version, 0, position
                    s.writes += 1
                    continue
                event_type = types.get(topic)
                stored = loads(state)
                body = stored["e"]
                event_id = body["event_id"]
                if event_type is None or version != 1 or originator_id != prefix + event_id:
                    return False
                body["type"] = event_type
                digest = sha256(canonical(body)).digest()
                if digest.hex() != stored["d"]:
                    return False
                if link is None:
                    s.first_digest, s.first_link = digest, stored["c"]
                    link = fromhex(stored["c"])
                else:
                    link = sha256(link + digest).digest()
                    if link.hex() != stored["c"]:
                        return False
            except (ValueError, KeyError, TypeError):
                return False
            if event_type == "settlement.closed" and "chain_head" in body and "position" in body:
                s.anchors.append((position, body.get("month", "?"), body["position"], body["chain_head"]))
            s.events += 1
            s.since_record += 1
            s.last_event_position = position
        s.position = rows[-1][0]
    s.last_link = link.hex() if link is not None else None
    return True


@dataclass(frozen=True)
class _Stitched:
    """The ranges joined: the whole chain's counts and head, or where to walk it again in order."""

    ok: bool
    events: int = 0
    writes: int = 0
    rows: int = 0
    position: int = 0
    head: str = GENESIS
    version: int = 0
    anchors: list[tuple[int, str, int, str]] = field(default_factory=list)
    resume_after: int | None = None  # when not ok: the in-order walk starts after this position,
    resume: _Scan | None = None  # in this state of the chain


def _stitch(summaries: list[_RangeSummary]) -> _Stitched:
    """Join the ranges in ledger order. When something does not check out, say where the in-order
    walk should start again: at the range before the first one that fails (for the context)."""
    ordered = sorted(summaries, key=lambda r: r.after)
    link, version, since, position = GENESIS, 0, 0, 0
    events = writes = rows = 0
    record_position = event_position = 0
    anchors: list[tuple[int, str, int, str]] = []
    starts: list[_Scan] = []
    for i, s in enumerate(ordered):
        starts.append(
            _Scan(
                link=bytes.fromhex(link), previous_position=event_position, events=events, writes=writes, rows=rows,
                position=position, version=version, since_write=since, write_position=record_position, anchors=list(anchors),
            )
        )
        broken = not s.ok or (s.first_digest is not None and chain_next(link, s.first_digest.hex()) != s.first_link)
        if not broken and s.first_record is not None:
            record_version, count, head = s.first_record
            broken = record_version != version + 1 or count != since + s.events_before_first_record
            broken = broken or (s.events_before_first_record == 0 and head != link)
        if broken:
            j = max(i - 1, 0)
            return _Stitched(ok=False, resume_after=ordered[j].after, resume=starts[j])
        link = s.last_link or link
        if s.writes:
            version, since = s.last_version, s.since_record
        else:
            since += s.events
        position = max(position, s.position)
        events, writes, rows = events + s.events, writes + s.writes, rows + s.rows
        record_position = s.last_record_position or record_position
        event_position = s.last_event_position or event_position
        anchors += s.anchors
    if since:  # events after the last write record: let the walk name them
        return _Stitched(ok=False, resume_after=ordered[-1].after, resume=starts[-1])
    return _Stitched(ok=True, events=events, writes=writes, rows=rows, position=position, head=link, version=version, anchors=anchors)


def _worker_count(rows: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS)) if rows >= PARALLEL_MIN_ROWS else 1


def _check_in_parallel(source: _Source, low: int, high: int, workers: int, progress: Progress | None) -> _Stitched:
    """Split the positions into ranges, check them in worker processes, stitch them together."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    parts = workers * RANGES_PER_WORKER
    span = max(1, -(-(high - low + 1) // parts))
    bounds = [(start - 1, min(start - 1 + span, high)) for start in range(low, high + 1, span)]
    # fork: the workers start at once, with everything imported; they use connections of their own.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    summaries: list[_RangeSummary] = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_check_range, source, after, upto) for after, upto in bounds]
        for future in as_completed(futures):
            summary = future.result()
            if summary.error:
                for other in futures:
                    other.cancel()
                raise StoreError(summary.error)
            summaries.append(summary)
            if progress:
                progress(summary.rows)
    return _stitch(summaries)


# --- the scan -------------------------------------------------------------------------------


@dataclass
class _Scan:
    """The running state of the chain walk."""

    link: bytes = bytes.fromhex(GENESIS)
    before_previous: bytes | None = None  # the link before the previous event (insertion check)
    previous_position: int = 0
    previous_event_id: str | None = None
    events: int = 0
    writes: int = 0
    rows: int = 0
    position: int = 0
    version: int = 0  # the last write record's version
    since_write: int = 0  # events since the last write record
    write_position: int = 0  # where the last write record is
    anchors: list[tuple[int, str, int, str]] = field(default_factory=list)  # (at, month, position, head)


Progress = Callable[[int], None]


def verify(store: LedgerStore, progress: Progress | None = None, *, workers: int | None = None, page: int = PAGE_ROWS) -> VerifyReport:
    """Recompute the whole chain of ``store`` in ledger order; see the module docstring.

    A large store is checked in ranges by ``workers`` processes (default: one per CPU, up to
    `MAX_WORKERS`, from `PARALLEL_MIN_ROWS` rows on); when anything does not check out, the chain
    is walked again in order to find the first break and explain it. ``progress`` is told how
    many rows each step read (for a progress bar)."""
    started = time.perf_counter()
    source = _Source.of(store)
    low, high = source.bounds()
    workers = _worker_count(high - low + 1 if high else 0) if workers is None else workers
    if workers > 1 and high:
        stitched = _check_in_parallel(source, low, high, workers, progress)
        if not stitched.ok:  # find the first break and explain it, from just before it
            return _verify_in_order(source, started, progress, page, stitched.resume, stitched.resume_after)
        found, anchors = _check_anchors(source, stitched.anchors, stitched.position)
        return VerifyReport(
            ok=found is None,
            events=stitched.events,
            writes=stitched.writes,
            rows=stitched.rows,
            position=stitched.position,
            head=stitched.head,
            chain_version=stitched.version,
            anchors=anchors,
            seconds=time.perf_counter() - started,
            first_break=found,
        )
    return _verify_in_order(source, started, progress, page)


def _verify_in_order(
    source: _Source, started: float, progress: Progress | None, page: int, scan: _Scan | None = None, after: int | None = None
) -> VerifyReport:
    """Walk the chain row by row (from ``after``, in state ``scan``); stop at the first break and explain it."""
    scan = scan or _Scan()
    pages = source.pages(after=after, page=page)
    found: Break | None = None
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived dicts: the cyclic collector only costs time here
    try:
        for rows in pages:
            found = _scan_page(scan, rows, pages)
            if progress:
                progress(len(rows))
            if found:
                break
    finally:
        pages.close()
        if collecting:
            gc.enable()
    if found is None and scan.since_write:
        found = _unrecorded_tail(scan)
    anchors = 0
    if found is None:
        found, anchors = _check_anchors(source, scan.anchors, scan.position)
    return VerifyReport(
        ok=found is None,
        events=scan.events,
        writes=scan.writes,
        rows=scan.rows,
        position=scan.position,
        head=scan.link.hex(),
        chain_version=scan.version,
        anchors=anchors,
        seconds=time.perf_counter() - started,
        first_break=found,
    )


def _scan_page(scan: _Scan, rows: list[Row], pages: Iterator[list[Row]]) -> Break | None:
    """Check one page of rows; the hot loop (kept flat: it runs a million times)."""
    loads, sha256, canonical = orjson.loads, hashlib.sha256, canonical_bytes
    types, chain_topic, prefix = TYPE_BY_TOPIC, CHAIN_TOPIC, EVENT_STREAM_PREFIX
    link, before_previous, previous_event_id = scan.link, scan.before_previous, scan.previous_event_id
    for index, (position, originator_id, version, topic, state) in enumerate(rows):
        if topic == chain_topic:
            problem = _check_write_record(scan, link, position, originator_id, version, state)
            if problem:
                scan.link, scan.before_previous = link, before_previous
                return problem
            scan.rows += 1
            scan.position = position
            continue
        event_type = types.get(topic)
        try:
            stored = loads(state)
            body = stored["e"]
            event_id = body["event_id"]
            if event_type is None or version != 1 or originator_id != prefix + event_id:
                raise ValueError
            body["type"] = event_type  # the interchange object: the stored body and its type
            digest = sha256(canonical(body)).digest()
            if digest.hex() != stored["d"]:
                raise ValueError
            following = sha256(link + digest).digest()
            if following.hex() != stored["c"]:
                raise ValueError
        except (ValueError, KeyError, TypeError):  # orjson.JSONDecodeError is a ValueError
            scan.link, scan.before_previous = link, before_previous
            scan.previous_event_id = previous_event_id
            window = _window(rows, index, pages)
            return _diagnose(scan, window)
        if event_type == "settlement.closed" and "chain_head" in body and "position" in body:
            scan.anchors.append((position, body.get("month", "?"), body["position"], body["chain_head"]))
        before_previous, link = link, following
        previous_event_id = event_id
        scan.previous_position = position
        scan.events += 1
        scan.since_write += 1
        scan.rows += 1
        scan.position = position
    scan.link, scan.before_previous, scan.previous_event_id = link, before_previous, previous_event_id
    return None


def _check_write_record(scan: _Scan, link: bytes, position: int, originator_id: str, version: int, state: bytes) -> Break | None:
    """A `ChainLink` row: the next version, the head reached, the events the write recorded."""
    try:
        record = orjson.loads(state)
        head, count = record["head"], record["count"]
    except (ValueError, KeyError, TypeError):
        return Break(position, CHANGED, "a write record is unreadable", detail=("the chain stream's row at this position does not hold a head and a count",))
    if originator_id != CHAIN_STREAM:
        return Break(position, INSERTED, f"a row under the write-record topic belongs to stream {originator_id!r}, not {CHAIN_STREAM!r}")
    expected = scan.version + 1
    if version != expected:
        if version > expected:
            missing = f"version {expected}" if version == expected + 1 else f"versions {expected}–{version - 1}"
            reason = f"write record {missing} of the chain stream is missing (deleted): found version {version}"
            return Break(position, DELETED, reason, detail=(f"the previous write record (version {scan.version}) is at position {scan.write_position}",))
        return Break(position, SWAPPED, f"write record version {version} comes after version {scan.version}: rows are out of order")
    if count != scan.since_write:
        if count > scan.since_write:
            missing = count - scan.since_write
            reason = f"the write ending here recorded {count} events but {scan.since_write} are in the store: {missing} deleted"
            return Break(position, DELETED, reason, detail=_write_span(scan, version))
        extra = scan.since_write - count
        reason = f"the write ending here recorded {count} events but {scan.since_write} are in the store: {extra} inserted"
        return Break(position, INSERTED, reason, detail=_write_span(scan, version))
    if head != link.hex():
        return Break(
            position,
            WRITE_RECORD,
            f"write record version {version} says the chain reached {head[:16]}…, the events give {link.hex()[:16]}…",
            detail=_write_span(scan, version),
        )
    scan.version = version
    scan.writes += 1
    scan.since_write = 0
    scan.write_position = position
    return None


def _write_span(scan: _Scan, version: int) -> tuple[str, ...]:
    return (f"the write (chain version {version}) spans the positions after {scan.write_position}",)


def _unrecorded_tail(scan: _Scan) -> Break:
    n = scan.since_write
    return Break(
        scan.position,
        INSERTED,
        f"{n} event{'s' if n != 1 else ''} after the last write record (position {scan.write_position}) "
        f"belong{'' if n != 1 else 's'} to no write: inserted by hand, or the write's record was deleted",
        detail=("every write ends with a record of the events it wrote, in the same transaction",),
    )


def _check_anchors(source: _Source, anchors: list[tuple[int, str, int, str]], last: int) -> tuple[Break | None, int]:
    """Each closed month that names a chain head must agree with the (verified) chain there."""
    checked = 0
    for at, month, position, head in anchors:
        if not isinstance(position, int) or position > last:
            return Break(at, ANCHOR, f"closed month {month} names position {position}, beyond the store"), checked
        stored = source.last_link_at(position)
        if stored != head:
            shown = stored[:16] if stored else "nothing"
            return (
                Break(
                    at,
                    ANCHOR,
                    f"closed month {month} recorded chain head {head[:16]}… at position {position}; the chain there is {shown}…",
                    detail=("the events up to that position are not the ones the month was closed on",),
                ),
                checked,
            )
        checked += 1
    return None, checked


# --- explaining a break ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Decoded:
    position: int
    originator_id: str
    version: int
    topic: str
    event_type: str | None  # None for a write record or an unknown topic
    body: dict[str, Any] | None
    stored_digest: str | None
    stored_link: str | None
    digest: bytes | None  # recomputed from the content
    record: dict[str, Any] | None  # a write record's state

    @property
    def is_write_record(self) -> bool:
        return self.topic == CHAIN_TOPIC

    @property
    def event_id(self) -> str | None:
        value = self.body.get("event_id") if self.body else None
        return value if isinstance(value, str) else None

    def follows(self, link: bytes | None) -> bool:
        """Whether this row's stored link continues the chain from ``link``."""
        if link is None or self.digest is None or self.stored_link is None:
            return False
        return hashlib.sha256(link + self.digest).hexdigest() == self.stored_link

    @property
    def link_bytes(self) -> bytes | None:
        try:
            return bytes.fromhex(self.stored_link) if self.stored_link else None
        except ValueError:
            return None


def _decode(row: Row) -> _Decoded:
    position, originator_id, version, topic, state = row
    event_type = TYPE_BY_TOPIC.get(topic)
    try:
        stored = orjson.loads(state)
    except ValueError:
        stored = None
    if topic == CHAIN_TOPIC:
        return _Decoded(position, originator_id, version, topic, None, None, None, None, None, stored if isinstance(stored, dict) else None)
    body = stored.get("e") if isinstance(stored, dict) else None
    body = body if isinstance(body, dict) else None
    digest = None
    if body is not None and event_type is not None:
        try:
            digest = hashlib.sha256(canonical_bytes({**body, "type": event_type})).digest()
        except TypeError:
            digest = None
    d = stored.get("d") if isinstance(stored, dict) else None
    c = stored.get("c") if isinstance(stored, dict) else None
    return _Decoded(
        position, originator_id, version, topic, event_type, body,
        d if isinstance(d, str) else None, c if isinstance(c, str) else None, digest, None,
    )


def _window(rows: list[Row], index: int, pages: Iterator[list[Row]]) -> list[_Decoded]:
    """The breaking row and up to `DIAGNOSIS_WINDOW` rows after it, decoded."""
    raw = list(rows[index : index + DIAGNOSIS_WINDOW + 1])
    while len(raw) <= DIAGNOSIS_WINDOW:
        more = next(pages, None)
        if more is None:
            break
        raw.extend(more[: DIAGNOSIS_WINDOW + 1 - len(raw)])
    return [_decode(r) for r in raw]


def _diagnose(scan: _Scan, window: list[_Decoded]) -> Break:
    """Name what broke at ``window[0]``, the first event row that does not check out."""
    row = window[0]
    at, link = row.position, scan.link
    label = f"event {row.event_id}" if row.event_id else "the event"
    events_after = [r for r in window[1:] if not r.is_write_record]

    if row.event_type is None:
        return Break(at, UNKNOWN_TOPIC, f"a row has a topic the ledger does not know ({row.topic[:60]!r}): not written by the ledger", row.event_id)
    if row.body is None or row.digest is None:
        return Break(at, CHANGED, "a stored event is unreadable (its state is not an event body)", row.event_id)
    if not row.originator_id.startswith(EVENT_STREAM_PREFIX):
        return Break(at, INSERTED, f"an event in stream {row.originator_id[:60]!r}, which is not an event stream: inserted by hand", row.event_id)
    if row.version != 1:
        return Break(
            at, INSERTED, f"{label} is version {row.version} of its stream: each event is the only one of its stream, so it was inserted by hand", row.event_id,
            detail=(f"stream {row.originator_id}",),
        )
    if row.digest.hex() != row.stored_digest:
        detail = [f"recomputed digest {row.digest.hex()}", f"stored digest   {row.stored_digest}"]
        return Break(at, CHANGED, f"{label} ({row.event_type}) was changed: its content no longer matches its digest", row.event_id, tuple(detail))
    if row.originator_id != EVENT_STREAM_PREFIX + (row.event_id or ""):
        owner = next((r for r in events_after if r.originator_id == EVENT_STREAM_PREFIX + (row.event_id or "")), None)
        detail = (f"the row of stream {owner.originator_id} is at position {owner.position}",) if owner else ()
        return Break(
            at, SWAPPED, f"the row of stream {row.originator_id} holds the content of {label}: contents of rows were swapped or moved", row.event_id, detail,
        )

    # The content is intact: the link is what does not match. Explain it from the neighbours.
    if scan.before_previous is not None and row.follows(scan.before_previous):
        return Break(
            scan.previous_position, INSERTED,
            f"event {scan.previous_event_id} at position {scan.previous_position} is not part of the chain: the next event continues from the link before it (inserted by hand, with a plausible link)",
            scan.previous_event_id, (f"the event at position {at} ({row.event_id}) chains from the link before position {scan.previous_position}",),
        )
    successor = next((r for r in events_after if r.follows(link)), None)
    predecessor = next((r for r in events_after if row.follows(r.link_bytes)), None)
    if successor is not None and predecessor is not None:
        return Break(
            at, SWAPPED, f"events are out of order: {label} belongs after position {predecessor.position}, and the event at position {successor.position} ({successor.event_id}) belongs here",
            row.event_id, ("events were swapped (their positions exchanged)",),
        )
    if successor is not None:
        skipped = successor.position
        return Break(
            at, INSERTED, f"{label} is not part of the chain: the chain continues at position {skipped}",
            row.event_id, ("inserted by hand: its stored link does not follow from any recorded event",),
        )
    if predecessor is not None:
        return Break(
            at, SWAPPED, f"{label} belongs after position {predecessor.position}: events were moved or swapped", row.event_id,
        )
    true_link = hashlib.sha256(link + row.digest).digest()
    nxt = events_after[0] if events_after else None
    if nxt is not None and nxt.follows(true_link):
        return Break(
            at, LINK, f"the stored link of {label} was altered (the next event still chains from the true one)", row.event_id,
            (f"recomputed link {true_link.hex()}", f"stored link     {row.stored_link}"),
        )
    if not any(r.is_write_record for r in window[1:]) and len(window) <= DIAGNOSIS_WINDOW:
        return Break(
            at, INSERTED, f"{label} after the last write record belongs to no write and does not chain: inserted by hand", row.event_id,
        )
    missing = _missing_from_write(scan, window)
    intact = f"the chain is intact up to position {scan.previous_position}" if scan.previous_position else "the chain breaks at its first event"
    if missing:
        return Break(
            at, DELETED, f"{missing} event{'s are' if missing > 1 else ' is'} missing (deleted) before position {at}: {label} chains from a link no stored event produces",
            row.event_id, (intact, "the write's record counts more events than the store holds"),
        )
    if missing == 0 and nxt is not None and nxt.follows(row.link_bytes):
        return Break(
            at, CHANGED, f"{label} ({row.event_type}) was changed and its digest rewritten: its stored link was made from other content", row.event_id,
            (intact, "the write's record counts as many events as the store holds, so none was deleted"),
        )
    if nxt is not None and nxt.follows(row.link_bytes):
        return Break(
            at, DELETED, f"an event before position {at} is missing (deleted), or {label} was rewritten: it chains from a link no stored event produces",
            row.event_id, (intact,),
        )
    return Break(
        at, LINK, f"{label} does not chain from the event before it", row.event_id,
        (f"recomputed link {true_link.hex()}", f"stored link     {row.stored_link}"),
    )


def _missing_from_write(scan: _Scan, window: list[_Decoded]) -> int | None:
    """Events missing from the current write by its record's count (negative: extra events);
    None when the write's record is not in the window."""
    seen = scan.since_write
    for r in window:
        if r.is_write_record:
            count = r.record.get("count") if r.record else None
            return count - seen if isinstance(count, int) else None
        seen += 1
    return None
