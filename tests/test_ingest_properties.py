"""Ingest invariants, checked by hypothesis over the demo generator's output."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.demo import generate
from ledger.ingest import ingest_files
from ledger.store import LedgerStore

DEMO = [orjson.dumps(e).decode() for e in generate(seed=11, customers=25, months=2)]


def recorded_set(url: str, lines: list[str], directory) -> tuple[set[tuple[str, str]], int]:
    path = directory / "shuffled.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with LedgerStore(url) as store:
        report = ingest_files(store, [str(path)])
        return {(r.event.event_id, r.digest) for r in store.read()}, len(report.rejected)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(DEMO))))
def test_any_shuffle_of_a_valid_demo_file_ingests_to_the_same_recorded_events(order, tmp_path_factory) -> None:
    """Lines in any order (references resolve within the file) give the same set of facts."""
    directory = tmp_path_factory.mktemp("shuffle")
    expected, rejected = recorded_set(f"sqlite:///{directory / 'a.db'}", DEMO, directory)
    shuffled, rejected_shuffled = recorded_set(f"sqlite:///{directory / 'b.db'}", [DEMO[i] for i in order], directory)
    assert rejected == 0 and rejected_shuffled == 0
    assert shuffled == expected
    assert len(expected) == len(DEMO)


def test_ingesting_a_file_twice_records_each_event_once(tmp_path) -> None:
    path = tmp_path / "demo.jsonl"
    path.write_text("\n".join(DEMO) + "\n", encoding="utf-8")
    with LedgerStore(f"sqlite:///{tmp_path / 'x.db'}") as store:
        first = ingest_files(store, [str(path)])
        second = ingest_files(store, [str(path)])
        assert (first.accepted, second.accepted, second.repeated) == (len(DEMO), 0, len(DEMO))
        assert len({r.event.event_id for r in store.read()}) == len(DEMO)
