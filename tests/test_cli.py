"""The command line as a person meets it: help for every command, errors as one clear line."""

from __future__ import annotations

import orjson
import pytest

from cli.main import app
from tests.golden import run_cli
from tests.scenario import CLINIC, write


def all_commands():
    for c in app.registered_commands:
        yield c.name or c.callback.__name__
    for group in app.registered_groups:
        prefix = group.name or group.typer_instance.info.name
        for c in group.typer_instance.registered_commands:
            yield f"{prefix} {c.name or c.callback.__name__}"


@pytest.mark.parametrize("command", list(all_commands()))
def test_every_command_has_help_text(command: str) -> None:
    done = run_cli([*command.split(), "--help"])
    assert done.returncode == 0
    text = done.stdout.decode()
    assert "Usage:" in text and len(text.split("Usage:")[1].strip()) > 40


def test_each_command_line_loads_only_its_commands_module_and_that_module_has_the_command() -> None:
    import importlib

    from cli.main import COMMANDS, MODULES, modules_for

    found = {}
    for name in MODULES:
        module = importlib.import_module(f"cli.{name}").app
        for c in module.registered_commands:
            found[c.name or c.callback.__name__] = name
        for group in module.registered_groups:
            found[group.name] = name
    assert found == COMMANDS, "cli.main.COMMANDS must name every command and the module that has it"
    assert modules_for(["channel-ledger", "settle", "--month", "2026-11"]) == ("settle_cmds",)
    assert modules_for(["channel-ledger", "--help"]) == modules_for(["channel-ledger", "nosuch"]) == MODULES


@pytest.mark.parametrize(("command", "collector_on"), [("ledgers", False), ("settle", False), ("serve", True)])
def test_a_one_shot_command_runs_with_the_cyclic_collector_paused_and_serve_keeps_it(command, collector_on, monkeypatch) -> None:
    import gc

    import cli.main

    seen = []

    def fake_app(**_options):
        seen.append(gc.isenabled())

    monkeypatch.setattr(cli.main, "build_app", lambda modules: fake_app)
    monkeypatch.setattr("sys.argv", ["channel-ledger", command, "--store", "sqlite:///nowhere.db"])
    assert gc.isenabled()
    cli.main.main()
    assert seen == [collector_on]
    assert gc.isenabled(), "the collector is back when the command ends"


def test_ingest_json_has_the_documented_keys(tmp_path, sqlite_store_url) -> None:
    path = write(tmp_path, CLINIC + '{"event_id": "x", "type": "session.delivered", "occurred_at": "2026-07-08T10:00:00+08:00", "order_id": "nope", "clinician_id": "p1", "room_id": "r", "minutes": 50}')
    done = run_cli(["ingest", path, "--json", "--store", sqlite_store_url])
    assert done.returncode == 1
    out = orjson.loads(done.stdout)
    assert {"accepted", "repeated", "rejected", "collisions"} <= set(out)
    assert out["accepted"] == 16 and out["repeated"] == 0
    assert out["rejected"] == [{"file": path, "line": 17, "event_id": "x", "field": "order_id", "reason": "unknown order 'nope'"}]


def test_stdin_is_read_with_a_dash(sqlite_store_url) -> None:
    done = run_cli(["ingest", "-", "--store", sqlite_store_url], stdin=CLINIC.strip().encode())
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith("accepted 16 · repeated 0 · rejected 0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "--store", "mysql://x/y"], "Error: unsupported store URL 'mysql://x/y'"),
        (["init", "--store", "postgresql://nobody@127.0.0.1:1/none"], "Error: cannot open store"),
        (["ingest", "/no/such/file.jsonl", "--store", "sqlite:///{tmp}/x.db"], "Error: cannot read /no/such/file.jsonl"),
        (["events", "--customer", "13900000000", "--store", "sqlite:///{tmp}/x.db"], "Error: no customer known by 139****0000"),  # a phone is masked even here
    ],
)
def test_refusals_are_one_line_without_a_traceback(args, message, tmp_path) -> None:
    done = run_cli([a.replace("{tmp}", str(tmp_path)) for a in args])
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert err.startswith(message), err
    assert "Traceback" not in err


def test_ingest_tells_the_agent_about_the_collision_at_once(tmp_path, sqlite_store_url) -> None:
    base = write(tmp_path, CLINIC + '{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}')
    assert run_cli(["init", "--store", sqlite_store_url]).returncode == 0
    assert run_cli(["ingest", base, "--store", sqlite_store_url]).returncode == 0
    late = write(tmp_path, '{"event_id": "l2", "type": "lead.captured", "occurred_at": "2026-08-03T14:20:00+08:00", "person": {"phone": "186 1234 5678"}, "via": "scan", "entry_point_id": "qr-gym-a2"}', name="late.jsonl")
    done = run_cli(["ingest", late, "--store", sqlite_store_url])
    text = done.stdout.decode()
    assert done.returncode == 0
    assert "collisions seen (撞单): 1" in text
    assert "l2: a2 / gym collided with owner a1 / ortho" in text and "inside protection" in text
    as_json = orjson.loads(run_cli(["ingest", late, "--store", sqlite_store_url, "--json"]).stdout)
    assert as_json["collisions"] == []  # a repeated line is not a new collision


def test_collisions_lists_a_merge_candidate_with_when_it_happened(tmp_path, sqlite_store_url) -> None:
    """An order naming the keys of two customers: `collisions` shows it for review, in its month."""
    path = write(tmp_path, CLINIC + """
        {"event_id": "l9", "type": "lead.captured", "occurred_at": "2026-07-05T10:00:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}
        {"event_id": "l8", "type": "lead.captured", "occurred_at": "2026-07-02T10:00:00+08:00", "person": {"wechat_id": "wx_sun"}, "via": "scan", "entry_point_id": "qr-gym-a2"}
        {"event_id": "o1", "type": "order.paid", "occurred_at": "2026-07-06T10:00:00+08:00", "order_id": "so-1", "person": {"wechat_id": "wx_sun", "phone": "18612345678"}, "store_id": "sh-jingan", "closed_by": "c1", "paid_via": "store", "items": [{"sku": "a", "product_class": "assessment", "sessions": 0, "amount": "199"}]}
    """)
    assert run_cli(["init", "--store", sqlite_store_url]).returncode == 0
    assert run_cli(["ingest", path, "--store", sqlite_store_url]).returncode == 0
    done = run_cli(["collisions", "--month", "2026-07", "--json", "--store", sqlite_store_url])
    assert done.returncode == 0, done.stderr.decode()
    [candidate] = orjson.loads(done.stdout)["merge_candidates"]
    assert (candidate["event_id"], candidate["at"][:16], candidate["keys"]) == ("o1", "2026-07-06T10:00", ["phone", "wechat"])
    assert orjson.loads(run_cli(["collisions", "--month", "2026-08", "--json", "--store", sqlite_store_url]).stdout)["merge_candidates"] == []
    shown = run_cli(["collisions", "--store", sqlite_store_url])
    assert shown.returncode == 0 and "1 merge candidates" in shown.stdout.decode()
