"""The benchmark suite (``benchmarks/run.py``, issue 6) at a small N, so it cannot rot: it runs,
exits 0 and prints every row. How fast is not checked.

SQLite always; PostgreSQL when ``CHANNEL_LEDGER_TEST_POSTGRES`` is set. With
``CHANNEL_LEDGER_BENCH_SMOKE=1`` (CI) every step must exist: a command the CLI lacks fails the
test instead of being shown as "not available".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ENV

ROOT = Path(__file__).resolve().parent.parent
STEPS = (
    "reference",
    "ingest",
    "rebuild",
    "settle",
    "settle --json",
    "ingest +",  # the held-back events: "ingest +130" here, "ingest +10,000" at a million
    "refresh",
    "attribution",
    "trace",
    "attribution in-process",
    "trace in-process",
    "attribution served in-process",
    "trace served in-process",
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} is not set"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_benchmark_suite_runs_and_prints_every_row(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--events", "1200", "--increment", "200", "--repeat", "1", "--backends", backend, "--workdir", str(tmp_path), "--json", str(out)]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    (run,) = json.loads(out.read_text())["runs"]
    rows = {row["step"].split("+")[0] + ("+" if "+" in row["step"] else ""): row for row in run["rows"]}
    assert sorted(rows) == sorted(STEPS)
    printed = [line.split("  ")[0].strip() for line in done.stdout.splitlines()]
    assert [step for step in printed if step.startswith(STEPS)] == [row["step"] for row in run["rows"]]
    strict = os.environ.get("CHANNEL_LEDGER_BENCH_SMOKE") == "1"
    for step, row in rows.items():
        allowed = {"ok"} if strict else {"ok", "not available"}
        assert row["status"] in allowed, f"{step}: {row['status']} {row['note']}"
        if row["status"] == "ok":
            assert row["seconds"] > 0 and row["ratio"] is not None, step
    assert rows["ingest"]["note"].endswith("rejected 0") and rows["ingest +"]["note"].endswith("rejected 0")
    assert run["demo"]["month"] and not list(tmp_path.glob("bench_*.db")), "the SQLite store is deleted afterwards"
