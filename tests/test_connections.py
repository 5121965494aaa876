"""Connections (issue 7): a PostgreSQL store that cannot be reached, refuses the login, lacks the
database, times out on the table lock or drops the connection mid-ingest gives one clear
``Error: …`` line and a non-zero exit — no traceback, no password — and loses nothing accepted."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from ledger.store import LedgerStore, parse_store_url, pg_connect_args
from ledger.verify import verify
from tests.conftest import LOCAL_PG, PG_BASE
from tests.golden import run_cli
from tests.scenario import CLINIC, write

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-Pa55word"
needs_local_pg = pytest.mark.skipif(PG_BASE != LOCAL_PG, reason="needs the local PostgreSQL socket")


def error_text(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode()
    assert done.returncode == 1, (done.returncode, err, done.stdout.decode())
    assert "Traceback" not in err and "Traceback" not in done.stdout.decode(), err
    assert err.startswith("Error: "), err
    assert PASSWORD not in err and PASSWORD not in done.stdout.decode()
    return err


def one_line(err: str) -> str:
    """The error's message as one line (undoing the console's wrapping; without the hint)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("hint:")]
    return " ".join(" ".join(lines).split())


# --- a server that asks for a password and refuses it ------------------------------------------------


@pytest.fixture
def refusing_server() -> Iterator[int]:
    """A TCP server speaking just enough of the PostgreSQL protocol to refuse a password login."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            while True:  # SSL / GSS encryption requests are declined with 'N'
                length, code = struct.unpack("!ii", conn.recv(8, socket.MSG_WAITALL))
                if code in (80877103, 80877104):
                    conn.sendall(b"N")
                    continue
                conn.recv(length - 8, socket.MSG_WAITALL)  # the startup message
                break
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            kind = conn.recv(1)
            (length,) = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))
            conn.recv(length - 4, socket.MSG_WAITALL)
            assert kind == b"p"
            fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"clinic\"\0\0"
            conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


# --- refusals at the door -----------------------------------------------------------------------------


def refusal_cases(port: int) -> dict[str, tuple[str, str]]:
    sock = "host=/var/run/postgresql"
    return {
        "unreachable": (f"postgresql://root:{PASSWORD}@127.0.0.1:1/test?schema=s_x", "Connection refused"),
        "wrong password": (f"postgresql://clinic:{PASSWORD}@127.0.0.1:{port}/test?schema=s_x", "password authentication failed"),
        "unknown user": (f"postgresql://no_such_role_{uuid.uuid4().hex[:6]}:{PASSWORD}@/test?{sock}&schema=s_x", "does not exist"),
        "missing database": (f"postgresql://root:{PASSWORD}@/no_such_db_{uuid.uuid4().hex[:6]}?{sock}&schema=s_x", "does not exist"),
    }


CASES = ["unreachable", "wrong password", "unknown user", "missing database"]


@needs_local_pg
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["ingest", "verify"])
def test_a_store_that_refuses_gives_one_clear_error(case: str, command: str, refusing_server: int, tmp_path: Path) -> None:
    url, reason = refusal_cases(refusing_server)[case]
    args = ["ingest", write(tmp_path, CLINIC)] if command == "ingest" else ["verify"]
    started = time.monotonic()
    err = error_text(run_cli([*args, "--store", url]))
    assert reason in one_line(err), err
    assert time.monotonic() - started < 9  # said at once, not after the pool gives up


@needs_local_pg
@pytest.mark.parametrize("case", ["unknown user"])
def test_a_store_url_without_a_schema_gives_the_reason_too(case: str, refusing_server: int) -> None:
    url, reason = refusal_cases(refusing_server)[case]
    url = url.replace("?schema=s_x", "?connect_timeout=2").replace("&schema=s_x", "&connect_timeout=2")
    err = error_text(run_cli(["verify", "--store", url]))
    assert reason in one_line(err), err


def test_a_long_error_stays_on_one_line(tmp_path: Path) -> None:
    url = f"postgresql://root:{PASSWORD}@127.0.0.1:1/test?schema=a_rather_long_schema_name_for_a_clinic_group_store"
    err = error_text(run_cli(["verify", "--store", url]))
    assert len([line for line in err.splitlines() if not line.startswith("hint:")]) == 1, err


# --- trouble during an ingest -----------------------------------------------------------------------


def ingest_cli(path: str, url: str, **env: str) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb", **env}
    full_env.pop("CHANNEL_LEDGER_STORE", None)
    return subprocess.Popen([sys.executable, "-m", "cli.main", "ingest", path, "--store", url, "--json"], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def admin() -> psycopg.Connection:
    """A connection of the test's own to the test server (to lock, or to pull the plug)."""
    assert PG_BASE is not None
    env = parse_store_url(PG_BASE).env
    return psycopg.connect(**pg_connect_args(env), autocommit=True)


