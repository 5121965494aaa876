"""The event store: an `eventsourcing` application holding the ledger's stream (SPEC §10).

One code path for both backends: the library's SQLite and PostgreSQL persistence modules, its
``stored_events`` table and its notification sequence (the *ledger position*). What is ours:

* a small mapper for pydantic events (the 9.5.6 wheel has none): a stored event's state is the
  canonical JSON of the interchange object, its class version, its content digest and its link in
  the hash chain;
* the stream layout. Each source event is its own one-event stream ``ev:<event_id>``, so the
  database's primary key makes an ``event_id`` unique even between concurrent writers. Every write
  (one bounded chunk, or with ``atomic`` several chunks in one transaction) also appends a
  `ChainLink` to the single ``chain`` stream at the next version: writers are thereby serialised
  optimistically — two writers that validated against the same state cannot both commit, the loser
  gets `WriteConflict` and re-validates. This is what makes the record's invariants (sessions never
  beyond what was sold, refunds never above what was paid, a ticket decided once) hold across
  processes: they are cross-entity rules (a session refers to an order, a scan to an entry point),
  so the consistency boundary is the ledger, and the chain stream is its version.
* the hash chain (§10 integrity): each event carries ``sha256(previous link ‖ its digest)`` in
  ledger order, and each `ChainLink` records the head it reached.

Writes are bounded (`CHUNK_EVENTS`): one PostgreSQL statement of more than ~0.3 MB can hang in
psycopg's pipeline, so chunks are written as separate statements, never pipelined.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import (
    IntegrityError,
    Mapper,
    PersistenceError,
    StoredEvent,
)

from pydantic import ValidationError

from ledger.events import EVENT_CLASSES, LeadTriaged, LedgerEvent, upcast
from ledger.identity import index_terms
from ledger.sealing import (
    FORGOTTEN,
    NEEDS_KEY,
    SEALED,
    SEALED_FIELDS,
    WITHHELD,
    KeyConfigError,
    MasterKey,
    SealError,
    open_body,
    seal,
)

DEFAULT_STORE = "sqlite:///channel-ledger.db"
STORE_ENV = "CHANNEL_LEDGER_STORE"
CHUNK_EVENTS = 500
MAX_POSITION = 2**63 - 1  # no position is above it (a 64-bit integer on both backends)
GENESIS = "0" * 64
CHAIN_STREAM = "chain"
EVENT_STREAM_PREFIX = "ev:"
TOPIC_MODULE = "ledger.events"
CHAIN_TOPIC = "ledger.store:ChainLink"
CLASS_BY_TOPIC: dict[str, type[LedgerEvent]] = {f"{TOPIC_MODULE}:{c.__name__}": c for c in EVENT_CLASSES}
TOPIC_BY_TYPE: dict[str, str] = {c.type: f"{TOPIC_MODULE}:{c.__name__}" for c in EVENT_CLASSES}


class StoreError(Exception):
    """The store cannot be opened or used; the message is one line for a person."""


class WriteConflict(Exception):
    """Another writer appended first; re-read and re-validate."""


# --- the stored shapes -------------------------------------------------------------------


def canonical_bytes(wire: dict[str, Any]) -> bytes:
    """Canonical JSON of an interchange object: sorted keys, UTF-8, no spaces."""
    return orjson.dumps(wire, option=orjson.OPT_SORT_KEYS)


def content_digest(event: LedgerEvent) -> str:
    """SHA-256 of the event's canonical content: the idempotency comparison and the chain's input."""
    return wire_digest(event.wire())


def wire_digest(wire: dict[str, Any]) -> str:
    """`content_digest` of an event already in its wire form (``event.wire()``, with its type)."""
    return hashlib.sha256(canonical_bytes(wire)).hexdigest()


def chain_next(previous: str, digest: str) -> str:
    """The next link of the hash chain: sha256(previous link ‖ content digest)."""
    return hashlib.sha256(bytes.fromhex(previous) + bytes.fromhex(digest)).hexdigest()


@dataclass(frozen=True)
class Entry:
    """A source event as it goes into (and comes out of) the store."""

    originator_id: str
    originator_version: int
    event: LedgerEvent
    digest: str
    chain: str
    wire: dict[str, Any] | None = None  # event.wire(), when the caller has it already
    mac: str | None = None  # sealed events: the keyed digest of the plaintext content (`ledger.sealing`)


@dataclass(frozen=True)
class ChainLink:
    """One write's record in the ``chain`` stream: the head the chain reached, and how many events."""

    originator_id: str
    originator_version: int
    head: str
    count: int


@dataclass(frozen=True)
class Recorded:
    """A stored source event with its ledger position."""

    position: int
    event: LedgerEvent
    digest: str
    chain: str
    mac: str | None = None  # sealed events: the keyed digest of the plaintext content (`ledger.sealing`)


@dataclass(frozen=True)
class ChainHead:
    version: int
    hash: str


