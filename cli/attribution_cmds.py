"""``attribution``, ``trace`` and ``collisions``: who owns a customer, and the evidence (SPEC §4)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from cli.common import CommandError, JsonOption, StoreOption, UnmaskedOption, emit_json, fail, opened_store, stdout
from cli.store_cmds import describe
from ledger.events import LeadCaptured, LedgerEvent
from ledger.neighbourhood import neighbourhood
from ledger.projector import Projector
from ledger.store import LedgerStore, Recorded
from ledger.privacy import mask_key, mask_ref
from projections.attribution import Collision, CustomerAttribution, Decision, Ownership, describe_lead
from projections.customers import customer_events, find_possible_duplicates
from projections.pipeline import Facts, facts, facts_with

app = typer.Typer()

RefArgument = Annotated[str, typer.Argument(help="Phone, WeChat id, platform user (douyin:8842) or customer id (C-…).", show_default=False)]


def load(store_url: str | None, ref: str | None = None) -> Facts:
    """The facts a command needs: the whole stream, or — for one customer — only the events of
    that customer's neighbourhood (found through the store's index; the same answer, fast)."""
    with opened_store(store_url) as ledger:
        return load_from(ledger, ref)


def load_from(ledger: LedgerStore, ref: str | None = None) -> Facts:
    """`load` from an open store (the HTTP service keeps one open)."""
    position = ledger.position()
    if ref is None:
        loaded = facts(ledger.read(upto=position), position)
    else:
        found = [r for r in neighbourhood(ledger, ref, reference=False) if r.position <= position]
        if not found:
            unknown_customer(ref)
        loaded = local_facts(ledger, found, position)
    if not loaded.book.adoptions:
        fail("no rule set has been adopted in this store", hint="run: channel-ledger init")
    return loaded


def local_facts(ledger: LedgerStore, found: Iterable[Recorded], position: int) -> Facts:
    """Facts of some customers alone — their events found through the index (a neighbourhood,
    or the components of new leads) — as of ``position``: with the rule book and reference data
    as kept, when nothing newer was recorded, else with the reference data read through the index."""
    found = [r for r in found if r.position <= position]
    kept = Projector(ledger).snapshot()
    if kept is not None:
        return facts_with(found, position, *kept)
    reference = [r for r in ledger.reference_data(known=(r.position for r in found)) if r.position <= position]
    return facts(sorted([*found, *reference], key=lambda r: r.position), position)


class UnknownCustomer(CommandError):
    """No customer is known by the ref a command was given."""


def unknown_customer(ref: str) -> NoReturn:
    raise UnknownCustomer(f"no customer known by {mask_ref(ref)}", hint="use a phone, WeChat id, platform user (douyin:123) or customer id (C-…)")


def find_customer(f: Facts, ref: str) -> CustomerAttribution:
    customer = f.identity.lookup(ref)
    if customer is None:
        unknown_customer(ref)
    found = f.attribution.of(customer)
    assert found is not None
    return found


def local(moment: datetime | None, f: Facts) -> str:
    if moment is None:
        return "—"
    tz = f.book.in_force_at(moment).tz if f.book.adoptions else None
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M") if tz else moment.isoformat()


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def ownership_json(o: Ownership | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"staff_id": o.staff_id, "channel_id": o.channel_id, "channel_kind": o.channel_kind, "since": iso(o.since), "via": o.via, "event_id": o.event_id, "ticket_id": o.ticket_id}


def collision_json(c: Collision) -> dict[str, Any]:
    return {
        "event_id": c.event_id,
        "at": iso(c.at),
        "staff_id": c.staff_id,
        "channel_id": c.channel_id,
        "channel_kind": c.channel_kind,
        "owner_staff_id": c.owner_staff_id,
        "owner_channel_id": c.owner_channel_id,
        "inside_protection": c.inside_protection,
        "protected_until": iso(c.protected_until),
        "effect": c.effect,
        "rule_version": c.rule_version,
    }


def decision_json(d: Decision) -> dict[str, Any]:
    return {"event_id": d.event_id, "at": iso(d.at), "kind": d.kind, "text": d.text, "rule": d.rule, "rule_version": d.rule_version}


def attribution_json(ca: CustomerAttribution, f: Facts, unmasked: bool) -> dict[str, Any]:
    s = ca.source
    keys = f.identity.keys_of.get(ca.customer_id, [])
    merged = [m for m in f.identity.members(ca.customer_id) if m != ca.customer_id]
    for m in merged:
        keys = keys + f.identity.keys_of.get(m, [])
    return {
        "customer_id": ca.customer_id,
        "keys": [k if unmasked else mask_key(k) for k in (f.identity.plain_key(k) or k for k in keys)],
        "merged_customers": merged,
        "source": None
        if s is None
        else {"channel_id": s.channel_id, "channel_kind": s.channel_kind, "entry_point_id": s.entry_point_id, "staff_id": s.staff_id, "at": iso(s.at), "event_id": s.event_id, "via": s.via},
        "owner": ownership_json(ca.owner),
        "owners": [ownership_json(o) for o in ca.owners],
        "protected_until": iso(ca.protected_until),
        "collisions": [collision_json(c) for c in ca.collisions],
        "tickets": [
            {
                "ticket_id": t.ticket_id,
                "trigger": t.trigger,
                "requested_at": iso(t.requested_at),
                "requested_by": t.requested_by,
                "to_staff_id": t.to_staff_id,
                "to_channel_id": t.to_channel_id,
                "decision": t.decision,
                "decided_at": iso(t.decided_at),
                "decided_by": t.decided_by,
                "eligible": t.eligible,
                "reason": t.reason,
                "effect": t.effect,
                "rule_version": t.rule_version,
            }
            for t in ca.tickets
        ],
        "invalid_leads": [{"event_id": lead.event_id, "at": iso(lead.at), "reason": lead.reason} for lead in ca.invalid_leads],
        "position": f.position,
        "rule_versions": list(f.rule_versions),
    }


@app.command()
def attribution(ref: RefArgument, store: StoreOption = None, json: JsonOption = False, unmasked: UnmaskedOption = False) -> None:
    """Source, owner, protection end and collisions of one customer (SPEC §4)."""
    f = load(store, ref)
    ca = find_customer(f, ref)
    if json:
        emit_json(attribution_json(ca, f, unmasked))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_row("customer", ca.customer_id)
    s = ca.source
    if s is None:
        grid.add_row("source", "none — no valid lead (walk-in, 自然到店): no source reward")
    else:
        grid.add_row("source", f"{s.staff_id} · {s.channel_id} ({s.channel_kind}) · {s.via} {s.entry_point_id or ''} · {local(s.at, f)} [{s.event_id}]")
        grid.add_row("protected until", local(ca.protected_until, f))
    o = ca.owner
    if o is not None:
        how = "source" if o.via == "source" else f"{o.via} {o.ticket_id or o.event_id}"
        grid.add_row("owner now", f"{o.staff_id} · {o.channel_id} ({o.channel_kind}) since {local(o.since, f)} ({how})")
    grid.add_row("collisions", str(len(ca.collisions)))
    grid.add_row("tickets", ", ".join(f"{t.ticket_id}: {t.effect}" for t in ca.tickets) or "none")
    grid.add_row("invalid leads", str(len(ca.invalid_leads)))
    stdout.print(grid)
    if ca.collisions:
        stdout.print(collision_table(list(ca.collisions), f, with_customer=None))


def collision_table(rows: list[Collision], f: Facts, with_customer: dict[str, str] | None) -> Table:
    table = Table(title="collisions (撞单)", title_justify="left", show_edge=False)
    columns = (["customer"] if with_customer is not None else []) + ["when", "by", "channel", "owner", "protection", "effect", "event"]
    for column in columns:
        table.add_column(column)
    for c in rows:
        cells = ([with_customer[c.event_id]] if with_customer is not None else []) + [
            local(c.at, f),
            c.staff_id or "?",
            f"{c.channel_id} ({c.channel_kind})",
            f"{c.owner_staff_id} · {c.owner_channel_id}",
            "inside" if c.inside_protection else "after",
            c.effect,
            c.event_id,
        ]
        table.add_row(*cells)
    return table


def actors(event: LedgerEvent, f: Facts) -> str:
    """Who acted in an event (and, for a lead, where it came from): staff, entry point, channel."""
    if isinstance(event, LeadCaptured):
        lead = describe_lead(event, f.directory)
        return f"{lead.staff_id or '?'} · {lead.entry_point_id or lead.via} · {lead.channel_id or '?'} ({lead.channel_kind or '?'})"
    w = event.wire()
    for key in ("by", "closed_by", "clinician_id", "requested_by", "decided_by"):
        if key in w:
            return str(w[key])
    return ""


def decisions_by_event(ca: CustomerAttribution) -> dict[str, list[Decision]]:
    by_event: dict[str, list[Decision]] = {}
    for d in ca.decisions:
        by_event.setdefault(d.event_id, []).append(d)
    return by_event


def trace_json(ca: CustomerAttribution, f: Facts, unmasked: bool) -> dict[str, Any]:
    """``trace --json``: the attribution, and every event of the customer with its rule decisions."""
    by_event = decisions_by_event(ca)
    payload = attribution_json(ca, f, unmasked)
    payload["events"] = [
        {
            "event_id": e.event_id,
            "type": e.type,
            "occurred_at": iso(e.occurred_at),
            "what": describe(e),
            "actors": actors(e, f),
            "decisions": [decision_json(d) for d in by_event.get(e.event_id, [])],
        }
        for e in customer_events(f.events, f.identity, ca.customer_id)
    ]
    return payload


@app.command()
def trace(ref: RefArgument, store: StoreOption = None, json: JsonOption = False, unmasked: UnmaskedOption = False) -> None:
    """The evidence chain of one customer: every event in order, and each rule decision with its version."""
    f = load(store, ref)
    ca = find_customer(f, ref)
    mine = customer_events(f.events, f.identity, ca.customer_id)
    by_event = decisions_by_event(ca)
    if json:
        emit_json(trace_json(ca, f, unmasked))
        return
    stdout.print(f"trace of {ca.customer_id} · {len(mine)} events · ledger position {f.position} · rules {', '.join(f.rule_versions)}")
    for e in mine:
        who = actors(e, f)
        stdout.print(f"{local(e.occurred_at, f)}  {e.event_id}  {e.type}  {describe(e)}" + (f"  — {who}" if who else ""), markup=False)
        for d in by_event.get(e.event_id, []):
            stdout.print(f"    ⇒ {d.kind}: {d.text}  [{d.rule} · rules {d.rule_version}]", markup=False)


@app.command()
def collisions(
    month: Annotated[str | None, typer.Option("--month", help="Only collisions in this month (YYYY-MM, rules' time zone).")] = None,
    store: StoreOption = None,
    json: JsonOption = False,
) -> None:
    """Collisions (撞单), merge candidates and possible duplicates for review."""
    f = load(store)
    if month is not None and not (len(month) == 7 and month[4] == "-" and month[:4].isdigit() and month[5:].isdigit()):
        raise typer.BadParameter("--month takes YYYY-MM")

    def in_month(moment: datetime) -> bool:
        return month is None or f.book.in_force_at(moment).month_of(moment) == month

    found = [(cid, c) for cid, c in f.attribution.collisions() if in_month(c.at)]
    candidates = [m for m in f.identity.merge_candidates if in_month(m.occurred_at)]
    duplicates = find_possible_duplicates(f.events, f.identity, f.directory)
    if json:
        emit_json(
            {
                "month": month,
                "position": f.position,
                "collisions": [{"customer_id": cid, **collision_json(c)} for cid, c in found],
                "merge_candidates": [
                    {"kept": m.kept, "other": m.other, "event_id": m.event_id, "at": iso(m.occurred_at), "keys": list(m.keys)} for m in candidates
                ],
                "possible_duplicates": [
                    {"a": d.a, "b": d.b, "store_id": d.store_id, "score": round(d.score, 2), "reason": d.reason} for d in duplicates
                ],
            }
        )
        return
    inside = sum(1 for _, c in found if c.inside_protection)
    stdout.print(f"{len(found)} collisions ({inside} inside protection) · {len(candidates)} merge candidates · {len(duplicates)} possible duplicates")
    if found:
        stdout.print(collision_table([c for _, c in found], f, {c.event_id: cid for cid, c in found}))
    if candidates:
        table = Table(title="merge candidates (one event named two customers)", title_justify="left", show_edge=False)
        for column in ("when", "event", "kept", "other", "keys"):
            table.add_column(column)
        for m in candidates:
            table.add_row(local(m.occurred_at, f), m.event_id, m.kept, m.other, "+".join(m.keys))
        stdout.print(table)
    if duplicates:
        table = Table(title="possible duplicates (review; never merged automatically)", title_justify="left", show_edge=False)
        for column in ("store", "customers", "score", "why"):
            table.add_column(column)
        for d in duplicates:
            table.add_row(d.store_id, f"{d.a} · {d.b}", f"{d.score:.2f}", d.reason.replace(f"same store {d.store_id}, ", ""))
        stdout.print(table)
