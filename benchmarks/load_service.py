"""Load test of ``channel-ledger serve`` (issue #8 part 4): N concurrent clients post single
events over loopback for S seconds; then the store is checked — every event the service accepted
is in it exactly once, nothing it did not accept is, and the hash chain verifies.

    .venv/bin/python benchmarks/load_service.py                          # 50 clients, 30 s, SQLite
    .venv/bin/python benchmarks/load_service.py --clients 10 --seconds 3 --json
    .venv/bin/python benchmarks/load_service.py --backend postgresql --workers 2

The service runs as its own process (``serve``, one worker unless ``--workers``) over a fresh
store holding the demo group's reference data and the shipped rules. Each client is a loop of
HTTP/1.1 requests (httpx, one connection each) posting, one event a request, a new customer's
lead (a QR scan; the service checks it for collisions) and follow-ups for its own customers;
a share of the requests (``--resend``) re-send an event already accepted, which must come back
*repeated*. Prints events/s, requests/s and p50/p90/p99 latency per request and the counts;
exit code 1 when anything was lost, doubled, written without being accepted, or the chain is
broken. The clients run in this process: on a small machine they take CPU from the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson
from harness import DEFAULT_PG, DEFAULT_WORKDIR, PG_ENV, ROOT, cli, scratch_store

REFERENCE_TYPES = ("store.registered", "staff.registered", "channel.registered", "entry_point.issued", "resource.declared")
TOKEN = "load-test-token"


@dataclass
class Tally:
    """What the clients saw."""

    requests: int = 0
    accepted: list[str] = field(default_factory=list)  # event ids the service said it recorded
    repeated: int = 0
    rejected: int = 0  # 4xx
    failed: int = 0  # 5xx and transport errors
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)


@dataclass
class Result:
    clients: int
    seconds: float
    backend: str
    workers: int
    requests: int
    accepted: int
    repeated: int
    rejected: int
    failed: int
    events_per_second: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    stored: int
    missing: int
    doubled: int
    unexpected: int
    chain_ok: bool
    statuses: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.accepted > 0 and not (self.missing or self.doubled or self.unexpected or self.failed) and self.chain_ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_events(seed: int) -> list[dict]:
    """The demo group's stores, staff, channels, live codes and capacity."""
    from ledger import demo

    found = []
    for event in demo.generate(seed=seed, customers=500, months=1):
        if event["type"] not in REFERENCE_TYPES:
            break
        found.append(event)
    return found


def prepare(url: str, folder: Path, seed: int) -> tuple[Path, list[dict]]:
    """The store (rules adopted, reference data ingested) and the tokens file."""
    reference = reference_events(seed)
    path = folder / f"reference-{os.getpid()}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in reference))
    for args in (["init", "--store", url], ["ingest", str(path), "--store", url]):
        done = subprocess.run(cli(*args), cwd=ROOT, capture_output=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args[:1])} failed: {done.stderr.decode(errors='replace')}")
    from cli.service import hash_token

    tokens = folder / f"tokens-{os.getpid()}.toml"
    tokens.write_text(f'[[source]]\nname = "load"\ntoken_sha256 = "{hash_token(TOKEN)}"\nevents = ["*"]\nread = true\n', encoding="utf-8")
    return tokens, reference


def client_events(client: int, reference: list[dict], rng: random.Random):
    """An endless stream of events one client sends: a new customer's lead, then follow-ups."""
    entry_points = [e for e in reference if e["type"] == "entry_point.issued"]
    n = 0
    while True:
        entry = rng.choice(entry_points)
        phone = f"139{client:03d}{n:05d}"
        minute = n % (28 * 24 * 60)
        at = f"2026-10-{1 + minute // 1440:02d}T{minute // 60 % 24:02d}:{minute % 60:02d}:00+08:00"
        yield {"event_id": f"load-{client}-{n}", "type": "lead.captured", "occurred_at": at, "person": {"phone": phone}, "via": "scan", "entry_point_id": entry["entry_point_id"]}
        for k in range(rng.randint(0, 3)):
            yield {
                "event_id": f"load-{client}-{n}-fu{k}", "type": "followup.logged", "occurred_at": at.replace(":00+08:00", f":{10 + k:02d}+08:00"),
                "person": {"phone": phone}, "by": entry["owner_staff_id"], "medium": rng.choice(["wechat", "phone", "in_store"]),
            }
        n += 1


async def run_client(client: int, base: str, reference: list[dict], deadline: float, resend: float, tally: Tally, seed: int) -> None:
    rng = random.Random(f"{seed}:{client}")
    events = client_events(client, reference, rng)
    sent: list[bytes] = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=httpx.Limits(max_connections=1)) as http:
        while time.monotonic() < deadline:
            again = bool(sent) and rng.random() < resend
            body = rng.choice(sent) if again else orjson.dumps(next(events))
            started = time.perf_counter()
            try:
                answer = await http.post("/events", content=body)
            except httpx.HTTPError:
                tally.failed += 1
                continue
            tally.latencies.append(time.perf_counter() - started)
            tally.requests += 1
            tally.statuses[str(answer.status_code)] += 1
            if answer.status_code >= 500:
                tally.failed += 1
            elif answer.status_code != 200:
                tally.rejected += 1
            else:
                report = answer.json()
                tally.repeated += report["repeated"]
                if report["accepted"]:
                    tally.accepted.append(orjson.loads(body)["event_id"])
                    sent.append(body)


