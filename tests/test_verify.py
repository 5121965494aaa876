"""Tamper evidence (SPEC §10, issue 7): every kind of tampering with the stored rows, done directly
in the tables of SQLite and PostgreSQL, is found by `verify` at the first position it breaks."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.rows import tuple_row

from ledger import verify as v
from ledger.events import SettlementClosed, parse_event
from ledger.ingest import ingest_events, ingest_files
from ledger.store import (
    CHAIN_TOPIC,
    TOPIC_BY_TYPE,
    LedgerStore,
    chain_next,
    content_digest,
    parse_store_url,
    pg_connect_args,
)
from ledger.verify import digest_of_stored, verify
from tests.golden import run_cli
from tests.scenario import CLINIC, write

CUSTOMERS = 40


def journeys(n: int = CUSTOMERS, prefix: str = "j") -> tuple[str, str]:
    """Leads and paid orders of ``n`` customers, and two delivered sessions of each order."""
    sales, sessions = [], []
    for i in range(n):
        phone = f"186{i:08d}"
        sales.append(orjson.dumps({"event_id": f"{prefix}-lead-{i}", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {"phone": phone}, "via": "scan", "entry_point_id": "qr-ortho-a1"}).decode())
        sales.append(orjson.dumps({
            "event_id": f"{prefix}-order-{i}", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": f"{prefix}-so-{i}",
            "person": {"phone": phone}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store",
            "items": [{"sku": "knee-3", "product_class": "course_package", "sessions": 3, "session_minutes": 50, "amount": f"{900 + i}.00"}],
        }).decode())
        for k in range(2):
            sessions.append(orjson.dumps({"event_id": f"{prefix}-sess-{i}-{k}", "type": "session.delivered", "occurred_at": f"2026-07-{8 + k:02d}T10:00:00+08:00", "order_id": f"{prefix}-so-{i}", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}).decode())
    return "\n".join(sales), "\n".join(sessions)


def build(url: str, tmp_path: Path) -> None:
    """Three writes: the clinic, the sales, the sessions (176 events in all)."""
    sales, sessions = journeys()
    with LedgerStore(url) as store:
        for name, text in (("clinic.jsonl", CLINIC), ("sales.jsonl", sales), ("sessions.jsonl", sessions)):
            report = ingest_files(store, [write(tmp_path, text, name)])
            assert not report.rejected, report.rejected[:3]
        assert verify(store).ok


# --- raw access to the events table (what an intruder with database access can do) ----------------


@dataclass(frozen=True)
class Row:
    position: int
    originator_id: str
    version: int
    topic: str
    state: dict[str, Any]

    @property
    def is_event(self) -> bool:
        return self.topic != CHAIN_TOPIC


class RawTable:
    """The events table, edited with plain SQL behind the ledger's back."""

    def __init__(self, url: str):
        with LedgerStore(url) as store:
            self.kind = store.location.kind
            self.env = store.location.env
            name = store.recorder.events_table_name
            self.table = name if self.kind == "sqlite" else f'"{store.recorder.datastore.schema}"."{name}"'
        self.pos = "rowid" if self.kind == "sqlite" else "notification_id"

    def run(self, sql: str, params: tuple = ()) -> list[tuple]:
        sql = sql.format(t=self.table, pos=self.pos)
        if self.kind == "sqlite":
            with sqlite3.connect(self.env["SQLITE_DBNAME"]) as conn:
                rows = conn.execute(sql.replace("%s", "?"), params).fetchall()
            conn.close()
            return rows
        with psycopg.connect(**pg_connect_args(self.env), autocommit=True, row_factory=tuple_row) as conn:
            curs = conn.execute(sql, params)
            return curs.fetchall() if curs.description else []

    def rows(self) -> list[Row]:
        found = self.run("SELECT {pos}, originator_id, originator_version, topic, state FROM {t} ORDER BY {pos}")
        return [Row(p, o, ver, topic, orjson.loads(bytes(state))) for p, o, ver, topic, state in found]

    def events(self) -> list[Row]:
        return [r for r in self.rows() if r.is_event]

    def row_of(self, event_id: str) -> Row:
        return next(r for r in self.rows() if r.originator_id == f"ev:{event_id}")

    def set_state(self, position: int, state: dict[str, Any]) -> None:
        self.run("UPDATE {t} SET state = %s WHERE {pos} = %s", (orjson.dumps(state), position))

    def delete(self, position: int) -> None:
        self.run("DELETE FROM {t} WHERE {pos} = %s", (position,))

    def swap_positions(self, a: int, b: int) -> None:
        spare = 10_000_000
        self.run("UPDATE {t} SET {pos} = %s WHERE {pos} = %s", (spare, a))
        self.run("UPDATE {t} SET {pos} = %s WHERE {pos} = %s", (a, b))
        self.run("UPDATE {t} SET {pos} = %s WHERE {pos} = %s", (b, spare))

    def swap_contents(self, a: Row, b: Row) -> None:
        self.run("UPDATE {t} SET topic = %s, state = %s WHERE {pos} = %s", (b.topic, orjson.dumps(b.state), a.position))
        self.run("UPDATE {t} SET topic = %s, state = %s WHERE {pos} = %s", (a.topic, orjson.dumps(a.state), b.position))

    def make_room_after(self, position: int) -> None:
        """Shift every later row one position on, leaving ``position + 1`` free."""
        self.run("UPDATE {t} SET {pos} = {pos} + 1000000 WHERE {pos} > %s", (position,))
        self.run("UPDATE {t} SET {pos} = {pos} - 999999 WHERE {pos} > 1000000")

    def insert(self, originator_id: str, version: int, topic: str, state: dict[str, Any], position: int | None = None) -> int:
        if position is None:
            self.run("INSERT INTO {t} (originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %s)", (originator_id, version, topic, orjson.dumps(state)))
            return self.rows()[-1].position
        self.run("INSERT INTO {t} ({pos}, originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %s, %s)", (position, originator_id, version, topic, orjson.dumps(state)))
        return position


