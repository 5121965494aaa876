"""Personal data at rest, in output and forgotten (SPEC §10, issue 7 part 5), on both backends.

With a master key, names, phones, WeChat ids, intake answers and notes are encrypted in the
store and identities are keyed hashes; ``forget`` shreds one customer's data keys and every figure
(attribution, closed statements, liability) stays as it was, ``verify`` passing.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from cli.store_cmds import initialise
from ledger import demo
from ledger.events import parse_event
from ledger.ingest import ingest_events, ingest_files
from ledger.neighbourhood import neighbourhood
from ledger.privacy import ForgetRefused, forget
from ledger.sealing import FORGOTTEN, KEY_ENV, WITHHELD, MasterKey
from ledger.store import LedgerStore, StoreError, parse_store_url, pg_connect_args
from ledger.verify import CHANGED, verify
from tests.golden import run_cli
from tests.scenario import CLINIC, scenario, write

SECRET = bytes(range(32))
KEY = MasterKey(SECRET)
KEY_TEXT = base64.b64encode(SECRET).decode()
WITH_KEY = {KEY_ENV: KEY_TEXT}

# Personal data that must never be found at rest, each distinct enough to search the raw rows for.
PHONE, NAME, WECHAT, PLATFORM, PAIN, NOTE = "13812348000", "欧阳娜娜", "wxid_ouyang77", "douyin:99817", "右踝韧带", "客户欧阳要求换顾问"
JOURNEY = CLINIC + f"""
{{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {{"phone": "138 1234 8000", "name": "{NAME}"}}, "via": "scan", "entry_point_id": "qr-ortho-a1"}}
{{"event_id": "t1", "type": "lead.triaged", "occurred_at": "2026-07-03T15:00:00+08:00", "person": {{"phone": "{PHONE}"}}, "by": "a1", "intake": {{"pain_site": "{PAIN}", "duration_days": 45, "trauma": true, "prior_imaging": false, "sport": "羽毛球"}}, "route": "offline_assessment", "tags": {{"injury_type": "{PAIN}", "urgency": "high"}}}}
{{"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T17:30:00+08:00", "order_id": "so-1", "person": {{"phone": "{PHONE}", "wechat_id": "{WECHAT}"}}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{{"sku": "pkg-10", "product_class": "course_package", "sessions": 10, "session_minutes": 50, "amount": "5000.00"}}]}}
{{"event_id": "d1", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "so-1", "clinician_id": "p1", "room_id": "room-a", "minutes": 50}}
{{"event_id": "k1", "type": "ownership.transfer_requested", "occurred_at": "2026-07-09T09:00:00+08:00", "ticket_id": "tk-1", "person": {{"wechat_id": "{WECHAT}"}}, "to_staff_id": "c1", "trigger": "customer_request", "requested_by": "c1", "note": "{NOTE}"}}
{{"event_id": "m1", "type": "customers.merged", "occurred_at": "2026-07-10T10:00:00+08:00", "survivor": {{"phone": "{PHONE}"}}, "merged": {{"platform_user": "{PLATFORM}"}}, "by": "m1", "reason": "{NOTE}"}}
"""
SECRETS = (PHONE, "+86" + PHONE, NAME, WECHAT, PLATFORM, PAIN, NOTE)


def journey_store(url: str, key: MasterKey | None = KEY) -> str:
    with LedgerStore(url, key=key) as store:
        initialise(store)
        report = ingest_events(store, scenario(JOURNEY))
        assert not report.rejected, report.rejected
    return url


def raw_rows(url: str) -> Iterator[bytes]:
    """Everything the store's tables hold, straight from the database (not through the ledger)."""
    location = parse_store_url(url)
    if location.kind == "sqlite":
        with sqlite3.connect(location.env["SQLITE_DBNAME"]) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    yield repr(row).encode() + b"".join(c for c in row if isinstance(c, bytes))
        return
    import psycopg

    schema = location.env["POSTGRES_SCHEMA"]
    with psycopg.connect(**pg_connect_args(location.env)) as conn:
        tables = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{schema}"."{table}"'):
                yield repr(row).encode() + b"".join(bytes(c) for c in row if isinstance(c, (bytes, memoryview)))


def found_at_rest(url: str) -> set[str]:
    blob = b"\n".join(raw_rows(url))
    return {s for s in SECRETS if s.encode() in blob}


def cli(*args: str, env: dict[str, str] | None = WITH_KEY) -> tuple[int, str, str]:
    done = run_cli(list(args), env=env)
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")


def cli_json(*args: str, env: dict[str, str] | None = WITH_KEY) -> dict:
    code, out, err = cli(*args, "--json", env=env)
    assert code == 0, err
    return orjson.loads(out)


