"""``settle``, ``close`` and ``export`` as a person meets them (SPEC §6, §9), on both backends."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from cli.store_cmds import initialise
from ledger.ingest import ingest_events
from ledger.store import LedgerStore
from tests.golden import run_cli
from tests.scenario import CLINIC, scenario
from tests.test_settlement_close import JULY, LATE

RULES = Path(__file__).parent / "rules"
GOLDEN_EVENTS = Path(__file__).parent / "golden" / "statement_text" / "events.jsonl"


def prepared(url: str, text: str | None = None) -> str:
    """A store with the shipped rules and the golden case's July (or ``text``)."""
    with LedgerStore(url) as store:
        initialise(store)
        events = scenario(text) if text is not None else scenario(GOLDEN_EVENTS.read_text(encoding="utf-8"))
        report = ingest_events(store, events)
        assert not report.rejected, report.rejected
    return url


def cli(*args: str):
    done = run_cli(list(args))
    return done, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")


def cli_json(*args: str):
    done, out, err = cli(*args, "--json")
    assert done.returncode == 0, err
    return orjson.loads(out)


def test_settle_json_has_the_documented_keys_and_is_byte_identical_on_every_run(sqlite_store_url: str) -> None:
    url = prepared(sqlite_store_url)
    first, out, _ = cli("settle", "--month", "2026-07", "--json", "--store", url)
    again, out_again, _ = cli("settle", "--month", "2026-07", "--json", "--store", url)
    assert first.returncode == again.returncode == 0 and out == out_again
    data = orjson.loads(out)
    assert {"month", "rule_versions", "position", "digest", "lines", "totals"} <= set(data)
    assert data["month"] == "2026-07" and data["rule_versions"] == ["2026.1"] and len(data["digest"]) == 64
    line = data["lines"][0]
    assert {"payee", "part", "basis", "base", "rate", "amount", "customer_id", "order_id", "event_id", "adjustment_of"} <= set(line)
    assert all(isinstance(line[k], str) and line[k].count(".") == 1 and len(line[k].split(".")[1]) == 2 for k in ("base", "amount"))
    assert data["totals"]["a1"] == {"source": "894.40", "deal": "0.00", "fulfillment": "0.00", "total": "894.40"}
    assert data["payees"]["a1"]["role"] == "channel_agent"


def test_one_payees_statement(sqlite_store_url: str) -> None:
    url = prepared(sqlite_store_url)
    data = cli_json("settle", "--month", "2026-07", "--payee", "p1", "--store", url)
    assert {l["payee"] for l in data["lines"]} == {"p1"} and list(data["totals"]) == ["p1"]
    done, out, _ = cli("settle", "--month", "2026-07", "--payee", "p1", "--lines", "--store", url)
    assert done.returncode == 0 and "repurchase" in out and "a1" not in out


def test_close_then_a_late_event_is_settled_in_the_next_month(store_url: str) -> None:
    url = prepared(store_url, JULY)
    done, out, err = cli("close", "--month", "2026-07", "--store", url)
    assert done.returncode == 0, err
    assert out.startswith("closed 2026-07: 2 lines, 2 payees, total 650.00")
    closed = cli_json("settle", "--month", "2026-07", "--store", url)
    with LedgerStore(url) as store:
        assert not ingest_events(store, scenario(LATE)).rejected
    again = cli_json("settle", "--month", "2026-07", "--store", url)
    assert again == closed
    assert again["closed"]["verified"] is True and again["closed"]["adjustments_go_to"] == "2026-08"
    august = cli_json("settle", "--month", "2026-08", "--store", url)
    assert [(l["payee"], l["amount"], l["adjustment_of"], l["adjustment"]) for l in august["lines"] if l["adjustment_of"]] == [
        ("a1", "-400.00", "2026-07", "reversed"),
        ("a2", "500.00", "2026-07", "added"),
        ("p2", "50.00", "2026-07", "added"),
    ]
    done, out, _ = cli("settle", "--month", "2026-08", "--lines", "--store", url)
    assert "of which 3 adjust closed months (2026-07)" in out
    assert "adjustments of closed 2026-07 (recorded after its close): 3 lines, +150.00" in out and "reversed" in out
    done, out, err = cli("verify", "--store", url)
    assert done.returncode == 0, out + err
    assert "closed months checked against the chain: 1" in out


@pytest.mark.parametrize(
    ("setup", "month", "message"),
    [
        (["2026-07"], "2026-07", "Error: 2026-07 is already closed"),
        ([], "2026-08", "Error: 2026-07 has commission lines and is still open: months close in order"),
        ([], "2099-01", "Error: 2099-01 has not ended yet"),
        ([], "July", "Error: a month is written YYYY-MM"),
    ],
    ids=["already-closed", "out-of-order", "not-ended", "bad-month"],
)
def test_close_refusals_are_one_line(sqlite_store_url: str, setup: list[str], month: str, message: str) -> None:
    url = prepared(sqlite_store_url, JULY)
    for earlier in setup:
        assert cli("close", "--month", earlier, "--store", url)[0].returncode == 0
    done, _, err = cli("close", "--month", month, "--store", url)
    assert done.returncode == 1 and err.startswith(message), err
    assert "Traceback" not in err


