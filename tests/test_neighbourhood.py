"""The fast path (one customer's neighbourhood through the index) agrees with the full fold."""

from __future__ import annotations

import orjson

from cli.attribution_cmds import attribution_json
from cli.store_cmds import adoption_event
from ledger.demo import generate
from ledger.ingest import ingest_events, ingest_files
from ledger.neighbourhood import neighbourhood
from ledger.store import LedgerStore
from policies import default_rules
from projections.customers import customer_events
from projections.pipeline import facts
from tests.golden import run_cli


def test_every_customer_reads_the_same_through_the_index_as_through_the_stream(store_url, tmp_path) -> None:
    path = tmp_path / "demo.jsonl"
    path.write_text("\n".join(orjson.dumps(e).decode() for e in generate(seed=5, customers=120, months=2)) + "\n", encoding="utf-8")
    with LedgerStore(store_url) as store:
        ingest_events(store, [adoption_event(default_rules())])
        assert ingest_files(store, [str(path)]).rejected == []
        full = facts(store.read())
        checked = 0
        for customer in full.identity.customers():
            local = facts(neighbourhood(store, customer))
            assert local.identity.lookup(customer) == customer
            fast = attribution_json(local.attribution.of(customer), local, unmasked=True)
            slow = attribution_json(full.attribution.of(customer), full, unmasked=True)
            fast.pop("position"), slow.pop("position")
            assert fast == slow
            assert customer_events(local.events, local.identity, customer) == customer_events(full.events, full.identity, customer)
            checked += 1
        assert checked == len(full.identity.customers()) > 100

    # `events --customer` lists the neighbourhood's events of the customer: the full fold's
    # (a customer merged into another is asked for by its own id and lists the survivor's)
    merged = sorted(c for c in full.identity.created_at if c in full.identity.parent)
    for ref in [*full.identity.customers()[:2], *merged[:1]]:
        listed = run_cli(["events", "--customer", ref, "--limit", "0", "--json", "--store", store_url])
        assert listed.returncode == 0, listed.stderr.decode()
        want = [e.event_id for e in customer_events(full.events, full.identity, full.identity.root(ref))]
        assert [row["event"]["event_id"] for row in orjson.loads(listed.stdout)["events"]] == want

    # a listing of the first N events names each one's customer from its component, as the
    # whole-stream listing (--limit 0) does, and counts every match
    for filters in ([], ["--type", "session.delivered"], ["--type", "lead.captured", "--type", "order.refunded"]):
        whole = orjson.loads(run_cli(["events", *filters, "--limit", "0", "--json", "--store", store_url]).stdout)
        first = orjson.loads(run_cli(["events", *filters, "--limit", "37", "--json", "--store", store_url]).stdout)
        assert first["count"] == whole["count"] > 37 and first["shown"] == 37
        assert first["events"] == whole["events"][:37]
        assert not filters or all(row["customer_id"] for row in first["events"])  # unfiltered, the first are reference data


def test_a_phone_finds_its_customer_however_it_is_written(store) -> None:
    from tests.scenario import CLINIC, scenario

    ingest_events(store, [adoption_event(default_rules()), *scenario(CLINIC + '{"event_id": "l1", "type": "lead.captured", "occurred_at": "2026-07-03T14:20:00+08:00", "person": {"phone": "18612345678"}, "via": "scan", "entry_point_id": "qr-ortho-a1"}')])
    for ref in ("186 1234 5678", "+8618612345678", "008618612345678"):
        assert [r.event.event_id for r in neighbourhood(store, ref) if r.event.type == "lead.captured"] == ["l1"]
    assert neighbourhood(store, "13900000000") == []
