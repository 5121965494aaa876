"""Ingest (SPEC §2.2): validate interchange lines and append them to the ledger.

The pipeline, in order: read (`ledger.sources`) → parse (`ledger.events.parse_event`) → batch →
under the current chain head: look the batch's ids up in the store (repeated or conflicting
re-sends), check each event against the rules of record (`ledger.recording`) → append the batch
(`LedgerStore.append`) → on a write conflict roll the batch back, catch up and check again.

Every rejection is kept as a `Rejection` (file, line, event_id, field, reason) and reported all
together. An event whose reference is not known yet (a session whose order comes later in the
file) waits until the end of the ingest and is rejected only if it still does not resolve.
With ``atomic`` nothing is written unless every line is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.collector import collector_paused
from ledger.events import InvalidEvent, LedgerEvent, parse_event
from ledger.projector import Projector
from ledger.recording import RecordState
from ledger.sources import SourceLine, read_source
from ledger.store import LedgerStore, Recorded, WriteConflict, wire_digest

BATCH_EVENTS = 2000
MAX_CONFLICT_RETRIES = 50


@dataclass(frozen=True)
class Rejection:
    file: str
    line: int
    event_id: str | None
    field: str
    reason: str


@dataclass
class IngestReport:
    accepted: int = 0
    repeated: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    positions: tuple[int, int] | None = None  # first and last position written
    written: bool = True  # False when --atomic refused the whole input
    accepted_leads: list[str] = field(default_factory=list)  # lead.captured ids: may be collisions

    def note_positions(self, positions: list[int]) -> None:
        if not positions:
            return
        low, high = min(positions), max(positions)
        self.positions = (low, high) if self.positions is None else (min(self.positions[0], low), max(self.positions[1], high))


@dataclass(frozen=True)
class Candidate:
    """A well-formed event waiting to be recorded, with where it came from."""

    file: str
    line: int
    event: LedgerEvent
    digest: str
    wire: dict[str, Any]

    @classmethod
    def of(cls, file: str, line: int, event: LedgerEvent) -> Candidate:
        wire = event.wire()
        return cls(file, line, event, wire_digest(wire), wire)


Progress = Callable[[int], None]


def parse_lines(lines: Iterable[SourceLine], report: IngestReport) -> Iterator[Candidate]:
    """Well-formed events of the input; every malformed line goes to ``report.rejected``."""
    for source in lines:
        if source.error is not None:
            report.rejected.append(Rejection(source.file, source.line, None, "(line)", source.error))
            continue
        event_id = source.obj.get("event_id") if isinstance(source.obj, dict) else None
        event_id = event_id if isinstance(event_id, str) and len(event_id) <= 128 and event_id.isprintable() else None
        try:
            event = parse_event(source.obj)
        except InvalidEvent as invalid:
            for finding in invalid.findings:
                report.rejected.append(Rejection(source.file, source.line, event_id, finding.field, finding.reason))
            continue
        yield Candidate.of(source.file, source.line, event)


KEEP_RECORD_AFTER = 2_000  # events folded beyond the kept rules-of-record state: worth keeping anew


def load_record_state(store: LedgerStore, state: RecordState | None = None) -> RecordState:
    """Catch the rules-of-record state up with the store (everything after its position). A
    fresh state starts from the fold the last large ingest kept (`keep_record_state`), so an
    ingest into a store of a million events replays the events since, not the million."""
    state = state or RecordState()
    if state.pristine:  # never over a state that holds anything (an atomic run's held events)
        kept = Projector(store).kept_record()
        if kept is not None and kept[0] <= store.position():
            state.restore(orjson.loads(kept[1]))
    state.replay((r.position, r.event) for r in store.read(after=state.position))
    return state


def keep_record_state(store: LedgerStore, state: RecordState) -> None:
    """Keep a committed rules-of-record state for the next ingest, when it has come far enough
    since the kept one (keeping costs a write of every order's balance)."""
    projector = Projector(store)
    kept = projector.kept_record(state=False)
    if state.position - (kept[0] if kept is not None else 0) >= KEEP_RECORD_AFTER:
        projector.keep_record(state.position, orjson.dumps(state.state()))


Verdict = tuple[str, Candidate, tuple[str, str] | None]  # accepted / repeated / waiting / rejected, (field, reason)


def classify(
    batch: list[Candidate], known: dict[str, Recorded], state: RecordState, earlier: dict[str, str], same_content: Callable[[Recorded, str], bool] | None = None
) -> tuple[list[Candidate], list[Verdict]]:
    """Judge a batch under an open ``state`` transaction: a re-send of an id the store (``known``)
    or this run (``earlier``: id → digest) already holds is repeated when its content is the same
    and rejected when not (``same_content``: the store's comparison, `LedgerStore.same_content`,
    which also compares events whose personal data is sealed); every other event is admitted by the rules of record (folded into
    ``state``), waits for a reference that may still come, or is rejected."""
    accepted: list[Candidate] = []
    seen: dict[str, str] = {}
    outcome: list[Verdict] = []
    for candidate in batch:
        event_id = candidate.event.event_id
        prior = known[event_id].digest if event_id in known else seen.get(event_id, earlier.get(event_id))
        if prior is not None:
            if same_content(known[event_id], candidate.digest) if same_content and event_id in known else prior == candidate.digest:
                outcome.append(("repeated", candidate, None))
            else:
                where = f"position {known[event_id].position}" if event_id in known else "earlier in this ingest"
                outcome.append(("rejected", candidate, ("event_id", f"conflicting re-send: event_id already recorded with different content ({where})")))
            continue
        refusal = state.admit(candidate.event)
        if refusal is None:
            seen[event_id] = candidate.digest
            accepted.append(candidate)
            outcome.append(("accepted", candidate, None))
        elif refusal.unresolved:
            outcome.append(("waiting", candidate, None))
        else:
            outcome.append(("rejected", candidate, (refusal.field, refusal.reason)))
    return accepted, outcome


class Ingest:
    """One ingest run against a store: feed it candidates, then `finish`."""

    def __init__(self, store: LedgerStore, *, atomic: bool = False, progress: Progress | None = None):
        self.store = store
        self.atomic = atomic
        self.progress = progress or (lambda n: None)
        self.report = IngestReport()
        self.state = load_record_state(store)
        self.waiting: list[Candidate] = []
        self.held: list[Candidate] = []  # atomic: everything, written at the end
        self.held_digests: dict[str, str] = {}

    def feed(self, candidates: Iterable[Candidate]) -> None:
        batch: list[Candidate] = []
        for candidate in candidates:
            batch.append(candidate)
            if len(batch) >= BATCH_EVENTS:
                self._settle(batch)
                self.progress(len(batch))
                batch = []
        if batch:
            self._settle(batch)
            self.progress(len(batch))

    def finish(self) -> IngestReport:
        # Late references: retry what waited until nothing more resolves.
        while self.waiting:
            waiting, self.waiting = self.waiting, []
            before = len(waiting)
            self._settle(waiting)
            if len(self.waiting) == before:
                break
        for candidate in self.waiting:
            refusal = self._check_alone(candidate)
            self._reject(candidate, refusal[0], refusal[1])
        self.waiting = []
        if self.atomic:
            if self.report.rejected:
                self.report.written = False
                self.report.accepted = 0
            else:
                self._write_atomic()
        self.report.rejected.sort(key=lambda r: (r.file, r.line, r.field))
        if self.report.written:  # an atomic run that wrote nothing holds events that are not recorded
            keep_record_state(self.store, self.state)
        if self.report.written and self.report.accepted:
            self.store.update_statistics()  # before the collision check and the refresh that follow
        return self.report

    # -- internals -----------------------------------------------------------------------

    def _reject(self, candidate: Candidate, field_name: str, reason: str) -> None:
        self.report.rejected.append(Rejection(candidate.file, candidate.line, candidate.event.event_id, field_name, reason))

    def _check_alone(self, candidate: Candidate) -> tuple[str, str]:
        self.state.begin()
        refusal = self.state.admit(candidate.event)
        self.state.rollback()
        return (refusal.field, refusal.reason) if refusal else ("(event)", "could not be recorded")

    def _settle(self, batch: list[Candidate]) -> None:
        """Record one batch: classify against the store and the state, append, retry on conflict."""
        for _attempt in range(MAX_CONFLICT_RETRIES):
            head = self.store.head()
            load_record_state(self.store, self.state)
            known = self.store.lookup([c.event.event_id for c in batch])
            self.state.begin()
            accepted, outcome = classify(batch, known, self.state, self.held_digests, self.store.same_content)
            if self.atomic:
                self.state.commit()
                self.held.extend(accepted)
                self.held_digests.update((c.event.event_id, c.digest) for c in accepted)
                break
            try:
                positions = self.store.append([c.event for c in accepted], head, [c.digest for c in accepted], [c.wire for c in accepted])
            except WriteConflict:
                self.state.rollback()
                continue
            self.state.commit(max(positions) if positions else None)
            self.report.note_positions(positions)
            break
        else:
            raise WriteConflict(f"gave up after {MAX_CONFLICT_RETRIES} write conflicts with other writers")
        for verdict, candidate, why in outcome:
            if verdict == "accepted":
                self.report.accepted += 1
                if candidate.event.type == "lead.captured":
                    self.report.accepted_leads.append(candidate.event.event_id)
            elif verdict == "repeated":
                self.report.repeated += 1
            elif verdict == "waiting":
                self.waiting.append(candidate)
            else:
                assert why is not None
                self._reject(candidate, *why)

    def _write_atomic(self) -> None:
        for _attempt in range(MAX_CONFLICT_RETRIES):
            head = self.store.head()
            # Re-check everything under the head we write after: another writer may have moved on.
            self.state = load_record_state(self.store, RecordState())
            known = self.store.lookup([c.event.event_id for c in self.held])
            self.state.begin()
            fresh = [c for c in self.held if c.event.event_id not in known]
            refused = [(c, r) for c in fresh if (r := self.state.admit(c.event)) is not None]
            if refused:
                self.state.rollback()
                for candidate, refusal in refused:
                    self._reject(candidate, refusal.field, refusal.reason)
                self.report.written = False
                self.report.accepted = 0
                return
            try:
                positions = self.store.append([c.event for c in fresh], head, [c.digest for c in fresh], [c.wire for c in fresh])
            except WriteConflict:
                self.state.rollback()
                continue
            self.state.commit(max(positions) if positions else None)
            self.report.note_positions(positions)
            self.report.repeated += len(self.held) - len(fresh)
            self.report.accepted = len(fresh)
            return
        raise WriteConflict(f"gave up after {MAX_CONFLICT_RETRIES} write conflicts with other writers")


def ingest_files(
    store: LedgerStore,
    paths: Iterable[str],
    *,
    atomic: bool = False,
    fmt: str | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest every file in order (``-`` is stdin) as one run; see the module docstring."""
    run = Ingest(store, atomic=atomic, progress=progress)
    with collector_paused():
        for path in paths:
            run.feed(parse_lines(read_source(path, fmt), run.report))
        return run.finish()


def ingest_whole(store: LedgerStore, lines: Iterable[SourceLine], state: RecordState) -> IngestReport:
    """Record a request all or nothing, against a long-lived rules-of-record ``state`` (the
    service's: caught up with the store here, never re-read whole). Every line is judged as
    `Ingest` judges it — repeated, conflicting, refused by the rules of record, or waiting for a
    reference later in the same input — and the events are appended in one write only when no
    line is rejected; otherwise nothing is written (``written`` False). A write conflict with
    another process re-validates under the new head, as `Ingest` does."""
    report = IngestReport()
    candidates = list(parse_lines(lines, report))
    for _attempt in range(MAX_CONFLICT_RETRIES):
        head = store.head()
        load_record_state(store, state)
        known = store.lookup([c.event.event_id for c in candidates])
        state.begin()
        try:
            accepted, outcome = classify(candidates, known, state, {}, store.same_content)
            rejected = [(c, why) for verdict, c, why in outcome if verdict == "rejected" and why is not None]
            waiting = [c for verdict, c, _ in outcome if verdict == "waiting"]
            while waiting:  # references to events later in the request
                admitted = [(c, state.admit(c.event)) for c in waiting]
                accepted += [c for c, refusal in admitted if refusal is None]
                if len(waiting) == sum(1 for _, refusal in admitted if refusal is not None):
                    rejected += [(c, (r.field, r.reason)) for c, r in admitted if r is not None]
                    break
                waiting = [c for c, refusal in admitted if refusal is not None]
            report.rejected += [Rejection(c.file, c.line, c.event.event_id, *why) for c, why in rejected]
            report.repeated = sum(1 for verdict, _, _ in outcome if verdict == "repeated")
            if report.rejected:
                state.rollback()
                report.written = False
                break
            positions = store.append([c.event for c in accepted], head, [c.digest for c in accepted], [c.wire for c in accepted])
        except WriteConflict:
            state.rollback()
            continue
        except BaseException:
            state.rollback()  # the state outlives this request: never leave it half-folded
            raise
        state.commit(max(positions) if positions else None)
        if positions:
            store.update_statistics()
        report.note_positions(positions)
        report.accepted = len(accepted)
        report.accepted_leads = [c.event.event_id for c in accepted if c.event.type == "lead.captured"]
        break
    else:
        raise WriteConflict(f"gave up after {MAX_CONFLICT_RETRIES} write conflicts with other writers")
    report.rejected.sort(key=lambda r: (r.file, r.line, r.field))
    return report


def ingest_events(store: LedgerStore, events: Iterable[LedgerEvent], *, source: str = "<api>") -> IngestReport:
    """Ingest already-built events (the CLI's own writes: rule adoption, closing)."""
    run = Ingest(store)
    run.feed(Candidate.of(source, n, e) for n, e in enumerate(events, start=1))
    return run.finish()
