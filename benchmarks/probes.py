"""Child processes of the benchmark suite (``benchmarks/run.py``); each prints one JSON object.

    probes.py read postgresql CONNINFO SQL   # the reference: COPY ... TO STDOUT (binary) + orjson.loads of each row
    probes.py read sqlite PATH SQL           # the reference on SQLite: SELECT state ... + orjson.loads
    probes.py latency STORE_URL REF [--repeat 5]   # attribution and trace for one customer, in-process: as the
                                                   # commands (store opened each call) and as `serve` (store open)

``read`` imports only psycopg / sqlite3 and orjson, so its process time is the floor any reader of
the stored events pays. ``latency`` calls the very functions the ``attribution`` and ``trace``
commands are, with their output sent to /dev/null, and times them after the imports: the first call
(opening the store included) and the median of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def read_postgresql(conninfo: str, sql: str) -> int:
    import orjson
    import psycopg

    rows = 0
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(["bytea"])
        for (state,) in copy.rows():
            orjson.loads(state)
            rows += 1
    return rows


def read_sqlite(path: str, sql: str) -> int:
    import sqlite3

    import orjson

    rows = 0
    with sqlite3.connect(path) as conn:
        for (state,) in conn.execute(sql):
            orjson.loads(state)
            rows += 1
    return rows


@contextmanager
def stdout_discarded() -> Iterator[None]:
    """File descriptor 1 to /dev/null (the commands print through rich and sys.stdout.buffer)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


def timed_calls(call: Callable[[], None], repeat: int) -> dict[str, float]:
    """Milliseconds of the first call and the median of ``repeat`` more."""
    times = []
    with stdout_discarded():
        for _ in range(1 + repeat):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
    return {"first_ms": times[0], "median_ms": statistics.median(times[1:]) if repeat else times[0]}


def latency(store_url: str, ref: str, repeat: int) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cli.attribution_cmds import attribution, attribution_json, find_customer, load_from, trace, trace_json
    from cli.common import json_bytes

    def emit(body: object) -> None:
        json_bytes(body)  # the bytes `serve` sends (`cli.service.LedgerJSON`)
    from ledger.store import LedgerStore

    timings = {
        "attribution": timed_calls(lambda: attribution(ref, store=store_url, json=False, unmasked=False), repeat),
        "trace": timed_calls(lambda: trace(ref, store=store_url, json=False, unmasked=False), repeat),
    }
    with LedgerStore(store_url) as store:  # as `serve` answers GET /customers/REF/…: the store stays open

        def served(render: Callable[..., object]) -> Callable[[], None]:
            def call() -> None:
                f = load_from(store, ref)
                emit(render(find_customer(f, ref), f, unmasked=False))
            return call

        timings["attribution served"] = timed_calls(served(attribution_json), repeat)
        timings["trace served"] = timed_calls(served(trace_json), repeat)
    return timings


def main() -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="probe", required=True)
    read = sub.add_parser("read")
    read.add_argument("backend", choices=["postgresql", "sqlite"])
    read.add_argument("source", help="libpq conninfo, or the SQLite file")
    read.add_argument("sql")
    lat = sub.add_parser("latency")
    lat.add_argument("store")
    lat.add_argument("ref")
    lat.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    if options.probe == "read":
        started = time.perf_counter()
        reader = read_postgresql if options.backend == "postgresql" else read_sqlite
        rows = reader(options.source, options.sql)
        result: dict = {"rows": rows, "seconds": time.perf_counter() - started}
    else:
        result = latency(options.store, options.ref, options.repeat)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