def test_a_what_if_writes_nothing_and_compare_explains_each_change(store_url: str, tmp_path: Path) -> None:
    url = prepared(store_url, CLINIC_COLLISION)
    short = tmp_path / "short.toml"
    short.write_text((RULES / "short_protection.toml").read_text().replace("reattribute_after_protection = false", "reattribute_after_protection = true"))
    with LedgerStore(url) as store:
        before = store.position()
    what_if = cli_json("settle", "--month", "2026-07", "--rules", str(short), "--store", url)
    assert what_if["what_if"] == "2026.2-short" and what_if["rule_versions"] == ["2026.2-short"]
    comparison = cli_json("settle", "--month", "2026-07", "--rules", str(short), "--compare", "--store", url)
    assert [(l["status"], l["payee"], l["old_amount"], l["new_amount"]) for l in comparison["lines"]] == [
        ("removed", "a1", "400.00", "0.00"),
        ("added", "a2", "0.00", "500.00"),
    ]
    assert "protection 90→3 days" in comparison["lines"][1]["reason"]
    assert {p["payee"]: p["change"] for p in comparison["payees"]} == {"a1": "-400.00", "a2": "500.00", "c1": "0.00"}
    done, out, _ = cli("settle", "--month", "2026-07", "--rules", str(short), "--compare", "--store", url)
    assert done.returncode == 0 and "owner changed" in out and "rule changes from 2026.1: protection 90→3 days" in out
    with LedgerStore(url) as store:
        assert store.position() == before


CLINIC_COLLISION = JULY.replace(
    '{"event_id": "s1"',
    '{"event_id": "l9", "type": "lead.captured", "occurred_at": "2026-07-10T10:00:00+08:00", "person": {"phone": "13800000001"}, "via": "scan", "entry_point_id": "qr-gym-a2"}\n{"event_id": "s1"',
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare"], "Error: --compare needs --rules FILE"),
        (["--out", "x.xlsx"], "Error: --out x.xlsx: the file name must end in .parquet or .csv"),
        (["--rules", "/no/such.toml"], "Error: /no/such.toml: cannot read the file"),
    ],
)
def test_settle_refusals_are_one_line(sqlite_store_url: str, args: list[str], message: str) -> None:
    url = prepared(sqlite_store_url)
    done, _, err = cli("settle", "--month", "2026-07", *args, "--store", url)
    assert done.returncode == 1 and err.startswith(message), err


def test_settle_without_any_rule_set_says_how_to_get_one(sqlite_store_url: str) -> None:
    with LedgerStore(sqlite_store_url) as store:
        ingest_events(store, scenario(CLINIC))
    done, _, err = cli("settle", "--month", "2026-07", "--store", sqlite_store_url)
    assert done.returncode == 1 and "none has been adopted" in err and "channel-ledger init" in err


def test_out_writes_parquet_with_metadata_and_csv_with_a_bom(sqlite_store_url: str, tmp_path: Path) -> None:
    url = prepared(sqlite_store_url)
    digest = cli_json("settle", "--month", "2026-07", "--store", url)["digest"]
    parquet, csv = tmp_path / "july.parquet", tmp_path / "july.csv"
    assert cli("settle", "--month", "2026-07", "--out", str(parquet), "--store", url)[0].returncode == 0
    assert cli("settle", "--month", "2026-07", "--out", str(csv), "--store", url)[0].returncode == 0
    table = pq.read_table(parquet)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["channel_ledger.month"] == "2026-07" and meta["channel_ledger.digest"] == digest
    assert orjson.loads(meta["channel_ledger.rule_versions"]) == ["2026.1"] and int(meta["channel_ledger.position"]) > 0
    assert table.num_rows == 16 and str(table.schema.field("amount").type) == "decimal128(18, 2)"
    raw = csv.read_bytes()
    assert raw.startswith("\ufeff".encode()) and "陈渠道".encode() in raw
    assert raw.decode("utf-8-sig").splitlines()[1].split(",")[8] == "19.20"


def test_export_writes_events_and_statement_lines_with_phones_masked(store_url: str, tmp_path: Path) -> None:
    url = prepared(store_url)
    done, out, err = cli("export", "--out", str(tmp_path / "x"), "--store", url)
    assert done.returncode == 0, err
    events = pq.read_table(tmp_path / "x" / "events.parquet")
    lines = pq.read_table(tmp_path / "x" / "statement_lines.parquet")
    payloads = "".join(events.column("payload").to_pylist())
    assert "138****0001" in payloads and "13800000001" not in payloads
    assert sorted(set(lines.column("month").to_pylist())) == ["2026-07", "2026-08"]
    for table in (events, lines):
        meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
        assert int(meta["channel_ledger.position"]) > 0 and orjson.loads(meta["channel_ledger.rule_versions"]) == ["2026.1"]
    assert cli("export", "--out", str(tmp_path / "y"), "--unmasked", "--store", url)[0].returncode == 0
    assert "+8613800000001" in "".join(pq.read_table(tmp_path / "y" / "events.parquet").column("payload").to_pylist())


@pytest.mark.parametrize("command", ["settle", "close", "export", "policy", "policy show", "policy adopt", "policy diff"])
def test_every_settlement_command_has_help_text(command: str) -> None:
    done, out, _ = cli(*command.split(), "--help")
    assert done.returncode == 0 and "Usage:" in out and len(out.split("Usage:")[1].strip()) > 40
