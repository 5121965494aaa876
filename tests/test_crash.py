"""Crashes (issue 7): ``ingest`` killed with SIGKILL at random points never leaves a store that
`verify` rejects, and running the same file again completes the work without duplicates."""

from __future__ import annotations

import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from ledger.demo import write_jsonl
from ledger.store import CHUNK_EVENTS, LedgerStore, pg_connect_args
from ledger.verify import verify
from tests.golden import ROOT, cli_env, killed_after, run_cli, seconds_of_cli

CUSTOMERS = 1900  # about 20,000 events


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    path = tmp_path_factory.mktemp("crash") / "demo.jsonl"
    write_jsonl(str(path), customers=CUSTOMERS)
    ids = [orjson.loads(line)["event_id"] for line in path.read_bytes().splitlines()]
    assert len(ids) > 19_000
    return str(path), ids


def start_ingest(path: str, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "ingest", path, "--store", url, "--json"],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def recorded_ids(url: str) -> Counter[str]:
    with LedgerStore(url) as store:
        return Counter(r.event.event_id for r in store.read())


@contextmanager
def poller(url: str) -> Iterator[Callable[[], int]]:
    """A function returning the highest position, read on a connection of its own behind the
    ledger's back (cheap enough to poll every 10 ms)."""
    with LedgerStore(url) as store:
        location, table = store.location, store.recorder.events_table_name
        schema = getattr(store.recorder.datastore, "schema", "")
    if location.kind == "sqlite":
        conn: Any = sqlite3.connect(location.env["SQLITE_DBNAME"])
        sql = f"SELECT MAX(rowid) FROM {table}"
    else:
        conn = psycopg.connect(**pg_connect_args(location.env), autocommit=True)
        sql = f'SELECT MAX(notification_id) FROM "{schema}"."{table}"'
    try:
        yield lambda: conn.execute(sql).fetchone()[0] or 0
    finally:
        conn.close()


def kill_repeatedly(path: str, url: str, points: list[tuple[int, float]]) -> list[tuple[int, float, int, bool]]:
    """For each crash point (rows, delay): start ``ingest``, wait until the store holds ``rows``
    rows, wait ``delay`` seconds more, SIGKILL it; after every kill the store verifies and holds
    at least what it held before (nothing accepted is lost).
    Returns (rows, delay, events recorded after the kill, killed while running) per point."""
    done = []
    recorded = 0
    with poller(url) as position:
        for rows, delay in points:
            done.append(crash_once(path, url, position, rows, delay))
            assert done[-1][2] >= recorded, "an accepted event was lost"
            recorded = done[-1][2]
    return done


def crash_once(path: str, url: str, position: Callable[[], int], rows: int, delay: float) -> tuple[int, float, int, bool]:
    """One crash point: (rows reached, delay, events recorded after the kill, killed mid-run)."""
    proc = start_ingest(path, url)
    deadline = time.monotonic() + 120
    while proc.poll() is None and position() < rows and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    running = proc.poll() is None
    if running:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    with LedgerStore(url) as store:
        report = verify(store)
    assert report.ok, (rows, delay, report.first_break)
    return (rows, delay, report.events, running)


def complete_and_check(path: str, ids: list[str], url: str) -> dict:
    """Run the same file to the end: every line recorded exactly once, the chain intact."""
    proc = start_ingest(path, url)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), err.decode()
    report = orjson.loads(out)
    rejected = {r["event_id"] for r in report["rejected"]}
    assert report["accepted"] + report["repeated"] + len(report["rejected"]) == len(ids)
    recorded = recorded_ids(url)
    assert max(recorded.values()) == 1  # no duplicates
    assert set(recorded) == set(ids) - rejected  # nothing lost
    with LedgerStore(url) as store:
        assert verify(store).ok
    return report


def crash_points(seed: int, kills: int, total: int) -> list[tuple[int, float]]:
    """Kill points spread over the file: while starting up, and after random amounts written,
    each a random moment into the next batch (reading, validating or writing it)."""
    rng = random.Random(seed)
    targets = sorted(rng.randrange(1, total) for _ in range(kills - 1))
    return [(0, 0.3)] + [(t, rng.uniform(0.0, 0.4)) for t in targets]


def test_sigkill_during_ingest_then_a_rerun_completes(demo_file, sqlite_store_url: str) -> None:
    path, ids = demo_file
    LedgerStore(sqlite_store_url).close()
    points = kill_repeatedly(path, sqlite_store_url, crash_points(20260701, 8, len(ids)))
    print("crash points (rows reached, delay s, events recorded, killed mid-run):", points)
    assert sum(1 for *_, running in points if running) >= 6, points
    assert len({events for _, _, events, _ in points}) >= 3, points  # different stages
    complete_and_check(path, ids, sqlite_store_url)


def test_sigkill_during_a_postgresql_ingest_then_a_rerun_completes(demo_file, pg_store_url: str) -> None:
    path, ids = demo_file
    LedgerStore(pg_store_url).close()
    points = kill_repeatedly(path, pg_store_url, crash_points(20260702, 3, len(ids)))
    print("crash points (rows reached, delay s, events recorded, killed mid-run):", points)
    assert sum(1 for *_, running in points if running) >= 2, points
    complete_and_check(path, ids, pg_store_url)


def test_a_20000_event_ingest_into_postgresql_completes(demo_file, pg_store_url: str) -> None:
    path, ids = demo_file
    report = complete_and_check(path, ids, pg_store_url)
    assert report["accepted"] == len(ids) - len(report["rejected"])
    with LedgerStore(pg_store_url) as store:
        # Written in bounded chunks: one write record per chunk of at most CHUNK_EVENTS events.
        assert store.head().version >= report["accepted"] / CHUNK_EVENTS


def test_sigkill_during_close_then_a_rerun_closes_once(demo_file, sqlite_store_url: str) -> None:
    """``close`` killed at random points (reading, settling, recording): the store verifies, the
    month is closed at most once, and a re-run finishes the close (or finds it done)."""
    path, _ = demo_file
    from cli.store_cmds import initialise

    with LedgerStore(sqlite_store_url) as store:
        initialise(store)
    complete = start_ingest(path, sqlite_store_url)
    complete.communicate(timeout=300)
    with LedgerStore(sqlite_store_url) as store:
        months = sorted({r.event.occurred_at.strftime("%Y-%m") for r in store.read() if r.event.type == "order.paid"})
    month = months[0]
    close = ["close", "--month", month, "--store", sqlite_store_url]
    rehearsal = Path(sqlite_store_url.removeprefix("sqlite:///") + ".rehearsal")
    shutil.copyfile(sqlite_store_url.removeprefix("sqlite:///"), rehearsal)
    took = seconds_of_cli(["close", "--month", month, "--store", f"sqlite:///{rehearsal}"])  # on a copy: a close is once
    rng = random.Random(20261203)
    kills = 0
    for _ in range(5):
        kills += killed_after(close, took * rng.uniform(0.15, 0.95))
        with LedgerStore(sqlite_store_url) as store:
            assert verify(store).ok
            closes = [r.event for r in store.read() if r.event.type == "settlement.closed"]
            assert len(closes) <= 1
    assert kills >= 2
    done = run_cli(close)
    assert done.returncode == 0 or b"already closed" in done.stderr, done.stderr
    with LedgerStore(sqlite_store_url) as store:
        assert [r.event.month for r in store.read() if r.event.type == "settlement.closed"] == [month]
        assert verify(store).ok
    settled = run_cli(["settle", "--month", month, "--json", "--store", sqlite_store_url])
    assert settled.returncode == 0 and orjson.loads(settled.stdout)["closed"]["verified"] is True