class PydanticMapper(Mapper):
    """Maps `Entry` / `ChainLink` to the library's `StoredEvent` and back (with upcasting)."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:  # type: ignore[override]
        if isinstance(domain_event, ChainLink):
            state = {"head": domain_event.head, "count": domain_event.count}
            topic = CHAIN_TOPIC
        else:
            event = domain_event.event
            wire = dict(domain_event.wire) if domain_event.wire is not None else event.wire()
            del wire["type"]
            state = {"v": type(event).class_version, "e": wire, "d": domain_event.digest, "c": domain_event.chain}
            topic = TOPIC_BY_TYPE[event.type]
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic,
            state=orjson.dumps(state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:  # type: ignore[override]
        return decode_state(stored_event.topic, stored_event.state, None, str(stored_event.originator_id), stored_event.originator_version)


def decode_state(
    topic: str, state: bytes, data_key: bytes | str | None = None, originator_id: str = "", originator_version: int = 1
) -> Any:
    """A stored row's state as an `Entry` (or a `ChainLink`): the one decoder of stored events.

    A sealed event (personal data encrypted at rest, `ledger.sealing`) is opened with
    ``data_key``, its data key unwrapped by the store (`LedgerStore.data_keys`); given a marker
    instead (`FORGOTTEN`, or None for `WITHHELD`) its personal fields show that marker. Events
    without personal data, and every event of a store without a key, ignore ``data_key``."""
    loaded = orjson.loads(state)
    if topic == CHAIN_TOPIC:
        return ChainLink(originator_id, originator_version, loaded["head"], loaded["count"])
    cls = CLASS_BY_TOPIC.get(topic)
    if cls is None:
        raise StoreError(f"stored event {originator_id} has an unknown topic {topic!r}")
    body, marker, mac, keys = loaded["e"], None, None, None
    if SEALED in body:
        mac = body[SEALED].get("mac")
        try:
            body, marker, keys = open_body(cls, body, data_key)
        except SealError as error:
            raise StoreError(str(error)) from None
    body = upcast(cls, body, loaded.get("v", 1))
    try:
        event = cls.model_validate(body)
    except ValidationError as error:  # never echo the stored values: they may be personal data
        fields = ", ".join(sorted({".".join(str(p) for p in e["loc"]) for e in error.errors(include_url=False, include_input=False)}))
        raise StoreError(f"stored event {body.get('event_id', originator_id)} ({cls.type}) does not read as one: {fields}") from None
    if keys:
        for name, stored_keys in keys.items():
            getattr(event, name).identify_by(tuple(stored_keys))  # it identifies by the keyed hashes
    if marker is not None and isinstance(event, LeadTriaged):
        event.withhold(marker)
    return Entry(originator_id, originator_version, event, loaded["d"], loaded["c"], mac=mac)


class LedgerApplication(Application):
    """The eventsourcing application that records the ledger's events."""

    name = "ChannelLedger"

    def construct_mapper(self) -> Mapper:
        return PydanticMapper(transcoder=self.factory.transcoder())


# --- store URLs --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreLocation:
    kind: str  # "sqlite" | "postgresql"
    env: dict[str, str]
    display: str


_PG_ENV_KEYS = ("POSTGRES_DBNAME", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_SCHEMA")


def parse_store_url(url: str) -> StoreLocation:
    """Read ``sqlite:///path.db`` or ``postgresql://user:pw@host:port/db?schema=s&host=/socket``."""
    parsed = urlparse(url)
    common = {"ORIGINATOR_ID_TYPE": "text", "CREATE_TABLE": "y"}
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute/path.db, as SQLAlchemy reads them.
        path = unquote(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(f"no database path in {url!r}; e.g. sqlite:///channel-ledger.db")
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path, "SQLITE_LOCK_TIMEOUT": "30", **common}
        return StoreLocation("sqlite", env, f"sqlite:///{path}")
    if parsed.scheme in ("postgresql", "postgres"):
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        dbname = parsed.path.lstrip("/") or query.get("dbname", "")
        if not dbname:
            raise StoreError(f"no database name in {_redact(url)!r}; e.g. postgresql://user@localhost:5432/ledger")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": query.get("host") or parsed.hostname or "localhost",
            "POSTGRES_PORT": str(parsed.port or query.get("port") or 5432),
            "POSTGRES_USER": unquote(parsed.username or query.get("user") or os.environ.get("PGUSER", "postgres")),
            "POSTGRES_PASSWORD": unquote(parsed.password or query.get("password") or os.environ.get("PGPASSWORD", "")),
            "POSTGRES_SCHEMA": query.get("schema", ""),
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", "10"),
            "POSTGRES_LOCK_TIMEOUT": query.get("lock_timeout", "30"),
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
            "POSTGRES_POOL_SIZE": "2",
            **common,
        }
        schema = env["POSTGRES_SCHEMA"]
        if schema and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise StoreError(f"schema {schema!r} must be a lower-case SQL identifier")
        return StoreLocation("postgresql", env, _redact(url))
    raise StoreError(f"unsupported store URL {_redact(url)!r}: use sqlite:///path.db or postgresql://user@host:port/db")


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def store_url_from(value: str | None) -> str:
    return value or os.environ.get(STORE_ENV) or DEFAULT_STORE


