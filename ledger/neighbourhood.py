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

from collections.abc import Callable

from ledger.events import normalise_phone
from ledger.identity import index_terms
from ledger.store import LedgerStore, Recorded

MAX_ROUNDS = 50


def ref_terms(ref: str, key_form: Callable[[str], str] | None = None) -> list[str]:
    """Index terms a person might mean by ``ref``: a customer id, a phone, a WeChat id, a platform
    user. ``key_form``: how the store keys people when it encrypts personal data (keyed hashes,
    `ledger.sealing.MasterKey.key_form`); the plain terms are kept for what was recorded before."""
    ref = ref.strip()
    keys = ["wechat:" + ref]
    if ":" in ref:
        keys.append("platform:" + ref)
    phone, valid = normalise_phone(ref)
    if valid:
        keys.append("phone:" + phone)
    terms = ["c:" + ref] + ["k:" + key for key in keys]
    if key_form is not None:
        terms += ["k:" + key_form(key) for key in keys]
    return terms


def neighbourhood(store: LedgerStore, ref: str, reference: bool = True) -> list[Recorded]:
    """The customer's component, its referring events, and (unless ``reference`` is False: the
    caller has them kept) all reference data, in ledger order."""
    seen_terms: set[str] = set()
    frontier = set(ref_terms(ref, store.key.key_form if store.key is not None else None))
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
    data = store.reference_data(known=found) if reference else []
    return sorted([*found.values(), *data], key=lambda r: r.position)
