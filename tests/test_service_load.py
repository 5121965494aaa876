"""The service's load test (issue #8 part 4) runs, briefly, so that it cannot rot: 10 clients for
about 3 s post single events to a real ``serve``; everything accepted is in the store exactly
once, re-sent events come back *repeated*, the chain verifies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_load_run_loses_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load_service.py"), "--clients", "10", "--seconds", "3", "--resend", "0.25", "--dir", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()[-3000:]
    result = orjson.loads(done.stdout)
    assert result["ok"] and result["accepted"] > 10
    assert result["stored"] == result["accepted"]
    assert (result["missing"], result["doubled"], result["unexpected"], result["failed"]) == (0, 0, 0, 0)
    assert result["repeated"] > 0 and result["chain_ok"]
    assert result["events_per_second"] > 0 and result["p99_ms"] >= result["p50_ms"] > 0