async def drive(base: str, clients: int, seconds: float, reference: list[dict], resend: float, seed: int) -> tuple[Tally, float]:
    tally = Tally()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(run_client(c, base, reference, deadline, resend, tally, seed) for c in range(clients)))
    return tally, time.monotonic() - started


@contextmanager
def serving(url: str, tokens: Path, log: Path, *options: str) -> Iterator[str]:
    """``channel-ledger serve`` over ``url`` as its own process on a free loopback port, its output
    in ``log``; yields its base URL once ``/health`` answers, and stops it afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    env.pop("CHANNEL_LEDGER_STORE", None)
    with log.open("wb") as sink:
        server = subprocess.Popen(cli("serve", "--port", str(port), "--tokens", str(tokens), "--store", url, *options), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not answer within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def check_store(url: str, accepted: list[str]) -> tuple[int, int, int, int, bool]:
    """(stored load events, accepted but missing, stored more than once, stored but never accepted, chain ok)."""
    from ledger.store import LedgerStore

    with LedgerStore(url) as ledger:
        stored = Counter(r.event.event_id for r in ledger.read() if r.event.event_id.startswith("load-"))
    wanted = Counter(accepted)
    missing = sum(1 for e in wanted if stored[e] == 0)
    doubled = sum(1 for e, n in stored.items() if n > 1) + sum(1 for e, n in wanted.items() if n > 1)
    unexpected = sum(1 for e in stored if e not in wanted)
    done = subprocess.run(cli("verify", "--json", "--store", url), cwd=ROOT, capture_output=True)
    chain_ok = done.returncode == 0 and json.loads(done.stdout)["ok"]
    return sum(stored.values()), missing, doubled, unexpected, chain_ok


def run(args: argparse.Namespace) -> Result:
    args.dir.mkdir(parents=True, exist_ok=True)
    with scratch_store(args.backend, args.dir, args.pg, keep=args.keep) as url:
        tokens, reference = prepare(url, args.dir, args.seed)
        log = args.dir / f"serve-{os.getpid()}.log"
        with serving(url, tokens, log, "--workers", str(args.workers), "--log-level", "warning") as base:
            tally, elapsed = asyncio.run(drive(base, args.clients, args.seconds, reference, args.resend, args.seed))
        stored, missing, doubled, unexpected, chain_ok = check_store(url, tally.accepted)
    ms = [v * 1000 for v in tally.latencies]
    return Result(
        clients=args.clients, seconds=round(elapsed, 2), backend=args.backend, workers=args.workers,
        requests=tally.requests, accepted=len(tally.accepted), repeated=tally.repeated, rejected=tally.rejected, failed=tally.failed,
        events_per_second=round(len(tally.accepted) / elapsed, 1), requests_per_second=round(tally.requests / elapsed, 1),
        p50_ms=round(percentile(ms, 0.50), 1), p90_ms=round(percentile(ms, 0.90), 1), p99_ms=round(percentile(ms, 0.99), 1),
        max_ms=round(max(ms, default=0.0), 1), stored=stored, missing=missing, doubled=doubled, unexpected=unexpected,
        chain_ok=chain_ok, statuses=dict(sorted(tally.statuses.items())),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they post (default 30)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg", default=os.environ.get(PG_ENV, DEFAULT_PG), help="PostgreSQL server (a schema of its own is made)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--resend", type=float, default=0.05, help="share of requests that re-send an accepted event")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true", help="keep the store")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps({**asdict(result), "ok": result.ok}, indent=2, sort_keys=True))
    else:
        print(f"serve on {result.backend} ({result.workers} worker{'s' if result.workers > 1 else ''}): {result.clients} clients × {result.seconds:.1f} s, one event a request")
        print(f"  accepted {result.accepted:,} events · {result.events_per_second:,.1f} events/s · {result.requests_per_second:,.1f} requests/s")
        print(f"  latency per request: p50 {result.p50_ms:.1f} ms · p90 {result.p90_ms:.1f} ms · p99 {result.p99_ms:.1f} ms · max {result.max_ms:.1f} ms")
        print(f"  repeated (re-sent, recorded once) {result.repeated:,} · rejected {result.rejected:,} · failed {result.failed:,} · statuses {result.statuses}")
        print(f"  store: {result.stored:,} load events · missing {result.missing} · doubled {result.doubled} · never accepted {result.unexpected} · chain {'intact' if result.chain_ok else 'BROKEN'}")
        print("OK" if result.ok else "FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