def forged(event_id: str, after_link: str | None, order: str = "j-so-3") -> tuple[str, dict[str, Any]]:
    """A well-formed stored session event, linked after ``after_link`` (or with a made-up link)."""
    event = parse_event({"event_id": event_id, "type": "session.delivered", "occurred_at": "2026-07-09T11:00:00+08:00", "order_id": order, "clinician_id": "p2", "room_id": "room-a", "minutes": 50})
    digest = content_digest(event)
    link = chain_next(after_link, digest) if after_link else "ab" * 32
    wire = event.wire()
    del wire["type"]
    return TOPIC_BY_TYPE[event.type], {"v": 1, "e": wire, "d": digest, "c": link}


def middle_of_write(raw: RawTable) -> tuple[Row, Row, Row]:
    """Three consecutive event rows inside one write (the sales write)."""
    rows = raw.rows()
    i = next(i for i, r in enumerate(rows) if r.originator_id == "ev:j-order-10")
    assert all(r.is_event for r in rows[i - 1 : i + 2])
    return rows[i - 1], rows[i], rows[i + 1]


# --- the tamperings: each returns the (position, kind) verify must report -------------------------


def changed_amount(raw: RawTable) -> tuple[int, str]:
    row = raw.row_of("j-order-7")
    row.state["e"]["items"][0]["amount"] = "9.00"
    raw.set_state(row.position, row.state)
    return row.position, v.CHANGED


def changed_amount_and_digest(raw: RawTable) -> tuple[int, str]:
    row = raw.row_of("j-order-7")
    row.state["e"]["items"][0]["amount"] = "9.00"
    row.state["d"] = digest_of_stored("order.paid", row.state["e"])
    raw.set_state(row.position, row.state)
    return row.position, v.CHANGED


def changed_event_type(raw: RawTable) -> tuple[int, str]:
    row = raw.row_of("j-sess-3-0")
    raw.run("UPDATE {t} SET topic = %s WHERE {pos} = %s", (TOPIC_BY_TYPE["assessment.attended"], row.position))
    return row.position, v.CHANGED


def deleted_in_the_middle(raw: RawTable) -> tuple[int, str]:
    _, row, after = middle_of_write(raw)
    raw.delete(row.position)
    return after.position, v.DELETED


def deleted_first_event(raw: RawTable) -> tuple[int, str]:
    first, second = raw.events()[:2]
    raw.delete(first.position)
    return second.position, v.DELETED


def deleted_last_of_a_write(raw: RawTable) -> tuple[int, str]:
    rows = raw.rows()
    i = next(i for i, r in enumerate(rows) if not r.is_event and r.version == 2)
    raw.delete(rows[i - 1].position)
    return rows[i].position, v.DELETED


def deleted_write_record(raw: RawTable) -> tuple[int, str]:
    links = [r for r in raw.rows() if not r.is_event]
    raw.delete(links[1].position)
    return links[2].position, v.DELETED


def swapped_neighbours(raw: RawTable) -> tuple[int, str]:
    _, a, b = middle_of_write(raw)
    raw.swap_positions(a.position, b.position)
    return a.position, v.SWAPPED


def swapped_far_apart(raw: RawTable) -> tuple[int, str]:
    a, b = raw.row_of("j-order-2"), raw.row_of("j-sess-30-1")  # different writes
    raw.swap_positions(a.position, b.position)
    return a.position, v.SWAPPED


