"""Benchmark suite (issue 6): a demo store of N events on SQLite and on PostgreSQL, every figure
beside a reference read of the same events and beside its target.

    .venv/bin/python benchmarks/run.py                                   # 1,000,000 events, both backends
    .venv/bin/python benchmarks/run.py --events 1000000 3000000 --json bench.json
    .venv/bin/python benchmarks/run.py --events 2400 --backends sqlite   # a smoke run, seconds

Per backend and N, each step is its own process, as a person runs it, measured with ``os.wait4``
(wall time and that process's peak RSS):

1. the demo file (``ledger.demo``, N / 12 customers), its last 10,000 lines held back (a tenth at
   small N): the generator writes an event only after everything it refers to, so the tail is
   valid after the head;
2. ``init`` and ``ingest HEAD``;
3. the reference: the stored source events read back raw and decoded — on PostgreSQL
   ``COPY (SELECT state ... ORDER BY notification_id) TO STDOUT`` with psycopg's copy, on SQLite
   ``SELECT state ... ORDER BY rowid`` — and ``orjson.loads`` of each; every time is also shown
   as a multiple of this one (``× ref``);
4. ``rebuild`` (every projection from the events);
5. ``settle --month M`` and ``--json``: M is the demo's busiest complete month;
6. ``ingest TAIL`` then ``refresh``;
7. ``attribution REF`` and ``trace REF`` for one customer of the demo: the process, and the
   functions the commands call timed inside one process (``probes.py latency``).

A command the CLI does not have yet is shown as "not available". The suite prints and records;
it asserts nothing about speed. Exit code 1 when a step failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from harness import DEFAULT_PG, DEFAULT_WORKDIR, PG_ENV, Measured, cli, demo_file, run_measured, scratch_store  # first: puts the project on sys.path

from ledger.events import normalise_phone
from ledger.privacy import mask_phone
from ledger.store import CHAIN_TOPIC, LedgerStore, parse_store_url, pg_connect_args
from policies import RuleSet, default_rules

INCREMENT = 10_000
RSS_TARGET_EVENTS = 1_000_000  # the peak-RSS target is stated for a rebuild of this many events
GIB = 1024.0  # MiB
PROBES = str(Path(__file__).resolve().parent / "probes.py")


# --- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on one figure of a step: ``measure`` names the figure (seconds, events_per_s,
    peak_rss_mib, ratio: × ref, of_rebuild: share of the rebuild's time, ms)."""

    text: str
    measure: str
    limit: float
    at_most: bool = True

    def verdict(self, value: float | None) -> str:
        if value is None:
            return "—"
        if value <= self.limit if self.at_most else value >= self.limit:
            return "met"
        if not self.at_most:
            return f"missed by {1 - value / self.limit:.0%}"
        over = value / self.limit
        return f"missed by {over - 1:.0%}" if over < 2 else f"missed: {over:,.1f}× the limit"


def targets_for(step: str, backend: str, events: int) -> tuple[Target, ...]:
    on_postgresql = backend == "postgresql"
    rss = (Target("peak RSS < 1 GiB", "peak_rss_mib", GIB),) if events <= RSS_TARGET_EVENTS else ()
    found: dict[str, tuple[Target, ...]] = {
        "ingest": (Target("≥ 25,000 events/s", "events_per_s", 25_000, at_most=False),) if on_postgresql else (),
        "rebuild": ((Target("≤ 1.5× ref", "ratio", 1.5),) if on_postgresql else ()) + rss,
        "refresh": (Target("< 2% of rebuild", "of_rebuild", 0.02),),
        "settle": (Target("< 1 s", "seconds", 1.0),),
        "settle --json": (Target("< 1 s", "seconds", 1.0),),
    }
    if step.endswith("in-process"):
        return (Target("< 50 ms", "ms", 50.0),)
    return found.get(step, ())