# --- at rest -------------------------------------------------------------------------------------


def test_personal_data_is_encrypted_at_rest_and_only_with_a_key(store_url: str, tmp_path: Path) -> None:
    journey_store(store_url)
    assert found_at_rest(store_url) == set()
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    journey_store(plain, key=None)  # without a key the store is as before: the data is in the clear
    assert {PHONE, NAME, WECHAT, PAIN, NOTE} <= found_at_rest(plain)


def test_with_the_key_events_read_back_whole_and_identify_by_keyed_hashes(store_url: str) -> None:
    journey_store(store_url)
    with LedgerStore(store_url, key=KEY) as store:
        events = {r.event.event_id: r for r in store.read()}
        assert store.sealed
    lead, triage, order = events["l1"].event, events["t1"].event, events["o1"].event
    assert lead.person.name == NAME and lead.person.phone == "+86" + PHONE
    assert triage.intake.pain_site == PAIN and triage.tags.urgency == "high"
    assert events["k1"].event.note == NOTE and events["m1"].event.reason == NOTE
    assert order.person.identity_keys() == (KEY.key_form("phone:+86" + PHONE), KEY.key_form("wechat:" + WECHAT))
    assert all(":#" in k for k in order.person.identity_keys())
    # Without the key: the same identities and figures, the personal data withheld.
    with LedgerStore(store_url, key=None) as store:
        sealed = {r.event.event_id: r.event for r in store.read()}
    assert sealed["l1"].person.phone == WITHHELD and sealed["l1"].person.name is None
    assert sealed["o1"].person.identity_keys() == order.person.identity_keys()
    assert sealed["t1"].wire()["intake"] == WITHHELD and sealed["k1"].note == WITHHELD


def test_lookups_by_phone_wechat_and_platform_user_work_through_the_hashes(store_url: str) -> None:
    journey_store(store_url)
    with LedgerStore(store_url, key=KEY) as store:
        ids = {r.event.event_id for r in neighbourhood(store, "138-1234-8000")}
    assert {"l1", "t1", "o1", "d1", "k1", "m1"} <= ids
    customer = cli_json("attribution", PHONE, "--store", store_url)["customer_id"]
    assert cli_json("attribution", WECHAT, "--store", store_url)["customer_id"] == customer
    assert cli_json("attribution", PLATFORM, "--store", store_url)["customer_id"] == customer
    listed = cli_json("events", "--customer", WECHAT, "--store", store_url)
    assert {e["event"]["event_id"] for e in listed["events"]} >= {"l1", "o1", "d1"}


def test_resending_is_idempotent_with_a_key_and_after_forgetting(store_url: str, tmp_path: Path) -> None:
    journey_store(store_url)
    again = write(tmp_path, JOURNEY)
    changed = write(tmp_path, JOURNEY.replace(NAME, "欧阳娜"), name="changed.jsonl")
    with LedgerStore(store_url, key=KEY) as store:
        report = ingest_files(store, [again])
        assert report.accepted == 0 and not report.rejected and report.repeated == len(scenario(JOURNEY))
        report = ingest_files(store, [changed])
        assert [(r.event_id, r.field) for r in report.rejected] == [("l1", "event_id")]
        forget(store, PHONE, "dpo", "2026-12-01T00:00:00+00:00")
        report = ingest_files(store, [again])
        assert report.accepted == 0 and not report.rejected


# --- the key -------------------------------------------------------------------------------------


def test_the_key_is_checked_and_personal_data_is_never_written_in_the_clear(store_url: str, tmp_path: Path) -> None:
    journey_store(store_url)
    with pytest.raises(StoreError, match="not the one"):
        LedgerStore(store_url, key=MasterKey(bytes(32)))
    more = write(tmp_path, '{"event_id": "f9", "type": "followup.logged", "occurred_at": "2026-07-11T10:00:00+08:00", "person": {"phone": "13812348000"}, "by": "a1", "medium": "phone"}')
    with LedgerStore(store_url, key=None) as store, pytest.raises(StoreError, match="encrypts personal data"):
        ingest_files(store, [more])
    plain = journey_store(f"sqlite:///{tmp_path / 'plain.db'}", key=None)
    with LedgerStore(plain, key=KEY) as store, pytest.raises(StoreError, match="cannot be encrypted in place"):
        ingest_files(store, [more])


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert MasterKey.from_env({}) is None
    assert MasterKey.from_env({KEY_ENV: KEY_TEXT}).check == KEY.check
    assert MasterKey.from_env({KEY_ENV: SECRET.hex()}).check == KEY.check
    (tmp_path / "key").write_bytes(SECRET)
    assert MasterKey.from_env({"CHANNEL_LEDGER_KEY_FILE": str(tmp_path / "key")}).check == KEY.check
    code, _, err = cli("events", "--store", f"sqlite:///{tmp_path / 'x.db'}", env={KEY_ENV: "too-short"})
    assert code == 1 and "32 bytes" in err and "too-short" not in err


