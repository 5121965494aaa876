"""Kept projections (issue 4 item 5, issue 6): settlement parts stored beside the events, with
the position they were built to, refreshed incrementally.

What is kept (in the store's own database, so PostgreSQL and SQLite work alike):

* ``channel_ledger_projection``: one row per projection — the position it was built to and its
  state (the closes it has seen, the rule versions in force);
* ``channel_ledger_part``: one row per (component, month) — that customer's share of the month's
  statement (`projections.state.Part`), lines included.

``rebuild`` recomputes both from every event: its parts go into a staging table of their own as
customers are settled, and one transaction swaps that table in for the parts and keeps the merged
statements (a crash leaves the previous projection, never half of one). ``refresh`` reads only
the events after the recorded position: the customers they touch are found through the
secondary index (their connected components, as `ledger.neighbourhood` does for one customer),
refolded, and their rows replaced; a new close refolds the customers with events between the
position its statement was built to and the close. New reference data or rule sets change every
customer's fold, so they rebuild. A refresh writes only if nobody refreshed the same projection
since it read (optimistic, like the event chain), so concurrent commands cannot interleave stale
parts.

A statement read this way is the statement `Settlement` computes from every event — same lines,
same digest (tested on both backends); `settle --month` on an up-to-date store then reads one
month's rows instead of the whole ledger.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import secrets
import sqlite3
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
from eventsourcing.persistence import OperationalError

from ledger.collector import collector_paused
from ledger.events import PolicyAdopted, SettlementClosed, parse_event
from ledger.identity import Identity, PersonKeys, Touch, index_terms, is_reference_data, touch_of
from ledger.store import LedgerStore, Recorded, StoreError, analyze_grown
from policies import NoRulesInForce, RuleBook
from projections.attribution import rule_book
from projections.directory import Directory, build_directory
from projections.settlement import Positioned, Statement
from projections.state import (
    Reference,
    closures_of,
    component_key_of,
    customer_parts,
    epoch_microseconds,
    kept_statement,
    kept_statement_state,
    month_parts,
    split,
    statement_from_parts,
    superseded_keys,
)

PROJECTION_TABLE = "channel_ledger_projection"
SWAP_ATTEMPTS = 3  # a rebuild's last transaction, when it meets another writer's locks
PART_TABLE = "channel_ledger_part"
STATEMENT_TABLE = "channel_ledger_statement"
SETTLEMENT = "settlement"
RECORD = "record"  # the rules-of-record fold ingest checks events against (`ledger.ingest`)
FORMAT = 3  # bump when the kept state's shape changes: an older one is rebuilt
WRITE_ROWS = 2000
Progress = Callable[[str, int, int | None], None]  # (stage, done, total)


class StaleProjection(Exception):
    """Another command refreshed the projection first; read again."""


@dataclass(frozen=True)
class Kept:
    """The kept settlement projection's header: its position, the closes and rule sets it has
    seen, and the reference data as of the position (so that one customer's query or one
    month's statement need not refold the group's reference data)."""

    position: int
    closes: tuple[Positioned, ...]
    policies: tuple[Positioned, ...]
    directory: Directory

    @property
    def book(self) -> RuleBook:
        return rule_book(e for _, e in self.policies)

    def state(self) -> bytes:
        return orjson.dumps({
            "format": FORMAT,
            "closes": [[p, e.wire()] for p, e in self.closes],
            "policies": [[p, e.wire()] for p, e in self.policies],
            "directory": self.directory.state(),
        })

    @classmethod
    def of(cls, position: int, state: bytes) -> Kept | None:
        data = orjson.loads(state)
        if data.get("format") != FORMAT:
            return None
        closes = tuple((p, parse_event(wire)) for p, wire in data["closes"])
        policies = tuple((p, parse_event(wire)) for p, wire in data["policies"])
        return cls(position, closes, policies, Directory.from_state(data["directory"]))


@dataclass(frozen=True)
class Refreshed:
    """What a rebuild or refresh did."""

    kind: str  # "rebuild" | "refresh" | "current"
    position: int
    events_read: int
    customers: int  # components refolded
    parts: int  # (component, month) rows written
    reason: str = ""
    workers_peak_rss_mib: tuple[float, ...] = ()  # of each worker process a rebuild forked (beside this one's)


class Projector:
    """The kept projections of one store."""

    def __init__(self, store: LedgerStore):
        self.store = store
        self.tables = _PostgresTables(store) if store.location.kind == "postgresql" else _SqliteTables(store)

    # -- state -------------------------------------------------------------------------------

    def kept(self) -> Kept | None:
        row = self.tables.header(SETTLEMENT)
        return Kept.of(*row) if row is not None else None

    def reference(self) -> Reference:
        """Every rule set and piece of reference data, through the index (not the stream)."""
        return Reference((r.position, r.event) for r in self.store.reference_data())

    # -- the rules-of-record state, kept for the next ingest -----------------------------------

    def kept_record(self, state: bool = True) -> tuple[int, bytes] | None:
        """The rules-of-record fold (`ledger.recording.RecordState.state`) an ingest kept, and
        its position: the next ingest replays only what came after it (``state`` False: the
        position alone)."""
        return self.tables.header(RECORD, state)

    def keep_record(self, position: int, state: bytes) -> None:
        """Keep a rules-of-record fold that reached ``position`` — unless a fold at least as far
        along is kept already (concurrent ingests: the furthest one stays)."""
        with self.tables.writing() as w:
            w.put_newer_header(RECORD, position, state)

    # -- rebuild -----------------------------------------------------------------------------

    def rebuild(self, progress: Progress | None = None, workers: Workers = 1) -> Refreshed:
        """See `_rebuild`. ``workers``: processes that settle customers side by side (`shares_for`)."""
        with collector_paused():
            return self._rebuild(progress, workers)

    def _rebuild(self, progress: Progress | None, workers: Workers) -> Refreshed:
        """Drop the kept projections and recompute them from every event.

        Two passes, so that memory follows what is kept, not the decoded history: the first
        decodes every event but keeps only what the identity fold needs of it, in columns
        (`_Touched`, tens of bytes an event), the reference data and the closes; identity then
        gives every event its component and where that component ends (`_components`). The
        second reads the stored rows again, holds each component's rows until its last one, and
        settles the component then, writing its parts into the staging table — split between
        processes when there are several workers (`_shared_out`; with two or more shares each
        runs in a worker, and this process only folds identity from what they hand back and
        merges the months): the first pass by ranges of positions, the second by component
        number. No process holds the parts of the whole history; the swap (`_swap_in`) merges
        one month's parts at a time."""
        tick = progress or (lambda stage, done, total: None)
        position = self.store.position()
        shares = shares_for(self.store, workers, position)
        bounds = [position * share // shares for share in range(shares + 1)]

        def read_share(store: LedgerStore, share: int, orphaned: Callable[[], bool], tick: Progress) -> _Touched:
            return _touches(store, bounds[share], bounds[share + 1], tick, orphaned)

        touched, rss = zip(*_shared_out(self.store, shares, read_share, tick, away=True))
        reference = [p for share in touched for p in share.reference]
        closes = [p for share in touched for p in share.closes]
        read = sum(share.read for share in touched)
        component, last, names = _components(touched, position, tick)
        del touched
        plan = _Plan(position, component, last, names, tuple(closes), Reference(reference))

        staging = self.tables.new_staging()

        def settle_share(store: LedgerStore, share: int, orphaned: Callable[[], bool], tick: Progress) -> tuple[int, int]:
            return _settle_share(store, plan, staging, share, shares, tick, orphaned)

        try:
            settled_shares, more_rss = zip(*_shared_out(self.store, shares, settle_share, tick, away=True))
            count = sum(written for written, _ in settled_shares)
            settled = sum(customers for _, customers in settled_shares)
            worker_rss = tuple(max(a, b) for a, b in zip(rss, more_rss)) if shares > 1 else ()
            del plan, component, settled_shares
            self._swap_in(staging, _kept_from(position, [*reference, *closes]), tick)
        except BaseException:
            self.tables.drop_staging(staging)  # nothing of this rebuild stays behind
            raise
        self.tables.analyze_rebuilt()
        return Refreshed("rebuild", position, read, settled, count, workers_peak_rss_mib=worker_rss)

    def _swap_in(self, staging: str, kept: Kept, tick: Progress) -> None:
        """One transaction: the staging table becomes the parts table, the header is written and
        every month's statement merged and kept. It takes its locks first (`_Writer.clear`); if
        it meets another writer's anyway (a lock timeout, a deadlock, SQLite busy), it is tried
        again — the staged parts are still there — rather than losing the whole rebuild."""
        for attempt in range(1, SWAP_ATTEMPTS + 1):
            try:
                with self.tables.writing() as w:
                    w.clear(staging)
                    w.put_header(SETTLEMENT, None, kept.position, kept.state())
                    self._keep_merged(w, kept, tick)
                return
            except self.tables.lock_errors:
                if attempt == SWAP_ATTEMPTS:
                    raise
                time.sleep(attempt)

    @staticmethod
    def _keep_merged(w: _Writer, kept: Kept, tick: Progress) -> None:
        """Merge and keep every month's statement from the parts just written, so no `settle`
        after a rebuild has to merge — one month's parts in memory at a time. A month no rule
        set covers is left to refuse when asked."""
        closes, book = closures_of(kept.closes), Reference(kept.policies)
        months = w.months()
        for n, month in enumerate(months, start=1):
            tick("merging statements", n, len(months))
            try:
                statement = statement_from_parts(month, month_parts(w.parts(month)), reference=book, closes=closes, position=kept.position)
            except NoRulesInForce:
                continue
            summary, lines = kept_statement_state(statement)
            w.put_statement(month, orjson.dumps(summary), lines, kept.position)

    def _fold(self, recorded: list[Positioned], position: int, tick: Progress, closes: Iterable[Positioned], reference: Reference, workers: Workers) -> tuple[dict[tuple[str, str], bytes], int]:
        """The parts of every component of ``recorded`` (shared out to workers when large)."""
        components = list(split(recorded).components.items())
        closes = list(closes)
        shares = shares_for(self.store, workers, len(recorded))

        def fold_share(store: LedgerStore, share: int, orphaned: Callable[[], bool], tick: Progress) -> dict[tuple[str, str], bytes]:
            parts: dict[tuple[str, str], bytes] = {}
            mine = components[share::shares]
            for n, (key, component) in enumerate(mine, start=1):
                for month, part in customer_parts(component, closes, reference, position).items():
                    parts[(key, month)] = orjson.dumps(part.state())
                if n % 2000 == 0:
                    tick("settling customers", n, len(mine))
                    if orphaned():
                        os._exit(3)
            return parts

        shared = _shared_out(self.store, shares, fold_share, tick)
        parts = shared[0][0]
        for more, _ in shared[1:]:
            parts.update(more)
        tick("settling customers", len(components), len(components))
        return parts, len(components)

    # -- refresh -----------------------------------------------------------------------------

    def refresh(self, progress: Progress | None = None, workers: Workers = 1) -> Refreshed:
        """Bring the kept projections up to the store's position, reading only what is new
        (``workers``: as for `rebuild`, for refolding the customers the new events touch)."""
        for _attempt in range(5):
            try:
                return self._refresh(progress, workers)
            except StaleProjection:
                continue
        raise StoreError("the settlement projection kept changing under this command; try again")

    def _refresh(self, progress: Progress | None, workers: Workers) -> Refreshed:
        kept = self.kept()
        if kept is None:
            return self.rebuild(progress, workers)
        position = self.store.position()
        if position == kept.position:
            return Refreshed("current", position, 0, 0, 0)
        with collector_paused():
            return self._catch_up(kept, position, progress, workers)

    def _catch_up(self, kept: Kept, position: int, progress: Progress | None, workers: Workers) -> Refreshed:
        new = list(self.store.read(after=kept.position, upto=position))
        if any(is_reference_data(r.event) for r in new):
            done = self.rebuild(progress, workers)
            return Refreshed("rebuild", done.position, done.events_read, done.customers, done.parts, "new rule sets or reference data")
        new_closes = [(r.position, r.event) for r in new if isinstance(r.event, SettlementClosed)]
        closes = [*kept.closes, *new_closes]
        seeds = [r for r in new if not isinstance(r.event, SettlementClosed)]
        for closed_at, event in new_closes:  # a close built before it was recorded: the gap's customers
            assert isinstance(event, SettlementClosed)
            if event.position is not None and event.position < closed_at - 1:
                seeds += [r for r in self.store.read(after=event.position, upto=closed_at) if not isinstance(r.event, SettlementClosed)]
        parts: dict[tuple[str, str], bytes] = {}
        stale: set[str] = set()
        customers = 0
        if seeds:
            component = components_of(self.store, seeds)
            recorded = [(r.position, r.event) for r in component]
            tick = progress or (lambda stage, done, total: None)
            parts, customers = self._fold(recorded, position, tick, closes, self.reference(), workers)
            # The rows these customers were kept under: their components as they stood at the
            # kept position (a late earlier lead renames a customer; a new link merges two).
            stale = superseded_keys(e for p, e in recorded if p <= kept.position)
        header = Kept(position, tuple(closes), kept.policies, kept.directory)
        with self.tables.writing() as w:
            w.put_header(SETTLEMENT, kept.position, header.position, header.state())
            touched = w.drop_components(stale) | {month for _, month in parts}
            w.drop_statements(None if new_closes else touched)
            w.put_parts(parts)
        return Refreshed("refresh", position, len(new), customers, len(parts))

    # -- reading -----------------------------------------------------------------------------

    def statement(self, month: str) -> tuple[Statement, Directory]:
        """``month``'s statement from the kept parts (refreshed first), and the reference data
        as it stands (for names)."""
        self.refresh()
        kept = self.kept()
        assert kept is not None
        closes = closures_of(kept.closes)
        summary = self.tables.statement(month)
        if summary is not None:
            state = orjson.loads(summary)

            def lines() -> bytes:  # fetched only if someone reads the lines (while the store is open)
                found = self.tables.statement_lines(month, summary)
                if found is None:
                    raise StoreError(f"the statement of {month} changed while it was being read; run the command again")
                return found

            return kept_statement(month, state, lines, closes=closes, position=kept.position), kept.directory
        parts = month_parts(self.tables.parts(month))
        statement = statement_from_parts(month, parts, reference=Reference(kept.policies), closes=closes, position=kept.position)
        with self.tables.writing() as w:  # kept for the next reader, unless a refresh moved on meanwhile
            summary, lines = kept_statement_state(statement)
            w.put_statement(month, orjson.dumps(summary), lines, kept.position)
        return statement, kept.directory

    def snapshot(self) -> tuple[RuleBook, Directory] | None:
        """The rule book and reference data as kept — if no rule set or reference data was
        recorded since (then a query must read them from the events)."""
        kept = self.kept()
        if kept is None or self.store.newest("d:") > kept.position:
            return None
        return kept.book, kept.directory


def _kept_from(position: int, recorded: list[Positioned]) -> Kept:
    closes = tuple((p, e) for p, e in recorded if isinstance(e, SettlementClosed))
    policies = tuple((p, e) for p, e in recorded if isinstance(e, PolicyAdopted))
    directory = build_directory(e for _, e in recorded if is_reference_data(e))
    return Kept(position, closes, policies, directory)


def components_of(store: LedgerStore, seeds: list[Recorded]) -> list[Recorded]:
    """The connected components (without reference data) of ``seeds``, through the index."""
    found: dict[int, Recorded] = {r.position: r for r in seeds}
    frontier = {t for r in seeds for t in index_terms(r.event) if t[:2] in ("k:", "o:", "a:", "t:")}
    seen: set[str] = set()
    while frontier:
        seen |= frontier
        positions = store.find(frontier) - set(found)
        frontier = set()
        for r in store.read_at(positions):
            found[r.position] = r
            frontier.update(t for t in index_terms(r.event) if t[:2] in ("k:", "o:", "a:", "t:") and t not in seen)
    return sorted(found.values(), key=lambda r: r.position)


# --- the tables -------------------------------------------------------------------------------


class _Writer:
    def __init__(self, cursor: Any, tables: Any):
        self.c = cursor
        self.t = tables

    def clear(self, staging: str | None = None) -> None:
        """Drop and recreate the tables (a rebuild also brings an older layout up to date); with
        ``staging``, that table of parts (`_Tables.new_staging`) becomes the parts table. The
        rules-of-record fold an ingest kept stays: it is the ingest's, not derived by settlement
        rules, and a fold kept by other code is not restored (`RecordState.FORMAT`) — so a
        rebuild does not cost the next ingest a replay of the whole store (30 s at a million
        events)."""
        mark = self.t.mark
        self.t.lock_all(self.c)
        self.c.execute(f"SELECT position, state FROM {self.t.header_table} WHERE name = {mark}", (RECORD,))
        record = self.c.fetchone()
        for table in (self.t.parts_table, self.t.header_table, self.t.statement_table):
            self.c.execute(f"DROP TABLE IF EXISTS {table}")
        if staging is not None:
            self.t.rename_staging(self.c, staging)
        for statement in self.t.ddl():
            self.c.execute(statement)
        if record is not None:
            position, state = (record["position"], record["state"]) if isinstance(record, dict) else record
            self.c.execute(f"INSERT INTO {self.t.header_table} (name, position, state) VALUES ({mark}, {mark}, {mark})", (RECORD, position, state))

    def months(self) -> list[str]:
        """The months that have parts, in order."""
        return self.t.months_in(self.c)

    def parts(self, month: str) -> list[bytes]:
        return self.t.parts_in(self.c, month)

    def put_header(self, name: str, expected: int | None, position: int, state: bytes) -> None:
        """Write the header; ``expected``: the position this refresh started from (None: a rebuild)."""
        mark = self.t.mark
        if expected is None:
            self.c.execute(f"DELETE FROM {self.t.header_table} WHERE name = {mark}", (name,))
            self.c.execute(f"INSERT INTO {self.t.header_table} (name, position, state) VALUES ({mark}, {mark}, {mark})", (name, position, state))
            return
        self.c.execute(
            f"UPDATE {self.t.header_table} SET position = {mark}, state = {mark} WHERE name = {mark} AND position = {mark}",
            (position, state, name, expected),
        )
        if self.t.changed(self.c) != 1:
            raise StaleProjection()

    def put_newer_header(self, name: str, position: int, state: bytes) -> None:
        """Write the header unless one at ``position`` or later is there (one statement: two
        writers racing for a first row must not fail on the key)."""
        h, m = self.t.header_table, self.t.mark
        self.c.execute(
            f"INSERT INTO {h} AS kept (name, position, state) VALUES ({m}, {m}, {m}) ON CONFLICT (name) DO UPDATE "
            f"SET position = excluded.position, state = excluded.state WHERE kept.position < excluded.position",
            (name, position, state),
        )

    def drop_components(self, keys: Iterable[str]) -> set[str]:
        """Delete these components' parts; returns the months they had parts in."""
        keys = sorted(keys)
        months: set[str] = set()
        for i in range(0, len(keys), WRITE_ROWS):
            months |= self.t.delete_components(self.c, keys[i : i + WRITE_ROWS])
        return months

    def drop_statements(self, months: set[str] | None) -> None:
        """Forget kept statements of these months (None: of every month)."""
        if months is None:
            self.c.execute(f"DELETE FROM {self.t.statement_table}")
            return
        for month in sorted(months):
            self.c.execute(f"DELETE FROM {self.t.statement_table} WHERE month = {self.t.mark}", (month,))

    def put_statement(self, month: str, state: bytes, lines: bytes, position: int) -> None:
        """Keep a merged statement — only if the projection is still at ``position``."""
        m = self.t.mark
        self.c.execute(f"DELETE FROM {self.t.statement_table} WHERE month = {m}", (month,))
        self.c.execute(
            f"INSERT INTO {self.t.statement_table} (month, state, lines) SELECT {m}, {m}, {m} "
            f"WHERE EXISTS (SELECT 1 FROM {self.t.header_table} WHERE name = {m} AND position = {m})",
            (month, state, lines, SETTLEMENT, position),
        )

    def put_parts(self, parts: dict[tuple[str, str], bytes]) -> None:
        rows = [(c, m, s) for (c, m), s in sorted(parts.items())]
        for i in range(0, len(rows), WRITE_ROWS):
            self.t.insert_parts(self.c, rows[i : i + WRITE_ROWS])


STAGING_PREFIX = f"{PART_TABLE}_build_"  # + when it was made (Unix seconds) + a random suffix
STAGING_ABANDONED_AFTER = 86_400  # seconds: a staging table this old belongs to a rebuild that died


class _Tables:
    """What both backends' tables do alike: the staging table a rebuild writes its parts into
    while it runs (outside any long transaction; the parts table readers see is untouched) and
    swaps in for the parts table when it is done (`_Writer.clear`). Each rebuild has its own,
    so two rebuilds at once do not mix their parts; one left by a rebuild that was killed is
    dropped by a later rebuild once it is a day old (a failing rebuild drops its own). Each
    backend gives ``writing``, ``qualified``, ``tables_named``, ``part_ddl``, ``insert_parts``,
    ``rename_staging``, ``months_in``, ``parts_in`` and ``lock_all``."""

    # How the library reports a lock it could not take (SQLite busy; PostgreSQL's lock timeout
    # or a deadlock) — and a lost connection, as worth one more try.
    lock_errors = (OperationalError,)

    def new_staging(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        name = f"{STAGING_PREFIX}{int(now)}_{secrets.token_hex(4)}"
        with self.writing() as w:
            for table in self.tables_named(w.c, STAGING_PREFIX):
                made = table.removeprefix(STAGING_PREFIX).split("_")[0]
                if made.isdigit() and int(made) < now - STAGING_ABANDONED_AFTER:
                    w.c.execute(f"DROP TABLE IF EXISTS {self.qualified(table)}")
            w.c.execute(self.part_ddl(self.qualified(name)))
        return name

    def put_staged(self, staging: str, rows: list[tuple[str, str, bytes]]) -> None:
        if rows:
            with self.writing() as w:
                self.insert_parts(w.c, rows, self.qualified(staging))

    def drop_staging(self, staging: str) -> None:
        with contextlib.suppress(Exception):  # the error that stopped the rebuild is the one to report
            with self.writing() as w:
                w.c.execute(f"DROP TABLE IF EXISTS {self.qualified(staging)}")


class _SqliteTables(_Tables):
    mark = "?"
    returning = sqlite3.sqlite_version_info >= (3, 35, 0)  # DELETE ... RETURNING (older Debian and Ubuntu ship 3.31–3.34)

    def __init__(self, store: LedgerStore):
        self.datastore = store.recorder.datastore
        self.header_table, self.parts_table, self.statement_table = PROJECTION_TABLE, PART_TABLE, STATEMENT_TABLE
        with self.datastore.transaction(commit=True) as c:
            for statement in self.ddl():
                c.execute(statement)

    def ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {PROJECTION_TABLE} (name TEXT PRIMARY KEY, position INTEGER NOT NULL, state BLOB NOT NULL)",
            self.part_ddl(PART_TABLE),
            f"CREATE INDEX IF NOT EXISTS {PART_TABLE}_month ON {PART_TABLE} (month)",
            f"CREATE TABLE IF NOT EXISTS {STATEMENT_TABLE} (month TEXT PRIMARY KEY, state BLOB NOT NULL, lines BLOB NOT NULL)",
        ]

    @staticmethod
    def part_ddl(table: str) -> str:
        return f"CREATE TABLE IF NOT EXISTS {table} (component TEXT NOT NULL, month TEXT NOT NULL, state BLOB NOT NULL, PRIMARY KEY (component, month)) WITHOUT ROWID"

    @staticmethod
    def qualified(table: str) -> str:
        return table

    @staticmethod
    def tables_named(c: Any, prefix: str) -> list[str]:
        c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return [r[0] for r in c.fetchall() if r[0].startswith(prefix)]

    @staticmethod
    def rename_staging(c: Any, staging: str) -> None:
        c.execute(f"ALTER TABLE {staging} RENAME TO {PART_TABLE}")

    def header(self, name: str, state: bool = True) -> tuple[int, bytes] | None:
        """(position, state) of a header; without ``state`` its bytes are not fetched (b"")."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT position, {'state' if state else 'NULL'} FROM {PROJECTION_TABLE} WHERE name = ?", (name,))
            row = c.fetchone()
        return (row[0], bytes(row[1]) if state else b"") if row else None

    def parts(self, month: str) -> list[bytes]:
        with self.datastore.transaction(commit=False) as c:
            return self.parts_in(c, month)

    @staticmethod
    def months_in(c: Any) -> list[str]:
        c.execute(f"SELECT DISTINCT month FROM {PART_TABLE} ORDER BY month")
        return [r[0] for r in c.fetchall()]

    @staticmethod
    def parts_in(c: Any, month: str) -> list[bytes]:
        c.execute(f"SELECT state FROM {PART_TABLE} WHERE month = ? ORDER BY component", (month,))
        return [bytes(r[0]) for r in c.fetchall()]

    def statement(self, month: str) -> bytes | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT state FROM {STATEMENT_TABLE} WHERE month = ?", (month,))
            row = c.fetchone()
        return bytes(row[0]) if row else None

    def statement_lines(self, month: str, state: bytes) -> bytes | None:
        """The kept statement's lines — if it is still the one whose summary is ``state``."""
        with self.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT lines FROM {STATEMENT_TABLE} WHERE month = ? AND state = ?", (month, state))
            row = c.fetchone()
        return bytes(row[0]) if row else None

    @contextmanager
    def writing(self) -> Iterator[_Writer]:
        with self.datastore.transaction(commit=True) as c:
            yield _Writer(c, self)

    @staticmethod
    def update_statistics(rows: int) -> bool:
        return False  # see `LedgerStore.update_statistics`

    @staticmethod
    def analyze_rebuilt() -> None:
        """SQLite plans without statistics (see `LedgerStore.update_statistics`)."""

    @staticmethod
    def lock_all(c: Any) -> None:
        """A write first, so the transaction takes the write lock now (waiting for other writers
        as long as the store's lock timeout) instead of failing when a read in it would have to
        turn into a write after someone else wrote."""
        c.execute(f"UPDATE {PROJECTION_TABLE} SET position = position WHERE name = ?", (RECORD,))

    @staticmethod
    def changed(c: Any) -> int:
        c.execute("SELECT changes()")
        return int(c.fetchone()[0])

    def delete_components(self, c: Any, keys: list[str]) -> set[str]:
        marks = ",".join("?" * len(keys))
        if self.returning:  # one statement a batch: half the time of SELECT, then DELETE (a refresh at 1M: 0.55 → 0.30 s)
            c.execute(f"DELETE FROM {PART_TABLE} WHERE component IN ({marks}) RETURNING month", keys)
            return {r[0] for r in c.fetchall()}
        c.execute(f"SELECT DISTINCT month FROM {PART_TABLE} WHERE component IN ({marks})", keys)
        months = {r[0] for r in c.fetchall()}
        c.execute(f"DELETE FROM {PART_TABLE} WHERE component IN ({marks})", keys)
        return months

    @staticmethod
    def insert_parts(c: Any, rows: list[tuple[str, str, bytes]], table: str | None = None) -> None:
        c.executemany(f"INSERT OR REPLACE INTO {table or PART_TABLE} (component, month, state) VALUES (?, ?, ?)", rows)


class _PostgresTables(_Tables):
    mark = "%s"

    def __init__(self, store: LedgerStore):
        self.datastore = store.recorder.datastore
        schema = self.datastore.schema
        self.header_table = f'"{schema}".{PROJECTION_TABLE}'
        self.parts_table = f'"{schema}".{PART_TABLE}'
        self.statement_table = f'"{schema}".{STATEMENT_TABLE}'
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            curs.execute("SELECT to_regclass(%s) IS NOT NULL AS made", (self.statement_table,))
            if curs.fetchone()["made"]:
                return  # one round trip per command, not a lock and four DDL statements
            curs.execute("SELECT pg_advisory_xact_lock(hashtext('channel_ledger_projection_ddl'))")
            for statement in self.ddl():
                curs.execute(statement)

    def ddl(self) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {self.header_table} (name text PRIMARY KEY, position bigint NOT NULL, state bytea NOT NULL)",
            self.part_ddl(self.parts_table),
            f"CREATE INDEX IF NOT EXISTS {PART_TABLE}_month ON {self.parts_table} (month)",
            f"CREATE TABLE IF NOT EXISTS {self.statement_table} (month text PRIMARY KEY, state bytea NOT NULL, lines bytea NOT NULL)",
        ]

    @staticmethod
    def part_ddl(table: str) -> str:
        return f"CREATE TABLE IF NOT EXISTS {table} (component text NOT NULL, month text NOT NULL, state bytea NOT NULL, PRIMARY KEY (component, month))"

    def qualified(self, table: str) -> str:
        return f'"{self.datastore.schema}".{table}'

    def tables_named(self, c: Any, prefix: str) -> list[str]:
        c.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.datastore.schema,))
        return [r["tablename"] for r in c.fetchall() if r["tablename"].startswith(prefix)]

    def rename_staging(self, c: Any, staging: str) -> None:
        c.execute(f"ALTER TABLE {self.qualified(staging)} RENAME TO {PART_TABLE}")
        c.execute(f"ALTER TABLE {self.parts_table} RENAME CONSTRAINT {staging}_pkey TO {PART_TABLE}_pkey")

    # Rows with bytea are fetched in binary (``binary=True``): psycopg's text format sends them
    # hex-encoded, at twice their size — 146 MB instead of 73 for the 1M demo's busiest month.

    def header(self, name: str, state: bool = True) -> tuple[int, bytes] | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT position, {'state' if state else 'NULL AS state'} FROM {self.header_table} WHERE name = %s", (name,), binary=True)
            row = curs.fetchone()
        return (row["position"], bytes(row["state"]) if state else b"") if row else None

    def parts(self, month: str) -> list[bytes]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            return self.parts_in(curs, month)

    def months_in(self, c: Any) -> list[str]:
        c.execute(f"SELECT DISTINCT month FROM {self.parts_table} ORDER BY month")
        return [r["month"] for r in c.fetchall()]

    def parts_in(self, c: Any, month: str) -> list[bytes]:
        c.execute(f"SELECT state FROM {self.parts_table} WHERE month = %s ORDER BY component", (month,), binary=True)
        return [bytes(r["state"]) for r in c.fetchall()]

    def statement(self, month: str) -> bytes | None:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT state FROM {self.statement_table} WHERE month = %s", (month,), binary=True)
            row = curs.fetchone()
        return bytes(row["state"]) if row else None

    def statement_lines(self, month: str, state: bytes) -> bytes | None:
        """The kept statement's lines — if it is still the one whose summary is ``state``."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT lines FROM {self.statement_table} WHERE month = %s AND state = %s", (month, state), binary=True)
            row = curs.fetchone()
        return bytes(row["lines"]) if row else None

    @contextmanager
    def writing(self) -> Iterator[_Writer]:
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            yield _Writer(curs, self)

    def update_statistics(self, rows: int) -> bool:
        """Let the planner see the parts (``rows`` of them) if it has not yet — `LedgerStore.update_statistics`."""
        return analyze_grown(self.datastore, [self.parts_table, self.statement_table], rows)

    def analyze_rebuilt(self) -> None:
        """After a rebuild the tables are new: ANALYZE them. Not `update_statistics`: building
        the month index over the swapped-in parts already told the planner their row count,
        without any statistics of their columns."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"ANALYZE {self.parts_table}, {self.statement_table}")

    def lock_all(self, c: Any) -> None:
        """The three tables, in the order a refresh writes them (header first), so a rebuild's
        swap and a refresh wait for each other instead of deadlocking."""
        c.execute(f"LOCK TABLE {self.header_table}, {self.parts_table}, {self.statement_table} IN ACCESS EXCLUSIVE MODE")

    @staticmethod
    def changed(c: Any) -> int:
        return int(c.rowcount)

    def delete_components(self, c: Any, keys: list[str]) -> set[str]:
        c.execute(f"DELETE FROM {self.parts_table} WHERE component = ANY(%s) RETURNING month", (keys,))
        return {r["month"] for r in c.fetchall()}

    def insert_parts(self, c: Any, rows: list[tuple[str, str, bytes]], table: str | None = None) -> None:
        c.execute(
            f"INSERT INTO {table or self.parts_table} (component, month, state) SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[]) "
            "ON CONFLICT (component, month) DO UPDATE SET state = EXCLUDED.state",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )


