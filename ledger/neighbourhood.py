"""One customer's events without reading the stream (SPEC §4 scale): the neighbourhood of a ref.

Identity resolution is local: a customer can only ever contain keys that appeared together in
some event (or in a ``customers.merged``). So the events that can affect one customer are the
*connected component* of its keys — every event naming one of the keys, the keys those events
name, and so on — plus the sessions, refunds, outcomes and decisions that refer to the component's
orders, appointments and tickets, plus the reference data and rule sets. The store's secondary
index (`ledger.identity.index_terms`) finds them; a fold over this neighbourhood gives exactly the
answer a fold over the whole stream gives for these customers (tested against each other).
"""

from __future__ import annotations

from ledger.events import normalise_phone
from ledger.identity import index_terms
from ledger.store import LedgerStore, Recorded

MAX_ROUNDS = 50


def ref_terms(ref: str) -> list[str]:
    """Index terms a person might mean by ``ref``: a customer id, a phone, a WeChat id, a platform user."""
    ref = ref.strip()
    terms = ["c:" + ref, "k:wechat:" + ref]
    if ":" in ref:
        terms.append("k:platform:" + ref)
    phone, valid = normalise_phone(ref)
    if valid:
        terms.append("k:phone:" + phone)
    return terms


def neighbourhood(store: LedgerStore, ref: str) -> list[Recorded]:
    """The customer's component, its referring events, and all reference data (ledger order)."""
    seen_terms: set[str] = set()
    frontier = set(ref_terms(ref))
    found: dict[int, Recorded] = {}
    for _round in range(MAX_ROUNDS):
        frontier -= seen_terms
        if not frontier:
            break
        seen_terms |= frontier
        new_positions = store.find(frontier) - set(found)
        frontier = set()
        for recorded in store.read_at(new_positions):
            found[recorded.position] = recorded
            frontier.update(t for t in index_terms(recorded.event) if t[:2] in ("k:", "o:", "a:", "t:"))
    if not found:
        return []
    reference = store.read_at(store.find(["d:"]) - set(found))
    return sorted([*found.values(), *reference], key=lambda r: r.position)