# --- forgetting ----------------------------------------------------------------------------------


def demo_store(url: str) -> str:
    with LedgerStore(url, key=KEY) as store:
        initialise(store)
        report = ingest_events(store, (parse_event(e) for e in demo.generate(seed=3, customers=40, months=2)))
        assert not report.rejected
    return url


def figures(url: str, customer: str, env: dict[str, str] | None = WITH_KEY) -> dict:
    """Every figure forgetting must leave as it was: statements (digests), liability, attribution."""
    out = {"attribution": cli_json("attribution", customer, "--store", url, env=env)}
    out["attribution"].pop("keys")  # the keys are shown decrypted before and as hashes after
    for month in ("2026-09", "2026-10"):
        out[month] = cli_json("settle", "--month", month, "--store", url, env=env)
    out["liability"] = cli_json("liability", "--as-of", "2026-10-31", "--store", url, env=env)
    return out


def test_forget_shreds_the_personal_data_and_every_figure_stays(store_url: str) -> None:
    demo_store(store_url)
    with LedgerStore(store_url, key=KEY) as store:
        recorded = list(store.read())
    payer = next(
        r.event for r in recorded
        if r.event.type == "order.paid" and r.event.person.phone_is_valid and any(i.product_class == "course_package" for i in r.event.items)
    )
    phone, customer = payer.person.phone, None
    code, out, err = cli("close", "--month", "2026-09", "--store", store_url)
    assert code == 0, err
    customer = cli_json("attribution", phone, "--store", store_url)["customer_id"]
    before = figures(store_url, customer)
    assert any(line["customer_id"] == customer for line in before["2026-09"]["lines"] + before["2026-10"]["lines"])

    code, out, err = cli("forget", phone, "--store", store_url)
    assert code == 1 and "--yes" in err
    done = cli_json("forget", phone, "--yes", "--by", "dpo", "--store", store_url)
    assert done["customer_id"] == customer and done["keys_shredded"] == done["sealed_events"] > 0
    assert phone not in orjson.dumps(done).decode()

    after = figures(store_url, customer)
    assert after == before
    assert figures(store_url, customer, env={}) == before  # and without the key
    with LedgerStore(store_url, key=KEY) as store:
        assert verify(store).ok
        mine = [r for r in store.read() if r.event.person_ref is not None and r.mac is not None and r.position in
                {p for p in store.find(["c:" + customer])} | {r.position for r in recorded if r.event.event_id == payer.event_id}]
        assert mine and all(r.event.person_ref.phone in (FORGOTTEN, None) for r in mine)
        assert store.data_keys([(r.position, "", b'"~sealed":') for r in mine]) == {}  # no key left to open them
        assert store.forgotten()[-1][1:] == (customer, done["keys_shredded"], "dpo")
        others = [r for r in store.read() if r.event.type == "lead.captured" and r.event.person.phone not in (FORGOTTEN, None)]
        assert others, "only the forgotten customer's data is shredded"
    code, out, _ = cli("settle", "--month", "2026-09", "--store", store_url)
    assert code == 0 and "closed" in out
    assert phone.removeprefix("+86") not in "\n".join(cli("trace", customer, "--unmasked", "--store", store_url)[1:])


def test_forget_refuses_without_encryption_or_key(sqlite_store_url: str, tmp_path: Path) -> None:
    plain = journey_store(sqlite_store_url, key=None)
    code, _, err = cli("forget", PHONE, "--yes", "--store", plain, env={})
    assert code == 1 and "needs the master key" in err and PHONE not in err
    code, _, err = cli("forget", PHONE, "--yes", "--store", plain)
    assert code == 1 and "does not encrypt personal data at rest" in err and PHONE not in err
    with LedgerStore(plain, key=None) as store, pytest.raises(ForgetRefused, match="does not encrypt personal data"):
        forget(store, PHONE, "dpo", "2026-12-01T00:00:00Z")
    assert found_at_rest(plain)  # nothing was pretended
    sealed = journey_store(f"sqlite:///{tmp_path / 'sealed.db'}")
    code, _, err = cli("forget", "13900000000", "--yes", "--store", sealed)
    assert code == 1 and "no customer known by 139****0000" in err


