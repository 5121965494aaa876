"""What the benchmarks share: a command run as its own process and measured (wall time, peak RSS),
the demo file, and scratch stores that are dropped afterwards.

A measured step is a child process, as a person runs it; ``os.wait4`` gives its wall time and the
peak resident set size of that child alone (``ru_maxrss``; through ``measure.py``, so that it is
not the harness's).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ledger.demo import EVENTS_PER_CUSTOMER, write_jsonl  # noqa: E402

DEFAULT_PG = "postgresql://root@/test?host=/var/run/postgresql"
PG_ENV = "CHANNEL_LEDGER_TEST_POSTGRES"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "channel-ledger-bench"
MEASURE = Path(__file__).resolve().parent / "measure.py"


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: bytes
    stderr: bytes


def run_measured(args: list[str], keep_output: int = 1 << 20) -> Measured:
    """Run a child process to its end: its wall time and peak RSS (ru_maxrss of that child alone).

    The child is started by ``measure.py`` (see there why) and writes to temporary files, not
    pipes; the first ``keep_output`` bytes of its output are kept (a statement's JSON can be
    hundreds of MiB, and what the harness holds does not matter to the figures but to the machine)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(suffix=".json") as result:
        launcher = [sys.executable, "-I", "-S", str(MEASURE), result.name, *args]
        launched = subprocess.run(launcher, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT, check=False)
        if launched.returncode != 0:
            raise RuntimeError(f"measure.py failed (exit {launched.returncode}) running {args[:4]}")
        figures = json.loads(Path(result.name).read_text(encoding="utf-8"))
        out.seek(0)
        err.seek(0)
        return Measured(figures["seconds"], figures["maxrss_kib"] / 1024, figures["returncode"], out.read(keep_output), err.read(keep_output))


def cli(*args: str) -> list[str]:
    """The ``channel-ledger`` command line (the console script's own entry point)."""
    return [sys.executable, "-m", "cli.main", *args]


def demo_file(events: int, seed: int, directory: Path) -> tuple[Path, int]:
    """A demo JSONL file of about ``events`` events (reused when already written), and its line count."""
    customers = max(1, round(events / EVENTS_PER_CUSTOMER))
    path = directory / f"demo-{customers}-{seed}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8") as sink:
            write_jsonl(sink, seed=seed, customers=customers)
        partial.rename(path)  # an interrupted run never leaves a short file to be reused
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return path, lines


def with_schema(pg_base: str, schema: str) -> str:
    return f"{pg_base}{'&' if '?' in pg_base else '?'}schema={schema}"


@contextmanager
def scratch_store(backend: str, directory: Path, pg_base: str, keep: bool = False) -> Iterator[str]:
    """The URL of a new, empty store: a SQLite file in ``directory`` or a PostgreSQL schema of its
    own; deleted afterwards unless ``keep``."""
    from ledger.store import reset_store

    name = "bench_" + uuid.uuid4().hex[:8]
    url = f"sqlite:///{directory / (name + '.db')}" if backend == "sqlite" else with_schema(pg_base, name)
    try:
        yield url
    finally:
        if not keep:
            reset_store(url)
