"""Concurrent writers (issue 7): several real ``ingest`` processes append to one store at once.

Their files overlap (the same event_ids), name the same customers, and race for the same sessions
(each order sells 3, every process tries to deliver 2 of them at the same place in its file).
The end state must be what one writer would have produced: every valid event recorded exactly
once, never more sessions than sold, and the hash chain intact."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.ingest import ingest_files
from ledger.store import LedgerStore
from ledger.verify import verify
from tests.scenario import CLINIC, write

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 3
CUSTOMERS = 1000
SOLD = 3  # sessions sold on every order
TRIED = 2  # sessions each writer tries to deliver on every order


def _line(obj: dict) -> str:
    return orjson.dumps(obj).decode()


def writer_file(tmp_path: Path, writer: int) -> tuple[str, int]:
    """Six lines a customer: the shared lead and order (same ids in every file), this writer's own
    follow-up and second lead for the same person, and its two attempts at a session."""
    lines = []
    for i in range(CUSTOMERS):
        phone = f"139{i:08d}"
        person = {"phone": phone}
        lines += [
            _line({"event_id": f"sh-lead-{i}", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": person, "via": "scan", "entry_point_id": "qr-ortho-a1"}),
            _line({
                "event_id": f"sh-order-{i}", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": f"so-{i}", "person": person,
                "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store",
                "items": [{"sku": "knee", "product_class": "course_package", "sessions": SOLD, "session_minutes": 50, "amount": "900.00"}],
            }),
            _line({"event_id": f"w{writer}-fu-{i}", "type": "followup.logged", "occurred_at": "2026-07-04T10:00:00+08:00", "person": person, "by": "a1", "medium": "wechat"}),
            _line({"event_id": f"w{writer}-lead-{i}", "type": "lead.captured", "occurred_at": "2026-07-05T10:00:00+08:00", "person": person, "via": "scan", "entry_point_id": "qr-gym-a2"}),
        ]
        lines += [
            _line({"event_id": f"w{writer}-sess-{i}-{k}", "type": "session.delivered", "occurred_at": f"2026-07-{8 + k:02d}T10:00:00+08:00", "order_id": f"so-{i}", "clinician_id": "p1", "room_id": "room-a", "minutes": 50})
            for k in range(TRIED)
        ]
    path = tmp_path / f"writer-{writer}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path), len(lines)


def run_writers(url: str, files: list[str]) -> list[dict]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("CHANNEL_LEDGER_STORE", None)
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli.main", "ingest", f, "--store", url, "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for f in files
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert b"Traceback" not in err, err.decode()
        assert proc.returncode in (0, 1), err.decode()  # 1: the sessions that lost the race are rejected
        assert out, err.decode()
        reports.append(orjson.loads(out))
    return reports


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_ingests_record_each_event_once_and_never_oversell(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = request.getfixturevalue("pg_store_url" if backend == "postgresql" else "sqlite_store_url")
    with LedgerStore(url) as store:
        assert not ingest_files(store, [write(tmp_path, CLINIC, "clinic.jsonl")]).rejected
    files = [writer_file(tmp_path, w) for w in range(WRITERS)]

    reports = run_writers(url, [f for f, _ in files])

    # Every line is accounted for by exactly one verdict, and the only refusals are the lost races.
    for report, (_, lines) in zip(reports, files):
        assert report["accepted"] + report["repeated"] + len(report["rejected"]) == lines
        assert {r["field"] for r in report["rejected"]} <= {"order_id"}
        assert all("no session left" in r["reason"] for r in report["rejected"])

    with LedgerStore(url) as store:
        recorded = [r.event for r in store.read()]
        ids = Counter(e.event_id for e in recorded)
        assert max(ids.values()) == 1  # exactly once
        # Each event was accepted by exactly one writer.
        assert sum(r["accepted"] for r in reports) == len(recorded) - 16
        expected_ids = {f"sh-{kind}-{i}" for kind in ("lead", "order") for i in range(CUSTOMERS)}
        expected_ids |= {f"w{w}-{kind}-{i}" for w in range(WRITERS) for kind in ("fu", "lead") for i in range(CUSTOMERS)}
        assert expected_ids <= set(ids)
        # Never more sessions than sold; and since more were tried than sold, exactly as many.
        delivered = Counter(e.order_id for e in recorded if e.type == "session.delivered")
        assert len(delivered) == CUSTOMERS and set(delivered.values()) == {SOLD}
        assert sum(len(r["rejected"]) for r in reports) == CUSTOMERS * (WRITERS * TRIED - SOLD)
        report = verify(store)
        assert report.ok, report.first_break
        assert report.events == len(recorded)
        print(f"{backend}: {WRITERS} writers, {sum(n for _, n in files):,} lines, {len(recorded):,} events recorded in {report.writes:,} writes")
        if backend == "postgresql":
            # The writers really raced: a write that lost (its chain version taken by another
            # writer) rolled back, and the positions it had drawn are gaps in the sequence now.
            assert report.position > report.rows, "no write ever lost a race: the writers did not overlap"
            print(f"  {report.position - report.rows:,} positions burned by writes that lost a race")


def _open_at_once(url: str, barrier: Any) -> None:
    from ledger.store import StoreError

    barrier.wait(timeout=60)
    try:
        LedgerStore(url).close()
    except StoreError as error:
        print(error, file=sys.stderr)
        os._exit(1)
    os._exit(0)


def test_processes_opening_a_postgresql_store_at_once_all_succeed(pg_store_url: str) -> None:
    LedgerStore(pg_store_url).close()
    context = multiprocessing.get_context("fork")
    failed = 0
    for _round in range(4):
        barrier = context.Barrier(6)
        procs = [context.Process(target=_open_at_once, args=(pg_store_url, barrier)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
            failed += proc.exitcode != 0
    assert failed == 0, f"{failed} of 24 opens failed"