# --- rows ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured step. ``seconds`` is the process's wall time (in-process rows: the call's)."""

    step: str
    command: str
    status: str = "ok"  # ok | not available | failed
    seconds: float | None = None
    events: int | None = None
    peak_rss_mib: float | None = None
    ratio: float | None = None  # seconds / the reference's seconds
    of_rebuild: float | None = None
    ms: float | None = None
    note: str = ""
    targets: list[dict[str, str]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float | None:
        return self.events / self.seconds if self.events and self.seconds else None

    def figure(self, measure: str) -> float | None:
        return self.events_per_s if measure == "events_per_s" else getattr(self, measure)

    def judge(self, targets: tuple[Target, ...]) -> None:
        self.targets = [{"target": t.text, "verdict": t.verdict(self.figure(t.measure))} for t in targets]

    def as_json(self) -> dict:
        return {**asdict(self), "events_per_s": self.events_per_s}


def shown_command(args: list[str]) -> str:
    """A command line as a person would type it."""
    words = ["channel-ledger", *args[3:]] if args[1:3] == ["-m", "cli.main"] else [Path(args[1]).name, *args[2:]]
    return " ".join(words)


def measured_row(step: str, args: list[str], events: int | None = None) -> tuple[Row, Measured]:
    done = run_measured(args)
    row = Row(step, shown_command(args), seconds=done.seconds, events=events, peak_rss_mib=done.peak_rss_mib)
    if done.returncode == 2 and b"No such command" in done.stderr:
        row = Row(step, row.command, status="not available", note=f"no `{shown_command(args[:4])}` command yet")
    elif done.returncode != 0:
        lines = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        row.status, row.note = "failed", f"exit {done.returncode}: {lines[-1] if lines else ''}"
    else:
        out = done.stdout.decode("utf-8", "replace").strip().splitlines()
        if out and not out[0].startswith(("{", "[")) and len(out) == 1:
            row.note = out[0]  # a command's one-line summary (rebuild, refresh)
    return row, done


# --- the demo file -------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    path: Path
    head: Path
    tail: Path
    head_events: int
    tail_events: int
    month: str
    ref: str  # a customer's phone (E.164)


def busiest_complete_month(per_month: Counter[str], latest: datetime, rules: RuleSet) -> str:
    """The month with the most events among those the stream covers whole: every month before the
    latest event's, and that one too when the stream reaches its last day."""
    last = rules.month_of(latest)
    day = rules.local_date(latest)
    complete = [m for m in sorted(per_month) if m < last or (m == last and (day + timedelta(days=1)).month != day.month)]
    return max(complete or [last], key=lambda m: per_month[m])


def prepare_demo(events: int, seed: int, increment: int, workdir: Path) -> Demo:
    """The demo file split into HEAD and TAIL (its last ``increment`` lines, at most a tenth), the
    month to settle and a customer to look up (a paying one with a phone, from HEAD's second half)."""
    path, lines = demo_file(events, seed, workdir)
    held = min(increment, max(1, lines // 10))
    head, tail = (path.with_name(f"{path.stem}.{part}-{held}.jsonl") for part in ("head", "tail"))
    rules = default_rules()
    per_month: Counter[str] = Counter()
    latest: datetime | None = None
    ref = None
    with path.open("rb") as source, head.open("wb") as head_out, tail.open("wb") as tail_out:
        for n, line in enumerate(source):
            event = orjson.loads(line)
            moment = datetime.fromisoformat(event["occurred_at"])
            per_month[rules.month_of(moment)] += 1
            latest = moment if latest is None or moment > latest else latest
            in_head = n < lines - held
            (head_out if in_head else tail_out).write(line)
            phone = (event.get("person") or {}).get("phone")
            if ref is None and in_head and n >= (lines - held) // 2 and event["type"] == "order.paid" and phone:
                normalised, valid = normalise_phone(phone)
                ref = normalised if valid else None
    if latest is None or ref is None:
        raise SystemExit(f"{path}: too few events for the suite (no paying customer with a phone)")
    return Demo(path, head, tail, lines - held, held, busiest_complete_month(per_month, latest, rules), ref)


# --- one backend ---------------------------------------------------------------------------


def reference_args(url: str) -> list[str]:
    """The probe that reads this store's source events raw (in ledger order) and decodes them."""
    with LedgerStore(url) as store:
        location = store.location
        table = store.backend.qualified if location.kind == "postgresql" else store.recorder.events_table_name
    env = location.env
    where = f"WHERE topic <> '{CHAIN_TOPIC}'"
    if location.kind == "postgresql":
        from psycopg.conninfo import make_conninfo

        sql = f"COPY (SELECT state FROM {table} {where} ORDER BY notification_id) TO STDOUT (FORMAT BINARY)"
        return [sys.executable, PROBES, "read", "postgresql", make_conninfo(**pg_connect_args(env)), sql]
    return [sys.executable, PROBES, "read", "sqlite", env["SQLITE_DBNAME"], f"SELECT state FROM {table} {where} ORDER BY rowid"]


def bench_backend(backend: str, demo: Demo, events: int, options: argparse.Namespace) -> dict:
    """Every step on one backend; the rows, judged against their targets."""
    rows: list[Row] = []

    def add(row: Row) -> Row:
        row.command = row.command.replace(url, shown_url)  # no password in what is printed or written
        rows.append(row)
        print(f"  {row.step:<26} {row.status:<13} {fmt(row.seconds, '{:.2f} s')}", file=sys.stderr, flush=True)
        return row

    with scratch_store(backend, options.workdir, options.pg, keep=options.keep) as url:
        shown_url = parse_store_url(url).display
        init, _ = measured_row("init", cli("init", "--store", url))
        if init.status != "ok":
            return {"backend": backend, "store": shown_url, "rows": [add(init).as_json()]}
        ingest_row, done = measured_row("ingest", cli("ingest", str(demo.head), "--store", url, "--json"), demo.head_events)
        add(ingest_note(ingest_row, done))

        reference_row, done = measured_row("reference", reference_args(url))
        reference_row.command = "COPY (SELECT state … ORDER BY notification_id) TO STDOUT + orjson" if backend == "postgresql" else "SELECT state … ORDER BY rowid + orjson"
        if reference_row.status == "ok":
            read = orjson.loads(done.stdout)
            reference_row.events = read["rows"]
            reference_row.note = f"read + decode {read['seconds']:.2f} s in-process"
        add(reference_row)
        reference = reference_row.seconds
        stored = reference_row.events or demo.head_events

        rebuild = add(measured_row("rebuild", cli("rebuild", "--store", url), stored)[0])
        add(measured_row("settle", cli("settle", "--month", demo.month, "--store", url))[0])
        add(measured_row("settle --json", cli("settle", "--month", demo.month, "--store", url, "--json"))[0])
        row, done = measured_row(f"ingest +{demo.tail_events:,}", cli("ingest", str(demo.tail), "--store", url, "--json"), demo.tail_events)
        add(ingest_note(row, done))
        refresh = add(measured_row("refresh", cli("refresh", "--store", url), demo.tail_events)[0])
        if refresh.seconds and rebuild.seconds and refresh.status == rebuild.status == "ok":
            refresh.of_rebuild = refresh.seconds / rebuild.seconds
            refresh.note = (refresh.note + " · " if refresh.note else "") + f"{refresh.of_rebuild:.1%} of the rebuild"
        add(measured_row("attribution", cli("attribution", demo.ref, "--store", url))[0])
        add(measured_row("trace", cli("trace", demo.ref, "--store", url))[0])
        probe, done = measured_row("in-process", [sys.executable, PROBES, "latency", url, demo.ref, "--repeat", str(options.repeat)])
        for command in ("attribution", "trace", "attribution served", "trace served"):
            served = command.endswith("served")
            what = f"{command.split()[0]} REF " + ("(load + JSON, store kept open, as serve answers)" if served else "(the command's function, store opened each call)")
            row = Row(f"{command} in-process", what, status=probe.status, peak_rss_mib=probe.peak_rss_mib, note=probe.note)
            if probe.status == "ok":
                timing = orjson.loads(done.stdout)[command]
                row.ms, row.seconds = timing["median_ms"], timing["median_ms"] / 1000
                row.note = f"median of {options.repeat} warm calls · first call {timing['first_ms']:.1f} ms (validators built, caches cold)"
            add(row)
        rows.sort(key=lambda r: r.step != "reference")  # shown first: every time is a multiple of it
        for row in rows:
            if reference and row.seconds is not None:
                row.ratio = row.seconds / reference
            if row.status == "ok":
                row.judge(targets_for(row.step, backend, events))
        return {"backend": backend, "store": shown_url, "kept": options.keep, "rows": [r.as_json() for r in rows]}


def ingest_note(row: Row, done: Measured) -> Row:
    """Ingest's own count (``--json``); any rejection makes the step a failure."""
    if row.status != "ok" and done.returncode != 1:
        return row
    try:
        report = orjson.loads(done.stdout)
    except orjson.JSONDecodeError:
        return row
    row.note = f"accepted {report['accepted']:,} · repeated {report['repeated']:,} · rejected {len(report['rejected']):,}"
    if report["rejected"]:
        first = report["rejected"][0]
        row.status, row.note = "failed", row.note + f" (first: line {first['line']}: {first['field']}: {first['reason']})"
    return row


# --- output --------------------------------------------------------------------------------


def fmt(value: float | None, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def render(run: dict, demo: dict) -> str:
    head = (
        f"{run['backend']} · {demo['events']:,} events requested · {demo['head_events']:,} ingested + {demo['tail_events']:,} held back"
        f" · settle --month {demo['month']} · customer {mask_phone(demo['ref'])} · store {run['store']}"
    )
    judged = {r["step"]: " · ".join(f"{t['target']} → {t['verdict']}" for t in r["targets"]) for r in run["rows"]}
    width = max(len("target → verdict"), *map(len, judged.values()))
    lines = [head, f"{'step':<24} {'seconds':>9} {'events/s':>11} {'peak RSS':>10} {'× ref':>8}  {'target → verdict':<{width}}  note"]
    for r in run["rows"]:
        if r["status"] == "not available":
            lines.append(f"{r['step']:<24} {'not available':>9}  {r['note']}")
            continue
        seconds = fmt(r["ms"], "{:.1f} ms") if r["ms"] is not None else fmt(r["seconds"], "{:.2f}")
        note = r["note"] if r["status"] == "ok" else f"FAILED {r['note']}"
        lines.append(
            f"{r['step']:<24} {seconds:>9} {fmt(r['events_per_s'], '{:,.0f}'):>11} {fmt(r['peak_rss_mib'], '{:,.0f} MiB'):>10}"
            f" {fmt(r['ratio'], '{:.2f}×'):>8}  {judged[r['step']]:<{width}}  {note}"
        )
    return "\n".join(lines)


def rss_growth(runs: list[dict]) -> list[str]:
    """Peak RSS of the rebuild across N, per backend: it should follow customers, not events."""
    out = []
    for backend in sorted({r["backend"] for r in runs}):
        points = []
        for r in runs:
            rebuild = next((row for row in r["rows"] if row["step"] == "rebuild" and row["status"] == "ok"), None)
            if r["backend"] == backend and rebuild:
                points.append((r["events"], rebuild["peak_rss_mib"]))
        if len(points) > 1:
            (n0, m0), rest = points[0], points[1:]
            out.append(f"{backend} rebuild peak RSS: {n0:,} events {m0:,.0f} MiB" + "".join(f" → {n:,} events {m:,.0f} MiB (×{m / m0:.2f} for ×{n / n0:.2f} events)" for n, m in rest))
    return out


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000], help="demo sizes, e.g. --events 1000000 3000000")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--pg", default=os.environ.get(PG_ENV, DEFAULT_PG), help="PostgreSQL server (a scratch schema is created in it and dropped)")
    parser.add_argument("--increment", type=int, default=INCREMENT, help="events held back for the incremental step (at most a tenth)")
    parser.add_argument("--repeat", type=int, default=5, help="warm repeats of the in-process attribution/trace timing")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="demo files (reused) and SQLite stores")
    parser.add_argument("--keep", action="store_true", help="keep the stores (their URLs are printed)")
    parser.add_argument("--json", dest="json_out", type=Path, help="write every figure to this file")
    options = parser.parse_args()
    options.workdir = options.workdir.resolve()
    options.workdir.mkdir(parents=True, exist_ok=True)

    report: dict = {"machine": machine(), "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}, "runs": []}
    print(f"{report['machine']['cpus']} CPUs · load average {' '.join(f'{x:.2f}' for x in report['machine']['load_average'])} at start", flush=True)
    failed = False
    for events in options.events:
        started = time.perf_counter()
        demo = prepare_demo(events, options.seed, options.increment, options.workdir)
        shown_demo = {"events": events, "file": str(demo.path), "head_events": demo.head_events, "tail_events": demo.tail_events, "month": demo.month, "ref": demo.ref}
        print(f"\ndemo file {demo.path} · {demo.head_events + demo.tail_events:,} events · ready in {time.perf_counter() - started:.1f} s", flush=True)
        for backend in options.backends:
            run = {"events": events, "demo": shown_demo, **bench_backend(backend, demo, events, options)}
            report["runs"].append(run)
            failed = failed or any(r["status"] == "failed" for r in run["rows"])
            print("\n" + render(run, shown_demo), flush=True)
            if options.json_out:
                options.json_out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    growth = rss_growth(report["runs"])
    if growth:
        print("\n" + "\n".join(growth))
    report["machine"]["load_average_end"] = os.getloadavg()
    print(f"\nload average {' '.join(f'{x:.2f}' for x in report['machine']['load_average_end'])} at the end (shared CPUs inflate every time)")
    if options.json_out:
        options.json_out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"figures written to {options.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
