"""Kept projections (issue 4 item 5): a statement read from the kept, incrementally refreshed
parts is exactly the statement the plain fold over every event gives — through refreshes, a
close, late events that rename and re-own customers, new reference data, a rule change — on
both backends; and a rebuild killed half-way leaves the previous projection."""

from __future__ import annotations

import os
import random
import time
from decimal import Decimal
from pathlib import Path

import orjson

from cli.store_cmds import adoption_event
from ledger.demo import generate
from ledger.events import parse_event
from ledger.identity import customer_id_for, is_reference_data
from ledger.ingest import ingest_events
from ledger.projector import Projector, _SqliteTables
from ledger.store import LedgerStore
from ledger.verify import verify
from policies import default_rules
from projections.settlement import Settlement
from projections.state import KeptLines, lines_json
from tests.golden import killed_after, run_cli, seconds_of_cli



def plain_fold(store: LedgerStore) -> Settlement:
    position = store.position()
    return Settlement(((r.position, r.event) for r in store.read(upto=position)), position=position)


def assert_kept_equals_plain(store: LedgerStore) -> list[str]:
    """Every month with activity: the kept statement is the plain fold's, line for line."""
    plain = plain_fold(store)
    months = plain.months_with_activity()
    projector = Projector(store)
    for month in months:
        want = plain.statement(month)
        computed, _ = projector.statement(month)
        got, _ = projector.statement(month)  # the second read comes from the kept statement
        assert projector.tables.statement(month) is not None
        assert tuple(got.lines) == tuple(computed.lines) == tuple(want.lines), month
        assert (got.digest, got.position, got.rule_versions, got.findings, got.adjusts) == (
            want.digest, want.position, want.rule_versions, want.findings, want.adjusts,
        ), month
        assert (got.closed, got.adjustments_go_to) == (want.closed, want.adjustments_go_to), month
        # settle --json turns kept lines into JSON without building them: the same JSON
        assert isinstance(got.lines, KeptLines)
        assert lines_json(got.lines) == [line.as_json() for line in want.lines], month
        payee = want.lines[len(want.lines) // 2].payee if want.lines else None
        assert lines_json(got.lines, payee) == [line.as_json() for line in want.lines if line.payee == payee], month
    return months


def demo_batches(seed: int, customers: int) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Reference data, then the customers' events in three batches; the third also carries
    leads held back from the first (late, earlier leads: customers renamed, owners moved)."""
    events = [parse_event(e) for e in generate(seed=seed, customers=customers, months=3)]
    reference = [e for e in events if is_reference_data(e)]
    facts = [e for e in events if e not in reference]
    first, second, third = facts[: len(facts) // 2], facts[len(facts) // 2 : 4 * len(facts) // 5], facts[4 * len(facts) // 5 :]
    rng = random.Random(seed)
    late = [e for e in rng.sample(first, 60) if e.type in ("lead.captured", "followup.logged")]
    first = [e for e in first if e not in late]
    return reference, first, second, [*third, *late]


def test_kept_statements_equal_the_plain_fold_through_refreshes_a_close_and_late_events(store_url: str) -> None:
    reference, first, second, third = demo_batches(seed=11, customers=160)
    with LedgerStore(store_url) as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, *first]).rejected
        assert Projector(store).refresh().kind == "rebuild"  # nothing kept yet
        assert_kept_equals_plain(store)

        assert not ingest_events(store, second).rejected
        done = Projector(store).refresh()
        assert done.kind == "refresh" and done.events_read == len(second) and 0 < done.customers
        months = assert_kept_equals_plain(store)

    closed = run_cli(["close", "--month", months[0], "--store", store_url])
    assert closed.returncode == 0, closed.stderr.decode()
    with LedgerStore(store_url) as store:
        report = ingest_events(store, third)
        assert not report.rejected
        done = Projector(store).refresh()
        assert done.kind == "refresh"
        assert_kept_equals_plain(store)
        august = Projector(store).statement(months[1])[0]
        assert august.adjusts == (months[0],), "the late leads move lines of the closed month"

        # new reference data changes every customer's fold: the refresh rebuilds
        store_id = next(e.store_id for e in reference if e.type == "store.registered")
        staff = parse_event({"event_id": "late-staff", "type": "staff.registered", "occurred_at": "2026-05-01T09:00:00+08:00",
                             "staff_id": "late-staff", "name": "Late Staff", "role": "channel_agent", "store_id": store_id})
        assert not ingest_events(store, [staff]).rejected
        done = Projector(store).refresh()
        assert (done.kind, done.reason) == ("rebuild", "new rule sets or reference data")
        assert_kept_equals_plain(store)


def test_a_refresh_on_a_sqlite_without_delete_returning_keeps_the_same_statements(tmp_path, monkeypatch) -> None:
    """SQLite before 3.35 (Debian 11, Ubuntu 20.04) has no DELETE ... RETURNING: a refresh
    there finds the months it touched with a SELECT first, and keeps the same statements."""
    monkeypatch.setattr(_SqliteTables, "returning", False)
    reference, first, second, third = demo_batches(seed=17, customers=60)
    with LedgerStore(f"sqlite:///{tmp_path / 'old.db'}") as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, *first]).rejected
        assert Projector(store).refresh().kind == "rebuild"
        assert not ingest_events(store, [*second, *third]).rejected
        done = Projector(store).refresh()
        assert done.kind == "refresh" and done.customers > 0
        assert assert_kept_equals_plain(store)


def test_a_rebuild_shared_between_worker_processes_equals_the_plain_fold(store_url: str) -> None:
    """Large stores settle their customers in forked workers, each with its own connection;
    the kept statements must not depend on how the customers were shared out."""
    reference, first, second, third = demo_batches(seed=15, customers=200)
    with LedgerStore(store_url) as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, *first, *second]).rejected
        months = Settlement(((r.position, r.event) for r in store.read()), position=store.position()).months_with_activity()
    closed = run_cli(["close", "--month", months[0], "--store", store_url])
    assert closed.returncode == 0, closed.stderr.decode()
    with LedgerStore(store_url) as store:
        serial = Projector(store).rebuild(workers=1)
        digests = {m: Projector(store).statement(m)[0].digest for m in months}
        shared = Projector(store).rebuild(workers=3)
        if store.location.kind == "postgresql":  # the new tables' statistics, for the planner
            assert Projector(store).tables.update_statistics(shared.parts) is False
        assert len(shared.workers_peak_rss_mib) == 3 and all(rss > 0 for rss in shared.workers_peak_rss_mib), "every share in a worker"
        assert (shared.customers, shared.parts) == (serial.customers, serial.parts)
        assert {m: Projector(store).statement(m)[0].digest for m in months} == digests

        assert not ingest_events(store, third).rejected  # late leads too: customers renamed, lines moved
        done = Projector(store).refresh(workers=2)
        assert done.kind == "refresh" and done.customers > 0
        assert_kept_equals_plain(store)


def test_a_rebuild_after_a_rule_change_gives_the_digests_of_a_fresh_store(tmp_path: Path) -> None:
    reference, first, second, third = demo_batches(seed=12, customers=80)
    paid = sorted(e.occurred_at for e in [*first, *second] if e.type == "order.paid")
    middle = paid[len(paid) // 2].date().replace(day=1)
    changed = default_rules().model_copy(update={
        "version": "2026.2", "effective_from": middle, "protection_days": 3, "fulfillment_rate": Decimal("0.20"),
    })
    events = [adoption_event(default_rules()), *reference, *first, *second]
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    with LedgerStore(a) as store:
        assert not ingest_events(store, events).rejected
        Projector(store).rebuild()
        assert not ingest_events(store, [adoption_event(changed)]).rejected
        assert Projector(store).rebuild().kind == "rebuild"
        months = assert_kept_equals_plain(store)
        kept_a = {m: Projector(store).statement(m)[0] for m in months}
    with LedgerStore(b) as store:
        assert not ingest_events(store, [*events, adoption_event(changed)]).rejected
        kept_b = {m: Projector(store).statement(m)[0] for m in months}
    assert {m: s.digest for m, s in kept_a.items()} == {m: s.digest for m, s in kept_b.items()}
    assert any("2026.2" in s.rule_versions for s in kept_a.values()), "the new rules apply from their month"


def test_a_rebuild_killed_at_random_points_leaves_the_previous_projection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    reference, first, second, third = demo_batches(seed=13, customers=900)
    with LedgerStore(url) as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, *first, *second, *third]).rejected
        Projector(store).rebuild()
        month = plain_fold(store).months_with_activity()[-1]
        before = Projector(store).statement(month)[0].digest
    rebuild = ["rebuild", "--store", url]
    took = seconds_of_cli(rebuild)  # a whole rebuild leaves the same projection
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        kills += killed_after(rebuild, took * rng.uniform(0.15, 0.9))
        with LedgerStore(url) as store:
            assert verify(store).ok
            assert Projector(store).kept() is not None, "the previous projection is still there"
            assert Projector(store).statement(month)[0].digest == before
    assert kills >= 2, "the rebuild should have been killed mid-way at least twice"
    done = run_cli(["settle", "--month", month, "--json", "--store", url])
    assert done.returncode == 0 and orjson.loads(done.stdout)["digest"] == before


def test_a_rebuild_writes_its_parts_aside_and_swaps_them_in_whole_or_not_at_all(store_url: str, monkeypatch) -> None:
    """A rebuild writes parts into a staging table of its own as customers are settled (two
    processes here), so no process holds every part; the swap makes them the parts a refresh
    then updates. A staging table a killed rebuild left a day ago is dropped; a recent one (a
    rebuild running beside this one) stays. A rebuild that fails — in a worker, or in the swap
    itself — drops its own and leaves the previous projection; a swap that meets a lock is tried
    again."""
    import pytest
    from eventsourcing.persistence import OperationalError

    import ledger.projector as projector
    from ledger.projector import STAGING_PREFIX
    from ledger.store import StoreError

    reference, first, second, third = demo_batches(seed=19, customers=150)
    with LedgerStore(store_url) as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, *first, *second]).rejected
        tables = Projector(store).tables

        def staging_tables() -> list[str]:
            with tables.writing() as w:
                return sorted(tables.tables_named(w.c, STAGING_PREFIX))

        running = tables.new_staging(now=time.time() - 60)
        abandoned = tables.new_staging(now=time.time() - 2 * 86_400)
        assert staging_tables() == sorted([running, abandoned])

        done = Projector(store).rebuild(workers=2)
        assert staging_tables() == [running], "the abandoned one is gone, the running one stays, this rebuild's is swapped in"
        with tables.writing() as w:
            assert sum(len(w.parts(m)) for m in w.months()) == done.parts > 0
        if store.location.kind == "postgresql":
            with tables.writing() as w:
                w.c.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'", (tables.parts_table,))
                assert [r["conname"] for r in w.c.fetchall()] == ["channel_ledger_part_pkey"]
                w.c.execute("SELECT count(*) AS n FROM pg_stats WHERE schemaname = %s AND tablename = 'channel_ledger_part'", (store.recorder.datastore.schema,))
                assert w.c.fetchone()["n"] > 0, "the swapped-in table is analysed"
        assert_kept_equals_plain(store)

        assert not ingest_events(store, third).rejected
        assert Projector(store).refresh().kind == "refresh"  # upserts into the swapped-in table
        months = assert_kept_equals_plain(store)
        before = {m: Projector(store).statement(m)[0].digest for m in months}

        # Written as customers are settled, a few rows at a time; a swap that meets a lock waits its turn.
        staged: list[int] = []
        put_staged, clear = projector._Tables.put_staged, projector._Writer.clear
        monkeypatch.setattr(projector, "WRITE_ROWS", 7)
        monkeypatch.setattr(projector._Tables, "put_staged", lambda self, name, rows: staged.append(len(rows)) or put_staged(self, name, rows))
        locked = [OperationalError("database is locked")]
        monkeypatch.setattr(projector._Writer, "clear", lambda self, staging=None: clear(self, staging) if not locked else (_ for _ in ()).throw(locked.pop()))
        monkeypatch.setattr(projector.time, "sleep", lambda seconds: None)
        again = Projector(store).rebuild(workers=1)
        assert not locked and sum(staged) == again.parts and len(staged) > 1
        assert max(staged) <= 6 + len(months), "flushed once 7 rows wait: at most one customer's months beyond"
        assert staging_tables() == [running]
        assert {m: Projector(store).statement(m)[0].digest for m in months} == before
        monkeypatch.undo()

        def fails(*args, **kwargs):
            raise RuntimeError("the disk is full")

        for where, workers, error in [("customer_parts", 1, RuntimeError), ("customer_parts", 2, StoreError), ("statement_from_parts", 1, RuntimeError)]:
            with monkeypatch.context() as patched:
                patched.setattr(projector, where, fails)
                with pytest.raises(error, match="the disk is full"):
                    Projector(store).rebuild(workers=workers)
            assert staging_tables() == [running], f"a rebuild failing in {where} left nothing behind"
            assert {m: Projector(store).statement(m)[0].digest for m in months} == before


def test_one_customers_attribution_with_the_kept_reference_data_equals_the_full_fold(store_url: str) -> None:
    from cli.attribution_cmds import attribution_json, load_from
    from projections.pipeline import facts

    reference, first, second, third = demo_batches(seed=14, customers=90)
    with LedgerStore(store_url) as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, *first, *second]).rejected
        Projector(store).rebuild()
        assert not ingest_events(store, third).rejected  # customers' events after the kept position are fine
        assert Projector(store).snapshot() is not None
        full = facts(store.read())
        customers = full.identity.customers()
        for customer in customers:
            local = load_from(store, customer)
            fast = attribution_json(local.attribution.of(customer), local, unmasked=True)
            slow = attribution_json(full.attribution.of(customer), full, unmasked=True)
            fast.pop("position"), slow.pop("position")
            assert fast == slow
        staff = parse_event({"event_id": "late-staff", "type": "staff.registered", "occurred_at": "2026-05-01T09:00:00+08:00",
                             "staff_id": "late-staff", "name": "Late Staff", "role": "channel_agent",
                             "store_id": next(e.store_id for e in reference if e.type == "store.registered")})
        assert not ingest_events(store, [staff]).rejected
        assert Projector(store).snapshot() is None, "newer reference data: read it from the events"
        local = load_from(store, customers[0])
        assert "late-staff" in local.directory.staff


def test_shared_out_runs_shares_in_workers_relays_the_first_ones_progress_and_fails_with_a_workers_reason(store_url: str) -> None:
    import multiprocessing

    import pytest

    from ledger.projector import _shared_out
    from ledger.store import StoreError

    parent = os.getpid()

    def work(store: LedgerStore, share: int, orphaned, tick) -> tuple[int, bool]:
        tick("working", share, 3)
        if share == 1 and failing:
            raise ValueError("share 1 cannot be settled")
        return share, os.getpid() == parent

    heard: list[tuple[str, int, int | None]] = []
    tick = lambda stage, done, total: heard.append((stage, done, total))  # noqa: E731
    with LedgerStore(store_url) as store:
        failing = False
        assert [r for r, _ in _shared_out(store, 1, work, tick)] == [(0, True)]
        assert [r for r, _ in _shared_out(store, 3, work, tick)] == [(0, True), (1, False), (2, False)]
        heard.clear()
        assert [r for r, _ in _shared_out(store, 3, work, tick, away=True)] == [(0, False), (1, False), (2, False)]
        assert heard == [("working", 0, 3)], "share 0 ran in a worker; its progress came through the pipe, the others' not at all"
        failing = True
        for away in (False, True):
            with pytest.raises(StoreError, match="ValueError: share 1 cannot be settled"):
                _shared_out(store, 3, work, tick, away)
    assert not multiprocessing.active_children()


def test_the_rebuilds_columnar_identity_fold_groups_events_as_the_plain_split_does(tmp_path: Path) -> None:
    """A rebuild folds identity from columns read in ranges of positions (one per worker) and
    sorted by pyarrow. Every event must land in the component `split` gives it, under the same
    key — with a merge, late leads, and two leads of one person at the same moment whose ids
    sort against their ledger order, one at each end of the ledger (so in different ranges):
    the customer's id comes from the smaller id."""
    from ledger.projector import _components, _touches
    from projections.state import split

    reference, first, second, third = demo_batches(seed=17, customers=160)
    assert any(e.type == "customers.merged" for e in [*first, *second, *third])
    twin = {"type": "lead.captured", "occurred_at": "2026-08-15T10:00:00+08:00", "person": {"phone": "13912345678"},
            "via": "manual", "channel_id": "twins", "recorded_by": "someone"}
    early, late = parse_event({**twin, "event_id": "zz-twin"}), parse_event({**twin, "event_id": "aa-twin"})
    with LedgerStore(f"sqlite:///{tmp_path / 'l.db'}") as store:
        assert not ingest_events(store, [adoption_event(default_rules()), *reference, early, *first, *second, *third, late]).rejected
        position = store.position()
        recorded = [(r.position, r.event) for r in store.read()]
        bounds = (0, position // 3, position)
        shares = [_touches(store, bounds[n], bounds[n + 1], lambda *_: None, lambda: False) for n in range(2)]
    component, last, names = _components(shares, position, lambda *_: None)

    columnar: dict[str, list[int]] = {}
    for at in range(position + 1):
        if component[at] >= 0:
            columnar.setdefault(names[component[at]], []).append(at)
    plain = {key: sorted(p for p, _ in events) for key, events in split(recorded).components.items()}
    assert columnar == plain
    assert all(last[n] == max(columnar[name]) for n, name in enumerate(names))
    twins = [key for key, at in plain.items() if {p for p, e in recorded if e.event_id.endswith("-twin")} <= set(at)]
    assert twins == [customer_id_for("aa-twin")]
