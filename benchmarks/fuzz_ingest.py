"""Coverage-guided fuzzing of ingest's input side (issue 7, part 4): `ledger.sources` (JSON Lines
and CSV, line numbers, encodings, dotted columns) and `ledger.events.parse_event`, with atheris.

    .venv/bin/pip install atheris                              # not a project dependency
    .venv/bin/python benchmarks/fuzz_ingest.py --seconds 60    # prints libFuzzer's figures
    .venv/bin/python benchmarks/fuzz_ingest.py --seconds 600 --corpus /tmp/fuzz-corpus

Each input is one file: its first byte picks the format (even: JSON Lines, odd: CSV), the rest is
the file. For every record read: a rejection has a 1-based line within the file and a reason; an
object becomes an event or `InvalidEvent` with findings; an event survives its own wire form (what
the store writes). Anything else (an exception, a failed check) is a crash: libFuzzer stops and
writes the input to ``crash-<sha1>`` in the working directory; re-run it with
``benchmarks/fuzz_ingest.py crash-<sha1>``.

The store is not in the loop (a fresh store per input would cost ~25 ms); tests/test_fuzz.py
runs hostile files through `ingest_files` into SQLite.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import atheris  # noqa: E402
except ImportError:  # pragma: no cover - atheris is not a project dependency
    sys.exit("atheris is not installed: .venv/bin/pip install atheris")
import orjson  # noqa: E402
import phonenumbers  # noqa: E402,F401  (imported before instrumentation: large, not ours)
import pydantic  # noqa: E402,F401

with atheris.instrument_imports(include=["ledger", "policies"]):
    from ledger.events import InvalidEvent, LedgerEvent, parse_event
    from ledger.sources import SourceLine, _read_stream

from tests.scenario import CLINIC, jsonl  # noqa: E402


def check_record(record: SourceLine, physical_lines: int) -> None:
    assert 1 <= record.line <= physical_lines + 1, (record.line, physical_lines)
    if record.error is not None:
        assert isinstance(record.error, str) and record.error.strip(), record
        return
    try:
        event = parse_event(record.obj)
    except InvalidEvent as invalid:
        assert invalid.findings and all(f.field.strip() and f.reason.strip() for f in invalid.findings), invalid
        return
    assert isinstance(event, LedgerEvent)
    stored = orjson.dumps(event.wire(), option=orjson.OPT_SORT_KEYS)
    assert parse_event(orjson.loads(stored)) == event, stored


def test_one_input(data: bytes) -> None:
    if not data:
        return
    fmt = "csv" if data[0] & 1 else "jsonl"
    body = data[1:]
    physical_lines = body.count(b"\n") + body.count(b"\r") + 1
    last = 0
    for record in _read_stream("<fuzz>", io.BytesIO(body), fmt):
        assert record.line > last, (record.line, last)
        last = record.line
        check_record(record, physical_lines)


def seed_corpus(directory: Path) -> None:
    """Good files to start from: the CLINIC as JSON Lines and as CSV, and one line per event type."""
    clinic = jsonl(CLINIC)
    (directory / "clinic.jsonl").write_bytes(b"\x00" + clinic.encode())
    objs = [orjson.loads(line) for line in clinic.splitlines()]
    header = sorted({key for obj in objs for key in obj})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for obj in objs:
        writer.writerow([str(obj.get(key, "")) for key in header])
    (directory / "clinic.csv").write_bytes(b"\x01" + out.getvalue().encode())
    from tests.test_fuzz import JOURNEY  # one valid event of every other type

    for index, obj in enumerate(JOURNEY):
        (directory / f"journey-{index}.jsonl").write_bytes(b"\x00" + orjson.dumps(obj) + b"\n")
    (directory / "items.csv").write_bytes(
        b"\x01event_id,type,occurred_at,order_id,person.wechat_id,store_id,closed_by,paid_via,items.0.sku,"
        b"items.0.product_class,items.0.sessions,items.0.session_minutes,items.0.amount\n"
        b"o9,order.paid,2026-07-06T17:30:00+08:00,so-9,wx_a,sh-jingan,c1,store,k12,course_package,12,50,6960.00\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (libFuzzer -max_total_time)")
    parser.add_argument("--corpus", type=Path, help="corpus directory to keep (default: a fresh temporary one)")
    parser.add_argument("--max-len", type=int, default=8192, help="largest input in bytes (libFuzzer -max_len)")
    parser.add_argument("inputs", nargs="*", help="crash files to re-run instead of fuzzing")
    args = parser.parse_args()
    if args.inputs:
        for name in args.inputs:
            test_one_input(Path(name).read_bytes())
            print(f"{name}: no crash")
        return
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="fuzz-ingest-"))
    corpus.mkdir(parents=True, exist_ok=True)
    seed_corpus(corpus)
    libfuzzer = [sys.argv[0], f"-max_total_time={args.seconds}", f"-max_len={args.max_len}", "-print_final_stats=1", str(corpus)]
    atheris.Setup(libfuzzer, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