def event_ids(url: str) -> Counter[str]:
    with LedgerStore(url) as store:
        return Counter(r.event.event_id for r in store.read())


def file_ids(path: str) -> set[str]:
    return {orjson.loads(line)["event_id"] for line in Path(path).read_bytes().splitlines() if line.strip()}


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 10,000 valid events: five batches, so there is a 'mid-ingest' to interrupt."""
    from ledger.demo import write_jsonl

    path = tmp_path_factory.mktemp("connections") / "demo.jsonl"
    write_jsonl(str(path), customers=1000)
    return str(path)


def events_table(url: str) -> str:
    with LedgerStore(url) as store:
        return f'"{store.recorder.datastore.schema}"."{store.recorder.events_table_name}"'


def interrupt_mid_ingest(path: str, url: str, application: str, interrupt) -> subprocess.CompletedProcess[bytes]:
    """Run ``ingest`` and, once it has written something, call ``interrupt(admin connection)``
    until the ingest ends."""
    table = events_table(url)  # (creates the store: the ingest below only opens it)
    proc = ingest_cli(path, url, PGAPPNAME=application)
    interrupted = False
    with admin() as conn:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if interrupted or conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
                interrupted = interrupt(conn) or interrupted
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
    assert interrupted, "the ingest finished before it could be interrupted"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def rerun_completes(path: str, url: str, before: Counter[str]) -> None:
    """Nothing accepted before the trouble is lost, and the same file run again completes."""
    assert before and max(before.values()) == 1
    again = ingest_cli(path, url)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    report = orjson.loads(out)
    assert report["repeated"] == len(before) and not report["rejected"]
    recorded = event_ids(url)
    assert max(recorded.values()) == 1 and set(recorded) == file_ids(path)
    with LedgerStore(url) as store:
        assert verify(store).ok


def test_a_lock_timeout_mid_ingest_gives_one_clear_error_and_loses_nothing(demo_file: str, pg_store_url: str) -> None:
    url = pg_store_url + "&lock_timeout=1"
    table = events_table(url)
    holding: list[psycopg.Connection] = []

    def hold_the_lock(_: psycopg.Connection) -> bool:
        if not holding:  # what a writer holds while it writes, held for longer than the timeout
            holder = admin()
            holder.execute("BEGIN")
            holder.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            holding.append(holder)
        return True

    try:
        done = interrupt_mid_ingest(demo_file, url, f"ledger-test-{uuid.uuid4().hex[:10]}", hold_the_lock)
    finally:
        for holder in holding:
            holder.close()
    message = one_line(error_text(done))
    assert "lock timeout" in message, message
    rerun_completes(demo_file, url, event_ids(url))


def test_a_lock_held_before_the_ingest_starts_times_out_too(pg_store_url: str, tmp_path: Path) -> None:
    url = pg_store_url + "&lock_timeout=1"
    assert run_cli(["ingest", write(tmp_path, CLINIC), "--store", url]).returncode == 0
    with admin() as holder, holder.transaction():
        holder.execute(f"LOCK TABLE {events_table(url)} IN EXCLUSIVE MODE")
        more = '{"event_id": "r-store3", "type": "store.registered", "occurred_at": "2026-07-01T09:00:00+08:00", "store_id": "sh-pudong", "name": "浦东店"}'
        proc = ingest_cli(write(tmp_path, more, "more.jsonl"), url)
        try:
            out, err = proc.communicate(timeout=6)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert "lock timeout" in one_line(error_text(done))


def test_a_dropped_connection_mid_ingest_gives_one_clear_error_and_loses_nothing(demo_file: str, pg_store_url: str) -> None:
    application = f"ledger-test-{uuid.uuid4().hex[:10]}"  # names this ingest's sessions, and only them

    def pull_the_plug(conn: psycopg.Connection) -> bool:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (application,)).fetchall()
        return any(ok for (ok,) in rows)

    done = interrupt_mid_ingest(demo_file, pg_store_url, application, pull_the_plug)
    message = one_line(error_text(done))
    assert "terminating connection due to administrator command" in message or "connection" in message.lower(), message
    rerun_completes(demo_file, pg_store_url, event_ids(pg_store_url))