# --- the store ---------------------------------------------------------------------------


class LedgerStore:
    """The ledger's events in an eventsourcing application, plus bulk reads and chained writes."""

    def __init__(self, url: str, key: MasterKey | None | str = "env"):
        """Open the store at ``url``. ``key``: the master key that encrypts personal data at rest
        (`ledger.sealing`); by default the one ``CHANNEL_LEDGER_KEY(_FILE)`` names, if any."""
        self.location = parse_store_url(url)
        self.url = url  # a worker process opens the store again (`ledger.projector`)
        env = dict(self.location.env)
        try:
            if self.location.kind == "postgresql":
                with _pg_prepared(env, self.location.display):  # tables created once, one process at a time
                    self.app = LedgerApplication(env=env)
                    self.recorder: Any = self.app.recorder
                    self.backend: Any = _PostgresBackend(self.recorder)
            else:
                self.app = LedgerApplication(env=env)
                self.recorder = self.app.recorder
                self.backend = _SqliteBackend(self.recorder)
        except PersistenceError as error:
            raise StoreError(f"cannot open store {self.location.display}: {_one_line(error)}") from None
        except OSError as error:
            raise StoreError(f"cannot open store {self.location.display}: {_one_line(error)}") from None
        self.mapper: PydanticMapper = self.app.mapper  # type: ignore[assignment]
        try:
            self.key: MasterKey | None = MasterKey.from_env() if key == "env" else key  # type: ignore[assignment]
            self.sealed = self._key_matches()  # True: this store encrypts personal data at rest
        except (KeyConfigError, StoreError) as error:
            self.close()
            raise StoreError(str(error)) from None

    def _key_matches(self) -> bool:
        """Whether the store encrypts personal data; refuses a master key that is not the store's."""
        with _translated(self):
            check = self.backend.key_check()
        if check is None:
            return False
        if self.key is not None and not hmac.compare_digest(check, self.key.check):
            raise StoreError(f"the configured master key is not the one store {self.location.display} was encrypted with")
        return True

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # reads -------------------------------------------------------------------------------

    def position(self) -> int:
        """The ledger position: the highest notification id recorded (0 for an empty store)."""
        with _translated(self):
            return self.recorder.max_notification_id() or 0

    def head(self) -> ChainHead:
        with _translated(self):
            last = self.recorder.select_events(CHAIN_STREAM, desc=True, limit=1)
        if not last:
            return ChainHead(0, GENESIS)
        link = self.mapper.to_domain_event(last[0])
        return ChainHead(link.originator_version, link.head)

    def read(self, after: int = 0, upto: int | None = None, page: int = 5000, topics: Collection[str] | None = None) -> Iterator[Recorded]:
        """Source events in ledger order from position ``after`` (exclusive) to ``upto`` (inclusive);
        with ``topics``, only the events stored under those topics (the others are not decoded)."""
        rows: list[tuple[int, str, bytes]] = []
        for row in self.read_raw(after, upto, page, topics):
            rows.append(row)
            if len(rows) >= page:
                yield from self._recorded(rows)
                rows = []
        yield from self._recorded(rows)

    def decode(self, rows: Sequence[tuple[int, str, bytes]]) -> list[Recorded]:
        """Rows read with `read_raw`, decoded as `read` decodes them (sealed ones opened)."""
        return list(self._recorded(rows))

    def _recorded(self, rows: Sequence[tuple[int, str, bytes]]) -> Iterator[Recorded]:
        """Decode (position, topic, state) rows of source events, opening sealed ones."""
        keys = self.data_keys(rows)
        for position, topic, state in rows:
            if topic == CHAIN_TOPIC:
                continue
            entry = decode_state(topic, state, None if keys is None else keys.get(position, FORGOTTEN))
            yield Recorded(position, entry.event, entry.digest, entry.chain, entry.mac)

    def data_keys(self, rows: Sequence[tuple[int, str, bytes]]) -> dict[int, bytes | str] | None:
        """The data keys of the sealed events among ``rows``, by position, for `decode_state`:
        unwrapped with the master key, or `WITHHELD` without it; a forgotten event has none.
        None when no row is sealed (a store without encryption never asks the database)."""
        sealed = [position for position, _topic, state in rows if b'"~sealed":' in state]
        if not sealed:
            return None
        with _translated(self):
            wrapped = self.backend.keys_at(sealed)
        if self.key is None:
            return {position: WITHHELD for position in wrapped}
        try:
            return {position: self.key.unwrap(event_id, blob) for position, (event_id, blob) in wrapped.items()}
        except SealError as error:
            raise StoreError(str(error)) from None

    def same_content(self, recorded: Recorded, digest: str) -> bool:
        """Whether a recorded event has the content whose `content_digest` is ``digest`` (the
        idempotency check of a re-send; a sealed event compares keyed digests)."""
        if recorded.mac is None:
            return recorded.digest == digest
        if self.key is None:
            raise StoreError(NEEDS_KEY)
        return hmac.compare_digest(recorded.mac, self.key.content_mac(digest))

    def read_raw(self, after: int = 0, upto: int | None = None, page: int = 5000, topics: Collection[str] | None = None) -> Iterator[tuple[int, str, bytes]]:
        """(position, topic, state) of source events in ledger order (only those under ``topics``, if
        given), without decoding."""
        start = after
        while True:
            with _translated(self):
                rows = self.backend.rows_after(start, upto, page)
            for row in rows:
                if row[1] != CHAIN_TOPIC and (topics is None or row[1] in topics):
                    yield row
            if len(rows) < page:
                return
            start = rows[-1][0]

    def lookup(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        """The recorded events with these ids (absent ids are left out)."""
        found: dict[str, Recorded] = {}
        for i in range(0, len(event_ids), CHUNK_EVENTS):
            ids = [EVENT_STREAM_PREFIX + e for e in event_ids[i : i + CHUNK_EVENTS]]
            with _translated(self):
                rows = self.backend.select_streams(ids)
            for recorded in self._recorded(rows):
                found[recorded.event.event_id] = recorded
        return found

    def find(self, terms: Iterable[str]) -> set[int]:
        """Positions the secondary index files under any of ``terms`` (see `index_terms`)."""
        wanted = sorted(set(terms))
        found: set[int] = set()
        for i in range(0, len(wanted), CHUNK_EVENTS):
            with _translated(self):
                found.update(self.backend.positions(wanted[i : i + CHUNK_EVENTS]))
        return found

    def newest(self, term: str) -> int:
        """The highest position the secondary index files under ``term`` (0: none)."""
        with _translated(self):
            return int(self.backend.newest(term))

    def update_statistics(self) -> bool:
        """After a write: let the database's query planner see how far the ledger has grown, if
        it has grown by a tenth or more since the planner last looked (or it never has) — once an
        ingest run, not once a chunk. Returns whether it looked anew.

        PostgreSQL plans a lookup in the secondary index (``term = ANY(...)``: a customer's
        neighbourhood, ingest's collision check, a refresh) from the table's statistics; a table
        never analysed is read whole instead. Measured on a million-event store: a lookup of 500
        terms took 178 ms as a sequential scan of the two-million-row index table, 22 ms by its
        index once analysed. autovacuum analyses too, but only on its next round — after the
        commands that follow a bulk ingest — and not at all where it is switched off. SQLite plans
        by its indexes without statistics: nothing to do there."""
        with _translated(self):
            return bool(self.backend.update_statistics(self.position()))

    def reference_data(self, known: Iterable[int] = ()) -> list[Recorded]:
        """The reference data and rule sets (filed under ``d:`` in the index: read by every
        customer's fold), in ledger order — without those at the positions in ``known``."""
        return self.read_at(self.find(["d:"]) - set(known))

    def read_at(self, positions: Iterable[int]) -> list[Recorded]:
        """The source events at these positions, in ledger order."""
        wanted = sorted(set(positions))
        out: list[Recorded] = []
        for i in range(0, len(wanted), CHUNK_EVENTS):
            with _translated(self):
                rows = self.backend.rows_at(wanted[i : i + CHUNK_EVENTS])
            out.extend(self._recorded(rows))
        return sorted(out, key=lambda r: r.position)

    def reindex(self) -> int:
        """Rebuild the secondary index from the events alone; returns how many events it filed."""
        with _translated(self):
            self.backend.clear_index()
        count = 0
        batch: list[tuple[int, tuple[str, ...]]] = []
        for recorded in self.read():
            batch.append((recorded.position, index_terms(recorded.event)))
            if len(batch) >= 5000:
                with _translated(self):
                    self.backend.add_index(batch)
                count += len(batch)
                batch = []
        if batch:
            with _translated(self):
                self.backend.add_index(batch)
            count += len(batch)
        return count

    # writes ------------------------------------------------------------------------------

    def append(
        self,
        events: Sequence[LedgerEvent],
        head: ChainHead,
        digests: Sequence[str] | None = None,
        wires: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Record events after chain ``head``, in bounded chunks, all in one transaction.

        Raises `WriteConflict` when another writer moved the chain (or recorded one of the ids)
        since ``head`` was read: nothing is written then."""
        if not events:
            return []
        digests = list(digests) if digests is not None else [content_digest(e) for e in events]
        wires = list(wires) if wires is not None else [None] * len(events)
        sealing, key_check = self._sealing(events)
        data_keys: list[tuple[int, str, bytes]] = []  # (index in events, event_id, wrapped data key)
        chunks: list[list[StoredEvent]] = []
        chain, version = head.hash, head.version
        for i in range(0, len(events), CHUNK_EVENTS):
            stored: list[StoredEvent] = []
            window = slice(i, i + CHUNK_EVENTS)
            for n, (event, digest, wire) in enumerate(zip(events[window], digests[window], wires[window]), start=i):
                if sealing and SEALED_FIELDS[type(event)]:
                    assert self.key is not None
                    sealed = seal(self.key, event, wire if wire is not None else event.wire(), digest)
                    assert sealed is not None
                    for name, stored_keys in sealed.keys.items():
                        getattr(event, name).identify_by(stored_keys)  # it identifies as it will be read back
                    wire, digest = sealed.body, wire_digest(sealed.body)
                    data_keys.append((n, event.event_id, sealed.wrapped))
                chain = chain_next(chain, digest)
                entry = Entry(EVENT_STREAM_PREFIX + event.event_id, 1, event, digest, chain, wire)
                stored.append(self.mapper.to_stored_event(entry))
            version += 1
            stored.append(self.mapper.to_stored_event(ChainLink(CHAIN_STREAM, version, chain, len(stored))))
            chunks.append(stored)
        terms = [index_terms(e) for e in events]
        try:
            with _translated(self):
                positions = self.backend.insert(chunks, terms, data_keys, key_check)
        except IntegrityError:
            raise WriteConflict("another writer appended first") from None
        self.sealed = self.sealed or key_check is not None
        return [p for chunk_positions in positions for p in chunk_positions[:-1]]

    def _sealing(self, events: Sequence[LedgerEvent]) -> tuple[bool, str | None]:
        """Whether these events' personal data is sealed as they are written, and the key check to
        record when this write makes the store an encrypted one (its first personal data)."""
        if not any(SEALED_FIELDS[type(e)] for e in events):
            return False, None
        self.sealed = self.sealed or self._key_matches()  # another process may have sealed it
        if self.key is None:
            if self.sealed:
                raise StoreError(NEEDS_KEY)
            return False, None
        if self.sealed:
            return True, None
        with _translated(self):
            plaintext = self.backend.holds_personal_data()
        if plaintext:
            raise StoreError(
                f"store {self.location.display} holds personal data recorded without encryption, and it cannot be "
                "encrypted in place: record into a new store with the key, or unset the key to use this one as it is"
            )
        return True, self.key.check

    def forget_positions(self, positions: Sequence[int], customer_id: str, by: str, at: str) -> int:
        """Shred the data keys of the events at ``positions`` (crypto-shredding: their personal
        data can no longer be opened) and record who did it and when, without personal data, in
        one transaction. Returns how many data keys were shredded."""
        with _translated(self):
            return self.backend.shred(sorted(set(positions)), (at, customer_id, by))

    def forgotten(self) -> list[tuple[str, str, int, str]]:
        """The shredding log: (at, customer id, data keys shredded, by), oldest first."""
        with _translated(self):
            return self.backend.shredded()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextmanager
def _translated(store: LedgerStore) -> Iterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except PersistenceError as error:
        raise StoreError(f"store {store.location.display}: {_one_line(error)}") from None


@contextmanager
def _pg_prepared(env: dict[str, str], display: str) -> Iterator[None]:
    """Reach the server before the application does, and make opening safe between processes.

    * A direct connection first: a refused login, an unknown role or database, an unreachable
      host is reported at once and by name (the pool would only say, after its timeout, that it
      couldn't get a connection).
    * The library's DDL (CREATE TABLE/INDEX IF NOT EXISTS, CREATE OR REPLACE FUNCTION) takes a
      SHARE lock on the table without a lock timeout, and concurrent runs of it fail with "tuple
      concurrently updated". So it runs only when the table is missing, and every opening runs
      under an advisory lock held on this connection (released when it closes)."""
    import psycopg

    schema = env.get("POSTGRES_SCHEMA") or "public"
    try:
        conn = psycopg.connect(**pg_connect_args(env), autocommit=True)
    except psycopg.Error as error:
        raise StoreError(f"cannot open store {display}: {_one_line(error)}") from None
    try:
        with conn:
            conn.execute(f"SET lock_timeout = '{int(env.get('POSTGRES_LOCK_TIMEOUT') or 30)}s'")
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"channel-ledger:{schema}",))
            if env.get("POSTGRES_SCHEMA"):
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            table = f"{LedgerApplication.name.lower()}_events"  # the library's name for it
            if conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()[0] is not None:
                env["CREATE_TABLE"] = "n"
            yield
    except psycopg.Error as error:
        raise StoreError(f"cannot open store {display}: {_one_line(error)}") from None


GROWTH_BEFORE_ANALYZE = 0.1  # autovacuum's default analyze scale factor
ROWS_BEFORE_ANALYZE = 1000


def analyze_grown(datastore: Any, tables: Sequence[str], rows: int) -> bool:
    """ANALYZE ``tables`` (qualified names) when PostgreSQL has never analysed the first of them,
    or ``rows`` — its size as the caller counts it — is more than a tenth (and a thousand rows)
    beyond the size the planner last saw: autovacuum's rule, applied at once. Returns whether it
    analysed (see `LedgerStore.update_statistics`)."""
    if rows <= 0:
        return False
    with datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (tables[0],))
        seen = curs.fetchone()["reltuples"]  # -1: never analysed (nor vacuumed)
        if seen >= 0 and rows <= seen * (1 + GROWTH_BEFORE_ANALYZE) + ROWS_BEFORE_ANALYZE:
            return False
        curs.execute("ANALYZE " + ", ".join(tables))
    return True


def pg_connect_args(env: dict[str, str]) -> dict[str, Any]:
    return {
        "dbname": env["POSTGRES_DBNAME"],
        "host": env["POSTGRES_HOST"],
        "port": int(env["POSTGRES_PORT"]),
        "user": env["POSTGRES_USER"],
        "password": env.get("POSTGRES_PASSWORD") or None,
        "connect_timeout": int(env.get("POSTGRES_CONNECT_TIMEOUT", "10")),
    }


INDEX_TABLE = "channel_ledger_index"
KEYS_TABLE = "channel_ledger_keys"  # the wrapped data key of every sealed event, by position
SEALING_TABLE = "channel_ledger_sealing"  # the master key's check value: the store encrypts personal data
FORGOTTEN_TABLE = "channel_ledger_forgotten"  # who shredded which customer's keys, and when
KEY_CHECK = "key_check"


class _SqliteBackend:
    def __init__(self, recorder: Any):
        self.recorder = recorder
        self.table = recorder.events_table_name
        with recorder.datastore.transaction(commit=True) as c:
            c.execute(f"CREATE TABLE IF NOT EXISTS {INDEX_TABLE} (term TEXT NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (term, position)) WITHOUT ROWID")
            c.execute(f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} (position INTEGER PRIMARY KEY, event_id TEXT NOT NULL, wrapped BLOB NOT NULL)")
            c.execute(f"CREATE TABLE IF NOT EXISTS {SEALING_TABLE} (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            c.execute(f"CREATE TABLE IF NOT EXISTS {FORGOTTEN_TABLE} (at TEXT NOT NULL, customer_id TEXT NOT NULL, keys INTEGER NOT NULL, by TEXT NOT NULL)")

    def select_streams(self, originator_ids: list[str]) -> list[tuple[int, str, bytes]]:
        marks = ",".join("?" * len(originator_ids))
        sql = f"SELECT rowid, topic, state FROM {self.table} WHERE originator_id IN ({marks}) AND originator_version = 1"
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(sql, originator_ids)
            return [(r[0], r[1], r[2]) for r in c.fetchall()]

    def rows_at(self, positions: list[int]) -> list[tuple[int, str, bytes]]:
        marks = ",".join("?" * len(positions))
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT rowid, topic, state FROM {self.table} WHERE rowid IN ({marks})", positions)
            return [(r[0], r[1], r[2]) for r in c.fetchall()]

    def rows_after(self, after: int, upto: int | None, limit: int) -> list[tuple[int, str, bytes]]:
        """The next ``limit`` rows after ``after`` (to ``upto``), in order: what the library's
        ``select_notifications`` reads, without a `Notification` object for each row."""
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT rowid, topic, state FROM {self.table} WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?",
                (after, upto if upto is not None else MAX_POSITION, limit),
            )
            return [(r[0], r[1], r[2]) for r in c.fetchall()]

    @staticmethod
    def update_statistics(rows: int) -> bool:
        return False  # SQLite plans by its indexes without statistics

    def positions(self, terms: list[str]) -> list[int]:
        marks = ",".join("?" * len(terms))
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT position FROM {INDEX_TABLE} WHERE term IN ({marks})", terms)
            return [r[0] for r in c.fetchall()]

    def newest(self, term: str) -> int:
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT MAX(position) FROM {INDEX_TABLE} WHERE term = ?", (term,))
            return c.fetchone()[0] or 0

    def insert(
        self, chunks: Iterable[list[StoredEvent]], terms: list[tuple[str, ...]], data_keys: Sequence[tuple[int, str, bytes]] = (), key_check: str | None = None
    ) -> list[list[int]]:
        with self.recorder.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA cache_size = -65536")  # 64 MiB: the index B-tree outgrows the 2 MiB default
            out = [list(self.recorder._insert_events(c, chunk)) for chunk in chunks]
            positions = [p for chunk_positions in out for p in chunk_positions[:-1]]
            c.executemany(f"INSERT INTO {INDEX_TABLE} VALUES (?, ?)", [(t, p) for p, ts in zip(positions, terms) for t in ts])
            if data_keys:
                c.executemany(f"INSERT INTO {KEYS_TABLE} VALUES (?, ?, ?)", [(positions[n], e, w) for n, e, w in data_keys])
            if key_check is not None:
                c.execute(f"INSERT INTO {SEALING_TABLE} VALUES (?, ?) ON CONFLICT DO NOTHING", (KEY_CHECK, key_check))
            return out

    def key_check(self) -> str | None:
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT value FROM {SEALING_TABLE} WHERE name = ?", (KEY_CHECK,))
            row = c.fetchone()
            return row[0] if row else None

    def holds_personal_data(self) -> bool:
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT 1 FROM {INDEX_TABLE} WHERE term >= 'c:' AND term < 'c;' LIMIT 1")
            return c.fetchone() is not None

    def keys_at(self, positions: list[int]) -> dict[int, tuple[str, bytes]]:
        marks = ",".join("?" * len(positions))
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT position, event_id, wrapped FROM {KEYS_TABLE} WHERE position IN ({marks})", positions)
            return {r[0]: (r[1], bytes(r[2])) for r in c.fetchall()}

    def shred(self, positions: list[int], audit: tuple[str, str, str]) -> int:
        shredded = 0
        with self.recorder.datastore.transaction(commit=True) as c:
            c.execute("PRAGMA secure_delete = ON")  # overwrite the deleted keys' bytes in the file
            for i in range(0, len(positions), CHUNK_EVENTS):
                part = positions[i : i + CHUNK_EVENTS]
                c.execute(f"DELETE FROM {KEYS_TABLE} WHERE position IN ({','.join('?' * len(part))})", part)
                c.execute("SELECT changes()")
                shredded += c.fetchone()[0]
            at, customer_id, by = audit
            c.execute(f"INSERT INTO {FORGOTTEN_TABLE} VALUES (?, ?, ?, ?)", (at, customer_id, shredded, by))
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute("PRAGMA secure_delete = OFF")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # and drop the write-ahead log's copies
        return shredded

    def shredded(self) -> list[tuple[str, str, int, str]]:
        with self.recorder.datastore.transaction(commit=False) as c:
            c.execute(f"SELECT at, customer_id, keys, by FROM {FORGOTTEN_TABLE} ORDER BY rowid")
            return [(r[0], r[1], r[2], r[3]) for r in c.fetchall()]

    def clear_index(self) -> None:
        with self.recorder.datastore.transaction(commit=True) as c:
            c.execute(f"DELETE FROM {INDEX_TABLE}")

    def add_index(self, rows: list[tuple[int, tuple[str, ...]]]) -> None:
        with self.recorder.datastore.transaction(commit=True) as c:
            c.executemany(f"INSERT OR IGNORE INTO {INDEX_TABLE} VALUES (?, ?)", [(t, p) for p, ts in rows for t in ts])


class _PostgresBackend:
    def __init__(self, recorder: Any):
        self.recorder = recorder
        schema = recorder.datastore.schema
        self.qualified = f'"{schema}"."{recorder.events_table_name}"'
        self.index = f'"{schema}".{INDEX_TABLE}'
        self.keys, self.sealing, self.forgotten = (f'"{schema}".{name}' for name in (KEYS_TABLE, SEALING_TABLE, FORGOTTEN_TABLE))
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"CREATE TABLE IF NOT EXISTS {self.index} (term text NOT NULL, position bigint NOT NULL, PRIMARY KEY (term, position))")
            curs.execute(f"CREATE TABLE IF NOT EXISTS {self.keys} (position bigint PRIMARY KEY, event_id text NOT NULL, wrapped bytea NOT NULL)")
            curs.execute(f"CREATE TABLE IF NOT EXISTS {self.sealing} (name text PRIMARY KEY, value text NOT NULL)")
            curs.execute(f"CREATE TABLE IF NOT EXISTS {self.forgotten} (id bigserial PRIMARY KEY, at text NOT NULL, customer_id text NOT NULL, keys integer NOT NULL, by text NOT NULL)")

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[int, str, bytes]]:
        """(position, topic, state) rows of a query on the events table, in psycopg's binary
        format and as plain tuples: its text format sends every state hex-encoded, at twice its
        size, and builds a dict per row. Reading a million events page by page: 3.6 s with the
        library's ``select_notifications``, 1.1 s so."""
        from psycopg.rows import tuple_row

        with self.recorder.datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as curs:
            curs.execute(sql, params)
            return [(r[0], r[1], bytes(r[2])) for r in curs.fetchall()]

    def select_streams(self, originator_ids: list[str]) -> list[tuple[int, str, bytes]]:
        sql = f"SELECT notification_id, topic, state FROM {self.qualified} WHERE originator_id = ANY(%s) AND originator_version = 1"
        return self._rows(sql, (originator_ids,))

    def rows_at(self, positions: list[int]) -> list[tuple[int, str, bytes]]:
        return self._rows(f"SELECT notification_id, topic, state FROM {self.qualified} WHERE notification_id = ANY(%s)", (positions,))

    def rows_after(self, after: int, upto: int | None, limit: int) -> list[tuple[int, str, bytes]]:
        """The next ``limit`` rows after ``after`` (to ``upto``), in order: what the library's
        ``select_notifications`` reads, without a `Notification` object for each row."""
        sql = f"SELECT notification_id, topic, state FROM {self.qualified} WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
        return self._rows(sql, (after, upto if upto is not None else MAX_POSITION, limit))

    @staticmethod
    def _binary_rows(curs: Any) -> None:
        """Send this cursor's arrays to the server in binary. The library's insert passes the
        stored events as an array of its composite type with a plain ``%s``, for which psycopg
        picks its text array dumper, and so the composite's text dumper: every event's JSON state
        is quoted and escaped with regular expressions, twice (as a field, then as an array
        element) — 3.7 of 13.3 s of a 100,000-event ingest (cProfile). With the binary array
        dumper registered on this cursor alone, ``%s`` sends the bytes as they are."""
        from psycopg.types.array import ListBinaryDumper

        curs.adapters.register_dumper(list, ListBinaryDumper)

    def update_statistics(self, rows: int) -> bool:
        return analyze_grown(self.recorder.datastore, [self.qualified, self.index, self.keys], rows)

    def positions(self, terms: list[str]) -> list[int]:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT position FROM {self.index} WHERE term = ANY(%s)", (terms,))
            return [r["position"] for r in curs.fetchall()]

    def newest(self, term: str) -> int:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT MAX(position) AS newest FROM {self.index} WHERE term = %s", (term,))
            return curs.fetchone()["newest"] or 0

    def insert(
        self, chunks: Iterable[list[StoredEvent]], terms: list[tuple[str, ...]], data_keys: Sequence[tuple[int, str, bytes]] = (), key_check: str | None = None
    ) -> list[list[int]]:
        out: list[list[int]] = []
        with self.recorder.datastore.get_connection() as conn:
            with conn.transaction(), conn.cursor() as curs:
                self._binary_rows(curs)
                for chunk in chunks:
                    # The library's statements (table lock, NOTIFY, unnest insert ... RETURNING),
                    # one bounded statement at a time and outside psycopg's pipeline mode.
                    self.recorder._insert_stored_events(curs, chunk)
                    out.append([row["notification_id"] for row in curs.fetchall()])
                positions = [p for chunk_positions in out for p in chunk_positions[:-1]]
                rows = [(t, p) for p, ts in zip(positions, terms) for t in ts]
                for i in range(0, len(rows), 4 * CHUNK_EVENTS):
                    part = rows[i : i + 4 * CHUNK_EVENTS]
                    curs.execute(
                        f"INSERT INTO {self.index} (term, position) SELECT * FROM unnest(%b::text[], %b::bigint[])",
                        ([t for t, _ in part], [p for _, p in part]),
                    )
                for i in range(0, len(data_keys), CHUNK_EVENTS):
                    part_keys = data_keys[i : i + CHUNK_EVENTS]
                    curs.execute(
                        f"INSERT INTO {self.keys} (position, event_id, wrapped) SELECT * FROM unnest(%b::bigint[], %b::text[], %b::bytea[])",
                        ([positions[n] for n, _, _ in part_keys], [e for _, e, _ in part_keys], [w for _, _, w in part_keys]),
                    )
                if key_check is not None:
                    curs.execute(f"INSERT INTO {self.sealing} (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING", (KEY_CHECK, key_check))
        return out

    def key_check(self) -> str | None:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT value FROM {self.sealing} WHERE name = %s", (KEY_CHECK,))
            row = curs.fetchone()
            return row["value"] if row else None

    def holds_personal_data(self) -> bool:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT 1 AS found FROM {self.index} WHERE term >= 'c:' AND term < 'c;' LIMIT 1")
            return curs.fetchone() is not None

    def keys_at(self, positions: list[int]) -> dict[int, tuple[str, bytes]]:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT position, event_id, wrapped FROM {self.keys} WHERE position = ANY(%s)", (positions,))
            return {r["position"]: (r["event_id"], bytes(r["wrapped"])) for r in curs.fetchall()}

    def shred(self, positions: list[int], audit: tuple[str, str, str]) -> int:
        shredded = 0
        with self.recorder.datastore.get_connection() as conn:
            with conn.transaction(), conn.cursor() as curs:
                for i in range(0, len(positions), CHUNK_EVENTS):
                    curs.execute(f"DELETE FROM {self.keys} WHERE position = ANY(%s)", (positions[i : i + CHUNK_EVENTS],))
                    shredded += curs.rowcount
                at, customer_id, by = audit
                curs.execute(f"INSERT INTO {self.forgotten} (at, customer_id, keys, by) VALUES (%s, %s, %s, %s)", (at, customer_id, shredded, by))
        return shredded

    def shredded(self) -> list[tuple[str, str, int, str]]:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"SELECT at, customer_id, keys, by FROM {self.forgotten} ORDER BY id")
            return [(r["at"], r["customer_id"], r["keys"], r["by"]) for r in curs.fetchall()]

    def clear_index(self) -> None:
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(f"DELETE FROM {self.index}")

    def add_index(self, rows: list[tuple[int, tuple[str, ...]]]) -> None:
        pairs = [(t, p) for p, ts in rows for t in ts]
        with self.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                f"INSERT INTO {self.index} (term, position) SELECT * FROM unnest(%s::text[], %s::bigint[]) ON CONFLICT DO NOTHING",
                ([t for t, _ in pairs], [p for _, p in pairs]),
            )


def reset_store(url: str) -> None:
    """Delete everything a store holds (the demo's ``--replace``): the SQLite file, or the
    PostgreSQL schema named in the URL. Refuses a PostgreSQL store without its own schema."""
    location = parse_store_url(url)
    if location.kind == "sqlite":
        path = location.env["SQLITE_DBNAME"]
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        return
    schema = location.env.get("POSTGRES_SCHEMA")
    if not schema or schema == "public":
        raise StoreError("refusing to wipe a PostgreSQL store without its own schema: add ?schema=NAME to the URL")
    import psycopg

    try:
        with psycopg.connect(**pg_connect_args(location.env), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.Error as error:
        raise StoreError(f"cannot reach PostgreSQL: {_one_line(error)}") from None