# --- integrity and output ------------------------------------------------------------------------


def test_tampering_with_an_encrypted_event_is_detected(store_url: str) -> None:
    journey_store(store_url)
    location = parse_store_url(store_url)
    with LedgerStore(store_url, key=KEY) as store:
        position = next(r.position for r in store.read() if r.event.event_id == "o1")
        table = store.recorder.events_table_name
    if location.kind == "sqlite":
        with sqlite3.connect(location.env["SQLITE_DBNAME"]) as conn:
            state = conn.execute(f"SELECT state FROM {table} WHERE rowid = ?", (position,)).fetchone()[0]
            conn.execute(f"UPDATE {table} SET state = ? WHERE rowid = ?", (_flip_box(state), position))
    else:
        import psycopg

        schema = location.env["POSTGRES_SCHEMA"]
        with psycopg.connect(**pg_connect_args(location.env)) as conn:
            state = bytes(conn.execute(f'SELECT state FROM "{schema}"."{table}" WHERE notification_id = %s', (position,)).fetchone()[0])
            conn.execute(f'UPDATE "{schema}"."{table}" SET state = %s WHERE notification_id = %s', (_flip_box(state), position))
    with LedgerStore(store_url, key=None) as store:
        report = verify(store)
    assert not report.ok and report.first_break.kind == CHANGED and report.first_break.position == position


def _flip_box(state: bytes) -> bytes:
    loaded = orjson.loads(state)
    box = bytearray(base64.b64decode(loaded["e"]["~sealed"]["box"]))
    box[-1] ^= 1
    loaded["e"]["~sealed"]["box"] = base64.b64encode(bytes(box)).decode()
    return orjson.dumps(loaded)


def test_a_bad_line_is_reported_without_its_personal_data(sqlite_store_url: str, tmp_path: Path) -> None:
    journey_store(sqlite_store_url)
    bad = write(tmp_path, "\n".join([
        f'{{"event_id": "b1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00", "person": {{"phone": "{PHONE}", "name": "{NAME}"}}, "via": "scan", "entry_point_id": "qr-ortho-a1"}}',
        f'{{"event_id": "b2", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {{"platform_user": "{NAME}", "phone": "{PHONE}x"}}, "via": "scan", "entry_point_id": "qr-ortho-a1"}}',
        f'{{"event_id": "b3", "type": "lead.triaged", "occurred_at": "2026-07-03T15:00:00+08:00", "person": {{"wechat_id": "{WECHAT}"}}, "by": "a1", "intake": {{"pain_site": "{PAIN}", "duration_days": "{PHONE}x", "trauma": "{NAME}", "prior_imaging": false}}, "route": "offline_assessment"}}',
        f'{{"event_id": "b4", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {{"phone": "{PHONE}", "name": "{NAME}"}}, "via": "scan", "entry_point_id": "qr-unknown"}}',
        f'{{"event_id": "b5", "type": "followup.logged", "occurred_at": "2026-07-04T10:00:00+08:00", "person": {{"wechat_id": "{WECHAT}", "nick": "{NAME}"}}, "by": "a1", "medium": "wechat"}}',
    ]))
    for json in ((), ("--json",)):
        code, out, err = cli("ingest", bad, *json, "--store", sqlite_store_url)
        assert code == 1 and out.count("b") >= 5
        assert not {PHONE, NAME, WECHAT, PAIN} & {s for s in SECRETS if s in out + err}, out + err


def test_json_output_and_exports_mask_phones_unless_unmasked(sqlite_store_url: str, tmp_path: Path) -> None:
    url = journey_store(sqlite_store_url)
    masked = "138****8000"
    for args in (("events",), ("trace", PHONE), ("attribution", PHONE), ("due", "--at", "2026-07-04T12:00+08:00")):
        shown = orjson.dumps(cli_json(*args, "--store", url)).decode()
        assert PHONE not in shown, args
        unmasked = orjson.dumps(cli_json(*args, "--unmasked", "--store", url)).decode()
        assert PHONE in unmasked or args[0] == "due", args
    assert masked in orjson.dumps(cli_json("events", "--store", url)).decode()
    code, _, err = cli("export", "--out", str(tmp_path / "x"), "--store", url)
    assert code == 0, err
    payloads = "".join(pq.read_table(tmp_path / "x" / "events.parquet").column("payload").to_pylist())
    assert PHONE not in payloads and masked in payloads
    code, _, err = cli("export", "--out", str(tmp_path / "y"), "--unmasked", "--store", url)
    assert PHONE in "".join(pq.read_table(tmp_path / "y" / "events.parquet").column("payload").to_pylist())