def swapped_contents(raw: RawTable) -> tuple[int, str]:
    a, b = raw.row_of("j-order-4"), raw.row_of("j-order-5")
    raw.swap_contents(a, b)
    return a.position, v.SWAPPED


def inserted_at_the_end(raw: RawTable) -> tuple[int, str]:
    topic, state = forged("forged-1", None)
    return raw.insert("ev:forged-1", 1, topic, state), v.INSERTED


def inserted_at_the_end_with_a_plausible_link(raw: RawTable) -> tuple[int, str]:
    topic, state = forged("forged-1", raw.events()[-1].state["c"])
    return raw.insert("ev:forged-1", 1, topic, state), v.INSERTED


def inserted_in_the_middle(raw: RawTable) -> tuple[int, str]:
    before, _, _ = middle_of_write(raw)
    raw.make_room_after(before.position)
    topic, state = forged("forged-1", None)
    return raw.insert("ev:forged-1", 1, topic, state, position=before.position + 1), v.INSERTED


def inserted_in_the_middle_with_a_plausible_link(raw: RawTable) -> tuple[int, str]:
    before, _, _ = middle_of_write(raw)
    raw.make_room_after(before.position)
    topic, state = forged("forged-1", before.state["c"])
    return raw.insert("ev:forged-1", 1, topic, state, position=before.position + 1), v.INSERTED


def inserted_second_version_of_a_stream(raw: RawTable) -> tuple[int, str]:
    topic, state = forged("j-sess-1-0", raw.events()[-1].state["c"])
    return raw.insert("ev:j-sess-1-0", 2, topic, state), v.INSERTED


def inserted_with_an_unknown_topic(raw: RawTable) -> tuple[int, str]:
    _, state = forged("forged-1", raw.events()[-1].state["c"])
    return raw.insert("ev:forged-1", 1, "evil.module:Payout", state), v.UNKNOWN_TOPIC


def altered_link(raw: RawTable) -> tuple[int, str]:
    _, row, _ = middle_of_write(raw)
    row.state["c"] = "cd" * 32
    raw.set_state(row.position, row.state)
    return row.position, v.LINK


def altered_write_record(raw: RawTable) -> tuple[int, str]:
    record = [r for r in raw.rows() if not r.is_event][1]
    record.state["head"] = "ab" * 32
    raw.set_state(record.position, record.state)
    return record.position, v.WRITE_RECORD


TAMPERINGS: list[Callable[[RawTable], tuple[int, str]]] = [
    changed_amount,
    changed_amount_and_digest,
    changed_event_type,
    deleted_in_the_middle,
    deleted_first_event,
    deleted_last_of_a_write,
    deleted_write_record,
    swapped_neighbours,
    swapped_far_apart,
    swapped_contents,
    inserted_at_the_end,
    inserted_at_the_end_with_a_plausible_link,
    inserted_in_the_middle,
    inserted_in_the_middle_with_a_plausible_link,
    inserted_second_version_of_a_stream,
    inserted_with_an_unknown_topic,
    altered_link,
    altered_write_record,
]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=[t.__name__ for t in TAMPERINGS])
def test_tampering_is_found_at_the_first_broken_position(tamper, store_url: str, tmp_path: Path) -> None:
    build(store_url, tmp_path)
    raw = RawTable(store_url)
    position, kind = tamper(raw)
    with LedgerStore(store_url) as store:
        report = verify(store)
        in_parallel = verify(store, workers=2)  # the fast path finds it too, and hands over
    assert not report.ok
    found = report.first_break
    assert found is not None
    assert (found.position, found.kind) == (position, kind), found
    assert found.reason and "\n" not in found.reason
    assert replace(in_parallel, seconds=0) == replace(report, seconds=0)  # the same break, the same counts


def test_an_untouched_store_verifies_with_its_counts_and_head(store_url: str, tmp_path: Path) -> None:
    build(store_url, tmp_path)
    with LedgerStore(store_url) as store:
        report = verify(store)
        assert report.ok and report.first_break is None
        assert report.events == 16 + CUSTOMERS * 4
        assert report.writes == store.head().version == 3
        assert report.head == store.head().hash
        assert report.rows == report.events + report.writes
        assert report.position == store.position()
        for workers in (2, 3):  # the fast path: ranges checked in worker processes, then stitched
            in_parallel = verify(store, workers=workers)
            assert replace(in_parallel, seconds=0) == replace(report, seconds=0)


def test_an_empty_store_verifies(store: LedgerStore) -> None:
    report = verify(store)
    assert report.ok and report.events == 0 and report.writes == 0