# --- settling components, in one process or several ------------------------------------------

MAX_WORKERS = 4
PARALLEL_FROM = 50_000  # events: below this a worker's start-up costs more than it saves


Workers = int | Literal["auto"]  # processes; "auto": `shares_for`


def shares_for(store: LedgerStore, workers: Workers, events: int) -> int:
    """How many processes fold ``events`` events. A number is taken as given; ``"auto"`` (what
    ``rebuild`` and ``refresh`` on the command line ask for) is ``CHANNEL_LEDGER_WORKERS`` or
    one per core, up to `MAX_WORKERS`, once there are `PARALLEL_FROM` events to gain on. Library
    callers (``settle``, the service) default to 1: forking from inside a threaded server or
    under a live progress display is not theirs to decide. A store only this process can see (an
    in-memory SQLite database) is always folded here."""
    if store.location.kind == "sqlite" and ":memory:" in store.location.env.get("SQLITE_DBNAME", ""):
        return 1
    if workers != "auto":
        return max(1, int(workers))
    if events < PARALLEL_FROM:
        return 1
    configured = os.environ.get("CHANNEL_LEDGER_WORKERS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise StoreError(f"CHANNEL_LEDGER_WORKERS must be a whole number, not {configured!r}") from None
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@dataclass(frozen=True)
class _Plan:
    """What the first pass of a rebuild learnt: each position's component number (-1: not a
    customer's event), each component's last position and key, and the closes and reference
    data every component is settled with."""

    position: int
    component: array
    last: array
    names: list[str]
    closes: tuple[Positioned, ...]
    reference: Reference


def _silent(stage: str, done: int, total: int | None) -> None:
    """The progress of a worker process: only the first share reports."""


class _Touched:
    """The first pass over one range of positions: what the identity fold needs of each
    customer's event, in columns — about 60 bytes an event (8 each for position and moment, 4
    for each of four numbers, the id in a pyarrow string array), where a `Touch` object took
    about 450 and the fold's map of every event to its customer about 150 more — and the
    reference data and the closes, whole (they are few). Each distinct person (identity keys)
    and reference is held once, in ``people`` and ``texts``; the columns point into them (-1:
    none)."""

    CHUNK = 65_536  # event ids gathered into one pyarrow array

    def __init__(self) -> None:
        self.positions = array("q")
        self.moments = array("q")  # occurred_at as UTC microseconds: ordered as the instants are
        self.event_ids: list[Any] = []  # pyarrow string arrays
        self._ids: list[str] = []
        self.person = array("i")  # the person the event names; a merge's survivor
        self.merged = array("i")  # a merge's merged person
        self.defines = array("i")  # the order, appointment or ticket the event creates
        self.refers = array("i")  # the one it refers to (`Touch.refers`)
        self.people: dict[PersonKeys, int] = {}
        self.texts: dict[str, int] = {}
        self.reference: list[Positioned] = []
        self.closes: list[Positioned] = []
        self.read = 0

    def add(self, position: int, touch: Touch) -> None:
        moment, event_id = touch.key
        self.positions.append(position)
        self.moments.append(epoch_microseconds(moment))
        self._ids.append(event_id)
        if len(self._ids) == self.CHUNK:
            self.finish()
        people = [self._person(person) for person in touch.people]
        self.person.append(people[0] if people else -1)
        self.merged.append(people[1] if touch.merged else -1)
        self.defines.append(self._text(touch.defines))
        self.refers.append(self._text(touch.refers))

    def finish(self) -> None:
        import pyarrow as pa  # here, not at the top: commands that never rebuild need not load it

        if self._ids:
            self.event_ids.append(pa.array(self._ids, pa.string()))
            self._ids = []

    def release(self) -> None:
        """Let go of the columns and the tables of people and texts (`_components` took them)."""
        self.positions, self.moments = array("q"), array("q")
        self.person, self.merged, self.defines, self.refers = array("i"), array("i"), array("i"), array("i")
        self.event_ids, self.people, self.texts = [], {}, {}

    def _person(self, person: PersonKeys) -> int:
        n = self.people.get(person)
        if n is None:  # a customer's keys recur in each of its events: one copy of each string
            keys, plain = person
            person = (tuple(map(sys.intern, keys)), None if plain is None else tuple(map(sys.intern, plain)))
            n = self.people[person] = len(self.people)
        return n

    def _text(self, text: str | None) -> int:
        if text is None:
            return -1
        n = self.texts.get(text)
        if n is None:
            n = self.texts[text] = len(self.texts)
        return n


def _touches(store: LedgerStore, after: int, upto: int, tick: Progress, orphaned: Callable[[], bool]) -> _Touched:
    """What identity needs of each event in (``after``, ``upto``], the reference data and the closes."""
    done = _Touched()
    for r in store.read(after=after, upto=upto):
        event = r.event
        if isinstance(event, SettlementClosed):
            done.closes.append((r.position, event))
        elif is_reference_data(event):
            done.reference.append((r.position, event))
        else:
            done.add(r.position, touch_of(event))
        done.read += 1
        if done.read % 10000 == 0:
            tick("reading", done.read, upto - after)
            if orphaned():
                os._exit(3)
    tick("reading", done.read, upto - after)
    done.finish()
    return done


def _components(shares: Iterable[_Touched], position: int, tick: Progress) -> tuple[array, array, list[str]]:
    """Identity folded over the first pass's columns, in canonical order (occurred_at, then
    event id: the order `Identity` must see events in; sorted by pyarrow, not as Python tuples),
    and from it each position's component number (-1: no customer's event), each component's
    last position, and its key (`component_key_of`). Each share is emptied as its columns go
    into the table (`_Touched.release`), so they are not held beside the sorted copy."""
    import pyarrow as pa
    import pyarrow.compute as pc

    people: list[PersonKeys] = []
    texts: list[str] = []
    batches = []
    for share in shares:
        into_people, into_texts = len(people), len(texts)
        people.extend(share.people)  # in the order of their numbers
        texts.extend(share.texts)
        ids = pa.chunked_array(share.event_ids, pa.string()).combine_chunks()
        batches.append(pa.record_batch({
            "event_id": ids,
            "moment": _ints(share.moments, pa.int64()),
            "position": _ints(share.positions, pa.int64()),
            "person": _shifted(share.person, into_people),
            "merged": _shifted(share.merged, into_people),
            "defines": _shifted(share.defines, into_texts),
            "refers": _shifted(share.refers, into_texts),
        }))
        share.release()  # the batch has the columns now: once the sort has copied them, they go
    table = pa.Table.from_batches(batches)
    del batches
    ordered = table.take(pc.sort_indices(table, sort_keys=[("moment", "ascending"), ("event_id", "ascending")]))
    del table
    total = ordered.num_rows

    identity = Identity(keep_events=False)
    customers: dict[str, int] = {}  # customer id -> its number
    who = array("i")  # row of ``ordered`` -> the number of the customer identity gave it (-1: none)
    for batch in ordered.to_batches(max_chunksize=_Touched.CHUNK):
        rows = zip(*(batch.column(name).to_pylist() for name in ("event_id", "moment", "position", "person", "merged", "defines")))
        for event_id, moment, at, person, merged, defines in rows:
            if person < 0:
                who.append(-1)  # names nobody: its customer is its reference's, known once all is folded
                continue
            touch = Touch(
                event_id, (moment, event_id, at),  # type: ignore[arg-type]  # ordered as (datetime, id) would be
                (people[person],) if merged < 0 else (people[person], people[merged]), merged >= 0,
                texts[defines] if defines >= 0 else None,
            )
            customer = identity.observe_touch(touch)
            assert customer is not None
            who.append(customers.setdefault(customer, len(customers)))
        tick("resolving customers", len(who), total)
    del people
    roots = [identity.root(customer) for customer in customers]  # a merge re-parents customers
    del customers

    component = array("l", [-1]) * (position + 1)
    names: list[str] = []
    numbers: dict[str, int] = {}
    last: list[int] = []
    row = 0
    for batch in ordered.to_batches(max_chunksize=_Touched.CHUNK):
        for event_id, at, refers in zip(*(batch.column(name).to_pylist() for name in ("event_id", "position", "refers"))):
            w = who[row]
            row += 1
            key = roots[w] if w >= 0 else component_key_of(identity, event_id, texts[refers] if refers >= 0 else None)
            n = numbers.setdefault(key, len(names))
            if n == len(names):
                names.append(key)
                last.append(at)
            component[at] = n
            if at > last[n]:
                last[n] = at
    # The keys are the fold's own strings, scattered through the heap it used: held for the rest
    # of the rebuild, they would keep all of it resident (a third of this process at 1M events).
    # Copied out, the fold let go of, and copied back, they fit in a few pages.
    keys, ends = pa.array(names, pa.string()), array("q", last)
    del identity, roots, numbers, names, last, ordered, who, texts
    return component, ends, keys.to_pylist()


def _ints(values: array, kind: Any) -> Any:
    """A pyarrow array over an ``array``'s own buffer (no copy)."""
    import pyarrow as pa

    assert values.itemsize == kind.byte_width, (values.typecode, kind)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _shifted(values: array, by: int) -> Any:
    """Numbers into one share's ``people`` or ``texts`` as numbers into all shares' (-1 stays)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = _ints(values, pa.int32())
    return column if by == 0 else pc.if_else(pc.less(column, 0), column, pc.add(column, pa.scalar(by, pa.int32())))


def _settle_share(store: LedgerStore, plan: _Plan, staging: str, share: int, shares: int, tick: Progress, orphaned: Callable[[], bool]) -> tuple[int, int]:
    """Settle the components numbered ``share`` modulo ``shares`` and write their parts into the
    ``staging`` table as they come (`WRITE_ROWS` at a time, each write its own transaction), so
    no process holds the parts of the whole history: the stored rows are read in order, each
    component's held until its last one, then decoded and settled. Returns how many parts and
    how many components."""
    component, last, names = plan.component, plan.last, plan.names
    tables = Projector(store).tables
    rows: list[tuple[str, str, bytes]] = []
    written = 0
    waiting: dict[int, list[tuple[int, str, bytes]]] = {}
    settled = 0
    mine = len(range(share, len(names), shares))
    for row in store.read_raw(upto=plan.position):
        n = component[row[0]]
        if n < 0 or n % shares != share:
            continue
        held = waiting.setdefault(n, [])
        held.append((row[0], sys.intern(row[1]), row[2]))  # a topic string per row adds up
        if row[0] == last[n]:
            recorded = [(r.position, r.event) for r in store.decode(waiting.pop(n))]
            for month, part in customer_parts(recorded, plan.closes, plan.reference, plan.position).items():
                rows.append((names[n], month, orjson.dumps(part.state())))
            if len(rows) >= WRITE_ROWS:
                tables.put_staged(staging, rows)
                written, rows = written + len(rows), []
            settled += 1
            if settled % 2000 == 0:
                tick("settling customers", settled, mine)
                if orphaned():
                    os._exit(3)
    tables.put_staged(staging, rows)
    tick("settling customers", settled, mine)
    return written + len(rows), settled


T = TypeVar("T")


Work = Callable[[LedgerStore, int, Callable[[], bool], Progress], T]  # (store, share, orphaned, tick)


def _shared_out(store: LedgerStore, shares: int, work: Work[T], tick: Progress = _silent, away: bool = False) -> list[tuple[T, float]]:
    """``work(store, share, orphaned, tick)`` for every share, in share order, each with the
    peak RSS (MiB) of the process that did it (0.0 for a share done here): share 0 here, the others at
    the same time in forked workers — or, ``away``, share 0 in a worker too, so that this
    process decodes no event: decoding leaves its heap fragmented, and this process goes on to
    hold what comes next (a rebuild's identity fold and month merges). Share 0 reports progress
    (``tick``; from a worker through its pipe), the others are silent. A worker inherits what
    this process built (nothing is pickled on the way in), opens its own connection (the
    inherited one is never touched), and hands its result back through a pipe — never a file:
    results hold identity keys, which must not outlive the processes. ``orphaned()`` tells a
    worker that the rebuild which started it is gone (killed): it then exits without finishing.
    If anything fails, every worker is stopped. With one share everything runs here."""
    if shares <= 1:
        return [(work(store, 0, lambda: False, tick), 0.0)]
    context = multiprocessing.get_context("fork")
    started: list[tuple[Any, Any]] = []
    try:
        for share in range(0 if away else 1, shares):
            receiver, sender = context.Pipe(duplex=False)
            worker = context.Process(target=_worker, args=(store, work, share, sender, os.getpid()), daemon=True)
            worker.start()
            sender.close()  # the worker's end: a worker that dies is then seen as the end of the pipe
            started.append((worker, receiver))
        results = [] if away else [(work(store, 0, lambda: False, tick), 0.0)]
        for worker, receiver in started:
            try:
                outcome, payload = receiver.recv()
                while outcome == "tick":
                    tick(*payload)
                    outcome, payload = receiver.recv()
            except (EOFError, OSError):  # OSError: it died part-way through sending its answer
                outcome, payload = "failed", "it ended without an answer"
            worker.join()
            if outcome != "done":
                raise StoreError(f"a worker process failed ({payload}; exit code {worker.exitcode}); nothing was changed")
            results.append(payload)
        return results
    finally:
        for worker, receiver in started:
            if worker.is_alive():
                worker.terminate()
            worker.join()
            receiver.close()


def _worker(store: LedgerStore, work: Work[Any], share: int, sender: Any, parent: int) -> None:
    orphaned = lambda: os.getppid() != parent  # noqa: E731

    def relay(stage: str, done: int, total: int | None) -> None:
        try:
            if not orphaned():
                sender.send(("tick", (stage, done, total)))
                return
        except OSError:  # the parent is gone
            pass
        os._exit(3)

    tick = relay if share == 0 else _silent
    try:
        own = LedgerStore(store.url, key=store.key)
        try:
            result = work(own, share, orphaned, tick)
        finally:
            own.close()
    except BaseException as error:  # told to the parent, which says it once, in its own words
        with contextlib.suppress(OSError):  # unless it is gone
            sender.send(("failed", f"{type(error).__name__}: {error}".splitlines()[0][:300]))
        os._exit(1)
    if orphaned():
        os._exit(3)
    sender.send(("done", (result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
