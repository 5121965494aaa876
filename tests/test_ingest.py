"""Ingest (SPEC §2.2): what is accepted, what is rejected (with file, line, field, reason), and
that nothing accepted is ever lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.ingest import Rejection, ingest_files
from ledger.store import LedgerStore
from tests.scenario import CLINIC, jsonl, write

ORDER = """
{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {"phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "knee-2", "product_class": "course_package", "sessions": 2, "session_minutes": 50, "amount": "1000.00"}]}
"""
TICKET = """
{"event_id": "t1", "type": "ownership.transfer_requested", "occurred_at": "2026-08-01T09:00:00+08:00", "ticket_id": "tk-1", "person": {"phone": "18612345678"}, "to_staff_id": "a2", "trigger": "customer_request", "requested_by": "a2", "note": ""}
"""


def session(event_id: str, order: str = "so-1") -> str:
    return f'{{"event_id": "{event_id}", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "{order}", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}}'


def refund(event_id: str, amount: str, refund_id: str = "rf-1") -> str:
    return f'{{"event_id": "{event_id}", "type": "order.refunded", "occurred_at": "2026-07-20T10:00:00+08:00", "refund_id": "{refund_id}", "order_id": "so-1", "amount": "{amount}"}}'


def ingest(store: LedgerStore, tmp_path: Path, text: str, name: str = "events.jsonl", **options):
    return ingest_files(store, [write(tmp_path, text, name)], **options)


def only_rejection(report) -> Rejection:
    assert len(report.rejected) == 1, report.rejected
    return report.rejected[0]


# --- one reproducer per rejection reason ---------------------------------------------------


def test_schema_violation_names_line_field_and_reason(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + '{"event_id": "x1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}')
    r = only_rejection(report)
    assert (r.line, r.event_id, r.field) == (17, "x1", "occurred_at")
    assert r.reason == "a time without an offset is rejected (add e.g. +08:00)"
    assert report.accepted == 16


def test_scan_of_an_unknown_entry_point(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + '{"event_id": "x1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-nowhere"}')
    r = only_rejection(report)
    assert (r.line, r.field, r.reason) == (17, "entry_point_id", "unknown entry point 'qr-nowhere'")


def test_session_for_an_unknown_order(store, tmp_path) -> None:
    r = only_rejection(ingest(store, tmp_path, CLINIC + session("s1", order="so-404")))
    assert (r.line, r.event_id, r.field, r.reason) == (17, "s1", "order_id", "unknown order 'so-404'")


def test_decision_for_an_unknown_ticket(store, tmp_path) -> None:
    line = '{"event_id": "d1", "type": "ownership.transfer_decided", "occurred_at": "2026-08-01T12:00:00+08:00", "ticket_id": "tk-404", "decision": "approved", "decided_by": "m1", "note": ""}'
    r = only_rejection(ingest(store, tmp_path, CLINIC + line))
    assert (r.field, r.reason) == ("ticket_id", "unknown ticket 'tk-404'")


def test_session_beyond_what_remains_on_the_item(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + ORDER + "\n".join(session(f"s{i}") for i in range(3)))
    r = only_rejection(report)
    assert (r.line, r.event_id, r.field) == (20, "s2", "order_id")
    assert r.reason == "no session left on order 'so-1' item 'knee-2' (2 sold, 2 delivered or refunded)"


def test_refund_above_what_was_paid_minus_earlier_refunds(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + ORDER + refund("r1", "600.00") + "\n" + refund("r2", "400.01", "rf-2"))
    r = only_rejection(report)
    assert (r.event_id, r.field) == ("r2", "amount")
    assert r.reason == "refund 400.01 is above what was paid minus earlier refunds (400.00) on order 'so-1'"


def test_conflicting_resend_of_an_event_id(store, tmp_path) -> None:
    ingest(store, tmp_path, CLINIC + ORDER)
    changed = ORDER.replace('"1000.00"', '"999.00"')
    r = only_rejection(ingest(store, tmp_path, changed, name="again.jsonl"))
    assert (r.file.endswith("again.jsonl"), r.line, r.event_id, r.field) == (True, 1, "o1", "event_id")
    assert r.reason.startswith("conflicting re-send: event_id already recorded with different content")


def test_a_ticket_is_decided_once(store, tmp_path) -> None:
    decide = '{{"event_id": "{}", "type": "ownership.transfer_decided", "occurred_at": "2026-08-01T12:00:00+08:00", "ticket_id": "tk-1", "decision": "{}", "decided_by": "m1", "note": ""}}'
    report = ingest(store, tmp_path, CLINIC + TICKET + decide.format("d1", "approved") + "\n" + decide.format("d2", "rejected"))
    r = only_rejection(report)
    assert (r.event_id, r.field, r.reason) == ("d2", "ticket_id", "ticket 'tk-1' was already decided by event 'd1'")


def test_every_rejection_is_reported_not_only_the_first(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + "not json\n" + session("s1", order="so-x") + "\n" + '{"event_id": "q", "type": "nope", "occurred_at": "2026-07-01T00:00:00+08:00"}')
    assert [(r.line, r.field) for r in report.rejected] == [(17, "(line)"), (18, "order_id"), (19, "type")]
    assert report.accepted == 16


# --- idempotency, order, atomicity -----------------------------------------------------------


def test_an_identical_resend_is_counted_as_repeated(store, tmp_path) -> None:
    first = ingest(store, tmp_path, CLINIC + ORDER)
    again = ingest(store, tmp_path, CLINIC + ORDER)
    assert (first.accepted, first.repeated) == (17, 0)
    assert (again.accepted, again.repeated, again.rejected) == (0, 17, [])
    assert len(list(store.read())) == 17


def test_a_resend_with_the_phone_written_differently_is_the_same_event(store, tmp_path) -> None:
    ingest(store, tmp_path, CLINIC + ORDER)
    again = ingest(store, tmp_path, ORDER.replace('"18612345678"', '"+86 186-1234-5678"'), name="b.jsonl")
    assert (again.accepted, again.repeated) == (0, 1)


def test_references_may_resolve_later_in_the_file(store, tmp_path) -> None:
    """A session line before its order line, a scan before its entry point: both accepted."""
    text = session("s1") + "\n" + CLINIC + ORDER
    report = ingest(store, tmp_path, text)
    assert (report.accepted, report.rejected) == (18, [])


def test_late_events_are_accepted_in_a_later_file(store, tmp_path) -> None:
    ingest(store, tmp_path, CLINIC + ORDER)
    late = ingest(store, tmp_path, session("s1"), name="late.jsonl")
    assert (late.accepted, late.rejected) == (1, [])


def test_atomic_writes_nothing_when_any_line_is_rejected(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + ORDER + session("s1", order="so-x"), atomic=True)
    assert not report.written and report.accepted == 0
    assert [r.event_id for r in report.rejected] == ["s1"]
    assert list(store.read()) == []


def test_atomic_writes_everything_when_all_is_well(store, tmp_path) -> None:
    report = ingest(store, tmp_path, CLINIC + ORDER + session("s1"), atomic=True)
    assert report.written and report.accepted == 18
    assert len(list(store.read())) == 18


def test_csv_with_dotted_columns_reports_physical_lines(store, tmp_path) -> None:
    ingest(store, tmp_path, CLINIC)
    csv_text = (
        "event_id,type,occurred_at,person.phone,person.name,via,entry_point_id\n"
        'l1,lead.captured,2026-07-03T14:20:00+08:00,186 1234 5678,"孙\n悦",scan,qr-ortho-a1\n'
        "l2,lead.captured,2026-07-03T14:20:00+08:00,18612345679,,scan,qr-missing\n"
    )
    report = ingest(store, tmp_path, csv_text, name="leads.csv")
    assert report.accepted == 1
    r = only_rejection(report)
    assert (r.line, r.event_id, r.field) == (4, "l2", "entry_point_id")  # header is line 1; l1 spans 2–3
    lead = store.lookup(["l1"])["l1"].event
    assert lead.person.phone == "+8618612345678" and lead.person.name == "孙\n悦"


def test_csv_items_by_index(store, tmp_path) -> None:
    ingest(store, tmp_path, CLINIC)
    csv_text = (
        "event_id,type,occurred_at,order_id,person.wechat_id,store_id,closed_by,paid_via,"
        "items.0.sku,items.0.product_class,items.0.sessions,items.0.session_minutes,items.0.amount,"
        "items.1.sku,items.1.product_class,items.1.sessions,items.1.amount\n"
        "o9,order.paid,2026-07-06T17:30:00+08:00,so-9,wx_a,sh-jingan,c1,store,k12,course_package,12,50,6960.00,ev,assessment,0,199\n"
    )
    report = ingest(store, tmp_path, csv_text, name="orders.csv")
    assert (report.accepted, report.rejected) == (1, [])
    order = store.lookup(["o9"])["o9"].event
    assert [i.sku for i in order.items] == ["k12", "ev"] and order.amount == 7159


def test_bad_bytes_and_huge_lines_are_rejected_and_the_rest_kept(store, tmp_path) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(jsonl(CLINIC).encode() + b'{"event_id": "\xff\xfe"}\n' + b"[" * 100 + b"]" * 100 + b"\n")
    report = ingest_files(store, [str(path)])
    assert report.accepted == 16
    assert [(r.line, r.reason.split(" (")[0]) for r in report.rejected] == [(17, "not UTF-8"), (18, "nested deeper than 32 levels")]


# --- the rules-of-record state kept between runs -----------------------------------------


def test_a_later_ingest_checks_against_the_kept_state_and_it_equals_a_full_replay(store, tmp_path, monkeypatch) -> None:
    """A large ingest keeps its rules-of-record fold; the next one starts from it and replays
    only what came since. It must judge exactly as a replay of every event would: an order paid
    in the first run still refuses a refund above what was paid and a third session."""
    import orjson

    from ledger import ingest as ingest_module
    from ledger.ingest import load_record_state
    from ledger.projector import Projector
    from ledger.recording import RecordState

    monkeypatch.setattr(ingest_module, "KEEP_RECORD_AFTER", 5)
    first = ingest(store, tmp_path, CLINIC + ORDER + session("s1"), "first.jsonl")
    assert not first.rejected
    kept = Projector(store).kept_record()
    assert kept is not None and kept[0] == max(r.position for r in store.read()), "as far as the last recorded event"

    second = ingest(store, tmp_path, "\n".join([session("s2"), session("s3"), refund("r1", "1000.01")]), "second.jsonl")
    reasons = sorted((r.event_id, r.field) for r in second.rejected)
    assert reasons == [("r1", "amount"), ("s3", "order_id")], second.rejected
    assert second.accepted == 1

    replayed = RecordState()
    replayed.replay((r.position, r.event) for r in store.read())
    assert load_record_state(store).state() == replayed.state()
    assert Projector(store).kept_record() == kept and second.accepted < ingest_module.KEEP_RECORD_AFTER, "kept only after enough new events"
    with Projector(store).tables.writing() as w:
        w.clear()  # what a rebuild does first: the settlement projection goes, the ingest's fold stays
    assert Projector(store).kept_record() == kept, "a rebuild costs the next ingest no replay"

    reads: list[int] = []
    read = store.read
    monkeypatch.setattr(store, "read", lambda after=0, **kw: reads.append(after) or read(after=after, **kw))
    assert load_record_state(store).state() == replayed.state() and reads == [kept[0]], "it reads only what came since"

    monkeypatch.setattr(RecordState, "FORMAT", "sha256:another-version-of-the-fold")  # the fold's code changed
    assert RecordState().restore(orjson.loads(kept[1])) is False, "a fold kept by other code is not taken over"
    fresh = load_record_state(store)
    assert reads[1:] == [0], "the next ingest replays the store"
    assert fresh.state() == {**replayed.state(), "format": "sha256:another-version-of-the-fold"}


def test_the_collisions_an_ingest_reports_are_those_a_fold_of_the_whole_store_finds(store, tmp_path, monkeypatch) -> None:
    """The inline collision check folds only the new leads' customers (their components, found
    through the index): the collisions it reports are exactly those of a fold of everything."""
    import orjson

    from cli import ingest_cmd
    from cli.store_cmds import adoption_event
    from ledger.demo import generate
    from ledger.ingest import ingest_events
    from policies import default_rules

    events = list(generate(seed=21, customers=500, months=3))
    cut = len(events) * 3 // 4
    assert not ingest_events(store, [adoption_event(default_rules())]).rejected
    for name, part in (("head.jsonl", events[:cut]), ("tail.jsonl", events[cut:])):
        (tmp_path / name).write_bytes(b"\n".join(orjson.dumps(e) for e in part))
        report = ingest_files(store, [str(tmp_path / name)])
        assert not report.rejected
    by_components = ingest_cmd.collisions_seen(store, report)
    monkeypatch.setattr(ingest_cmd, "COLLISION_CHECK_LEADS", 0)  # the whole store, folded
    whole = ingest_cmd.collisions_seen(store, report)
    assert by_components == whole
    assert whole, "the demo's last quarter has collisions to find"


def test_a_kept_rules_of_record_fold_is_replaced_only_by_one_further_along(store) -> None:
    from ledger.projector import Projector

    projector = Projector(store)
    projector.keep_record(10, b"ten")
    projector.keep_record(5, b"five")  # a slower concurrent ingest finishing last
    assert projector.kept_record() == (10, b"ten")
    projector.keep_record(12, b"twelve")
    assert projector.kept_record() == (12, b"twelve") and projector.kept_record(state=False) == (12, b"")