def test_stored_digests_are_recomputed_from_the_stored_bytes(store: LedgerStore) -> None:
    from tests.scenario import scenario

    events = scenario(CLINIC)
    store.append(events, store.head())
    for recorded, event in zip(store.read(), events):
        wire = event.wire()
        del wire["type"]
        assert digest_of_stored(event.type, orjson.loads(orjson.dumps(wire))) == recorded.digest == content_digest(event)


def test_a_closed_month_catches_a_rewritten_chain(store_url: str, tmp_path: Path) -> None:
    """An intruder who rewrites every later digest, link and write record leaves a self-consistent
    chain; the chain head recorded by a closed month still gives them away."""
    build(store_url, tmp_path)
    with LedgerStore(store_url) as store:
        close = SettlementClosed(event_id="close-2026-07", occurred_at="2026-08-01T00:00:00+08:00", month="2026-07", digest="0" * 64, position=store.position(), chain_head=store.head().hash)
        assert ingest_events(store, [close]).accepted == 1
        assert verify(store).anchors == verify(store, workers=2).anchors == 1
    raw = RawTable(store_url)
    target = raw.row_of("j-order-7")
    target.state["e"]["items"][0]["amount"] = "9.00"
    rewrite_chain_from(raw, target)
    with LedgerStore(store_url) as store:
        report = verify(store)
    assert report.first_break is not None and report.first_break.kind == v.ANCHOR, report.first_break
    assert report.first_break.position == raw.row_of("close-2026-07").position


def rewrite_chain_from(raw: RawTable, changed: Row) -> None:
    link = v.GENESIS
    for row in raw.rows():
        state = changed.state if row.position == changed.position else row.state
        if row.is_event:
            state["d"] = digest_of_stored(v.TYPE_BY_TOPIC[row.topic], state["e"])
            link = chain_next(link, state["d"])
            state["c"] = link
        else:
            state["head"] = link
        raw.set_state(row.position, state)


def test_the_command_prints_the_break_in_one_line_and_exits_1(sqlite_store_url: str, tmp_path: Path) -> None:
    build(sqlite_store_url, tmp_path)
    intact = run_cli(["verify", "--store", sqlite_store_url])
    assert intact.returncode == 0, intact.stderr.decode()
    assert intact.stdout.decode().startswith("chain intact: 176 events in 3 writes")
    position, _ = changed_amount(RawTable(sqlite_store_url))
    broken = run_cli(["verify", "--store", sqlite_store_url])
    assert broken.returncode == 1
    first = broken.stdout.decode().splitlines()[0]
    assert first == f"BROKEN at position {position:,}: changed content: event j-order-7 (order.paid) was changed: its content no longer matches its digest"
    as_json = orjson.loads(run_cli(["verify", "--store", sqlite_store_url, "--json"]).stdout)
    assert as_json["ok"] is False
    assert as_json["first_break"]["position"] == position and as_json["first_break"]["kind"] == "changed content"
    assert {"events", "writes", "head", "seconds", "events_per_second", "position"} <= set(as_json)


def test_the_fast_path_catches_a_break_on_either_side_of_a_range_boundary(sqlite_store_url: str, tmp_path: Path) -> None:
    """The parallel check splits positions into ranges and stitches them: a row deleted or
    altered right at a seam must still fail it (and the in-order walk then explains it)."""
    build(sqlite_store_url, tmp_path)
    original = Path(parse_store_url(sqlite_store_url).env["SQLITE_DBNAME"])
    with LedgerStore(sqlite_store_url) as store:
        last = store.position()
    parts = 2 * v.RANGES_PER_WORKER
    span = -(-last // parts)
    seams = sorted({p for k in range(1, parts) for p in (k * span, k * span + 1) if p <= last})
    for position in seams:
        for how in ("delete", "relink"):
            copy = tmp_path / f"seam-{position}-{how}.db"
            shutil.copy(original, copy)
            url = f"sqlite:///{copy}"
            raw = RawTable(url)
            row = next(r for r in raw.rows() if r.position == position)
            if how == "delete":
                raw.delete(position)
            elif row.is_event:
                row.state["c"] = "ef" * 32
                raw.set_state(position, row.state)
            else:
                row.state["head"] = "ef" * 32
                raw.set_state(position, row.state)
            with LedgerStore(url) as store:
                low, high = v._Source.of(store).bounds()
                assert not v._check_in_parallel(v._Source.of(store), low, high, 2, None).ok, (position, how)
                serial, in_parallel = verify(store, workers=1), verify(store, workers=2)
                assert not serial.ok
                assert replace(in_parallel, seconds=0) == replace(serial, seconds=0), (position, how)
