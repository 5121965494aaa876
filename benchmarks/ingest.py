"""Ingest benchmark (issue 2): events/s and peak RSS of `channel-ledger ingest` on a demo file,
into SQLite and into PostgreSQL, beside the reference: the same file's raw ``COPY`` into a plain
PostgreSQL table.

    .venv/bin/python benchmarks/ingest.py                      # 1,000,000 events
    .venv/bin/python benchmarks/ingest.py --events 50000 --backends sqlite

Each ingest runs as its own process (as a person runs it), measured with ``os.wait4``: wall time
and that process's peak resident set size. Prints figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

from harness import DEFAULT_PG, DEFAULT_WORKDIR, PG_ENV, cli, demo_file, run_measured, scratch_store, with_schema


def copy_reference(path: Path, pg_base: str) -> float:
    """Seconds to COPY the file's lines into a plain table (jsonb), in a throwaway schema."""
    import psycopg

    from ledger.store import parse_store_url, pg_connect_args

    schema = "bench_ref_" + uuid.uuid4().hex[:8]
    env = parse_store_url(with_schema(pg_base, schema)).env
    with psycopg.connect(**pg_connect_args(env), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".raw (doc jsonb)')
        try:
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy(f'COPY "{schema}".raw (doc) FROM STDIN') as copy, path.open("rb") as f:
                for line in f:
                    copy.write_row((line.rstrip(b"\n").decode("utf-8"),))
            return time.perf_counter() - started
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="about this many demo events")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default=os.environ.get(PG_ENV, DEFAULT_PG))
    parser.add_argument("--dir", type=Path, default=DEFAULT_WORKDIR)
    options = parser.parse_args()
    options.dir = options.dir.resolve()
    options.dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    path, lines = demo_file(options.events, options.seed, options.dir)
    print(f"demo file: {path} · {lines:,} events · generated/reused in {time.perf_counter() - started:.1f} s", flush=True)

    reference = None
    if "postgresql" in options.backends:
        reference = copy_reference(path, options.pg)
        print(f"reference: COPY into a plain PostgreSQL table: {reference:.1f} s · {lines / reference:,.0f} rows/s", flush=True)

    print(f"{'backend':<11} {'events':>10} {'seconds':>8} {'events/s':>10} {'peak RSS':>10} {'× COPY':>7}")
    for backend in options.backends.split(","):
        with scratch_store(backend, options.dir, options.pg) as url:
            init = run_measured(cli("init", "--store", url))
            assert init.returncode == 0, "init failed"
            done = run_measured(cli("ingest", str(path), "--store", url, "--json"))
            if done.returncode not in (0, 1):
                print(f"{backend}: ingest failed with exit code {done.returncode}")
                continue
            ratio = f"{done.seconds / reference:.1f}" if reference else "—"
            print(f"{backend:<11} {lines:>10,} {done.seconds:>8.1f} {lines / done.seconds:>10,.0f} {done.peak_rss_mib:>7,.0f} MiB {ratio:>7}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
