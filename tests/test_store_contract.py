"""The store's contract, run on SQLite and on PostgreSQL (the same suite, one fixture)."""

from __future__ import annotations

import pytest

from ledger.events import parse_event
from ledger.store import CHAIN_TOPIC, CHUNK_EVENTS, GENESIS, ChainHead, LedgerStore, WriteConflict, chain_next, content_digest
from tests.scenario import CLINIC, scenario


def stores(n: int, prefix: str = "s"):
    return [
        parse_event({"event_id": f"{prefix}{i}", "type": "store.registered", "occurred_at": "2026-07-01T09:00:00+08:00", "store_id": f"{prefix}{i}", "name": f"店{i}"})
        for i in range(n)
    ]


def test_an_empty_store_is_at_position_zero_with_the_genesis_head(store: LedgerStore) -> None:
    assert store.position() == 0
    assert store.head() == ChainHead(0, GENESIS)
    assert list(store.read()) == []


def test_appended_events_read_back_equal_in_ledger_order(store: LedgerStore) -> None:
    events = scenario(CLINIC)
    positions = store.append(events, store.head())
    assert positions == sorted(positions) and len(positions) == len(events)
    back = list(store.read())
    assert [r.event for r in back] == events
    assert [r.position for r in back] == positions
    assert store.position() >= positions[-1]


def test_each_event_carries_its_digest_and_the_hash_chain(store: LedgerStore) -> None:
    events = scenario(CLINIC)
    store.append(events[:5], store.head())
    store.append(events[5:], store.head())
    link = GENESIS
    for recorded in store.read():
        assert recorded.digest == content_digest(recorded.event)
        link = chain_next(link, recorded.digest)
        assert recorded.chain == link
    assert store.head() == ChainHead(2, link)


def test_a_writer_behind_the_head_gets_a_conflict_and_writes_nothing(store: LedgerStore) -> None:
    stale = store.head()
    store.append(stores(2, "a"), stale)
    before = store.position()
    with pytest.raises(WriteConflict):
        store.append(stores(2, "b"), stale)
    assert store.position() == before
    assert [r.event.event_id for r in store.read()] == ["a0", "a1"]


def test_an_event_id_is_recorded_once_even_against_a_fresh_head(store: LedgerStore) -> None:
    store.append(stores(1), store.head())
    with pytest.raises(WriteConflict):
        store.append(stores(1), store.head())
    assert len(list(store.read())) == 1


def test_large_appends_are_written_in_bounded_chunks_in_one_transaction(store: LedgerStore) -> None:
    events = stores(CHUNK_EVENTS * 2 + 7)
    positions = store.append(events, store.head())
    assert len(positions) == len(events)
    assert store.head().version == 3  # one chain link per chunk
    assert len(list(store.read(page=100))) == len(events)


def test_lookup_finds_recorded_ids_and_leaves_out_the_rest(store: LedgerStore) -> None:
    store.append(stores(3), store.head())
    found = store.lookup(["s0", "s2", "nope"])
    assert sorted(found) == ["s0", "s2"]
    assert found["s2"].event.store_id == "s2"


def test_reads_can_start_after_a_position_and_stop_at_one(store: LedgerStore) -> None:
    positions = store.append(stores(10), store.head())
    middle = positions[4]
    assert [r.position for r in store.read(after=middle)] == positions[5:]
    assert [r.position for r in store.read(upto=middle)] == positions[:5]


def test_paged_raw_reads_give_the_rows_the_library_reads(store: LedgerStore) -> None:
    """`read_raw` queries the events table itself (binary, plain tuples): page after page it must
    give exactly the rows of the library's own ``select_notifications``, chain links left out."""
    positions = store.append(stores(CHUNK_EVENTS + 23), store.head())
    library = [
        (n.id, n.topic, bytes(n.state))
        for n in store.recorder.select_notifications(0, 10 * CHUNK_EVENTS, inclusive_of_start=False)
        if n.topic != CHAIN_TOPIC
    ]
    assert len(library) == len(positions)
    assert list(store.read_raw(page=97)) == library
    assert [row[0] for row in store.read_raw(after=positions[100], upto=positions[400], page=50)] == positions[101:401]
    assert list(store.read_raw(after=positions[-1])) == []


def test_a_second_connection_sees_what_the_first_wrote(store_url: str) -> None:
    with LedgerStore(store_url) as first:
        first.append(stores(2), first.head())
    with LedgerStore(store_url) as second:
        assert [r.event.event_id for r in second.read()] == ["s0", "s1"]


def test_after_an_ingest_run_the_planner_has_seen_the_tables_grow(store_url: str) -> None:
    """A never-analysed PostgreSQL table is read whole by a lookup of its terms (SQLite needs no
    statistics): an ingest run leaves its statistics current, once, not per chunk."""
    from ledger.ingest import ingest_events

    with LedgerStore(store_url) as ledger:
        ingest_events(ledger, stores(1200))
        pg = ledger.location.kind == "postgresql"
        if pg:
            assert _reltuples(ledger, ledger.backend.index) >= 1200  # analysed: the index holds a term per store and more
            assert _reltuples(ledger, ledger.backend.qualified) >= 1200
        assert ledger.update_statistics() is False  # nothing grew since
        ingest_events(ledger, stores(10, "b"))
        assert ledger.update_statistics() is False  # ten events are not a tenth
        ledger.append(stores(1500, "c"), ledger.head())
        assert ledger.update_statistics() is pg  # 1,500 more: now they are


def _reltuples(ledger: LedgerStore, table: str) -> float:
    with ledger.recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (table,))
        return float(curs.fetchone()["reltuples"])
